"""Transfer under control (issue 24), the CI guard: on the two-domain benchmark where item content explains the
preference completely (mmm4rec.data.transfer_bench, content=1), a text-only model pre-trained on domain a and
fine-tuned on 20 % of domain b's users beats the same fine-tuning from scratch at the same small step budget,
and scores b's test targets far above popularity before any fine-tuning (zero-shot). Both fail if the transfer
path breaks (train.init_from dropping or mis-loading the backbone, a text encoder that no longer reads the item
text, features of another catalogue): every run goes through the real command line and is read back from its
summary.json / eval-test.json.

Measured when written (2026-12-07, this instance, fixed seeds, the 2-core AVX-512 EPYC): test NDCG@10
pre-trained 0.1156 vs scratch 0.0709 (1.63x) after 12 fine-tuning steps on 20 % of b's users, and zero-shot
0.1112 vs popularity 0.0411 (2.71x) — MEASURED below, bit-identical in a rerun after merging main; the
asserted margins (1.3x, the issue's target, and 2x) leave room for numeric drift, not for a broken transfer (then
the pre-trained run is a scratch run: 1.0x, and zero-shot falls toward random, 0.0303 here). The full study
behind it (content 1: three seeds; 0.5 and 0: one): docs/results/transfer_control.md / .json (content 1, text
only: 1.69x scratch at 5 % of b's users, zero-shot 3.51x popularity).
Cost: 104 s of wall (118 s with setup) on that machine at load ~2 after merging main; 487-636 s while five
sessions shared its 2 cores (load ~13).
"""
from __future__ import annotations

import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.conftest import REPO, subprocess_env

# test NDCG@10 of this instance when written (the docstring says where and how)
MEASURED = {"pre-trained": 0.1156, "scratch": 0.0709, "zero-shot": 0.1112, "popularity": 0.0411}
FINETUNE_OVER_SCRATCH = 1.3  # asserted margins, inside what was measured
ZERO_SHOT_OVER_POPULARITY = 2.0
COMMON = ["--config", "tiny", "--set", "model.id_bias=false", "--set", "train.loss=full", "--set",
          "data.batch_size=64", "--set", "train.log_every=50", "--set", "model.max_len=20"]


def mmm4rec(*args: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "mmm4rec", *args], cwd=REPO, env=subprocess_env(),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"mmm4rec {' '.join(args)} exited {proc.returncode}\n{proc.stderr[-4000:]}"


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    from mmm4rec.config import EncoderConfig
    from mmm4rec.data.features import ensure_features
    from mmm4rec.data.transfer_bench import generate

    root = tmp_path_factory.mktemp("transfer-bench")
    generate(root, n_users=400, n_items=150, content=1.0, seed=0)
    for domain in "ab":
        ensure_features(root / domain, EncoderConfig())
    return root


def test_pretraining_transfers_where_content_explains_preference(bench, tmp_path):
    from mmm4rec.data.transfer_bench import baselines

    pre = tmp_path / "pre"
    mmm4rec("pretrain", *COMMON, "--set", f"data.dataset={bench / 'a'}", "--set", "train.max_steps=100",
            "--run-dir", str(pre))

    def finetune(name: str, *extra: str) -> float:
        run = tmp_path / name
        mmm4rec("finetune", *COMMON, "--set", f"data.dataset={bench / 'b'}", "--set", "data.train_users=0.2",
                "--set", "train.max_steps=12", "--set", "train.epochs=100", "--set", "train.patience=100",
                "--run-dir", str(run), *extra)
        return json.loads((run / "summary.json").read_text())["test"]["ndcg@10"]

    def zero_shot() -> float:
        mmm4rec("evaluate", *COMMON, "--set", f"data.dataset={bench / 'b'}", "--checkpoint", str(pre),
                "--run-dir", str(tmp_path / "zero"))
        return json.loads((tmp_path / "zero" / "eval-test.json").read_text())["ndcg@10"]

    with ThreadPoolExecutor(2) as pool:  # one thread each: two runs on the two cores
        jobs = [pool.submit(finetune, "pre-trained", "--set", f"train.init_from={pre}"),
                pool.submit(finetune, "scratch"), pool.submit(zero_shot)]
        pretrained, scratch, zero = (j.result() for j in jobs)
    popularity = baselines(bench / "b")["popularity"]["ndcg@10"]
    print(json.dumps({"pre-trained": pretrained, "scratch": scratch, "zero-shot": zero, "popularity": popularity}))
    assert pretrained >= FINETUNE_OVER_SCRATCH * scratch, (pretrained, scratch)
    assert zero >= ZERO_SHOT_OVER_POPULARITY * popularity, (zero, popularity)
