"""Is MMM4Rec's time path alive where time carries signal? (issue 24, item 5) Two measurements the runner
(tools/bench/transfer_control.py --time-study) does not make:

    oracles    what is learnable from time at all: NDCG@10 on domain b's test targets (each user's last item) of
               rankings by the generator's TRUE item vectors, time-blind (an exponentially weighted mean of the
               last items) against time-aware (the same, restricted to the items since the last long gap; and,
               knowing the gap before the target — the request time — the user's session-start items when it
               is long). History masked (the generator never repeats an item) and unmasked.
    diagnose   why the model does not use it: in-process training (the runner's model size, full softmax,
               NAdam lr 1e-3, weight decay 0.005, 20 % of b's users; item features = the generator's true
               vectors + noise, so no text encoder is involved) of each variant, NDCG@10 on every user's last
               item with the timestamps and with all of them zeroed, the gradient reaching the time path's
               position mix relative to in_proj's, the user vectors' relative change. Variants patch the
               model where no library option exists (log-scaled gaps, no dropout on the gaps, a "gap" init of
               the time path, a built-in Δ reset at long gaps): diagnostics, not options.

    PYTHONPATH=$PWD .venv/bin/python tools/bench/timepath_control.py --out docs/results/timepath_control_diag

One process, one thread; prints a table per part and writes <out>.json with the command, revision and machine.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from mmm4rec.config import ModelConfig, TrainConfig, from_dict
from mmm4rec.data import transfer_bench as tb
from mmm4rec.losses import LOSSES
from mmm4rec.model import Batch, ItemFeatures, build_model
from mmm4rec.model.layers import SSDMixer, is_time_path
from mmm4rec.model.mmm4rec import MMM4Rec
from provenance import provenance

L, ITEMS, USERS, LONG = 20, 400, 1000, 20_000  # LONG: a gap above it is a long one (the generator's are ~4 days)
BENCHES = {"random": {"renewal": "random", "drift": 0.4}, "home": {"renewal": "home", "drift": 0.8}}
DISC = 1 / np.log2(np.arange(10) + 2)


def sequences(bench: str):
    w = tb._World(ITEMS, 1.0, 0)
    key = {w.key("b", i): i for i in range(ITEMS)}
    b = BENCHES[bench]
    recs = tb._users(w, "b", USERS, 12.0, 15.0, 1.0, b["drift"], 0, b["renewal"])
    return w.vectors["b"], [(np.array([key[i] for i in r.items]), np.asarray(r.timestamps, np.int64)) for r in recs]


# ------------------------------------------------------------------------------------------------------ oracles
def oracles(bench: str) -> dict:
    V, seqs = sequences(bench)

    def ndcg(q, target, seen, mask):
        s = V @ q
        if mask:
            s[seen] = -np.inf
        r = int((s > s[target]).sum())
        return DISC[r] if r < 10 else 0.0

    def ewm(items, a):
        return ((a ** np.arange(len(items))[::-1])[:, None] * V[items]).sum(0)

    def aware(items, ts, a, request):
        hist, gaps = items[:-1], np.diff(ts)
        start = np.concatenate([[True], gaps[:-1] > LONG])[-L:]  # a session starts at each history item
        window = hist[-L:]
        if request and gaps[-1] > LONG and bench == "home" and start.any():
            return ewm(window[start], 1.0)  # back home: the mean of the window's session starts
        return ewm(window[(np.nonzero(start)[0][-1:] if start.any() else [0])[0]:], a)

    out = {}
    for mask in (False, True):
        res = {}
        for a in (0.3, 0.5, 0.7, 0.9, 1.0):
            res[f"blind ewm {a}"] = np.mean([ndcg(ewm(i[:-1][-L:], a), i[-1], i[:-1], mask) for i, _ in seqs])
        for request in (False, True):
            name = "request-time-aware" if request else "history-gap-aware"
            res[name] = max(np.mean([ndcg(aware(i, t, a, request), i[-1], i[:-1], mask) for i, t in seqs])
                            for a in (0.5, 0.7, 1.0))
        blind = max(v for k, v in res.items() if k.startswith("blind"))
        out["masked" if mask else "unmasked"] = {
            **{k: float(v) for k, v in res.items()}, "best blind": float(blind),
            "history-gap-aware / blind": float(res["history-gap-aware"] / blind),
            "request-time-aware / blind": float(res["request-time-aware"] / blind)}
    return out


# ----------------------------------------------------------------------------------------------------- diagnose
VARIANTS = {  # name: (benchmark, model overrides, patches)
    "reference init": ("random", {}, {}),
    "time_init_std=0.5": ("random", {"time_init_std": 0.5}, {}),
    "time_init_std=0.5, blind twin (timestamps zeroed in training and test)": ("random", {"time_init_std": 0.5},
                                                                              {"blind": True}),
    "time_init_std=0.5, no decay on the time path": ("random", {"time_init_std": 0.5}, {"time_decay": False}),
    "time_init_std=0.5, log gaps": ("random", {"time_init_std": 0.5}, {"log": True}),
    "time_init_std=0.5, log gaps, no gap dropout": ("random", {"time_init_std": 0.5}, {"log": True, "nodrop": True}),
    "gap init (τ̃ grows with the gap)": ("random", {}, {"gap_init": True}),
    "gap init + Δ reset at long gaps": ("random", {}, {"gap_init": True, "dt_bias": 8.0}),
    "home, target timestamp, reference init": ("home", {"compat": {"target_timestamp": True}}, {}),
    "home, target timestamp, time_init_std=0.5": ("home", {"time_init_std": 0.5,
                                                           "compat": {"target_timestamp": True}}, {}),
    "home, target timestamp, time_init_std=0.5, log gaps": ("home", {"time_init_std": 0.5, "compat": {
        "target_timestamp": True}}, {"log": True}),
}


def windows(seqs, ends) -> Batch:
    rows = []
    for (items, ts), targets in zip(seqs, ends):
        for t in targets:
            lo = max(0, t - L)
            a, b = np.zeros(L, np.int64), np.zeros(L, np.int64)
            a[: t - lo], b[: t - lo] = items[lo:t] + 1, ts[lo:t]
            rows.append((a, b, t - lo, items[t] + 1, ts[t]))
    return Batch(*(torch.as_tensor(np.array(col)) for col in zip(*rows)))


def last_k(b: Batch, k: int) -> Batch:
    """Each history cut to its last k items (moved to the front; the rest padding)."""
    n = b.lengths.clamp(max=k)
    src = (b.lengths - n)[:, None] + torch.arange(b.items.shape[1])[None]
    keep = torch.arange(b.items.shape[1])[None] < n[:, None]
    src = src.clamp(max=b.items.shape[1] - 1)
    return Batch(b.items.gather(1, src) * keep, b.timestamps.gather(1, src) * keep, n, b.targets, b.target_ts)


def rows(b: Batch, idx) -> Batch:
    return Batch(b.items[idx], b.timestamps[idx], b.lengths[idx], b.targets[idx], b.target_ts[idx])


def zero_time(b: Batch) -> Batch:
    return Batch(b.items, torch.zeros_like(b.timestamps), b.lengths, b.targets, torch.zeros_like(b.target_ts))


def evaluate(model, b: Batch, zero: bool):
    if zero:
        b = zero_time(b)
    with torch.no_grad():
        u = model.user_vectors(b)
        s = u @ model.item_tables().scores.t()
        s[:, 0] = -torch.inf
        r = (s > s.gather(1, b.targets[:, None])).sum(1)
    return float(torch.where(r < 10, 1 / torch.log2(r.float() + 2), torch.zeros(())).mean()), u


def patched(patches: dict):
    """The model class's time_gaps / encode with the diagnostic patches (restored by the caller)."""
    gaps, encode = MMM4Rec.time_gaps, MMM4Rec.encode
    if patches.get("log"):
        MMM4Rec.time_gaps = lambda self, b: torch.log1p(gaps(self, b).clamp(min=0))  # compat's −ts gap → 0
    if patches.get("nodrop"):
        def no_gap_dropout(self, batch, history):  # MMM4Rec.encode without the dropout on the raw gaps
            x_t, x_v = self.norm_text(self.dropout(history[0])), self.norm_image(self.dropout(history[1]))
            d_t = d_v = self.time_norm(self.time_gaps(batch).float())[:, None, :].expand(-1, self.cfg.n_heads, -1)
            for layer in self.layers:
                x_t, x_v, d_t, d_v = layer(x_t, x_v, d_t, d_v)
            return x_v[torch.arange(len(x_v)), batch.lengths - 1]
        MMM4Rec.encode = no_gap_dropout
    return gaps, encode


