"""Typed config: presets, overrides, and the error a user gets for each kind of bad value."""
import pytest

from mmm4rec.config import ConfigError, RunConfig, load_config, parse_override
from mmm4rec.distributed import DistEnv
from mmm4rec.train.engine import deepspeed_config

REPO_DS = __import__("pathlib").Path(__file__).resolve().parents[1] / "ds_configs"


def test_presets_load_and_overrides_apply():
    cfg = load_config("tiny", ["train.lr=3e-4", "model.n_layers=2", "eval.ks=[5, 10]", "data.strict=true"])
    assert cfg.train.lr == 3e-4 and cfg.model.n_layers == 2 and cfg.eval.ks == [5, 10] and cfg.data.strict is True
    assert cfg.model.d_model == 32  # from the preset
    assert parse_override("a.b.c=1") == {"a": {"b": {"c": 1}}}


@pytest.mark.parametrize("overrides, message", [
    (["model.d_modle=8"], "unknown config key(s) in model: model.d_modle"),
    (["nonsense=1"], "unknown config key(s): nonsense"),
    (["train.epochs=ten"], "train.epochs must be int, got str 'ten'"),
    (["train.epochs=true"], "train.epochs must be int, got bool True"),
    (["train.optimizer=sgd"], "train.optimizer must be one of ['nadam', 'adamw'], got 'sgd'"),
    (["eval.ks=10"], "eval.ks must be a list"),
    (["model.head_dim=48"], "not divisible by model.head_dim"),
    (["train.zero_stage=4"], "train.zero_stage must be 0, 1, 2 or 3"),
    (["eval.metric=auc"], "eval.metric must look like"),
    (["eval.metric=ndcg@7"], "eval.metric='ndcg@7' needs 7 in eval.ks (now [10, 20, 50])"),
    (["eval.ks=[0]"], "eval.ks must be a non-empty list of positive integers, got [0]"),
    (["eval.item_chunk=0"], "eval.item_chunk must be >= 1, got 0"),
    (["train.lr=.nan"], "train.lr must be a finite number >= 0, got nan"),
    (["train.lr=-1e-3"], "train.lr must be a finite number >= 0, got -0.001"),
    (["data.num_workers=-1"], "data.num_workers must be >= 0, got -1"),
    (["train.epochs=0"], "train.epochs must be >= 1, got 0"),
    (["train.item_parallel=true", "train.loss=sampled"], "train.item_parallel=true needs train.loss=full"),
    (["data.train_users=0"], "data.train_users must be in (0, 1]"),
    (["model"], "is not of the form key.path=value"),
])
def test_bad_values_name_the_key(overrides, message):
    with pytest.raises(ConfigError) as e:
        load_config("tiny", overrides)
    assert message in str(e.value)


def test_unknown_preset_lists_the_choices():
    with pytest.raises(ConfigError, match="not one of: .*tiny"):
        load_config("no-such-preset")


def test_broken_yaml_names_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        load_config(str(bad))


def test_deepspeed_auto_fields_follow_the_run_config():
    cfg = load_config("tiny", ["data.batch_size=8", "train.grad_accum=3", "train.precision=bf16", "train.grad_clip=1.0",
                               "train.zero_stage=3"])
    ds = deepspeed_config(cfg, world_size=4, template=REPO_DS / "zero3.json", precision="bf16")
    assert ds["train_batch_size"] == 96 and ds["train_micro_batch_size_per_gpu"] == 8
    assert ds["gradient_accumulation_steps"] == 3 and ds["gradient_clipping"] == 1.0
    assert ds["torch_autocast"]["enabled"] is True and ds["zero_optimization"]["stage"] == 3


def test_deepspeed_config_errors(tmp_path):
    cfg = RunConfig()
    with pytest.raises(ConfigError, match="does not exist"):
        deepspeed_config(cfg, 1, tmp_path / "missing.json", "fp32")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ConfigError, match="not valid JSON"):
        deepspeed_config(cfg, 1, tmp_path / "bad.json", "fp32")
    (tmp_path / "fp16.json").write_text('{"fp16": {"enabled": true}}')
    with pytest.raises(ConfigError, match="use torch_autocast"):
        deepspeed_config(cfg, 1, tmp_path / "fp16.json", "fp32")


@pytest.mark.parametrize("text, message", [
    ('[1, 2]', "must be a JSON object, got list"),
    ('{"zero_optimization": {"stage": 3}}', "zero_optimization.stage=3 disagrees with train.zero_stage=1"),
    ('{"zero_optimization": {"stage": 1, "overlap_comms": true}}', "zero_optimization is not valid for DeepSpeed: "
                                                                   "overlap_comms"),
    ('{"gradient_cliping": 1.0}', "unknown DeepSpeed config key(s) ['gradient_cliping']"),
    ('{"torch_autocast": {"enabled": true}}', "torch_autocast.enabled=True disagrees with the run's precision fp32"),
    ('{"zero_optimization": {"stage": 1, "offload_optimizer": {"device": "cpu"}}}',
     "has zero_optimization.offload_optimizer but train.offload_optimizer=false"),
])
def test_deepspeed_config_conflicts_are_errors(tmp_path, text, message):
    """What DeepSpeed would run must be what config.yaml says: every disagreement is a one-line error at start-up
    (a stage-3 JSON with train.zero_stage=1 used to run ZeRO-3; an unknown key failed deep inside initialize)."""
    (tmp_path / "ds.json").write_text(text)
    with pytest.raises(ConfigError) as e:
        deepspeed_config(load_config("tiny"), 1, tmp_path / "ds.json", "fp32")
    assert message in str(e.value) and "\n" not in str(e.value)


def test_zero_1_and_2_skip_the_per_step_gradient_norm():
    """DeepSpeed reads the global gradient norm on the host every step unless told not to; the trainer asks for it
    on log steps only. Clipping needs it every step, so clipping keeps it."""
    for stage, clip, want in [(1, 0.0, False), (2, 0.0, False), (2, 1.0, None), (3, 0.0, None)]:
        cfg = load_config("tiny", [f"train.zero_stage={stage}", f"train.grad_clip={clip}"])
        ds = deepspeed_config(cfg, 1, REPO_DS / f"zero{stage}.json", "fp32")
        assert ds["zero_optimization"].get("compute_grad_norm") is want


@pytest.mark.parametrize("environ, want", [
    ({}, (0, 1, 0, "python")),
    ({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "1234",
      "TORCHELASTIC_RUN_ID": "x"}, (3, 4, 1, "torchrun")),
    ({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "CROSS_RANK": "0", "MASTER_PORT": "1"}, (1, 2, 1, "deepspeed")),
    ({"SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1", "SLURM_NTASKS_PER_NODE": "4",
      "MASTER_ADDR": "10.1.1.1", "SLURM_JOB_ID": "4242"}, (5, 8, 1, "slurm")),
])
def test_launcher_environments_are_normalised(environ, want):
    env = DistEnv.from_environ(environ)
    assert (env.rank, env.world_size, env.local_rank, env.launcher) == want
    if "SLURM_JOB_ID" in environ:
        assert env.master_port == 10000 + 4242 and env.local_world_size == 4 and env.master_addr == "10.1.1.1"
