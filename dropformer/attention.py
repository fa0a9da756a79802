"""Drop Attention (Section 2.1): masks and the attention itself, in one place.

Boolean masks mean True = attend / keep. Shapes: B batch, H heads, T tokens,
Dh head width.

Heads. Following the Key-Sparse Transformer (the lab's closest public code),
the dynamic mask is chosen per head from that head's own column sums: each
head may find different tokens emotional. The Token Dropout Module needs one
ranking per utterance, so it uses the head average of S (``reduce_heads``);
that average is also what ``importance`` reports.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def static_band_mask(num_tokens: int, offsets: tuple[int, ...] | None, device: torch.device | None = None) -> torch.Tensor:
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


def dynamic_topk_mask(importance: torch.Tensor, valid: torch.Tensor, keep_rate: float) -> torch.Tensor:
    """M_d (Eq. 2): True at (a, b) iff both a and b are among the top-k tokens of S.

    k = int(keep_rate * valid length) per item; a token whose score equals the
    k-th largest is kept too (ties kept). Padding is never selected.
    importance (B, H, T), valid (B, T) -> (B, H, T, T)
    """
    lengths = valid.sum(-1)  # (B,)
    k = (keep_rate * lengths.to(torch.float64)).floor().long()  # (B,)
    importance = importance.masked_fill(~valid[:, None, :], float("-inf"))  # padding never ranks
    ranked = importance.sort(dim=-1, descending=True).values  # (B, H, T)
    kth = ranked.gather(-1, (k - 1).clamp(min=0)[:, None, None].expand(-1, importance.shape[1], 1))  # (B, H, 1)
    top = (importance >= kth) & valid[:, None, :] & (k > 0)[:, None, None]  # (B, H, T)
    return top[..., :, None] & top[..., None, :]


def reduce_heads(importance: torch.Tensor, how: str = "mean") -> torch.Tensor:
    """One importance score per token from per-head scores.  (B, H, T) -> (B, T)"""
    finite = importance.masked_fill(~torch.isfinite(importance), 0.0)
    out = finite.mean(dim=1) if how == "mean" else finite.amax(dim=1)
    return out.masked_fill(~torch.isfinite(importance[:, 0]), float("-inf"))


class DropAttention(nn.Module):
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
        q, k, v = self.qkv(x).view(b, t, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)  # 3 x (B, H, T, Dh)
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


def plain_attention_reference(x: torch.Tensor, valid: torch.Tensor, attn: DropAttention) -> torch.Tensor:
    """The same projections through ``F.scaled_dot_product_attention`` (for tests and checks)."""
    b, t, d = x.shape
    q, k, v = attn.qkv(x).view(b, t, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    y = F.scaled_dot_product_attention(q, k, v, attn_mask=valid[:, None, None, :])  # (B, H, T, Dh)
    return attn.out(y.transpose(1, 2).reshape(b, t, d))
