"""Drop Attention (Section 2.1): masks and the attention itself, in one place.

Boolean masks mean True = attend / keep. Shapes: B batch, H heads, T tokens,
Dh head width.

Heads. Following the Key-Sparse Transformer (the lab's closest public code),
the dynamic mask is chosen per head from that head's own column sums: each
head may find different tokens emotional. The Token Dropout Module needs one
ranking per utterance, so it uses the head average of S (``reduce_heads``);
that average is also what ``importance`` reports.

Cost. W and S need the full softmax; what follows is kept cheap: the static
band is built once per length and cached, the dynamic mask is the outer
product of one top-k vector per head (``topk``, not a full sort), and padding
work is skipped when the caller knows there is none (``lengths``, host ints).
Under ``torch.compile`` (dropformer/compiled.py) the product takes another exact
form, with no host branch: one full product, as vanilla attention's, and the band.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import nn


@functools.lru_cache(maxsize=256)
def _band(
    num_tokens: int, offsets: tuple[int, ...] | None, device: str, dtype: torch.dtype
) -> torch.Tensor:
    """The static band, built once per (length, offsets, device, dtype).  # (T, T)

    Built outside inference mode (a plain tensor), so that training may save it for backward
    even when an inference-mode call built it first.
    """
    with torch.inference_mode(False):
        if offsets is None:
            return torch.ones(num_tokens, num_tokens, dtype=dtype, device=device)
        idx = torch.arange(num_tokens, device=device)
        dist = (idx[:, None] - idx[None, :]).abs()  # (T, T)
        return torch.isin(dist, torch.tensor(offsets, device=device)).to(dtype)


@functools.lru_cache(maxsize=256)
def _outside_band(
    num_tokens: int, offsets: tuple[int, ...], device: str, dtype: torch.dtype
) -> torch.Tensor:
    """1 - M_s, cached like the band.  # (T, T)"""
    with torch.inference_mode(False):
        return 1 - _band(num_tokens, offsets, device, dtype)


def static_band_mask(
    num_tokens: int,
    offsets: tuple[int, ...] | None,
    device: torch.device | None = None,
    dtype: torch.dtype = torch.bool,
) -> torch.Tensor:
    """M_s (Figure 3): True (1) where |a - b| is one of ``offsets``; all True if None.  # (T, T)

    Cached per (length, offsets, device, dtype): the result is shared, never write into it.
    """
    key = None if offsets is None else tuple(sorted(set(offsets)))
    return _band(num_tokens, key, str(torch.device(device) if device is not None else "cpu"), dtype)


def column_importance(
    weights: torch.Tensor, valid: torch.Tensor, padded: bool = True
) -> torch.Tensor:
    """S: column sums of W over valid query rows; padded keys get -inf.  # (B, H, T)

    ``padded=False`` says every token is valid (the sum needs no row mask).
    """
    if not padded:
        return weights.sum(dim=-2)  # (B, H, T)
    rows = valid[:, None, :, None].to(weights.dtype)  # (B, 1, T, 1)
    s = (weights * rows).sum(dim=-2)  # (B, H, T)
    return s.masked_fill(~valid[:, None, :], float("-inf"))


def keep_counts(rate: float, lengths: list[int]) -> list[int]:
    """int(rate * length) per item, in float64 exactly as the tensors' rule computes it."""
    return [math.floor(rate * n) for n in lengths]


def top_tokens(
    importance: torch.Tensor,
    valid: torch.Tensor,
    keep_rate: float,
    lengths: list[int] | None = None,
) -> torch.Tensor:
    """The tokens whose rows and columns M_d keeps: S at least the k-th largest.  # (B, H, T)

    k = int(keep_rate * valid length) per item; a token whose score equals the
    k-th largest is kept too (ties kept). Padding is never selected.
    ``lengths`` (host ints, one per item) saves reading them from ``valid``.
    """
    return _top_tokens(importance, valid, keep_rate, lengths)[0]


