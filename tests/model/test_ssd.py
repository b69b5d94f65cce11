"""The SSD forms agree with each other and with the sequential definition, in outputs and gradients."""
import pytest
import torch

from mmm4rec.model.ssd import segsum, ssd_scan, triton_usable

FORMS = ["quadratic", "chunked", "recurrence"]


def make_inputs(b=2, l=13, h=4, p=8, g=2, n=16, dtype=torch.float64, seed=0, device="cpu"):
    gen = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=gen, dtype=dtype)  # noqa: E731
    x, dt = r(b, l, h, p), r(b, l, h) - 1.0
    A = -torch.exp(torch.rand(h, generator=gen, dtype=torch.float32) * 2.7)  # A in [-15, -1]
    B, C, D = r(b, l, g, n), r(b, l, g, n), r(h).float()
    dt_bias = torch.rand(h, generator=gen, dtype=torch.float32) - 2.0
    return [t.to(device) for t in (x, dt, A, B, C, D, dt_bias)]


def run(form, x, dt, A, B, C, D, dt_bias, **kw):
    return ssd_scan(x, dt, A, B, C, D, dt_bias=dt_bias, form=form, **kw)


def test_segsum_is_stable_and_matches_definition():
    a = torch.randn(3, 7, dtype=torch.float64)
    out = segsum(a)
    for i in range(7):
        for j in range(7):
            want = a[:, j + 1 : i + 1].sum(-1) if j <= i else torch.full((3,), float("-inf"), dtype=a.dtype)
            torch.testing.assert_close(out[:, i, j], want, rtol=0, atol=1e-12)
    # large magnitudes: exp(segsum) must stay exact where a difference of cumsums would not
    big = torch.full((1, 64), -1e4, dtype=torch.float32)
    big[0, -1] = -1e-3
    assert torch.exp(segsum(big))[0, -1, -2].item() == pytest.approx(torch.exp(torch.tensor(-1e-3)).item())


@pytest.mark.parametrize("shape", [dict(l=13, h=4, g=2), dict(l=20, h=8, g=8), dict(l=33, h=6, g=1), dict(l=1)])
@pytest.mark.parametrize("skip", ["reference", "mamba"])
def test_forms_agree_float64_outputs_and_gradients(shape, skip):
    inputs = make_inputs(**shape)
    outs, grads = {}, {}
    for form in FORMS:
        leaves = [t.clone().requires_grad_(t.is_floating_point()) for t in inputs]
        y = run(form, *leaves, chunk_size=8, skip=skip)  # 8 does not divide 13/20/33: exercises padding
        (y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)).sum().backward()
        outs[form], grads[form] = y, [t.grad for t in leaves]
    for form in ("quadratic", "chunked"):
        torch.testing.assert_close(outs[form], outs["recurrence"], rtol=1e-10, atol=1e-10)
        for g, want in zip(grads[form], grads["recurrence"]):
            torch.testing.assert_close(g, want, rtol=1e-10, atol=1e-9)


def test_forms_agree_float32():
    inputs = make_inputs(b=3, l=40, h=8, p=16, g=4, n=32, dtype=torch.float32)
    ref = run("recurrence", *[t.double() for t in inputs]).float()
    for form in ("quadratic", "chunked"):
        y = run(form, *inputs, chunk_size=16)
        assert y.dtype == torch.float32
        err = (y - ref).norm() / ref.norm()
        assert err < 1e-5, (form, err)


def test_skip_conventions_differ_by_delta():
    x, dt, A, B, C, D, dt_bias = make_inputs()
    ref = run("quadratic", x, dt, A, B, C, D, dt_bias, skip="reference")
    mamba = run("quadratic", x, dt, A, B, C, D, dt_bias, skip="mamba")
    delta = torch.nn.functional.softplus(dt + dt_bias)
    torch.testing.assert_close(ref - mamba, (D[:, None] * x * (delta[..., None] - 1)), rtol=1e-10, atol=1e-10)


