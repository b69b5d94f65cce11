"""A benchmark baseline: MMM4Rec's math computed the way the public reference implementation computes it.

Not used for training — it exists so throughput claims are ratios against a baseline run side by side, on the same
machine, in the same process. Written from docs/model.md, following the reference's computation pattern (docs/results/reference.md: its
measured 165–177 samples/s at batch 256 on the 2-core test machine is the check that this baseline is
representative):
- adapters applied per sequence position (f[seq] @ W) and again to all items for the full softmax;
- two separate score matmuls (text, image), stacked and summed; cross-entropy over all I+1 ids (padding included);
- nn.Conv1d with padding K-1 and a slice for every causal convolution (Hardswish in the Cross-SSD, the reference's
  CPU fallback), torch.fft with complex tensors for the Fourier filter, nn.Dropout, einsum dual-form SSD;
- fp32, eager, one TiSSD pass per stream.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from mmm4rec.config import ModelConfig
from mmm4rec.model.ssd import segsum


def _conv(channels: int, k: int) -> nn.Conv1d:
    return nn.Conv1d(channels, channels, k, groups=channels, padding=k - 1)


def _causal(conv: nn.Conv1d, x: torch.Tensor) -> torch.Tensor:  # x (b, L, c)
    return conv(x.transpose(1, 2))[..., : x.shape[1]].transpose(1, 2)


def _dual_ssd(x, dt, A, B, C, D, dt_bias):
    dt = F.softplus(dt + dt_bias)
    x = x * dt[..., None]
    decay = torch.exp(segsum((A * dt).transpose(1, 2)))
    scores = torch.einsum("blhn,bshn->bhls", C, B) * decay
    return torch.einsum("bhls,bshp->blhp", scores, x) + x * D[:, None]


class _SSDBase(nn.Module):
    def __init__(self, c: ModelConfig):
        super().__init__()
        H, L = c.n_heads, c.max_len
        dt = torch.exp(torch.rand(H) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3)).clamp(min=1e-4)
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))
        self.A_log = nn.Parameter(torch.log(torch.empty(H).uniform_(1, 16)))
        self.D = nn.Parameter(torch.ones(H))
        self.mix = nn.Sequential(nn.Dropout(c.dropout), nn.Linear(L, L), nn.SiLU(), nn.Linear(L, L), nn.Tanhshrink())
        self.tconv1, self.tconv2 = _conv(H, c.d_conv), _conv(H, c.d_conv)
        self.norm_w = nn.Parameter(torch.ones(c.d_inner))
        self.out_proj = nn.Linear(c.d_inner, c.d_model)
        self.c = c

    def scan(self, x, dt, B, C, z, time):
        c, b, L = self.c, x.shape[0], x.shape[1]
        tau = time * self.mix(time)
        tau = F.silu(self.tconv1(tau)[..., :L])
        tau = F.silu(self.tconv2(tau)[..., :L]).transpose(1, 2)
        y = _dual_ssd(x.view(b, L, c.n_heads, c.head_dim), dt * tau, -torch.exp(self.A_log), B.view(b, L, c.n_groups, -1),
                      C.view(b, L, c.n_groups, -1), self.D, self.dt_bias).reshape(b, L, -1)
        y = y * F.silu(z)
        y = y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + c.norm_eps) * self.norm_w
        return self.out_proj(y), tau


class _TiSSD(_SSDBase):
    def __init__(self, c):
        super().__init__(c)
        E, GS, H, L = c.d_inner, c.n_groups * c.d_state, c.n_heads, c.max_len
        self.in_proj = nn.Linear(c.d_model, 2 * E + 2 * GS + H)
        self.conv = _conv(E + 2 * GS, c.d_conv)
        self.gate = nn.Sequential(nn.Dropout(c.dropout), nn.Linear(L, 1), nn.Sigmoid())
        self.time_norm = nn.LayerNorm(L, eps=c.norm_eps)

    def forward(self, u, time):
        c = self.c
        E, GS = c.d_inner, c.n_groups * c.d_state
        z, xbc, dt = torch.split(self.in_proj(u), [E, E + 2 * GS, c.n_heads], dim=-1)
        x, B, C = torch.split(F.silu(_causal(self.conv, xbc)), [E, GS, GS], dim=-1)
        out, tau = self.scan(x, dt, B, C, z, time)
        g = self.gate(time)
        return out, self.time_norm(g * time + (1 - g) * tau.transpose(1, 2))


class _CoTiSSD(_SSDBase):
    def __init__(self, c):
        super().__init__(c)
        E, GS, H = c.d_inner, c.n_groups * c.d_state, c.n_heads
        self.u_proj, self.z_proj, self.q_proj = nn.Linear(c.d_model, E + GS + H), nn.Linear(c.d_model, E), nn.Linear(c.d_model, GS)
        self.u_conv, self.q_conv = _conv(E + GS, c.d_conv), _conv(GS, c.d_conv)

    def forward(self, q, u, time):
        c = self.c
        xb, dt = torch.split(self.u_proj(u), [c.d_inner + c.n_groups * c.d_state, c.n_heads], dim=-1)
        x, B = torch.split(F.hardswish(_causal(self.u_conv, xb)), [c.d_inner, c.n_groups * c.d_state], dim=-1)
        C = F.hardswish(_causal(self.q_conv, self.q_proj(q)))
        return self.scan(x, dt, B, C, self.z_proj(q + u), time)[0]


class _ComplexLinear(nn.Module):
    def __init__(self, n):
        super().__init__()
        self.real, self.imag = nn.Linear(n, n), nn.Linear(n, n)

    def forward(self, x):
        return torch.complex(self.real(x.real) - self.imag(x.imag), self.imag(x.real) + self.real(x.imag))


class _FFN(nn.Module):
    def __init__(self, d, p, eps):
        super().__init__()
        self.fc1, self.fc2, self.drop, self.norm = nn.Linear(d, d), nn.Linear(d, d), nn.Dropout(p), nn.LayerNorm(d, eps=eps)

    def forward(self, h):
        return self.norm(self.drop(self.fc2(self.drop(F.hardswish(self.fc1(h))))) + h)


class ReferenceStyleMMM4Rec(nn.Module):
    """forward(items, timestamps, lengths, targets) -> full-softmax CE, as the reference trains; user() and logits()
    are its full_sort_predict."""

    def __init__(self, c: ModelConfig, text: torch.Tensor, image: torch.Tensor):
        super().__init__()
        N, I, L, eps = c.d_model, text.shape[0] - 1, c.max_len, c.norm_eps
        self.c = c
        self.register_buffer("text", text)
        self.register_buffer("image", image)
        self.text_adapter, self.image_adapter = nn.Linear(text.shape[1], N), nn.Linear(image.shape[1], N)
        self.text_bias, self.image_bias = nn.Parameter(torch.zeros(I + 1, N)), nn.Parameter(torch.zeros(I + 1, N))
        self.text_norm, self.image_norm, self.time_norm = nn.LayerNorm(N, eps=eps), nn.LayerNorm(N, eps=eps), nn.LayerNorm(L, eps=eps)
        self.drop = nn.Dropout(c.dropout)
        self.tissd, self.cross = _TiSSD(c), _CoTiSSD(c)
        self.norm_t, self.norm_v, self.norm_co = (nn.LayerNorm(N, eps=eps) for _ in range(3))
        self.ffn_t, self.ffn_co = _FFN(N, c.dropout, eps), _FFN(N, c.dropout, eps)
        bins = L // 2 + 1
        self.cl_v, self.cl_t, self.cl_co = _ComplexLinear(bins), _ComplexLinear(bins), _ComplexLinear(bins)

    def _time(self, ts):
        d = torch.cat([torch.zeros_like(ts[:, :1]), ts[:, 1:] - ts[:, :-1]], dim=1).float()
        return self.time_norm(self.drop(d))[:, None, :].repeat(1, self.c.n_heads, 1)

    def forward(self, items, ts, lengths, targets):
        return F.cross_entropy(self.logits(self.user(items, ts, lengths)), targets)

    def user(self, items, ts, lengths):
        x_v = self.image_norm(self.drop(self.image_adapter(self.image[items]) + self.image_bias[items]))
        x_t = self.text_norm(self.drop(self.text_adapter(self.text[items]) + self.text_bias[items]))
        d_v, d_t = self._time(ts), self._time(ts)
        h, d_t = self.tissd(x_t, d_t)
        p_t = self.ffn_t(self.norm_t(self.drop(h) + x_t))
        h, d_v = self.tissd(x_v, d_v)
        h_v = self.norm_v(self.drop(h) + x_v)
        f_v, f_t = torch.fft.rfft(d_v, dim=2, norm="ortho"), torch.fft.rfft(d_t, dim=2, norm="ortho")
        d_co = torch.fft.irfft(self.cl_co(self.cl_v(f_v) * f_v + self.cl_t(f_t) * f_t), n=self.c.max_len, dim=2, norm="ortho")
        out = self.cross(h_v, p_t, d_co)
        x_v = self.ffn_co(self.norm_co(self.drop(out) + h_v + p_t))
        return x_v[torch.arange(len(x_v)), lengths - 1]

    def logits(self, user):
        e_v = F.normalize(self.image_adapter(self.image) + self.image_bias, dim=1)
        e_t = F.normalize(self.text_adapter(self.text) + self.text_bias, dim=1)
        logits = torch.stack([torch.einsum("bh,nh->bn", user, e_t), torch.einsum("bh,nh->bn", user, e_v)], -1).sum(-1)
        return logits / self.c.temperature
