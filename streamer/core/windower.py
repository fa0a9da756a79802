"""Cut a stream of audio frames into overlapping analysis windows (sans-I/O).

Time is a sample index. Full window ``k`` covers samples
``[k * hop_samples, k * hop_samples + window_samples)`` and is emitted as soon
as its last sample has been pushed, whatever the sizes of the pushed frames.

``hop_s > window_s`` is allowed: windows then skip the audio between them
(a low duty cycle that saves compute); those samples are never buffered.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from dropformer.errors import ConfigError

FirstWindow = Literal["full", "early"]


@dataclass(frozen=True)
class Window:
    """One analysis window: samples ``[start_sample, end_sample)`` of the stream."""

    index: int
    start_sample: int
    end_sample: int
    samples: np.ndarray = field(repr=False)

    @property
    def duration_samples(self) -> int:
        """Length of the window in samples."""
        return self.end_sample - self.start_sample


def _to_samples(name: str, value_s: float, sample_rate_hz: int, *, allow_zero: bool = False) -> int:
    """Convert seconds to a whole number of samples, or raise ConfigError naming ``name``."""
    if not isinstance(value_s, (int, float)) or not math.isfinite(value_s):
        raise ConfigError(f"{name} must be a finite number of seconds, got {value_s!r}")
    n = round(value_s * sample_rate_hz)
    if n < (0 if allow_zero else 1):
        raise ConfigError(
            f"{name}={value_s} s is less than one sample at {sample_rate_hz} Hz; "
            f"set {name} to at least {1 / sample_rate_hz:.6f}"
        )
    return n


def _check_params(
    sample_rate_hz: int, window_s: float, hop_s: float, first_window: str, min_window_s: float
) -> tuple[int, int, int]:
    """Validate windowing parameters; return (window, hop, min_window) in samples."""
    if not isinstance(sample_rate_hz, int) or sample_rate_hz <= 0:
        raise ConfigError(f"sample_rate_hz must be a positive integer, got {sample_rate_hz!r}")
    if first_window not in ("full", "early"):
        raise ConfigError(f"first_window must be 'full' or 'early', got {first_window!r}")
    window = _to_samples("window_s", window_s, sample_rate_hz)
    hop = _to_samples("hop_s", hop_s, sample_rate_hz)
    min_window = _to_samples("min_window_s", min_window_s, sample_rate_hz)
    if min_window > window:
        raise ConfigError(
            f"min_window_s={min_window_s} exceeds window_s={window_s}; set min_window_s <= window_s"
        )
    return window, hop, min_window


class Windower:
    """Stateful windower: ``push`` frames, get every window that became complete.

    Args:
        sample_rate_hz: samples per second of the pushed frames (default 16000).
        window_s: window length in seconds (default 3.0).
        hop_s: distance between window starts in seconds (default 1.0); may
            exceed ``window_s`` (audio between windows is then skipped).
        first_window: ``"full"`` (default) waits for the first full window;
            ``"early"`` also emits growing windows ``[0, j * hop)`` at each hop
            once ``min_window_s`` is available, until the first full window.
        min_window_s: shortest window ever emitted (early windows and the
            final ``flush`` window), in seconds (default 1.0).

    Memory: the buffer holds at most ``window_samples`` samples between calls
    (``window_samples`` plus one push while ``push`` runs).
    """

    def __init__(
        self,
        sample_rate_hz: int = 16000,
        window_s: float = 3.0,
        hop_s: float = 1.0,
        first_window: FirstWindow = "full",
        min_window_s: float = 1.0,
    ) -> None:
        self.window_samples, self.hop_samples, self.min_window_samples = _check_params(
            sample_rate_hz, window_s, hop_s, first_window, min_window_s
        )
        self.sample_rate_hz = sample_rate_hz
        self.first_window: FirstWindow = first_window
        self.reset()

    def reset(self) -> None:
        """Forget all samples and start a new stream at sample 0."""
        self._buf = np.zeros(0, dtype=np.float32)
        self._buf_start = 0  # absolute index of self._buf[0]
        self._total = 0  # samples pushed so far
        self._next_full = 0  # index k of the next full window
        self._next_early = 1  # j of the next early window [0, j * hop)
        self._last_end = 0  # end sample of the last emitted window
        self._count = 0  # windows emitted
        self._flushed = False

    @property
    def total_samples(self) -> int:
        """Samples pushed since the start (or the last ``reset``)."""
        return self._total

    @property
    def buffered_samples(self) -> int:
        """Samples held in memory right now."""
        return int(self._buf.size)

    def _slice(self, start: int, end: int) -> np.ndarray:
        a = start - self._buf_start
        return self._buf[a : a + (end - start)].copy()

    def _emit(self, start: int, end: int, out: list[Window]) -> None:
        out.append(Window(self._count, start, end, self._slice(start, end)))
        self._count += 1
        self._last_end = end

    def push(self, frames: np.ndarray) -> list[Window]:
        """Append ``frames`` (1-D, any length, 0 included); return completed windows."""
        if self._flushed:
            raise RuntimeError("Windower.push after flush(): call reset() to start a new stream")
        frames = np.asarray(frames, dtype=np.float32)
        if frames.ndim != 1:
            raise ValueError(f"frames must be 1-D (mono), got shape {frames.shape}")
        self._buf = np.concatenate([self._buf, frames]) if self._buf.size else frames.copy()
        self._total += frames.size
        out: list[Window] = []
        w, h = self.window_samples, self.hop_samples
        if self.first_window == "early" and self._next_full == 0:
            while self._next_early * h < w and self._next_early * h <= self._total:
                end = self._next_early * h
                self._next_early += 1
                if end >= self.min_window_samples:
                    self._emit(0, end, out)
        while self._next_full * h + w <= self._total:
            start = self._next_full * h
            self._next_full += 1
            self._emit(start, start + w, out)
        self._trim()
        return out

    def _trim(self) -> None:
        # Keep what the next full window needs and the last window_samples
        # (for flush); with hop <= window the latter always covers the former.
        keep_from = max(
            0, min(self._next_full * self.hop_samples, self._total - self.window_samples)
        )
        drop = keep_from - self._buf_start
        if drop > 0:
            self._buf = self._buf[drop:]
            self._buf_start = keep_from

    def flush(self) -> list[Window]:
        """End of stream: emit one last window ending at the last sample, if due.

        A window ``[max(0, total - window), total)`` is emitted when samples
        after the last emitted window's end exist and at least ``min_window_s``
        is available. Further ``push`` calls raise until ``reset``.
        """
        if self._flushed:
            return []
        self._flushed = True
        out: list[Window] = []
        available = min(self.window_samples, self._total)
        if self._total > self._last_end and available >= self.min_window_samples:
            self._emit(self._total - available, self._total, out)
        return out


def expected_window_count(
    n_samples: int,
    sample_rate_hz: int = 16000,
    window_s: float = 3.0,
    hop_s: float = 1.0,
    first_window: FirstWindow = "full",
    min_window_s: float = 1.0,
    flush: bool = True,
) -> int:
    """Number of windows a :class:`Windower` emits for ``n_samples`` samples (closed form)."""
    w, h, m = _check_params(sample_rate_hz, window_s, hop_s, first_window, min_window_s)
    full = (n_samples - w) // h + 1 if n_samples >= w else 0
    last_end = (full - 1) * h + w if full else 0
    early = 0
    if first_window == "early":
        lo = -(-m // h)  # first j with j * h >= min_window
        hi = min((w - 1) // h, n_samples // h)  # j * h < window and available
        early = max(0, hi - lo + 1)
        if early and not full:
            last_end = hi * h
    tail = 1 if flush and n_samples > last_end and min(w, n_samples) >= m else 0
    return full + early + tail
