"""Building blocks of MMM4Rec (docs/model.md §4, §7, §8): TiSSD, Cross-SSD, the Fourier filter, FFN, gated RMSNorm.

Sequence tensors are (batch, L, channels); time signals are (batch, heads, L) as in the paper.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import ModelConfig
from .precision import acc_dtype, as_dtype
from .ssd import ssd_scan


# Parameters that act only on the time signal: MMM4Rec's time paths, their gates and norms, the Fourier filters.
TIME_PATH_PARTS = ("time_path.", "gate.", "fourier.", "time_norm.")


def is_time_path(name: str) -> bool:
    return any(part in name for part in TIME_PATH_PARTS)


def gpu_kernels(kernels: str, x: torch.Tensor) -> bool:
    """model.kernels: whether a layer runs its fewest-kernels implementation (CUDA's choice: one launch per op
    matters there) or its fastest-on-CPU one (many cheap in-place ops, no activation-sized temporaries)."""
    return kernels == "gpu" or (kernels == "auto" and x.device.type != "cpu")


class Dropout(nn.Dropout):
    """nn.Dropout; on the CPU path the mask comes from torch.rand_like, which is faster there (forward + backward)
    than the bernoulli_ kernel F.dropout uses (the model calls dropout ~20 times per step); on the GPU path it is
    F.dropout's one fused kernel. Both paths are tested to drop the same share."""

    def __init__(self, p: float, kernels: str = "auto"):
        super().__init__(p)
        self.kernels = kernels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        if gpu_kernels(self.kernels, x):
            return F.dropout(x, self.p, training=True)
        keep = torch.rand_like(x).ge_(self.p).mul_(1.0 / (1.0 - self.p))  # the mask, scaled, in x's dtype
        return x * keep


class CausalConv1d(nn.Conv1d):
    """Depthwise causal convolution over the L axis of (b, L, c) inputs; nn.Conv1d's parameters and init.

    GPU path: one grouped F.conv1d (a single kernel forward and backward). CPU path: K shifted multiply-adds
    accumulated in place (_CausalConv): faster forward + backward on CPU than a grouped convolution or an
    autograd-recorded pad/shift/sum, which allocate several activation-sized temporaries — at the price of more
    dispatched ops, which only a launch-bound device would notice (docs/results/step_ops.json counts them).
    """

    def __init__(self, channels: int, kernel_size: int, kernels: str = "auto"):
        super().__init__(channels, channels, kernel_size, groups=channels, padding=kernel_size - 1)
        self.kernels = kernels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if gpu_kernels(self.kernels, x):
            L = x.shape[1]
            return F.conv1d(x.transpose(1, 2), self.weight, self.bias, padding=self.padding,
                            groups=self.groups)[..., :L].transpose(1, 2)
        return _CausalConv.apply(x, self.weight[:, 0, :], self.bias)


class _CausalConv(torch.autograd.Function):
    """y[t] = b + Σ_j w[K-1-j] · x[t-j]  (x: (b, L, c); w: (c, K); tap K-1 multiplies the current step)."""

    @staticmethod
    def forward(ctx, x, w, bias):
        K, L = w.shape[1], x.shape[1]
        wx = as_dtype(w, x.dtype)
        y = torch.addcmul(as_dtype(bias, x.dtype), x, wx[:, K - 1])
        for j in range(1, min(K, L)):
            y[:, j:].addcmul_(x[:, :-j], wx[:, K - 1 - j])
        ctx.save_for_backward(x, w)
        return y

    @staticmethod
    def backward(ctx, grad):
        x, w = ctx.saved_tensors
        K, L = w.shape[1], x.shape[1]
        wx = as_dtype(w, grad.dtype)
        grad_x = grad * wx[:, K - 1]
        acc = acc_dtype(grad.dtype)
        grad_w = torch.zeros(w.shape, dtype=acc, device=w.device)
        grad_w[:, K - 1] = _channel_dot(grad, x)
        for j in range(1, min(K, L)):
            grad_x[:, :-j].addcmul_(grad[:, j:], wx[:, K - 1 - j])
            grad_w[:, K - 1 - j] = _channel_dot(grad[:, j:], x[:, :-j])
        return grad_x, as_dtype(grad_w, w.dtype), as_dtype(grad.sum((0, 1), dtype=acc), w.dtype)


