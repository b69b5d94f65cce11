"""MMM4Rec and the SASRec baseline: structure, causality, leakage, losses, save/load, errors."""
import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from mmm4rec.config import ConfigError, ModelConfig, TrainConfig, from_dict
from mmm4rec.losses import LOSSES
from mmm4rec.model import Batch, ItemFeatures, build_model, from_pretrained
from mmm4rec.model.layers import CausalConv1d, FourierFusion, dft_bases
from mmm4rec.model.ssd import QUADRATIC_MAX_LEN, pick_form, triton_usable

NUM_ITEMS = 50


def tiny(**kw) -> ModelConfig:
    base = dict(d_model=32, expand=2, head_dim=16, n_groups=2, d_state=8, max_len=8, dropout=0.0)
    return from_dict(ModelConfig, {**base, **kw})


def features(num_items=NUM_ITEMS, images=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    text = F.normalize(torch.randn(num_items + 1, 24, generator=g), dim=-1)
    image = F.normalize(torch.randn(num_items + 1, 20, generator=g), dim=-1) if images else None
    text[0] = 0
    if image is not None:
        image[0] = 0
    missing = torch.zeros(num_items + 1, dtype=torch.bool) if images else None
    return ItemFeatures(text, image, missing)


def make_batch(b=6, L=8, num_items=NUM_ITEMS, seed=0, lengths=None):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, L + 1, (b,), generator=g) if lengths is None else torch.as_tensor(lengths)
    pos = torch.arange(L)[None]
    items = torch.randint(1, num_items + 1, (b, L), generator=g).masked_fill(pos >= lengths[:, None], 0)
    ts = (1_600_000_000 + torch.randint(0, 10**6, (b, L), generator=g).cumsum(1)).masked_fill(pos >= lengths[:, None], 0)
    targets = torch.randint(1, num_items + 1, (b,), generator=g)
    target_ts = ts.max(1).values + 12345
    return Batch(items, ts, lengths, targets, target_ts)


def loss_of(model, batch, name="full", **train):
    return LOSSES[name](from_dict(TrainConfig, train))(model, batch)


def model_for(cfg, feats=None, seed=0):
    torch.manual_seed(seed)
    return build_model(cfg, feats or features()).eval()


def test_paper_config_parameter_count():
    cfg = ModelConfig()  # N=256, E=512, P=64, H=8, G=8, S=64, K=4, L=20, 1 layer
    feats = ItemFeatures(torch.zeros(101, 768), torch.zeros(101, 768), torch.zeros(101, dtype=torch.bool))
    model = build_model(cfg, feats)
    n = sum(p.numel() for name, p in model.named_parameters() if "id_bias" not in name)
    print(f"MMM4Rec parameters at the paper configuration, without ID tables: {n:,}")
    assert 1.95e6 < n < 2.05e6


def test_output_shapes_and_losses():
    model = model_for(tiny())
    batch = make_batch()
    assert model.user_vectors(batch).shape == (6, 32)
    tables = model.item_tables()
    assert tables.scores.shape == (NUM_ITEMS + 1, 32)
    assert torch.isfinite(loss_of(model, batch, "full")) and torch.isfinite(loss_of(model, batch, "in_batch"))


@pytest.mark.parametrize("shared", [True, False])
def test_weight_sharing(shared):
    model = model_for(tiny(shared=shared, n_layers=2))
    for layer in model.layers:
        assert (layer.image_tissd is layer.tissd) == shared
        same = all(a is b for a, b in zip(layer.image_tissd.parameters(), layer.tissd.parameters()))
        assert same == shared


