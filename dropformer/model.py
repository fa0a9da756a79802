"""DropFormer (Interspeech 2024): blocks of Drop Attention, each followed by the
Token Dropout Module, then pooling and a classifier.

Padding is handled throughout: padded tokens never count in the importance S,
are never selected or kept, and never reach the pooled vector, so an
utterance's output does not depend on what it is batched with.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from dropformer.attention import DropAttention, keep_counts, reduce_heads
from dropformer.config import DropFormerConfig


def lengths_to_valid(lengths: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """(B,) lengths -> (B, T) bool, True on real tokens."""
    return torch.arange(num_tokens, device=lengths.device)[None, :] < lengths[:, None]


def host_lengths(lengths: torch.Tensor, num_tokens: int) -> list[int]:
    """lengths (B,) as host ints clamped to [0, num_tokens]: read once, no device sync per layer."""
    return [min(max(int(n), 0), num_tokens) for n in lengths.tolist()]


def valid_mask(lengths: list[int], num_tokens: int, device: torch.device) -> torch.Tensor:
    """Host lengths -> (B, T) bool, True on real tokens."""
    if all(n >= num_tokens for n in lengths):
        return torch.ones(len(lengths), num_tokens, dtype=torch.bool, device=device)
    return lengths_to_valid(torch.tensor(lengths, device=device), num_tokens)


def tdm_keep_index(
    importance: torch.Tensor, valid: torch.Tensor, lengths: list[int], drop_rate: float
) -> tuple[torch.Tensor, list[int]]:
    """TDM (Eq. 5-6) as indices: which tokens survive, packed to the left in time order.

    Drops the int(drop_rate * length) least important valid tokens of each item
    (ties: the earlier token goes first). importance (B, T), valid (B, T),
    ``lengths`` the items' valid counts (host ints) -> index (B, T') into the
    T tokens (slots past an item's new length point at its dropped or padded
    tokens), and the new lengths.
    """
    b, t = importance.shape
    n_drop = keep_counts(drop_rate, lengths)
    new_lengths = [n - k for n, k in zip(lengths, n_drop)]
    if torch.compiler.is_compiling():
        return _keep_index_by_rank(importance, valid, lengths, n_drop, new_lengths), new_lengths
    if lengths and all(n == t for n in lengths):  # no padding: one sort of the kept ranks
        order = importance.argsort(dim=-1, stable=True)  # (B, T) ascending
        return order[:, n_drop[0] :].sort(dim=-1).values, new_lengths  # (B, T')
    score = importance.masked_fill(~valid, float("inf"))  # padding is never "bottom"
    order = score.argsort(dim=-1, stable=True)  # (B, T) ascending
    n_drop_t = torch.tensor(n_drop, device=importance.device)
    rank_is_dropped = (
        torch.arange(t, device=importance.device)[None, :] < n_drop_t[:, None]
    )  # (B, T)
    dropped = torch.zeros_like(valid).scatter(1, order, rank_is_dropped)  # (B, T)
    keep = valid & ~dropped  # (B, T)
    t_new = max(new_lengths) if b else 0
    pack = (
        (~keep).to(torch.int8).argsort(dim=-1, stable=True)[:, :t_new]
    )  # kept first, in time order
    return pack, new_lengths


def _keep_index_by_rank(
    importance: torch.Tensor,
    valid: torch.Tensor,
    lengths: list[int],
    n_drop: list[int],
    new_lengths: list[int],
) -> torch.Tensor:
    """:func:`tdm_keep_index`'s index from comparisons instead of sorts, for compiled graphs.

    A token's place in the stable ascending order is the number of tokens that score below
    it, or the same and earlier; the survivors' slots are counts of survivors before them.
    """
    b, t = importance.shape
    padded = any(n < t for n in lengths)
    score = importance.masked_fill(~valid, float("inf")) if padded else importance  # (B, T)
    i = torch.arange(t, device=importance.device)
    earlier = i[None, :] < i[:, None]  # (T, T): token j comes before token i
    below, same = score[:, None, :] < score[:, :, None], score[:, None, :] == score[:, :, None]
    rank = (below | (same & earlier)).float().sum(-1)  # (B, T); float sums vectorise, exact < 2^24
    n = n_drop[0] if min(n_drop) == max(n_drop) else torch.tensor(n_drop, device=i.device)[:, None]
    keep = rank >= n  # (B, T)
    if padded:
        keep &= valid
    kept_before = (keep[:, None, :] & earlier).float().sum(-1).long()  # (B, T)
    slot = torch.where(keep, kept_before, keep.sum(-1, keepdim=True) + i - kept_before)
    index = torch.empty_like(slot).scatter_(1, slot, i.expand(b, t))  # kept first, in time order
    return index[:, : max(new_lengths) if b else 0]


def gather_tokens(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x (B, T, ...) at index (B, T') along time -> (B, T', ...), as whole-row copies."""
    b, t = x.shape[:2]
    flat = (
        index if b == 1 else index + torch.arange(0, b * t, t, device=index.device)[:, None]
    )  # (B, T')
    return (
        x.reshape(b * t, *x.shape[2:])
        .index_select(0, flat.reshape(-1))
        .view(b, index.shape[1], *x.shape[2:])
    )


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
    index, new_lengths = tdm_keep_index(importance, valid, valid.sum(-1).tolist(), drop_rate)
    new = torch.tensor(new_lengths, device=x.device, dtype=torch.long)
    return (
        gather_tokens(x, index),
        lengths_to_valid(new, index.shape[1]),
        gather_tokens(positions, index),
    )