def test_bf16_autocast_keeps_decay_in_fp32():
    x, dt, A, B, C, D, dt_bias = make_inputs(b=4, l=20, h=8, p=16, g=8, n=16, dtype=torch.float32)
    ref = run("recurrence", *[t.double() for t in (x, dt, A, B, C, D, dt_bias)])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        for form in ("quadratic", "chunked"):
            y = run(form, x.bfloat16(), dt.bfloat16(), A, B.bfloat16(), C.bfloat16(), D, dt_bias, chunk_size=8)
            assert torch.isfinite(y).all()
            err = ((y.double() - ref).norm() / ref.norm()).item()
            assert err < 3e-2, (form, err)
    # Δ stays fp32 under autocast: a bias below bf16's resolution at 4.0 (0.03) still moves it
    from mmm4rec.model.ssd import _softplus
    with torch.autocast("cpu", dtype=torch.bfloat16):
        delta = _softplus(torch.tensor([4.0], dtype=torch.bfloat16), torch.tensor([1e-3]), torch.float32)
    assert delta.dtype == torch.float32
    assert delta.item() == torch.nn.functional.softplus(torch.tensor([4.0]) + 1e-3).item()


def test_auto_picks_quadratic_for_short_and_chunked_for_long_windows_on_cpu():
    from mmm4rec.model.ssd import pick_form

    assert pick_form(torch.zeros(1, 20, 1, 1)) == "quadratic"
    assert pick_form(torch.zeros(1, 200, 1, 1)) == "chunked"


def test_bad_shapes_are_named():
    x, dt, A, B, C, D, dt_bias = make_inputs(h=4, g=3)
    with pytest.raises(ValueError, match="4 heads cannot be split into 3 groups"):
        run("quadratic", x, dt, A, B, C, D, dt_bias)
    with pytest.raises(ValueError, match="SSD shapes disagree"):
        run("quadratic", x, dt[:, :-1], A, B, C, D, dt_bias)


def test_triton_without_cuda_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    with pytest.raises(RuntimeError, match="needs CUDA"):
        run("triton", *make_inputs(dtype=torch.float32))


@pytest.mark.gpu
@pytest.mark.skipif(not triton_usable(torch.device("cuda")), reason="needs CUDA and mamba-ssm")
# one length per skip convention: every new dtype / D-or-not combination costs a minute of Triton autotuning
@pytest.mark.parametrize("l, skip", [(200, "reference"), (20, "mamba")])
def test_triton_matches_quadratic_on_gpu_in_outputs_and_gradients(l, skip):
    inputs = make_inputs(b=4, l=l, h=8, p=64, g=8, n=64, dtype=torch.float32, device="cuda")
    results = {}
    for form, dtype in (("quadratic", torch.float64), ("triton", torch.float32), ("triton", torch.bfloat16)):
        # bf16 runs cast the activations (x, dt, B, C); the per-head parameters (A, D, dt_bias) stay fp32
        leaves = [(t.to(dtype) if t.dim() > 1 or dtype == torch.float64 else t).detach().requires_grad_()
                  for t in inputs]
        y = run(form, *leaves, skip=skip)  # the default chunk size, as the model runs it
        (y.double() * torch.linspace(-1, 1, y.numel(), device="cuda", dtype=torch.float64).view_as(y)).sum().backward()
        results[form, dtype] = y.double(), [t.grad.double() for t in leaves]
    ref_y, ref_grads = results["quadratic", torch.float64]

    def rel(a, b):
        return ((a - b).norm() / b.norm()).item()

    # TF32 inside the kernel: ~3e-4 relative against float64; bf16 inputs ~3e-3 (docs/results/reference.md)
    for dtype, tol in ((torch.float32, 2e-3), (torch.bfloat16, 2e-2)):
        y, grads = results["triton", dtype]
        assert torch.isfinite(y).all()
        assert rel(y, ref_y) < tol, (dtype, rel(y, ref_y))
        for name, g, want in zip("x dt A B C D dt_bias".split(), grads, ref_grads):
            assert rel(g, want) < 5 * tol, (dtype, name, rel(g, want))
