"""Full-ranking evaluation: equals a brute-force sort, ties count against the target, masking, 1 vs N processes."""
import json

import pytest
import torch

from mmm4rec.train.evaluation import metric_names, ranking_sums, target_ranks
from tests.conftest import run


def brute_force_rank(scores: torch.Tensor, target: int, masked=()) -> int:
    """Sort every item 1..I by score (descending); ties broken against the target."""
    order = sorted(range(1, len(scores)), key=lambda j: (-scores[j].item(), j == target))
    order = [j for j in order if j not in masked or j == target]
    return order.index(target)


def test_ranks_equal_brute_force_with_ties_and_masks():
    g = torch.Generator().manual_seed(0)
    # small integers: every score is exact in float32 whatever the kernel, so ties are exact ties
    user = torch.randint(-3, 4, (7, 4), generator=g).float()
    items = torch.randint(-3, 4, (30, 4), generator=g).float()
    items[5] = items[3]
    targets = torch.tensor([3, 5, 1, 29, 12, 7, 3])
    seen_rows, seen_items = torch.tensor([0, 0, 2, 4, 4]), torch.tensor([5, 9, 8, 1, 2])
    for chunk in (1, 4, 100):
        ranks = target_ranks(user, items, targets, chunk)
        masked = target_ranks(user, items, targets, chunk, (seen_rows, seen_items))
        scores = user @ items.t()
        for r in range(7):
            assert ranks[r] == brute_force_rank(scores[r], int(targets[r]))
            mask = set(seen_items[seen_rows == r].tolist())
            assert masked[r] == brute_force_rank(scores[r], int(targets[r]), mask)
    assert (masked <= ranks).all() and (masked < ranks).any()


def test_a_model_that_scores_everything_equal_gets_nothing():
    user, items = torch.ones(3, 2), torch.ones(11, 2)
    ranks = target_ranks(user, items, torch.tensor([1, 5, 10]), item_chunk=4)
    assert ranks.tolist() == [9, 9, 9]  # every other item ties with the target and counts against it
    sums = ranking_sums(ranks, [10, 20])
    assert dict(zip(metric_names([10, 20]), sums.tolist()))["hit@10"] == 3  # rank 9 < 10 still hits@10
    assert ranking_sums(target_ranks(torch.ones(3, 2), torch.ones(30, 2), torch.tensor([1, 2, 3]), 8), [10])[0] == 0


def test_metric_formulas():
    sums = ranking_sums(torch.tensor([0, 1, 9, 10, 49]), [10, 50])
    got = dict(zip(metric_names([10, 50]), sums.tolist()))
    assert got["hit@10"] == 3 and got["hit@50"] == 5
    assert got["ndcg@10"] == pytest.approx(1 + 1 / torch.log2(torch.tensor(3.0)).item() + 1 / torch.log2(torch.tensor(11.0)).item())
    assert got["mrr"] == pytest.approx(1 + 1 / 2 + 1 / 10 + 1 / 11 + 1 / 50)


@pytest.mark.slow
def test_evaluate_launcher_is_identical_on_one_and_two_processes_and_masking_helps(tiny_dataset, tmp_path):
    train = tmp_path / "train"
    run("finetune.py", ["--config", "tiny", "--set", f"data.dataset={tiny_dataset}", "--set", "train.max_steps=30",
                        "--run-dir", str(train)])
    # the run's own resolved config, results next to it under a name that says the split and the mask
    run("evaluate.py", ["--checkpoint", str(train), "--set", "eval.batch_size=16"])
    results = {"one": json.loads((train / "eval-test.json").read_text())}
    for name, mask in [("two", False), ("masked", True)]:
        out = tmp_path / name
        run("evaluate.py", ["--config", "tiny", "--set", f"data.dataset={tiny_dataset}", "--set",
                            f"eval.mask_history={mask}", "--set", "eval.batch_size=16", "--checkpoint", str(train),
                            "--run-dir", str(out)], nproc=2, launcher="torchrun")
        results[name] = json.loads((out / f"eval-test{'-masked' if mask else ''}.json").read_text())
    one, two, masked = results["one"], results["two"], results["masked"]
    assert one["users"] == two["users"] == 120 and two["world_size"] == 2
    for k in metric_names([10, 20, 50]):
        assert one[k] == pytest.approx(two[k], abs=1e-12), k
        assert masked[k] >= one[k] - 1e-12  # removing seen items can only lift the target
    assert any(masked[k] > one[k] for k in metric_names([10, 20, 50]))
    summary = json.loads((train / "summary.json").read_text())
    assert summary["test"]["ndcg@10"] == pytest.approx(one["ndcg@10"], abs=1e-12)


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_training_and_evaluation_agree_with_cpu_evaluation(tiny_dataset, tmp_path):
    train = tmp_path / "train"
    sets = ["--set", f"data.dataset={tiny_dataset}"]
    run("finetune.py", ["--config", "tiny", *sets, "--set", "train.max_steps=30", "--run-dir", str(train)])
    summary = json.loads((train / "summary.json").read_text())
    assert "1 process(es) (cuda, nccl)" in (train / "train.log").read_text()
    run("evaluate.py", ["--config", "tiny", *sets, "--checkpoint", str(train), "--run-dir", str(tmp_path / "cpu")],
        env={"CUDA_VISIBLE_DEVICES": ""})
    cpu = json.loads((tmp_path / "cpu" / "eval-test.json").read_text())
    for k in metric_names([10, 20, 50]):
        # GPU and CPU matmuls round differently: a target within an ulp of another item may move one place
        assert summary["test"][k] == pytest.approx(cpu[k], abs=2 / 120), k
