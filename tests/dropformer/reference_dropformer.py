"""Today's DropFormer, kept as the reference the fast implementation is tested against.

A copy of ``dropformer/attention.py`` and ``dropformer/model.py`` as of commit 55f74ac (before
issue 10 made dropped tokens cut compute): dense (B, H, T, T) masks built per call, a full sort
for the top-k, the Token Dropout Module after each whole block. Same parameter names, so a
``DropFormer``'s state dict loads into :class:`ReferenceDropFormer`. Tests and the head benchmark
(``emotion-monitor bench --parts head``) use it; the package never does. Do not "fix" it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from dropformer.config import DropFormerConfig


def static_band_mask(
    num_tokens: int, offsets: tuple[int, ...] | None, device: torch.device | None = None
) -> torch.Tensor:
    """M_s (Figure 3): True where |a - b| is one of ``offsets``; all True if None.  # (T, T)"""
    if offsets is None:
        return torch.ones(num_tokens, num_tokens, dtype=torch.bool, device=device)
    idx = torch.arange(num_tokens, device=device)
    dist = (idx[:, None] - idx[None, :]).abs()  # (T, T)
    allowed = torch.tensor(sorted(set(offsets)), device=device)
    return torch.isin(dist, allowed)


def column_importance(weights: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """S: column sums of W over valid query rows; padded keys get -inf.  # (B, H, T)"""
    rows = valid[:, None, :, None].to(weights.dtype)  # (B, 1, T, 1)
    s = (weights * rows).sum(dim=-2)  # (B, H, T)
    return s.masked_fill(~valid[:, None, :], float("-inf"))


def dynamic_topk_mask(
    importance: torch.Tensor, valid: torch.Tensor, keep_rate: float
) -> torch.Tensor:
    """M_d (Eq. 2): True at (a, b) iff both a and b are among the top-k tokens of S.

    k = int(keep_rate * valid length) per item; a token whose score equals the
    k-th largest is kept too (ties kept). Padding is never selected.
    importance (B, H, T), valid (B, T) -> (B, H, T, T)
    """
    lengths = valid.sum(-1)  # (B,)
    k = (keep_rate * lengths.to(torch.float64)).floor().long()  # (B,)
    importance = importance.masked_fill(~valid[:, None, :], float("-inf"))  # padding never ranks
    ranked = importance.sort(dim=-1, descending=True).values  # (B, H, T)
    kth = ranked.gather(
        -1, (k - 1).clamp(min=0)[:, None, None].expand(-1, importance.shape[1], 1)
    )  # (B, H, 1)
    top = (importance >= kth) & valid[:, None, :] & (k > 0)[:, None, None]  # (B, H, T)
    return top[..., :, None] & top[..., None, :]


def reduce_heads(importance: torch.Tensor, how: str = "mean") -> torch.Tensor:
    """One importance score per token from per-head scores.  (B, H, T) -> (B, T)"""
    finite = importance.masked_fill(~torch.isfinite(importance), 0.0)
    out = finite.mean(dim=1) if how == "mean" else finite.amax(dim=1)
    return out.masked_fill(~torch.isfinite(importance[:, 0]), float("-inf"))


class ReferenceDropAttention(nn.Module):
    """Multi-head self-attention whose weights are multiplied by M = M_d OR M_s (Eq. 3-4).

    With ``drop=False`` it is plain softmax attention (the vanilla Transformer),
    still returning the column importance S so TDM and the plots can use it.
    Output is (W * M) V with no renormalisation, then attention dropout as in
    the Key-Sparse Transformer.
    """

    def __init__(
        self,
        d_model: int,
        num_heads: int,
        *,
        keep_rate: float = 0.1,
        static_offsets: tuple[int, ...] | None = (0, 2),
        drop: bool = True,
        use_dynamic: bool = True,
        use_static: bool = True,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = d_model // num_heads
        self.keep_rate = keep_rate
        self.static_offsets = static_offsets
        self.drop, self.use_dynamic, self.use_static = drop, use_dynamic, use_static
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)
        self.attn_dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, T, D), valid (B, T) -> output (B, T, D), S (B, H, T)."""
        b, t, d = x.shape
        q, k, v = (
            self.qkv(x).view(b, t, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        )  # 3 x (B, H, T, Dh)
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(self.head_dim)  # (B, H, T, T)
        scores = scores.masked_fill(~valid[:, None, None, :], float("-inf"))
        w = torch.softmax(scores, dim=-1)  # (B, H, T, T)
        w = torch.nan_to_num(w, nan=0.0)  # an item with no valid key at all
        s = column_importance(w, valid)  # (B, H, T)
        if self.drop:
            m = torch.zeros(b, self.num_heads, t, t, dtype=torch.bool, device=x.device)
            if self.use_dynamic:
                m |= dynamic_topk_mask(s, valid, self.keep_rate)
            if self.use_static:
                m |= static_band_mask(t, self.static_offsets, x.device)
            w = w * m  # (B, H, T, T), no renormalisation
        y = self.attn_dropout(w) @ v  # (B, H, T, Dh)
        return self.out(y.transpose(1, 2).reshape(b, t, d)), s


def lengths_to_valid(lengths: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """(B,) lengths -> (B, T) bool, True on real tokens."""
    return torch.arange(num_tokens, device=lengths.device)[None, :] < lengths[:, None]


def token_dropout(
    x: torch.Tensor,
    valid: torch.Tensor,
    importance: torch.Tensor,
    positions: torch.Tensor,
    drop_rate: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """TDM (Eq. 5-6): drop the int(drop_rate * length) least important valid tokens.

    Survivors keep their time order and are packed to the left.
    x (B, T, D), valid (B, T), importance (B, T), positions (B, T) original
    time index of each token -> (x (B, T', D), valid (B, T'), positions (B, T')).
    """
    lengths = valid.sum(-1)  # (B,)
    n_drop = (drop_rate * lengths.to(torch.float64)).floor().long()  # (B,)
    score = importance.masked_fill(~valid, float("inf"))  # padding is never "bottom"
    order = score.argsort(dim=-1, stable=True)  # (B, T) ascending
    rank_is_dropped = torch.arange(x.shape[1], device=x.device)[None, :] < n_drop[:, None]  # (B, T)
    dropped = torch.zeros_like(valid).scatter(1, order, rank_is_dropped)  # (B, T)
    keep = valid & ~dropped  # (B, T)
    new_lengths = keep.sum(-1)  # (B,)
    t_new = int(new_lengths.max().item()) if x.shape[0] else 0
    pack = (
        (~keep).to(torch.int8).argsort(dim=-1, stable=True)[:, :t_new]
    )  # kept first, in time order
    x = x.gather(1, pack[..., None].expand(-1, -1, x.shape[-1]))  # (B, T', D)
    positions = positions.gather(1, pack)  # (B, T')
    return x, lengths_to_valid(new_lengths, t_new), positions


class ReferenceBlock(nn.Module):
    """Post-LN Transformer block with Drop Attention; TDM applied by the caller's choice."""

    def __init__(self, cfg: DropFormerConfig, layer: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.attn = ReferenceDropAttention(
            cfg.d_model,
            cfg.num_heads,
            keep_rate=cfg.keep_rate,
            static_offsets=cfg.static_offsets[layer],
            drop=cfg.use_drop_attention,
            use_dynamic=cfg.use_dynamic_mask,
            use_static=cfg.use_static_mask,
            dropout=cfg.dropout if cfg.attention_dropout is None else cfg.attention_dropout,
        )
        self.norm1 = nn.LayerNorm(cfg.d_model)
        self.ffn = nn.Sequential(
            nn.Linear(cfg.d_model, cfg.ffn_dim),
            nn.ReLU(),
            nn.Dropout(cfg.dropout),
            nn.Linear(cfg.ffn_dim, cfg.d_model),
        )
        self.norm2 = nn.LayerNorm(cfg.d_model)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(
        self, x: torch.Tensor, valid: torch.Tensor, positions: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (B, T, D) -> (x, valid, positions) after TDM, and importance (B, T) before it."""
        a, s = self.attn(x, valid)  # (B, T, D), (B, H, T)
        x = self.norm1(x + self.dropout(a))
        x = self.norm2(x + self.dropout(self.ffn(x)))
        x = x * valid[..., None]  # keep padding at exactly zero
        importance = reduce_heads(s, self.cfg.importance_reduction)  # (B, T)
        if self.cfg.use_tdm and self.cfg.drop_rate > 0:
            x, valid, positions_out = token_dropout(
                x, valid, importance, positions, self.cfg.drop_rate
            )
            return x, valid, positions_out, importance
        return x, valid, positions, importance


def sinusoidal_positions(num_positions: int, dim: int) -> torch.Tensor:
    """The Transformer's sine/cosine table.  # (P, D)"""
    pos = torch.arange(num_positions, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(num_positions, dim)
    table[:, 0::2] = torch.sin(pos * freq)
    table[:, 1::2] = torch.cos(pos * freq[: dim // 2])
    return table


@dataclass
class ReferenceOutput:
    logits: torch.Tensor
    """(B, C) class scores before softmax."""
    importance: list[torch.Tensor]
    """Per layer, (B, T) token importance on the original time axis; NaN where the
    token was padding or had been dropped by an earlier layer."""
    kept_tokens: torch.Tensor
    """(B, L + 1) valid tokens entering layer 1, then left after each layer."""
    kept_index: list[torch.Tensor]
    """Per layer, (B, T_l) original time index of each token the layer saw (-1 on padding)."""
    pooled: torch.Tensor
    """(B, D) the pooled utterance vector."""


class ReferenceDropFormer(nn.Module):
    """Features (B, T, input_dim) and lengths (B,) -> :class:`DropFormerOutput`."""

    def __init__(self, cfg: DropFormerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.input_norm = nn.LayerNorm(cfg.input_dim)
        self.input_proj = (
            nn.Linear(cfg.input_dim, cfg.d_model) if cfg.input_dim != cfg.d_model else nn.Identity()
        )
        self.pos_table: torch.Tensor
        self.register_buffer(
            "pos_table", sinusoidal_positions(cfg.max_positions, cfg.d_model), persistent=False
        )
        self.input_dropout = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(ReferenceBlock(cfg, i) for i in range(cfg.num_layers))
        layers: list[nn.Module] = []
        width = cfg.d_model
        for hidden in cfg.head_hidden:
            layers += [nn.Linear(width, hidden), nn.ReLU(), nn.Dropout(cfg.head_dropout)]
            width = hidden
        layers.append(nn.Linear(width, cfg.num_classes))
        self.head = nn.Sequential(*layers)
        self.apply(self._init)

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            nn.init.zeros_(m.bias)

    def forward(self, features: torch.Tensor, lengths: torch.Tensor) -> ReferenceOutput:
        b, t, _ = features.shape
        if t > self.cfg.max_positions:
            raise ValueError(
                f"{t} tokens exceed max_positions={self.cfg.max_positions}; raise it in the config"
            )
        lengths = lengths.to(features.device).clamp(max=t)
        valid = lengths_to_valid(lengths, t)  # (B, T)
        x = self.input_proj(self.input_norm(features))  # (B, T, D)
        x = self.input_dropout(x + self.pos_table[:t]) * valid[..., None]
        positions = torch.arange(t, device=x.device).expand(b, t)  # (B, T)
        importance, kept_index, kept = [], [], [valid.sum(-1)]
        for block in self.blocks:
            kept_index.append(positions.masked_fill(~valid, -1))
            before_valid, before_pos = valid, positions
            x, valid, positions, imp = block(x, valid, positions)  # imp (B, T_before)
            full = torch.full(
                (b, t + 1), float("nan"), device=x.device, dtype=imp.dtype
            )  # last column: padding sink
            full.scatter_(
                1,
                before_pos.masked_fill(~before_valid, t),
                imp.masked_fill(~before_valid, float("nan")),
            )
            full = full[:, :t]  # (B, T) on the original time axis
            importance.append(full)
            kept.append(valid.sum(-1))
        denom = valid.sum(-1, keepdim=True).clamp(min=1)  # (B, 1)
        pooled = (x * valid[..., None]).sum(1) / denom  # (B, D)
        return ReferenceOutput(
            self.head(pooled), importance, torch.stack(kept, dim=1), kept_index, pooled
        )