def _channel_dot(a: torch.Tensor, b: torch.Tensor, block: int = 1 << 20) -> torch.Tensor:
    """Σ over (batch, L) of a·b per channel, in ≥ fp32, ~``block`` elements at a time: no activation-sized
    temporary for wide layers, a single pass for narrow ones."""
    acc = acc_dtype(a.dtype)
    total = torch.zeros(a.shape[-1], dtype=acc, device=a.device)
    rows = max(1, block // max(1, a[0].numel()))
    for i in range(0, a.shape[0], rows):
        total += (a[i : i + rows] * b[i : i + rows]).sum((0, 1), dtype=acc)
    return total


class GatedRMSNorm(nn.Module):
    """RMSNorm_E(y ⊙ SiLU(z)) ⊙ w over all E features (one group), computed in fp32 (fp64 for fp64 inputs);
    torch's rms_norm is one fused op where the written-out formula is six."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        acc = acc_dtype(z.dtype)
        y = as_dtype(y, acc) * F.silu(as_dtype(z, acc))
        return as_dtype(F.rms_norm(y, y.shape[-1:], as_dtype(self.weight, acc), self.eps), z.dtype)





class FeedForward(nn.Module):
    """LayerNorm(Dropout(W2 Dropout(Hardswish(W1 h))) + h), N -> N -> N."""

    def __init__(self, d: int, dropout: float, eps: float, kernels: str = "auto"):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(d, d), nn.Linear(d, d)
        self.dropout = Dropout(dropout, kernels)
        self.norm = nn.LayerNorm(d, eps=eps)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        out = self.fc2(self.dropout(F.hardswish(self.fc1(h))))
        return self.norm(self.dropout(out) + h)


class TimePath(nn.Module):
    """Globally-aware time modulation (§4.3): τ̃ = SiLU(conv(SiLU(conv(D ⊙ Tanhshrink(W2 SiLU(W1 D)))))).

    W1, W2 mix all L positions; the two depthwise convolutions run causally over L with one channel per head.
    Input (b, h, L); returns τ̃ as (b, L, h), the layout of dt.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        L, H = cfg.max_len, cfg.n_heads
        self.mix = nn.Sequential(
            Dropout(cfg.dropout, cfg.kernels), nn.Linear(L, L), nn.SiLU(), nn.Linear(L, L), nn.Tanhshrink()
        )
        self.conv1 = CausalConv1d(H, cfg.d_conv, cfg.kernels)
        self.conv2 = CausalConv1d(H, cfg.d_conv, cfg.kernels)

    def forward(self, d: torch.Tensor) -> torch.Tensor:
        tau = (d * self.mix(d)).transpose(1, 2)
        return F.silu(self.conv2(F.silu(self.conv1(tau))))


class SSDMixer(nn.Module):
    """What TiSSD and Cross-SSD share: A, Δ bias, skip D, the time path, the gated norm and the output projection."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        H, E = cfg.n_heads, cfg.d_inner
        dt = torch.exp(torch.rand(H) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3)).clamp(min=1e-4)
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))  # softplus⁻¹(dt)
        self.A_log = nn.Parameter(torch.log(torch.empty(H).uniform_(1, 16)))
        self.D = nn.Parameter(torch.ones(H))
        self.time_path = TimePath(cfg) if cfg.time else None
        self.norm = GatedRMSNorm(E, cfg.norm_eps)
        self.out_proj = nn.Linear(E, cfg.d_model)

    def mix(self, x, dt, B, C, z, time):
        """x (b,L,E), dt (b,L,H), B/C (b,L,G·S), z (b,L,E), time (b,H,L) or None -> (out (b,L,N), τ̃ or None)."""
        cfg = self.cfg
        b, L, _ = x.shape
        tau = None
        if self.time_path is not None:
            tau = self.time_path(time)
            dt = dt * tau
        y = ssd_scan(
            x.view(b, L, cfg.n_heads, cfg.head_dim),
            dt,
            -torch.exp(as_dtype(self.A_log, acc_dtype(self.A_log.dtype))),
            B.view(b, L, cfg.n_groups, cfg.d_state),
            C.view(b, L, cfg.n_groups, cfg.d_state),
            self.D,
            dt_bias=self.dt_bias,
            form=cfg.ssd.form,
            chunk_size=cfg.ssd.chunk_size,
            skip=cfg.ssd.skip,
        )
        return self.out_proj(self.norm(y.reshape(b, L, -1), z)), tau


class TiSSD(SSDMixer):
    """Time-aware SSD block (§4): u -> (out, D'), where D' = LayerNorm_L(g ⊙ D + (1 − g) ⊙ τ̃)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        E, GS, H, L = cfg.d_inner, cfg.n_groups * cfg.d_state, cfg.n_heads, cfg.max_len
        self.split = (E, E + 2 * GS, H)  # z | xBC | dt
        self.in_proj = nn.Linear(cfg.d_model, sum(self.split))
        self.conv = CausalConv1d(E + 2 * GS, cfg.d_conv, cfg.kernels)
        if cfg.time:
            self.gate = nn.Sequential(Dropout(cfg.dropout, cfg.kernels), nn.Linear(L, 1), nn.Sigmoid())
            self.time_norm = nn.LayerNorm(L, eps=cfg.norm_eps)

    def forward(self, u: torch.Tensor, time: torch.Tensor | None):
        E, GS = self.cfg.d_inner, self.cfg.n_groups * self.cfg.d_state
        z, xbc, dt = self.in_proj(u).split(self.split, dim=-1)
        x, B, C = F.silu(self.conv(xbc)).split((E, GS, GS), dim=-1)
        out, tau = self.mix(x, dt, B, C, z, time)
        if tau is None:
            return out, None
        g = self.gate(time)
        return out, self.time_norm(g * time + (1 - g) * tau.transpose(1, 2))


class CrossSSD(SSDMixer):
    """Cross-SSD (§8): the image stream queries (C) a state written (x, B, Δ) by the text stream."""

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        E, GS, H, N = cfg.d_inner, cfg.n_groups * cfg.d_state, cfg.n_heads, cfg.d_model
        self.split = (E + GS, H)  # xB | dt
        self.u_proj = nn.Linear(N, E + GS + H)
        self.z_proj = nn.Linear(N, E)
        self.q_proj = nn.Linear(N, GS)
        self.conv_xb = CausalConv1d(E + GS, cfg.d_conv, cfg.kernels)
        self.conv_c = CausalConv1d(GS, cfg.d_conv, cfg.kernels)

    def forward(self, h_v: torch.Tensor, p_t: torch.Tensor, time: torch.Tensor | None) -> torch.Tensor:
        xb, dt = self.u_proj(p_t).split(self.split, dim=-1)
        x, B = F.silu(self.conv_xb(xb)).split((self.cfg.d_inner, self.cfg.n_groups * self.cfg.d_state), dim=-1)
        C = F.silu(self.conv_c(self.q_proj(h_v)))
        return self.mix(x, dt, B, C, self.z_proj(h_v + p_t), time)[0]


# --------------------------------------------------------------------------------------- dual-channel Fourier filter
def dft_bases(L: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Real matrices for rfft / irfft(n=L) with norm="ortho", so the filter runs in plain real matmuls
    (bf16 autocast and torch.compile apply; torch.fft's complex tensors would block both)."""
    n = torch.arange(L, dtype=torch.float64)
    k = torch.arange(L // 2 + 1, dtype=torch.float64)
    angle = 2 * math.pi * n[:, None] * k[None, :] / L  # (L, F)
    scale = 1 / math.sqrt(L)
    fwd_re, fwd_im = torch.cos(angle) * scale, -torch.sin(angle) * scale
    weight = torch.full((L // 2 + 1,), 2.0, dtype=torch.float64)
    weight[0] = 1.0
    if L % 2 == 0:
        weight[-1] = 1.0  # the Nyquist bin appears once
    inv_re = (torch.cos(angle) * weight * scale).t()  # (F, L); imaginary parts of DC/Nyquist drop out (sin = 0)
    inv_im = (-torch.sin(angle) * weight * scale).t()
    return fwd_re, fwd_im, inv_re, inv_im


class ComplexLinear(nn.Module):
    """CL(x) = (W_r Re x + b_r − W_i Im x − b_i) + j(W_i Re x + b_i + W_r Im x + b_r) over frequency bins."""

    def __init__(self, bins: int):
        super().__init__()
        self.real, self.imag = nn.Linear(bins, bins), nn.Linear(bins, bins)

    def forward(self, re: torch.Tensor, im: torch.Tensor):
        return self.real(re) - self.imag(im), self.imag(re) + self.real(im)


class FourierFusion(nn.Module):
    """D_co = irfft(CL_c(CL_a(F_v) ⊙ F_v + CL_b(F_t) ⊙ F_t)), F_m = rfft(D_m') over time (§7)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        bins = cfg.max_len // 2 + 1
        for name, t in zip(("fwd_re", "fwd_im", "inv_re", "inv_im"), dft_bases(cfg.max_len)):
            self.register_buffer(name, t.float(), persistent=False)
        self.adapt_v = ComplexLinear(bins) if cfg.adaptive_filter else None
        self.adapt_t = ComplexLinear(bins) if cfg.adaptive_filter else None
        self.learned = ComplexLinear(bins) if cfg.learnable_filter else None

    def forward(self, d_v: torch.Tensor, d_t: torch.Tensor) -> torch.Tensor:
        re_v, im_v = self._adapt(d_v, self.adapt_v)
        re_t, im_t = self._adapt(d_t, self.adapt_t)
        re, im = re_v + re_t, im_v + im_t
        if self.learned is not None:
            re, im = self.learned(re, im)
        return re @ as_dtype(self.inv_re, re.dtype) + im @ as_dtype(self.inv_im, im.dtype)

    def _adapt(self, d, cl):
        re, im = d @ as_dtype(self.fwd_re, d.dtype), d @ as_dtype(self.fwd_im, d.dtype)
        if cl is None:
            return re, im
        w_re, w_im = cl(re, im)
        return w_re * re - w_im * im, w_re * im + w_im * re  # complex product CL(F) ⊙ F
