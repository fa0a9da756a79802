"""Streaming mix-down and resampling to 16 kHz (a thin wrapper over soxr)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import soxr

from dropformer.errors import AudioError
from streamer.sources.base import OUTPUT_RATE_HZ, Frame


class StreamResampler:
    """Turn blocks of ``channels``-channel audio at ``in_rate_hz`` into mono
    ``float32`` at ``out_rate_hz``, keeping filter state between blocks.

    Channels are averaged first (one resampler instead of one per channel).
    When the rates are equal no filter runs and blocks pass through unchanged
    (NaN samples included). Call :meth:`flush` once at the end of the stream
    to get the last few samples held in the filter.
    """

    def __init__(
        self,
        in_rate_hz: float,
        out_rate_hz: float = OUTPUT_RATE_HZ,
        channels: int = 1,
        *,
        quality: str = "HQ",
    ) -> None:
        for name, rate in (("in_rate_hz", in_rate_hz), ("out_rate_hz", out_rate_hz)):
            if not np.isfinite(rate) or rate <= 0:
                raise AudioError(
                    f"sample_rate_hz ({name}) must be a positive number of hertz, got {rate!r}; "
                    "check the device's or file's sample rate"
                )
        if int(channels) != channels or channels < 1:
            raise AudioError(f"channels must be a positive integer, got {channels!r}")
        self.in_rate_hz = float(in_rate_hz)
        self.out_rate_hz = float(out_rate_hz)
        self.channels = int(channels)
        self._stream: soxr.ResampleStream | None = None
        if self.in_rate_hz != self.out_rate_hz:
            self._stream = soxr.ResampleStream(
                self.in_rate_hz, self.out_rate_hz, 1, dtype="float32", quality=quality
            )

    def _mono(self, block: npt.ArrayLike) -> Frame:
        a = np.asarray(block, dtype=np.float32)
        if a.ndim == 1 and self.channels == 1:
            return a
        if a.ndim == 2 and a.shape[1] == self.channels:
            return a.mean(axis=1, dtype=np.float32) if self.channels > 1 else a[:, 0]
        raise AudioError(
            f"audio block has shape {a.shape}, expected (samples,) or (samples, {self.channels}) "
            f"for channels={self.channels}"
        )

    def push(self, block: npt.ArrayLike) -> Frame:
        """Resample one block; returns the samples ready so far (may be empty)."""
        mono = self._mono(block)
        if self._stream is None:
            return np.array(mono, dtype=np.float32, copy=True)
        out = self._stream.resample_chunk(np.ascontiguousarray(mono), last=False)
        return np.asarray(out, dtype=np.float32)

    def flush(self) -> Frame:
        """End the stream: return the samples still held in the filter."""
        if self._stream is None:
            return np.zeros(0, dtype=np.float32)
        out = self._stream.resample_chunk(np.zeros(0, dtype=np.float32), last=True)
        return np.asarray(out, dtype=np.float32)
