"""Cheap measures of how well a stretch of audio can be judged at all (sans-I/O, numpy only).

:func:`measure` turns the samples of a window or an utterance (1-D float in
[-1, 1], mono) into a :class:`~streamer.core.events.Quality`:

- ``level_dbfs``: RMS level, floored at :data:`~streamer.core.gate.SILENCE_DBFS` (-120).
- ``clipping``: share of samples with ``|x| >= 0.999`` (full-scale peaks: the
  source overdrives; the model never saw such distortion).
- ``snr_db``: a blind signal-to-noise estimate from short-frame powers: the
  loud frames' power (90th percentile) less the noise floor (10th percentile),
  over the noise floor. Clean speech with pauses scores 30-100 dB, speech in
  white noise of equal power about 5 dB, steady noise alone about 0 dB or below.
  Both powers are floored at -120 dBFS, so digital silence gives 0 dB, not NaN.
- ``bandwidth_hz``: the frequency below which 99% of the spectral energy lies
  (Welch's averaged periodogram of consecutive Hann frames of 32 ms, computed
  with ``numpy.fft.rfft``). Wideband speech lies at 3.5-7 kHz, speech
  through a telephone line at 2.5-3.5 kHz; so it describes, it does not decide.
- ``telephone_band``: the audio is loud enough to judge (``level_dbfs`` above
  :data:`MIN_JUDGE_DBFS`) and carries almost no energy above
  :data:`TELEPHONE_EDGE_HZ` (less than :data:`TELEPHONE_HIGH_SHARE_DB` of the
  total). Wideband speech keeps -10 to -25 dB of its energy above 4 kHz; a
  telephone path (8 kHz sampling, G.711) leaves -80 dB or less, so the flag does
  not depend on the voice. At a sample rate of 8 kHz or less every audible
  signal is telephone band.

Costs 1-2 ms for a 3 s window at 16 kHz (most of it the spectrum).
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

from streamer.core.events import Quality
from streamer.core.gate import SILENCE_DBFS

CLIP_LEVEL = 0.999
"""A sample at or above this magnitude counts as clipped."""
SNR_FRAME_S = 0.02
"""Frame length of the SNR estimate, in seconds."""
SPECTRUM_FRAME_S = 0.032
"""Frame length of the spectrum (band limit, telephone band), in seconds."""
BAND_SHARE = 0.99
"""``bandwidth_hz`` is where the cumulative spectral energy reaches this share."""
TELEPHONE_EDGE_HZ = 4000.0
"""Upper edge of telephone bandwidth (8 kHz sampling)."""
TELEPHONE_HIGH_SHARE_DB = -40.0
"""Audio with less than this share of its energy (dB) above the edge is telephone band."""
MIN_JUDGE_DBFS = -60.0
"""Below this RMS level the band is not judged (``telephone_band`` is false)."""
_FLOOR_POWER = 10.0 ** (SILENCE_DBFS / 10.0)


def _db(power: float) -> float:
    return 10.0 * math.log10(max(power, _FLOOR_POWER))


def _frame_powers(x: np.ndarray, frame: int) -> np.ndarray:
    """Mean power of each whole ``frame``-sample frame (the whole signal when shorter)."""
    n = x.size // frame
    if n == 0:
        return np.array([float(np.mean(np.square(x, dtype=np.float64)))])
    return np.mean(np.square(x[: n * frame].reshape(n, frame), dtype=np.float64), axis=1)


@lru_cache(maxsize=8)
def _hann(frame: int) -> np.ndarray:
    window: np.ndarray = np.hanning(frame).astype(np.float32)
    return window


def _spectrum(x: np.ndarray, frame: int) -> np.ndarray:
    """Welch's power spectrum: mean |rfft|^2 of consecutive Hann-windowed frames (no overlap:
    half the cost, and the band limit does not need the variance that overlap saves)."""
    if x.size < frame:
        x = np.concatenate([x, np.zeros(frame - x.size, dtype=x.dtype)])
    n = x.size // frame
    spec = np.fft.rfft(x[: n * frame].reshape(n, frame) * _hann(frame), axis=1)
    power: np.ndarray = np.mean(spec.real**2 + spec.imag**2, axis=0)
    return power


def measure(samples: np.ndarray, sample_rate_hz: int = 16000) -> Quality:
    """The quality measures of ``samples`` (1-D float, [-1, 1]) at ``sample_rate_hz``.

    Raises ValueError for anything but 1-D audio or a non-positive rate.
    Every value is finite, also for empty or all-zero input.
    """
    x = np.asarray(samples, dtype=np.float32)
    if x.ndim != 1:
        raise ValueError(f"samples must be 1-D mono, got shape {x.shape}")
    if sample_rate_hz <= 0:
        raise ValueError(f"sample_rate_hz must be positive, got {sample_rate_hz}")
    if x.size == 0:
        return Quality(SILENCE_DBFS, 0.0, 0.0, 0.0, False)
    x = np.nan_to_num(x, nan=0.0, posinf=1.0, neginf=-1.0)
    level = min(0.0, _db(float(np.mean(np.square(x, dtype=np.float64)))))
    clipping = float(np.count_nonzero(np.abs(x) >= CLIP_LEVEL)) / x.size

    powers = _frame_powers(x, max(1, round(SNR_FRAME_S * sample_rate_hz)))
    noise = max(float(np.percentile(powers, 10)), _FLOOR_POWER)
    loud = float(np.percentile(powers, 90))
    snr = _db(max(loud - noise, _FLOOR_POWER)) - _db(noise)

    frame = max(2, round(SPECTRUM_FRAME_S * sample_rate_hz))
    spectrum = _spectrum(x, frame)
    freqs = np.fft.rfftfreq(frame, 1.0 / sample_rate_hz)
    total = float(spectrum.sum())
    if total <= 0.0 or not math.isfinite(total):
        return Quality(level, clipping, snr, 0.0, False)
    cumulative = np.cumsum(spectrum) / total
    bandwidth = float(freqs[min(int(np.searchsorted(cumulative, BAND_SHARE)), freqs.size - 1)])
    if sample_rate_hz <= 2 * TELEPHONE_EDGE_HZ:
        narrow = True
    else:
        high = float(spectrum[freqs >= TELEPHONE_EDGE_HZ].sum()) / total
        narrow = _db(high) < TELEPHONE_HIGH_SHARE_DB
    return Quality(level, clipping, snr, bandwidth, narrow and level > MIN_JUDGE_DBFS)
