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
    cfg = load_config("tiny", ["data.batch_size=8", "train.grad_accum=3", "train.precision=bf16", "train.grad_clip=1.0"])
    ds = deepspeed_config(cfg, world_size=4, template=REPO_DS / "zero3.json")
    assert ds["train_batch_size"] == 96 and ds["train_micro_batch_size_per_gpu"] == 8
    assert ds["gradient_accumulation_steps"] == 3 and ds["gradient_clipping"] == 1.0
    assert ds["torch_autocast"]["enabled"] is True and ds["zero_optimization"]["stage"] == 3


def test_deepspeed_config_errors(tmp_path):
    cfg = RunConfig()
    with pytest.raises(ConfigError, match="does not exist"):
        deepspeed_config(cfg, 1, tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ConfigError, match="not valid JSON"):
        deepspeed_config(cfg, 1, tmp_path / "bad.json")
    (tmp_path / "fp16.json").write_text('{"fp16": {"enabled": true}}')
    with pytest.raises(ConfigError, match="use torch_autocast"):
        deepspeed_config(cfg, 1, tmp_path / "fp16.json")


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
