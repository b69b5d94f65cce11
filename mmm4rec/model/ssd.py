"""State Space Duality (Mamba-2) scan: one contract, several equivalent forms.

    Δ = softplus(dt + dt_bias)                        (fp32)
    h_t = exp(Δ_t A) h_{t-1} + Δ_t x_t B_tᵀ           (per head; head h reads group h // (H/G))
    y_t = C_t h_t + skip,  skip = D·Δ·x ("reference", reproduces the paper) or D·x ("mamba")

Forms (docs/model.md §5):
- ``quadratic``  the dual/attention form Y = (Λ ∘ C Bᵀ)(Δ·x); cheapest for short windows (L ≲ 64).
- ``chunked``    Mamba-2's block decomposition: quadratic inside chunks, a recurrence over chunk states.
- ``recurrence`` the sequential definition above; the slow test oracle.
- ``triton``     mamba-ssm's fused kernel; CUDA tensors only, imported lazily.
Δ, A·Δ, every cumulative sum and the accumulation run in fp32 even under bf16 autocast (in fp64 for fp64
inputs, so the forms can be compared to ~1e-12).

Shapes: x (b, l, h, p); dt (b, l, h); A (h,) negative; B, C (b, l, g, n); D (h,); dt_bias (h,).
"""
from __future__ import annotations

import functools
from typing import Literal, Optional

import torch
import torch.nn.functional as F

from .precision import acc_dtype, as_dtype

Form = Literal["auto", "quadratic", "chunked", "recurrence", "triton"]
Skip = Literal["reference", "mamba"]

QUADRATIC_MAX_LEN = 64  # above this the chunked (CPU) or Triton (CUDA) form is cheaper; see docs/results/reference.md


def ssd_scan(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: Optional[torch.Tensor] = None,
    *,
    dt_bias: Optional[torch.Tensor] = None,
    form: Form = "auto",
    chunk_size: int = 32,
    skip: Skip = "reference",
) -> torch.Tensor:
    """Run the SSD scan in the requested form; returns y with x's shape and dtype."""
    _check_shapes(x, dt, A, B, C)
    if form == "auto":
        form = pick_form(x)
    if form == "triton":
        return _triton(x, dt, A, B, C, D, dt_bias, chunk_size, skip)
    acc = acc_dtype(x.dtype)
    delta, A = _softplus(dt, dt_bias, acc), as_dtype(A, acc)
    if form == "quadratic":
        y = _quadratic(x, delta, A, B, C)
    elif form == "chunked":
        y = _chunked(x, delta, A, B, C, chunk_size)
    elif form == "recurrence":
        y = _recurrence(x, delta, A, B, C)
    else:
        raise ValueError(f"unknown SSD form {form!r}")
    return as_dtype(as_dtype(y, acc) + _skip(x, delta, D, skip), x.dtype)


def pick_form(x: torch.Tensor) -> str:
    long = x.shape[1] > QUADRATIC_MAX_LEN
    if long and triton_usable(x.device):
        return "triton"
    return "chunked" if long else "quadratic"


def triton_usable(device: torch.device) -> bool:
    """Whether the "triton" form can run on ``device``: CUDA, with mamba-ssm importable."""
    return device.type == "cuda" and torch.cuda.is_available() and _mamba_ssm_importable()


@functools.cache
def _mamba_ssm_importable() -> bool:
    try:
        from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined  # noqa: F401
    except Exception:  # ImportError, or a CUDA extension that fails to load
        return False
    return True


# ------------------------------------------------------------------------------------------------------ helpers
def _check_shapes(x, dt, A, B, C) -> None:
    b, l, h, _ = x.shape
    g = B.shape[2]
    if dt.shape != (b, l, h) or A.shape != (h,) or B.shape[:3] != (b, l, g) or C.shape != B.shape:
        raise ValueError(
            f"SSD shapes disagree: x {tuple(x.shape)}, dt {tuple(dt.shape)}, A {tuple(A.shape)}, "
            f"B {tuple(B.shape)}, C {tuple(C.shape)}"
        )
    if h % g:
        raise ValueError(f"{h} heads cannot be split into {g} groups")


def _softplus(dt: torch.Tensor, dt_bias: Optional[torch.Tensor], acc: torch.dtype) -> torch.Tensor:
    """Δ = softplus(dt + dt_bias) in the accumulation dtype (at least fp32), autocast or not."""
    with torch.autocast(dt.device.type, enabled=False):
        dt = as_dtype(dt, acc)
        return F.softplus(dt if dt_bias is None else dt + as_dtype(dt_bias, acc))


def _skip(x, delta, D, skip: Skip):
    if D is None:
        return 0.0
    d = as_dtype(D, delta.dtype)[:, None]
    return d * x * delta[..., None] if skip == "reference" else d * x


def segsum(a: torch.Tensor) -> torch.Tensor:
    """Stable segment sums over the last dim: out[..., i, j] = a[..., j+1] + … + a[..., i] for j ≤ i, else -inf.

    Built by masking then cumsum (never a difference of two long cumulative sums, which loses precision).
    """
    T = a.shape[-1]
    a = a[..., None].expand(*a.shape, T)  # [..., i, j] = a_i
    strict = torch.ones(T, T, dtype=torch.bool, device=a.device).tril(-1)
    out = a.masked_fill(~strict, 0).cumsum(dim=-2)
    return out.masked_fill(~strict.logical_or(torch.eye(T, dtype=torch.bool, device=a.device)), float("-inf"))