def _top_tokens(
    importance: torch.Tensor, valid: torch.Tensor, keep_rate: float, lengths: list[int] | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """:func:`top_tokens`, and the indices of the k_max largest scores (B, H, k_max) (None when k_max = 0)."""
    t = importance.shape[-1]
    lengths = valid.sum(-1).tolist() if lengths is None else lengths
    ks = keep_counts(keep_rate, lengths)
    k_max = max(ks) if ks else 0
    if k_max == 0:
        return torch.zeros_like(importance, dtype=torch.bool), None
    padded = any(n < t for n in lengths)
    if padded:
        importance = importance.masked_fill(
            ~valid[:, None, :], float("-inf")
        )  # padding never ranks
    ranked, index = importance.topk(k_max, dim=-1)  # (B, H, k_max), descending
    if min(ks) == k_max:
        kth = ranked[..., k_max - 1 :]  # (B, H, 1)
    else:
        k_idx = torch.tensor([max(k - 1, 0) for k in ks], device=importance.device)
        kth = ranked.gather(
            -1, k_idx[:, None, None].expand(-1, importance.shape[1], 1)
        )  # (B, H, 1)
    top = importance >= kth  # (B, H, T)
    if padded:
        top &= valid[:, None, :]
    if min(ks) == 0:
        top &= torch.tensor([k > 0 for k in ks], device=importance.device)[:, None, None]
    return top, index


def _top_tokens_by_count(
    importance: torch.Tensor, valid: torch.Tensor, keep_rate: float, lengths: list[int]
) -> torch.Tensor:
    """:func:`top_tokens` by counting: a token is top iff fewer than k tokens score above it.

    The same tokens as ``topk``, ties included, as one comparison a compiled graph fuses with
    the softmax around it (a graph's ``topk`` is a separate library call).  # (B, H, T)
    """
    t = importance.shape[-1]
    ks = keep_counts(keep_rate, lengths)
    padded = any(n < t for n in lengths)
    if padded:
        importance = importance.masked_fill(~valid[:, None, :], float("-inf"))
    above = (importance[..., None, :] > importance[..., :, None]).float().sum(-1)  # (B, H, T)
    k = ks[0] if min(ks) == max(ks) else torch.tensor(ks, device=importance.device)[:, None, None]
    top = above < k  # float sums of 0/1 are exact below 2^24
    return top & valid[:, None, :] if padded else top


def dynamic_topk_mask(
    importance: torch.Tensor, valid: torch.Tensor, keep_rate: float
) -> torch.Tensor:
    """M_d (Eq. 2): True at (a, b) iff both a and b are among the top-k tokens of S.

    importance (B, H, T), valid (B, T) -> (B, H, T, T); see :func:`top_tokens`.
    """
    top = top_tokens(importance, valid, keep_rate)  # (B, H, T)
    return top[..., :, None] & top[..., None, :]


def reduce_heads(importance: torch.Tensor, how: str = "mean", padded: bool = True) -> torch.Tensor:
    """One importance score per token from per-head scores.  (B, H, T) -> (B, T)

    ``padded=False`` says every score is finite (no padding to keep at -inf).
    """
    if not padded:
        return importance.mean(dim=1) if how == "mean" else importance.amax(dim=1)
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

    def forward(
        self, x: torch.Tensor, valid: torch.Tensor, lengths: list[int] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, T, D), valid (B, T) -> output (B, T, D), S (B, H, T)."""
        y, s = self.mix(x, valid, lengths)
        return self.out(y), s

    def mix(
        self, x: torch.Tensor, valid: torch.Tensor, lengths: list[int] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The heads' (W * M) V, merged but before the output projection (B, T, D), and S (B, H, T).

        ``lengths`` are the items' valid token counts as host ints (None: read from ``valid``).
        The output projection is per token, so a caller that drops tokens applies it after.
        """
        b, t, d = x.shape
        lengths = valid.sum(-1).tolist() if lengths is None else lengths
        padded = any(n < t for n in lengths)
        qkv = self.qkv(x).view(b, t, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # 3 x (B, H, T, Dh)
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(self.head_dim)  # (B, H, T, T)
        if padded:
            scores = scores.masked_fill(~valid[:, None, None, :], float("-inf"))
        w = torch.softmax(scores, dim=-1)  # (B, H, T, T)
        if 0 in lengths:
            w = torch.nan_to_num(w, nan=0.0)  # an item with no valid key at all
        s = column_importance(w, valid, padded)  # (B, H, T)
        if self.drop and not (self.training or w.is_cuda):
            y = self.masked_product(w, v, s, valid, lengths)  # (B, H, T, Dh)
        else:
            if self.drop:
                w = w * self.mask(s, valid, lengths, w.dtype)  # (B, H, T, T), no renormalisation
            y = self.attn_dropout(w) @ v  # (B, H, T, Dh)
        return y.transpose(1, 2).reshape(b, t, d), s

    def mask(
        self, s: torch.Tensor, valid: torch.Tensor, lengths: list[int], dtype: torch.dtype
    ) -> torch.Tensor:
        """M = M_d OR M_s from S (B, H, T), as 0/1 of ``dtype``: (B, H, T, T), or (T, T) for M_s alone.

        Built in floating point (an outer product of the top-k vectors, then the
        maximum with the cached band): broadcast boolean ops are several times slower.
        """
        t = s.shape[-1]
        band = (
            static_band_mask(t, self.static_offsets, s.device, dtype) if self.use_static else None
        )  # (T, T)
        if not self.use_dynamic:
            return band if band is not None else torch.zeros(t, t, dtype=dtype, device=s.device)
        top = top_tokens(s, valid, self.keep_rate, lengths).to(dtype)  # (B, H, T)
        m = top[..., :, None] * top[..., None, :]  # (B, H, T, T)
        return m.clamp_(min=band) if band is not None else m

    def masked_product(
        self,
        w: torch.Tensor,
        v: torch.Tensor,
        s: torch.Tensor,
        valid: torch.Tensor,
        lengths: list[int],
    ) -> torch.Tensor:
        """(W * M) V without materialising M or the zeros it makes (inference; no attention dropout).

        M_s is a few diagonals: each is a (B, H, T - o) view of W times V shifted by o.
        M_d adds, on the k top rows, the top columns outside the band: a (k, k) block.
        Exact ties at the k-th score (more than k top tokens) take the dense way.
        w (B, H, T, T), v (B, H, T, Dh), s (B, H, T) -> (B, H, T, Dh)
        """
        t = w.shape[-1]
        offsets = self.static_offsets if self.use_static else ()
        if offsets is None:  # M_s is all ones: M too
            return w @ v
        if torch.compiler.is_compiling():
            return self.compiled_product(w, v, s, valid, lengths, offsets)
        picked = self._top(s, valid, lengths) if self.use_dynamic else (None, None)
        if picked is None:
            return (w * self.mask(s, valid, lengths, w.dtype)) @ v  # ties past k: rare
        top, index = picked
        y = _add_band(None, w, v, offsets)  # (B, H, T, Dh)
        if index is None:
            return y
        dh = v.shape[-1]
        flat = torch.add(
            index[..., None, :], index[..., :, None], alpha=t
        )  # (B, H, k, k) positions in the flattened (T, T)
        block = (
            w.flatten(-2).gather(-1, flat.flatten(-2)).view(flat.shape)
        )  # (B, H, k, k) W on top x top
        if self.use_static:  # pairs the band already counted
            block.mul_(
                torch.take(
                    _outside_band(t, tuple(sorted(set(offsets))), str(w.device), w.dtype), flat
                )
            )
        if top is not None:  # items with fewer top tokens than k_max
            chosen = top.gather(-1, index).to(w.dtype)  # (B, H, k): 1 on real top tokens
            block = block * chosen[..., :, None] * chosen[..., None, :]
        expand = index[..., None].expand(-1, -1, -1, dh)  # (B, H, k, Dh)
        return y.scatter_add_(-2, expand, block @ v.gather(-2, expand))

    def _top(
        self, s: torch.Tensor, valid: torch.Tensor, lengths: list[int]
    ) -> tuple[torch.Tensor | None, torch.Tensor | None] | None:
        """For :meth:`masked_product`: the top mask (B, H, T), only when items differ in k, and the
        indices of the k_max top tokens (B, H, k_max), None when k_max = 0; None for ties past k.

        Every item full and k < T: ``topk(k + 1)`` tells ties past k by itself (the (k+1)-th
        score equals the k-th), with no mask to build.
        """
        t = s.shape[-1]
        ks = keep_counts(self.keep_rate, lengths)
        k = max(ks) if ks else 0
        if 0 < k < t and min(ks) == k and all(n == t for n in lengths):
            ranked, index = s.topk(k + 1, dim=-1)  # (B, H, k + 1), descending
            pairs = ranked[..., k - 1 : k + 1].tolist()  # (B, H, 2): the k-th and (k+1)-th
            ties = any(p == q for item in pairs for p, q in item)  # (host compare: no kernels)
            return None if ties else (None, index[..., :k])
        top, some = _top_tokens(s, valid, self.keep_rate, lengths)
        if some is None:
            return None, None
        if int(top.sum(-1).amax()) > some.shape[-1]:
            return None
        return (top if min(ks) < k else None), some

    def compiled_product(
        self,
        w: torch.Tensor,
        v: torch.Tensor,
        s: torch.Tensor,
        valid: torch.Tensor,
        lengths: list[int],
        offsets: tuple[int, ...],
    ) -> torch.Tensor:
        """(W * M) V for torch.compile: no host branch (ties included), W read by one full product.

        (W * M) V = t (W (t V)) + (W * M_s * (1 - t t^T)) V, t the top tokens as 0/1 (B, H, T):
        the dense product is the vanilla Transformer's own, the band's diagonals are few.
        """
        if not self.use_dynamic:
            return _add_band(None, w, v, offsets)
        top = _top_tokens_by_count(s, valid, self.keep_rate, lengths).to(w.dtype)  # (B, H, T)
        y = top[..., None] * (w @ (top[..., None] * v))  # (B, H, T, Dh)
        return _add_band(y, w, v, offsets, top)


def _add_band(
    y: torch.Tensor | None,
    w: torch.Tensor,
    v: torch.Tensor,
    offsets: tuple[int, ...],
    top: torch.Tensor | None = None,
) -> torch.Tensor:
    """y + (W * M_s) V, diagonal by diagonal, in place (y None: a new tensor); with ``top``
    (B, H, T) as 0/1, only on the pairs (a, b) that are not both top tokens.

    y, v (B, H, T, Dh), w (B, H, T, T) -> (B, H, T, Dh)
    """
    t = w.shape[-1]
    for o in sorted(set(offsets)):
        if o >= t:
            continue
        for d in (o, -o) if o else (0,):
            a, b = slice(max(-d, 0), t - max(d, 0)), slice(max(d, 0), t - max(-d, 0))  # b = a + d
            diag = w.diagonal(d, -2, -1)  # (B, H, T - o)
            if top is not None:
                diag = diag * (1 - top[..., a] * top[..., b])
            if y is None and d == 0:
                y = diag[..., None] * v  # the main diagonal first: no zeros to add to
                continue
            y = torch.zeros_like(v) if y is None else y
            y[..., a, :].addcmul_(diag[..., None], v[..., b, :])
    return torch.zeros_like(v) if y is None else y


def plain_attention_reference(
    x: torch.Tensor, valid: torch.Tensor, attn: DropAttention
) -> torch.Tensor:
    """The same projections through ``F.scaled_dot_product_attention`` (for tests and checks)."""
    b, t, d = x.shape
    q, k, v = attn.qkv(x).view(b, t, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    y = F.scaled_dot_product_attention(q, k, v, attn_mask=valid[:, None, None, :])  # (B, H, T, Dh)
    return attn.out(y.transpose(1, 2).reshape(b, t, d))
