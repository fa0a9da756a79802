"""Where in a window DropFormer listened (sans-I/O): the compact ``importance``
object an estimate may carry, for the dashboard's heat strip (the paper's Figure 6).

The engine hands each window's :class:`TokenImportance` (the last layer's
importance S per token on the window's time axis, and which tokens the Token
Dropout Module dropped in any layer); :func:`summarise` turns it and the
window's samples into a small JSON object:

``layer``
    the 1-based layer whose importance is shown (the last one).
``tokens``
    tokens in the window (the model's frames: 50 per second of audio).
``values``
    at most :data:`MAX_IMPORTANCE_POINTS` numbers: the window cut into equal
    spans of tokens, each the mean importance of the span's tokens that
    reached the last layer, scaled so that the window's least important span
    is 0 and its most important is 1 (all 0 when they are equal); ``null``
    for a span whose every token was dropped before the last layer.
``dropped``
    which tokens TDM dropped, as a bitmask in lowercase hex: character ``k``
    holds tokens ``4k .. 4k+3``, the first token in its highest bit
    (``"8"`` = only token ``4k``); ``ceil(tokens / 4)`` characters.
``envelope``
    at most :data:`MAX_ENVELOPE_POINTS` numbers in [0, 1]: the peak absolute
    sample of equal spans of the window, to draw its waveform.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np

MAX_IMPORTANCE_POINTS: Final = 50
MAX_ENVELOPE_POINTS: Final = 100


@dataclass(frozen=True)
class TokenImportance:
    """One window's token importance from the model (see the module docstring)."""

    values: np.ndarray = field(repr=False)
    """(T,) float: the last layer's importance per token; NaN where the token was dropped before it."""
    dropped: np.ndarray = field(repr=False)
    """(T,) bool: True where TDM dropped the token in some layer (it did not reach the pooling)."""
    layer: int
    """1-based index of the layer ``values`` come from."""

    def __post_init__(self) -> None:
        if self.values.shape != self.dropped.shape or self.values.ndim != 1:
            raise ValueError(
                f"importance values {self.values.shape} and dropped {self.dropped.shape} must be equal 1-D shapes"
            )


def spans(n: int, max_points: int) -> list[tuple[int, int]]:
    """``n`` items cut into ``min(n, max_points)`` consecutive, near-equal ``[start, end)`` spans."""
    k = min(n, max_points)
    edges = [round(i * n / k) for i in range(k + 1)] if k else [0]
    return [(edges[i], edges[i + 1]) for i in range(k)]


def downsample_importance(
    values: np.ndarray, max_points: int = MAX_IMPORTANCE_POINTS
) -> list[float | None]:
    """Span means of the finite values, min-max scaled to [0, 1] (None: no finite value)."""
    x = np.asarray(values, dtype=np.float64)
    means: list[float | None] = []
    for a, b in spans(len(x), max_points):
        part = x[a:b]
        part = part[np.isfinite(part)]
        means.append(float(part.mean()) if part.size else None)
    present = [m for m in means if m is not None]
    if not present:
        return means
    low, high = min(present), max(present)
    scale = high - low
    return [
        None if m is None else (round((m - low) / scale, 3) if scale > 0 else 0.0) for m in means
    ]


def dropped_hex(dropped: np.ndarray) -> str:
    """The bitmask of dropped tokens as hex (see the module docstring)."""
    bits = np.asarray(dropped, dtype=bool)
    pad = (-len(bits)) % 4
    nibbles = np.concatenate([bits, np.zeros(pad, dtype=bool)]).reshape(-1, 4).astype(np.int64)
    return "".join("0123456789abcdef"[int(v)] for v in nibbles @ np.array([8, 4, 2, 1]))


def parse_dropped_hex(text: str, tokens: int) -> np.ndarray:
    """Inverse of :func:`dropped_hex`: (tokens,) bool. Raises ValueError on a malformed mask."""
    if len(text) != math.ceil(tokens / 4):
        raise ValueError(
            f"a mask of {tokens} tokens has {math.ceil(tokens / 4)} hex digits, got {len(text)}"
        )
    bits = [(int(ch, 16) >> (3 - j)) & 1 for ch in text for j in range(4)]
    return np.array(bits[:tokens], dtype=bool)


def envelope(samples: np.ndarray, max_points: int = MAX_ENVELOPE_POINTS) -> list[float]:
    """Peak absolute sample of each of at most ``max_points`` equal spans, in [0, 1]."""
    x = np.abs(np.asarray(samples, dtype=np.float32))
    return [round(min(1.0, float(x[a:b].max())), 3) for a, b in spans(len(x), max_points)]


def summarise(importance: TokenImportance, window_envelope: list[float]) -> dict[str, Any]:
    """The estimate's ``importance`` object (see the module docstring)."""
    return {
        "layer": int(importance.layer),
        "tokens": len(importance.values),
        "values": downsample_importance(importance.values),
        "dropped": dropped_hex(importance.dropped),
        "envelope": list(window_envelope),
    }