# ------------------------------------------------------------------------------------------------------- forms
def _quadratic(x, delta, A, B, C):
    b, l, h, p = x.shape
    g = B.shape[2]
    with torch.autocast(x.device.type, enabled=False):
        decay = torch.exp(segsum((delta * A).transpose(1, 2)))  # (b, h, l, s), fp32 or fp64
    xbar = x * delta[..., None].to(x.dtype)  # Δ·x
    cb = torch.einsum("blgn,bsgn->bgls", C, B)  # one C·Bᵀ per group, shared by its heads
    scores = cb[:, :, None] * decay.view(b, g, h // g, l, l).to(cb.dtype)  # (b, g, h/g, l, s)
    y = torch.einsum("bgkls,bsgkp->blgkp", scores, xbar.view(b, l, g, h // g, p))
    return y.reshape(b, l, h, p)


def _chunked(x, delta, A, B, C, chunk_size: int):
    b, l, h, p = x.shape
    g = B.shape[2]
    pad = (-l) % chunk_size
    if pad:  # Δ = 0 on padding: no decay, no input, outputs sliced off
        x, delta, B, C = (F.pad(t, (0, 0) * (t.dim() - 2) + (0, pad)) for t in (x, delta, B, C))
    c, q = (l + pad) // chunk_size, chunk_size
    xbar = (x * delta[..., None].to(x.dtype)).view(b, c, q, g, h // g, p)
    B = B.view(b, c, q, g, -1)
    C = C.view(b, c, q, g, -1)
    with torch.autocast(x.device.type, enabled=False):
        a = (delta * A).view(b, c, q, h).permute(0, 3, 1, 2)  # (b, h, c, q), fp32 or fp64
        a_cum = a.cumsum(-1)
        decay_in = torch.exp(segsum(a))  # within a chunk (b, h, c, q, q)
        decay_to_end = torch.exp(a_cum[..., -1:] - a_cum)  # from position to chunk end (b, h, c, q)
        decay_from_start = torch.exp(a_cum)  # from chunk start to position
        decay_chunks = torch.exp(segsum(F.pad(a_cum[..., -1], (1, 0))))  # between chunks (b, h, c+1, c+1)

    def per_head(t):  # (b, h, …) -> (b, g, h/g, …)
        return t.reshape(b, g, h // g, *t.shape[2:])

    # 1. intra-chunk outputs (the quadratic form on each diagonal block)
    cb = torch.einsum("bcign,bcjgn->bgcij", C, B)
    y_diag = torch.einsum("bgcij,bgkcij,bcjgkp->bcigkp", cb, per_head(decay_in).to(cb.dtype), xbar)
    # 2. state of every chunk from its own inputs
    states = torch.einsum("bcjgn,bgkcj,bcjgkp->bcgkpn", B, per_head(decay_to_end).to(B.dtype), xbar)
    # 3. pass states across chunks (a recurrence over c, written as one decay matrix)
    states = torch.cat([torch.zeros_like(states[:, :1]), states], dim=1).to(delta.dtype)
    states = torch.einsum("bgkzc,bcgkpn->bzgkpn", per_head(decay_chunks), states)[:, :-1]
    # 4. outputs from the state entering each chunk
    y_off = torch.einsum("bcign,bcgkpn,bgkci->bcigkp", C.to(states.dtype), states, per_head(decay_from_start))
    y = (y_diag.to(y_off.dtype) + y_off).reshape(b, c * q, h, p)
    return y[:, :l]


def _recurrence(x, delta, A, B, C):
    b, l, h, p = x.shape
    g = B.shape[2]
    x, B, C = x.to(delta.dtype), B.to(delta.dtype), C.to(delta.dtype)
    k = h // g
    state = x.new_zeros(b, g, k, p, B.shape[-1])
    ys = []
    for t in range(l):
        dA = torch.exp(delta[:, t] * A).view(b, g, k, 1, 1)
        dBx = torch.einsum("bgkp,bgn->bgkpn", (x[:, t] * delta[:, t, :, None]).view(b, g, k, p), B[:, t])
        state = dA * state + dBx
        ys.append(torch.einsum("bgkpn,bgn->bgkp", state, C[:, t]).reshape(b, h, p))
    return torch.stack(ys, dim=1)


def _triton(x, dt, A, B, C, D, dt_bias, chunk_size, skip):
    if not triton_usable(x.device):
        raise RuntimeError("SSD form 'triton' needs CUDA tensors and an importable mamba-ssm")
    from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined

    y = mamba_chunk_scan_combined(
        x, dt, A.float(), B, C, chunk_size=max(chunk_size, 16),
        D=D if skip == "mamba" else None, dt_bias=dt_bias, dt_softplus=True,
    )
    if skip == "reference" and D is not None:
        y = y + _skip(x, _softplus(dt, dt_bias, torch.float32), D, skip).to(y.dtype)
    return y