def gap_init(model, dt_bias):
    """τ̃ = SiLU(SiLU(D ⊙ Tanhshrink(SiLU(D)))) at the start: ~0 inside a session, ~1 after a long gap (identity
    position mixes, convolutions that pass the current step); with dt_bias the dt channels' bias makes
    Δ = softplus(dt_bias·τ̃ + dt_bias₀) large — a state reset — exactly after the long gaps."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, SSDMixer) and m.time_path is not None:
                for lin in (m.time_path.mix[1], m.time_path.mix[3]):
                    lin.weight.copy_(torch.eye(L))
                    lin.bias.zero_()
                for conv in (m.time_path.conv1, m.time_path.conv2):
                    conv.weight.zero_()
                    conv.weight[:, 0, -1] = 1.0
                    conv.bias.zero_()
                if dt_bias and hasattr(m, "in_proj"):
                    m.in_proj.bias[-m.cfg.n_heads:] = dt_bias


def diagnose(name: str, epochs: int, seed: int = 0, train_share: float = 0.2) -> dict:
    bench, over, patches = VARIANTS[name]
    V, seqs = sequences(bench)
    g = np.random.default_rng(0)
    feats = np.concatenate([np.zeros((1, 24)), np.concatenate([V, 0.1 * g.standard_normal((ITEMS, 16))], 1)])
    users = np.random.default_rng(seed).permutation(USERS)[: round(USERS * train_share)]  # the users who train
    train = windows([seqs[u] for u in users], [range(1, len(seqs[u][0]) - 2) for u in users])
    test = windows(seqs, [[len(s[0]) - 1] for s in seqs])
    if patches.get("blind"):  # the same model trained and scored without time: what reading the gaps is worth
        train, test = zero_time(train), zero_time(test)
    cfg = dict(d_model=64, expand=2, head_dim=16, n_groups=4, d_state=16, d_conv=4, n_layers=1, max_len=L,
               dropout=0.2, norm_eps=1e-12, temperature=0.8, id_bias=False)
    saved = patched(patches)
    try:
        torch.manual_seed(seed)
        model = build_model(from_dict(ModelConfig, {**cfg, **over}), ItemFeatures(torch.tensor(feats).float()))
        if patches.get("gap_init"):
            gap_init(model, patches.get("dt_bias", 0.0))
        loss_fn = LOSSES["full"](from_dict(TrainConfig, {}))
        time_params = [p for n, p in model.named_parameters() if is_time_path(n)]
        rest = [p for n, p in model.named_parameters() if not is_time_path(n)]
        opt = torch.optim.NAdam([{"params": rest, "weight_decay": 0.005},
                                 {"params": time_params, "weight_decay": 0.005 if patches.get("time_decay", True)
                                  else 0.0}], lr=1e-3)
        tissd, curve, start = model.layers[0].tissd, [], time.time()
        for epoch in range(epochs):
            model.train()
            perm = torch.randperm(len(train.lengths))
            ratios = []
            for i in range(0, len(perm), 256):
                opt.zero_grad()
                loss_fn(model, rows(train, perm[i:i + 256])).backward()
                ratios.append(float(tissd.time_path.mix[1].weight.grad.norm() / tissd.in_proj.weight.grad.norm()))
                opt.step()
            model.eval()
            (with_time, u), (zeroed, u0) = evaluate(model, test, False), evaluate(model, test, True)
            curve.append({"epoch": epoch + 1, "ndcg@10": with_time, "ndcg@10_timestamps_zeroed": zeroed,
                          "user_vector_change": float((u - u0).norm() / u.norm()),
                          "time_mix_grad_over_in_proj": float(np.mean(ratios)),
                          **{f"ndcg@10_last_{k}_items": evaluate(model, last_k(test, k), False)[0] for k in (1, 3)}})
    finally:
        MMM4Rec.time_gaps, MMM4Rec.encode = saved
    best = max(curve, key=lambda c: c["ndcg@10"])  # the best epoch by test NDCG@10: optimistic for every variant
    return {"variant": name, "benchmark": bench, "train_share": train_share, "model": over, "patches": patches, "best": best,
            "first_epoch_grad_ratio": curve[0]["time_mix_grad_over_in_proj"], "curve": curve,
            "wall_s": round(time.time() - start)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=9)
    p.add_argument("--no-oracles", dest="oracles", action="store_false")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--train-share", type=float, default=0.2, help="share of b's users whose histories train")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="training seeds (the data stay seed 0's)")
    p.add_argument("--out", default="docs/results/timepath_control_diag")
    args = p.parse_args()
    torch.set_num_threads(1)
    result = {"provenance": provenance(), "oracles": {b: oracles(b) for b in BENCHES} if args.oracles else None,
              "diagnose": []}
    for bench, o in (result["oracles"] or {}).items():
        for mask, r in o.items():
            print(f"oracles {bench} {mask}: " + ", ".join(f"{k} {v:.4f}" for k, v in r.items()), flush=True)
    for name, seed in [(n, s) for s in args.seeds for n in args.variants]:
        d = {**diagnose(name, args.epochs, seed, args.train_share), "seed": seed}
        result["diagnose"].append(d)
        b = d["best"]
        print(f"{name}, seed {seed}: best epoch {b['epoch']} NDCG@10 {b['ndcg@10']:.4f}, zeroed {b['ndcg@10_timestamps_zeroed']:.4f}"
              f", last item only {b['ndcg@10_last_1_items']:.4f}, last 3 {b['ndcg@10_last_3_items']:.4f}"
              f", user-vector change {b['user_vector_change']:.2e}, time-mix/in_proj grad {d['first_epoch_grad_ratio']:.1e}"
              f" (epoch 1) {b['time_mix_grad_over_in_proj']:.1e} (best), {d['wall_s']} s", flush=True)
        Path(args.out).with_suffix(".json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