class DropFormerBlock(nn.Module):
    """Post-LN Transformer block with Drop Attention; TDM applied by the caller's choice."""

    def __init__(self, cfg: DropFormerConfig, layer: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.attn = DropAttention(
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
        self,
        x: torch.Tensor,
        valid: torch.Tensor,
        positions: torch.Tensor,
        lengths: list[int] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (B, T, D) -> (x, valid, positions) after TDM, and importance (B, T) before it.

        ``lengths``: the items' valid token counts as host ints (None: read from ``valid``).
        Training runs the block whole and then drops tokens (the order every trained model
        saw, random numbers included). Evaluation drops them as soon as S is known: the
        output projection, both norms and the FFN work per token, so they run on the
        survivors only; the result is the same.
        """
        lengths = valid.sum(-1).tolist() if lengths is None else lengths
        padded = any(n < x.shape[1] for n in lengths)
        tdm = self.cfg.use_tdm and self.cfg.drop_rate > 0
        if self.training:
            a, s = self.attn(x, valid, lengths)  # (B, T, D), (B, H, T)
            x = self.norm1(x + self.dropout(a))
            x = self.norm2(x + self.dropout(self.ffn(x)))
            x = x * valid[..., None]  # keep padding at exactly zero
            importance = reduce_heads(s, self.cfg.importance_reduction, padded)  # (B, T)
            if tdm:
                x, valid, positions = token_dropout(
                    x, valid, importance, positions, self.cfg.drop_rate
                )
            return x, valid, positions, importance
        y, s = self.attn.mix(x, valid, lengths)  # (B, T, D) before the output projection, (B, H, T)
        importance = reduce_heads(s, self.cfg.importance_reduction, padded)  # (B, T)
        if tdm:
            index, lengths = tdm_keep_index(
                importance, valid, lengths, self.cfg.drop_rate
            )  # (B, T')
            y, x, positions = (
                gather_tokens(y, index),
                gather_tokens(x, index),
                gather_tokens(positions, index),
            )
            valid = (
                valid_mask(lengths, index.shape[1], x.device)
                if padded
                else valid[:, : index.shape[1]]  # still all True
            )
            padded = any(n < index.shape[1] for n in lengths)
        x = self.norm1(x + self.attn.out(y))
        x = self.norm2(x + self.ffn(x))
        if padded:
            x = x * valid[..., None]  # keep padding at exactly zero
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
class DropFormerOutput:
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


class DropFormer(nn.Module):
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
        self.blocks = nn.ModuleList(DropFormerBlock(cfg, i) for i in range(cfg.num_layers))
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

    def forward(self, features: torch.Tensor, lengths: torch.Tensor) -> DropFormerOutput:
        return self.forward_lengths(features, host_lengths(lengths, features.shape[1]))

    def forward_lengths(self, features: torch.Tensor, lens: list[int]) -> DropFormerOutput:
        """:meth:`forward` with the lengths as host ints, each in [0, T] (what a compiled graph takes)."""
        b, t, _ = features.shape
        if t > self.cfg.max_positions:
            raise ValueError(
                f"{t} tokens exceed max_positions={self.cfg.max_positions}; raise it in the config"
            )
        padded = any(n < t for n in lens)
        valid = valid_mask(lens, t, features.device)  # (B, T)
        x = self.input_proj(self.input_norm(features))  # (B, T, D)
        x = self.input_dropout(x + self.pos_table[:t])
        if padded or self.training:
            x = x * valid[..., None]
        positions = torch.arange(t, device=x.device).expand(b, t)  # (B, T)
        importance, kept_index, kept = [], [], [lens]
        tdm = self.cfg.use_tdm and self.cfg.drop_rate > 0
        for block in self.blocks:
            padded = any(n < x.shape[1] for n in lens)
            kept_index.append(positions.masked_fill(~valid, -1) if padded else positions)
            before_valid, before_pos = valid, positions
            x, valid, positions, imp = block(x, valid, positions, lens)  # imp (B, T_before)
            if padded:
                full = torch.full(
                    (b, t + 1), float("nan"), device=x.device, dtype=imp.dtype
                )  # last column: padding sink
                full.scatter_(
                    1,
                    before_pos.masked_fill(~before_valid, t),
                    imp.masked_fill(~before_valid, float("nan")),
                )
                full = full[:, :t]  # (B, T) on the original time axis
            else:
                full = torch.full((b, t), float("nan"), device=x.device, dtype=imp.dtype).scatter_(
                    1, before_pos, imp
                )
            importance.append(full)
            if tdm:
                lens = [n - d for n, d in zip(lens, keep_counts(self.cfg.drop_rate, lens))]
            kept.append(lens)
        if any(n < x.shape[1] for n in lens):
            denom = valid.sum(-1, keepdim=True).clamp(min=1)  # (B, 1)
            pooled = (x * valid[..., None]).sum(1) / denom  # (B, D)
        else:
            pooled = x.sum(1) / max(x.shape[1], 1)  # (B, D)
        kept_tokens = torch.tensor(kept, dtype=torch.long, device=x.device).T.reshape(
            b, len(kept)
        )  # (B, L + 1)
        return DropFormerOutput(self.head(pooled), importance, kept_tokens, kept_index, pooled)