def with_strong_time_paths(model):
    """At the paper's init the time path is nearly silent (Tanhshrink of N(0, 0.02) mixes ≈ 0); widen it so
    that anything reaching the time signal visibly reaches the user vector."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ("time_path.mix" in name or "fourier" in name) and p.ndim == 2:
                p.normal_(0, 1.0)
    return model


def test_target_timestamp_is_invisible_by_default_and_visible_under_compat():
    batch = make_batch(lengths=[3, 5, 8, 1, 2, 7])
    moved = dataclasses.replace(batch, target_ts=batch.target_ts + 10**7)
    default = with_strong_time_paths(model_for(tiny()))
    torch.testing.assert_close(default.user_vectors(batch), default.user_vectors(moved), rtol=0, atol=0)
    compat = with_strong_time_paths(model_for(tiny(compat={"target_timestamp": True})))
    diff = (compat.user_vectors(batch) - compat.user_vectors(moved)).abs().amax(-1)
    assert (diff[batch.lengths < 8] > 0).all()  # shorter than L: the reference leaks the target's time
    assert (diff[batch.lengths == 8] == 0).all()  # full windows have no slot for it


def test_history_changes_output_and_padding_cannot():
    model = with_strong_time_paths(model_for(tiny()))
    batch = make_batch(lengths=[4, 4, 4, 4, 4, 4])
    base = model.user_vectors(batch)
    changed = batch.items.clone()
    changed[:, 1] = changed[:, 1] % NUM_ITEMS + 1  # a history item
    assert (model.user_vectors(dataclasses.replace(batch, items=changed)) - base).abs().amax() > 1e-4
    junk_items, junk_ts = batch.items.clone(), batch.timestamps.clone()
    junk_items[:, 4:] = torch.randint(1, NUM_ITEMS + 1, (6, 4))  # beyond length
    junk_ts[:, 4:] = 1_234_567
    out = model.user_vectors(dataclasses.replace(batch, items=junk_items, timestamps=junk_ts))
    torch.testing.assert_close(out, base, rtol=0, atol=0)


def test_time_gaps_are_exact_for_large_timestamps():
    model = model_for(tiny())
    ts = torch.tensor([[1_700_000_000, 1_700_000_001, 1_700_000_003, 0, 0, 0, 0, 0]])
    batch = Batch(torch.ones(1, 8, dtype=torch.long), ts, torch.tensor([3]), torch.tensor([1]), torch.tensor([0]))
    assert model.time_gaps(batch).tolist() == [[0.0, 1.0, 2.0, 0, 0, 0, 0, 0]]


def test_full_softmax_never_scores_padding():
    model = model_for(tiny())
    batch = make_batch()
    tables = model.item_tables()
    want = F.cross_entropy(model.user_vectors(batch) @ tables.scores[1:].t(), batch.targets - 1)
    loss = loss_of(model, batch)
    torch.testing.assert_close(loss, want)
    with torch.no_grad():  # make padding (id 0) the best-scoring vector for every user: the loss must not move
        model.text_id_bias[0] = 100 * model.user_vectors(batch).mean(0)
    assert torch.equal(loss_of(model, batch), loss)


def test_in_batch_loss_uses_batch_targets_as_candidates():
    model = model_for(tiny())
    batch = make_batch()
    tables = model.item_tables()
    user = model.user_vectors(batch)
    want = F.cross_entropy(user @ tables.scores[batch.targets].t(), torch.arange(6))
    torch.testing.assert_close(loss_of(model, batch, "in_batch"), want, rtol=1e-5, atol=1e-6)


def test_text_only_data_scores_with_text_alone():
    model = model_for(tiny(), features(images=False))
    tables = model.item_tables()
    want = F.normalize(tables.inputs[0], dim=-1) / model.cfg.temperature
    torch.testing.assert_close(tables.scores, want)


def test_learned_missing_image_vector_replaces_missing_items():
    feats = features()
    feats.image_missing[[3, 7]] = True
    model = model_for(tiny(missing_image="learned"), feats)
    with torch.no_grad():
        model.missing_image.fill_(0.5)
    v = model.item_tables().inputs[1]
    assert torch.equal(v[3], torch.full((32,), 0.5)) and not torch.equal(v[4], torch.full((32,), 0.5))


@pytest.mark.parametrize("ablation", [dict(time=False), dict(learnable_filter=False), dict(adaptive_filter=False),
                                      dict(id_bias=False), dict(ssd={"skip": "mamba"}), dict(n_layers=3),
                                      dict(ssd={"form": "chunked", "chunk_size": 3})])
def test_ablations_run_and_train(ablation):
    model = model_for(tiny(**ablation)).train()
    loss = loss_of(model, make_batch())
    loss.backward()
    assert torch.isfinite(loss)
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_forms_agree_inside_the_model():
    feats = features()
    a, b = model_for(tiny(ssd={"form": "quadratic"}), feats), model_for(tiny(ssd={"form": "chunked", "chunk_size": 3}), feats)
    batch = make_batch()
    torch.testing.assert_close(a.user_vectors(batch), b.user_vectors(batch), rtol=1e-4, atol=1e-5)


@pytest.mark.gpu
@pytest.mark.skipif(not triton_usable(torch.device("cuda")), reason="needs CUDA and mamba-ssm")
def test_paper_config_on_gpu_triton_matches_quadratic_and_trains_in_bf16():
    L = QUADRATIC_MAX_LEN + 32  # a long window: "auto" picks Triton on CUDA
    cfg = dict(max_len=L, dropout=0.0, temperature=0.1)
    feats = ItemFeatures(*(t.cuda() for t in dataclasses.astuple(features())))
    batch = make_batch(b=32, L=L).to("cuda")
    models = {form: model_for(from_dict(ModelConfig, {**cfg, "ssd": {"form": form}}), feats).cuda()
              for form in ("quadratic", "auto")}
    assert pick_form(torch.empty(32, L, device="cuda")) == "triton"
    with torch.no_grad():
        want, got = (models[f].user_vectors(batch).double() for f in ("quadratic", "auto"))
    assert ((got - want).norm() / want.norm()).item() < 3e-3  # TF32 inside the Triton kernel
    model = models["auto"].train()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(60):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = loss_of(model, batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(math.isfinite(x) for x in losses) and losses[-1] < 0.5 * losses[0], losses


@pytest.mark.parametrize("arch", ["mmm4rec", "sasrec"])
def test_tiny_overfit_halves_the_full_softmax_loss(arch):
    cfg = tiny(arch=arch, temperature=0.1 if arch == "mmm4rec" else 1.0)
    model = model_for(cfg).train()
    batch = make_batch(b=16, seed=3)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    first = None
    for _ in range(60):
        loss = loss_of(model, batch)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * first, (first, loss.item())


@pytest.mark.parametrize("arch", ["mmm4rec", "sasrec"])
def test_save_and_load_reproduce_outputs_exactly(tmp_path, arch):
    feats = features()
    model = model_for(tiny(arch=arch), feats)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)  # ID tables etc. no longer at their init
    model.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    loaded = from_pretrained(tmp_path, feats).eval()
    batch = make_batch()
    torch.testing.assert_close(loaded.user_vectors(batch), model.user_vectors(batch), rtol=0, atol=0)
    torch.testing.assert_close(loaded.item_tables().scores, model.item_tables().scores, rtol=0, atol=0)


def test_transfer_drops_id_tables_and_is_strict_otherwise(tmp_path):
    source = model_for(tiny(), features(num_items=80))
    source.save_pretrained(tmp_path)
    target = from_pretrained(tmp_path, features(num_items=NUM_ITEMS), transfer=True)  # another catalogue
    assert target.text_id_bias.shape[0] == NUM_ITEMS + 1 and not target.text_id_bias.any()
    torch.testing.assert_close(target.layers[0].tissd.in_proj.weight, source.layers[0].tissd.in_proj.weight)
    other = model_for(tiny(d_state=4), features())
    with pytest.raises(ConfigError, match="shape mismatch"):
        other.load_backbone(source.state_dict(), source="pretrained")
    deeper = model_for(tiny(n_layers=2), features())
    with pytest.raises(ConfigError, match="unexpected"):
        model_for(tiny(), features()).load_backbone(deeper.state_dict())


def test_checkpoint_window_or_depth_mismatch_is_a_clear_error(tmp_path):
    model_for(tiny()).save_pretrained(tmp_path)
    with pytest.raises(ConfigError, match="model.max_len=8 but the config asks for 20"):
        from_pretrained(tmp_path, features(), expect=tiny(max_len=20))
    with pytest.raises(ConfigError, match="model.n_layers=1 but the config asks for 2"):
        from_pretrained(tmp_path, features(), expect=tiny(n_layers=2))


@pytest.mark.parametrize("kw, msg", [(dict(d_model=32, expand=2, head_dim=24), "not divisible by model.head_dim"),
                                     (dict(head_dim=16, n_groups=3), "not divisible by model.n_groups")])
def test_bad_model_configs(kw, msg):
    with pytest.raises(ConfigError, match=msg):
        build_model(tiny(**kw), features())


@pytest.mark.parametrize("L", [9, 2])
def test_causal_conv_equals_torch_conv_in_values_and_gradients(L):
    conv = CausalConv1d(5, 4).double()
    x = torch.randn(40, L, 5, dtype=torch.float64, requires_grad=True)

    def reference(x, w, b):
        return F.conv1d(x.transpose(1, 2), w, b, padding=3, groups=5)[..., :L].transpose(1, 2)

    torch.testing.assert_close(conv(x), reference(x, conv.weight, conv.bias))
    g = torch.randn(40, L, 5, dtype=torch.float64)
    mine = torch.autograd.grad((conv(x) * g).sum(), (x, conv.weight, conv.bias))
    want = torch.autograd.grad((reference(x, conv.weight, conv.bias) * g).sum(), (x, conv.weight, conv.bias))
    for a, b in zip(mine, want):
        torch.testing.assert_close(a, b)
    from mmm4rec.model.layers import _channel_dot

    torch.testing.assert_close(_channel_dot(x, g, block=3 * L * 5), (x * g).sum((0, 1)))  # several blocks


@pytest.mark.parametrize("L", [20, 7])
def test_real_dft_bases_match_torch_fft(L):
    d = torch.randn(3, 4, L, dtype=torch.float64)
    fr, fi, ir, ii = dft_bases(L)
    spec = torch.fft.rfft(d, dim=-1, norm="ortho")
    torch.testing.assert_close(d @ fr, spec.real, rtol=0, atol=1e-12)
    torch.testing.assert_close(d @ fi, spec.imag, rtol=0, atol=1e-12)
    z = torch.randn(3, 4, L // 2 + 1, dtype=torch.complex128)
    want = torch.fft.irfft(z, n=L, dim=-1, norm="ortho")
    torch.testing.assert_close(z.real @ ir + z.imag @ ii, want, rtol=0, atol=1e-12)


def test_fourier_fusion_matches_complex_reference():
    cfg = tiny()
    fusion = FourierFusion(cfg).double()
    for p in fusion.parameters():
        torch.nn.init.normal_(p)
    d_v, d_t = torch.randn(2, 3, 4, 8, dtype=torch.float64).unbind(0)

    def cl(m, z):  # CL on a complex tensor, as docs/model.md §7 writes it
        re = m.real.weight @ z.real.unsqueeze(-1) - m.imag.weight @ z.imag.unsqueeze(-1)
        im = m.imag.weight @ z.real.unsqueeze(-1) + m.real.weight @ z.imag.unsqueeze(-1)
        return torch.complex(re.squeeze(-1) + m.real.bias - m.imag.bias, im.squeeze(-1) + m.imag.bias + m.real.bias)

    f_v, f_t = (torch.fft.rfft(d, dim=-1, norm="ortho") for d in (d_v, d_t))
    want = torch.fft.irfft(cl(fusion.learned, cl(fusion.adapt_v, f_v) * f_v + cl(fusion.adapt_t, f_t) * f_t),
                           n=8, dim=-1, norm="ortho")
    # the DFT bases are stored in fp32 (their fp64 exactness is tested above)
    torch.testing.assert_close(fusion(d_v, d_t), want, rtol=1e-5, atol=1e-5)
