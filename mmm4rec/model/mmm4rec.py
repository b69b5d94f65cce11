"""MMM4Rec (arXiv 2506.02916), as specified in docs/model.md.

    items ──adapters (+ID bias)──▶ X_t, X_v        timestamps ──gaps, LayerNorm_L──▶ D_t, D_v
    per layer:  P_t = FFN(LN(TiSSD(X_t, D_t) + X_t))          (text)
                h_v = LN(TiSSD(X_v, D_v) + X_v)              (image; the SAME TiSSD when shared)
                D_co = Fourier filter(D_v', D_t')
                X_v = FFN(LN(CrossSSD(h_v ← P_t, D_co) + h_v + P_t))
    user = X_v[length-1];  score(u, i) = ⟨u, ê_t(i) + ê_v(i)⟩ / τ,  ê = normalise(adapted item)
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import ModelConfig
from .items import FrozenTable, ItemFeatures, adapt
from .layers import CrossSSD, Dropout, FeedForward, FourierFusion, TiSSD, is_time_path
from .recommender import Batch, ItemTables, SequentialRecommender, init_weights


class MMM4RecLayer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        eps = cfg.norm_eps
        self.tissd = TiSSD(cfg)
        self.tissd_image = None if cfg.shared else TiSSD(cfg)  # "w/o Shared" ablation
        self.norm_text, self.norm_image, self.norm_fused = (nn.LayerNorm(cfg.d_model, eps=eps) for _ in range(3))
        self.ffn_text = FeedForward(cfg.d_model, cfg.dropout, eps, cfg.kernels)
        self.ffn_fused = FeedForward(cfg.d_model, cfg.dropout, eps, cfg.kernels)
        self.fourier = FourierFusion(cfg) if cfg.time else None
        self.cross = CrossSSD(cfg)
        self.dropout = Dropout(cfg.dropout, cfg.kernels)
        self.stack = cfg.stack_streams

    @property
    def image_tissd(self) -> TiSSD:
        return self.tissd if self.tissd_image is None else self.tissd_image

    def _shared_tissd(self, x_t, x_v, d_t, d_v):
        """The shared TiSSD on both streams. On CUDA as ONE call on the streams stacked along the batch (half the
        kernel launches); on CPU as two passes, which measured faster there (the stacked tensors cross glibc's
        mmap threshold and every temporary becomes a page-faulting allocation)."""
        stack = self.stack == "on" or (self.stack == "auto" and x_t.device.type == "cuda")
        if self.tissd_image is not None or not stack:
            return self.tissd(x_t, d_t), self.image_tissd(x_v, d_v)
        h, d = self.tissd(torch.cat([x_t, x_v]), None if d_t is None else torch.cat([d_t, d_v]))
        h_t, h_v = h.chunk(2)
        return (h_t, None if d is None else d.chunk(2)[0]), (h_v, None if d is None else d.chunk(2)[1])

    def forward(self, x_t, x_v, d_t, d_v):
        (h_t, d_t), (h_v, d_v) = self._shared_tissd(x_t, x_v, d_t, d_v)
        p_t = self.ffn_text(self.norm_text(self.dropout(h_t) + x_t))
        h_v = self.norm_image(self.dropout(h_v) + x_v)
        d_co = None if self.fourier is None else self.fourier(d_v, d_t)
        out = self.cross(h_v, p_t, d_co)
        x_v = self.ffn_fused(self.norm_fused(self.dropout(out) + h_v + p_t))
        return p_t, x_v, d_t, d_v


class MMM4Rec(SequentialRecommender):
    arch = "mmm4rec"
    domain_specific = ("text_id_bias", "image_id_bias")  # model.id_bias: the per-item offsets of each stream

    def __init__(self, cfg: ModelConfig, features: ItemFeatures):
        super().__init__(cfg, features)
        N, I = cfg.d_model, features.num_items
        self.has_images = features.image is not None
        # Text-only data: the image stream reads the text features through its own adapter; scores use text only.
        # The features keep their dtype (fp32, or bf16 to match a bf16 step; see data.feature_dtype).
        self.text = FrozenTable(features.text, features.offset, features.sharded)
        self.image = FrozenTable(features.image if self.has_images else features.text, features.offset,
                                 features.sharded)
        self.text_adapter = nn.Linear(features.text.shape[1], N)
        self.image_adapter = nn.Linear(self.image.values.shape[1], N)
        if cfg.id_bias:
            self.text_id_bias = nn.Parameter(torch.zeros(I + 1, N))
            self.image_id_bias = nn.Parameter(torch.zeros(I + 1, N))
        self.missing_image = None
        if self.has_images and cfg.missing_image == "learned":
            self.image_missing = FrozenTable(features.image_missing.bool(), features.offset, features.sharded)
            self.missing_image = nn.Parameter(torch.zeros(N))
        self.norm_text = nn.LayerNorm(N, eps=cfg.norm_eps)
        self.norm_image = nn.LayerNorm(N, eps=cfg.norm_eps)
        self.time_norm = nn.LayerNorm(cfg.max_len, eps=cfg.norm_eps) if cfg.time else None
        self.dropout = Dropout(cfg.dropout, cfg.kernels)
        self.layers = nn.ModuleList(MMM4RecLayer(cfg) for _ in range(cfg.n_layers))
        self.apply(init_weights)
        init_time_paths(self, cfg)

    def extra_config(self) -> dict:
        return {"num_items": self.num_items, "text_dim": self.text_adapter.in_features,
                "image_dim": self.image_adapter.in_features if self.has_images else None}

    # ------------------------------------------------------------------ items
    def item_tables(self, ids: Optional[torch.Tensor] = None) -> ItemTables:
        t = self._adapt(self.text, self.text_adapter, getattr(self, "text_id_bias", None), ids)
        v = self._adapt(self.image, self.image_adapter, getattr(self, "image_id_bias", None), ids)
        if self.missing_image is not None:
            missing = self.image_missing.held() if ids is None else self.image_missing.rows(ids)
            v = torch.where(missing[:, None], self.missing_image.to(v.dtype), v)
        scores = F.normalize(t, dim=-1)
        if self.has_images:
            scores = scores + F.normalize(v, dim=-1)
        return ItemTables((t, v), scores / self.cfg.temperature, None if ids is not None else self.first_id)

    def _adapt(self, table: FrozenTable, adapter: nn.Linear, id_bias, ids):
        rows = table.held() if ids is None else table.rows(ids)
        x = adapt(rows, adapter)
        if id_bias is not None:
            x = x + (id_bias[self.first_id : self.first_id + len(rows)] if ids is None else id_bias[ids])
        return x

    # ------------------------------------------------------------------ sequences
    def encode(self, batch: Batch, history: tuple[torch.Tensor, ...]) -> torch.Tensor:
        x_t = self.norm_text(self.dropout(history[0]))
        x_v = self.norm_image(self.dropout(history[1]))
        d_t = d_v = None
        if self.time_norm is not None:
            gaps = self.time_gaps(batch).to(self.time_norm.weight.dtype)
            d_t, d_v = (self.time_norm(self.dropout(gaps))[:, None, :].expand(-1, self.cfg.n_heads, -1)
                        for _ in range(2))  # two dropout masks, one per stream
        for layer in self.layers:
            x_t, x_v, d_t, d_v = layer(x_t, x_v, d_t, d_v)
        return x_v[torch.arange(len(x_v), device=x_v.device), batch.lengths - 1]

    def time_gaps(self, batch: Batch) -> torch.Tensor:
        """Gaps to the previous item (0 at position 0), in float seconds; computed in int64 so 10⁹-second
        timestamps lose no precision. Past `length` the gaps are 0 (padding repeats the last timestamp), so
        nothing about the target leaks. compat.target_timestamp reproduces the reference loader instead: the
        target's timestamp at index `length`, zeros after it."""
        ts, lengths = batch.timestamps, batch.lengths
        pos = torch.arange(ts.shape[1], device=ts.device)[None, :]
        last = ts.gather(1, (lengths - 1)[:, None])
        if self.cfg.compat.target_timestamp:
            ts = torch.where(pos == lengths[:, None], batch.target_ts[:, None], ts.masked_fill(pos >= lengths[:, None], 0))
        else:
            ts = torch.where(pos < lengths[:, None], ts, last)
        return torch.diff(ts, dim=1, prepend=ts[:, :1]).float()


def init_time_paths(model: nn.Module, cfg: ModelConfig) -> None:
    """model.time_init: the time paths' Linear layers (position mixes, gates, Fourier filters) drawn from
    N(0, model.time_init_std) like every other Linear ("normal", the reference's default), or kept at PyTorch's
    Kaiming-uniform default ("kaiming", the reference's switch). At std 0.02 the Tanhshrink after the mix
    (≈ x³/3 near 0) passes almost nothing, which is why a larger std is offered too."""
    if cfg.time_init == "normal" and cfg.time_init_std == 0.02:
        return  # init_weights already drew them so (no extra draws: the same init as without this option)
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and is_time_path(name + "."):
            if cfg.time_init == "kaiming":
                module.reset_parameters()
            else:
                nn.init.normal_(module.weight, std=cfg.time_init_std)
                nn.init.zeros_(module.bias)
