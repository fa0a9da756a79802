"""Speech gates: decide whether a window holds enough speech to classify (sans-I/O).

Levels are in dBFS of the RMS: ``20 * log10(rms)`` for float samples in
[-1, 1], so a full-scale square wave is 0 dBFS and a full-scale sine -3 dBFS.
Digital silence is reported as :data:`SILENCE_DBFS` (-120), never ``-inf``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np

from dropformer.errors import ConfigError

SILENCE_DBFS = -120.0
"""Level reported for digital silence (keeps every level finite and JSON-safe)."""


@dataclass(frozen=True)
class GateDecision:
    """A gate's verdict on one window.

    ``speech_share`` is the fraction of the window's frames judged speech
    (0..1); ``level_dbfs`` is the RMS level of the whole window.
    ``frame_speech`` (optional) is the verdict on each consecutive frame of
    ``frame_samples`` samples from the window's start (the last one may be
    short): the stream core cuts utterances at this finer grain. A gate that
    leaves it ``None`` is taken to judge the whole window alike.
    """

    speech: bool
    speech_share: float
    level_dbfs: float
    frame_speech: np.ndarray | None = field(default=None, compare=False, repr=False)
    frame_samples: int = 0


@runtime_checkable
class Gate(Protocol):
    """What the stream state machine needs from a voice-activity gate."""

    def decide(self, samples: np.ndarray) -> GateDecision:
        """Judge one window of 1-D float32 samples."""
        ...

    def reset(self) -> None:
        """Forget any state carried between windows (new stream)."""
        ...


def level_dbfs(samples: np.ndarray) -> float:
    """RMS level of ``samples`` in dBFS, floored at :data:`SILENCE_DBFS`."""
    if samples.size == 0:
        return SILENCE_DBFS
    rms = float(np.sqrt(np.mean(np.square(samples, dtype=np.float64))))
    return max(SILENCE_DBFS, 20.0 * math.log10(rms)) if rms > 0 else SILENCE_DBFS


def frame_levels_dbfs(samples: np.ndarray, frame_samples: int) -> np.ndarray:
    """RMS level in dBFS of each consecutive frame (a short last frame is kept if non-empty)."""
    n = samples.size
    if n == 0:
        return np.zeros(0)
    n_frames = -(-n // frame_samples)
    padded = np.zeros(n_frames * frame_samples, dtype=np.float64)
    padded[:n] = samples
    power = np.square(padded).reshape(n_frames, frame_samples).sum(axis=1)
    counts = np.full(n_frames, frame_samples, dtype=np.float64)
    counts[-1] = n - (n_frames - 1) * frame_samples
    with np.errstate(divide="ignore"):
        db = 10.0 * np.log10(power / counts)
    return np.maximum(db, SILENCE_DBFS)


class EnergyGate:
    """Energy gate with hysteresis, and an optional adaptive noise floor.

    Each ``frame_ms`` frame is speech when its RMS level is at least the
    threshold, or at least ``threshold - hysteresis_db`` while the previous
    frame was speech. A window is speech when the share of speech frames is
    at least ``min_speech_share``.

    Args:
        sample_rate_hz: sample rate of the windows (default 16000).
        frame_ms: frame length in milliseconds (default 30).
        threshold_dbfs: fixed threshold (default -45 dBFS: passes normal
            speech, rejects digital silence and -60 dBFS noise).
        hysteresis_db: how far below the threshold a running speech segment
            may dip and stay speech (default 6 dB).
        min_speech_share: share of speech frames that makes a speech window
            (default 0.2).
        noise_floor_margin_db: ``None`` (default) keeps the threshold fixed.
            A number turns on the adaptive noise floor: the threshold becomes
            ``max(threshold_dbfs, noise_floor + margin)``, where the noise floor
            tracks the 10th percentile of frame levels per window, following
            drops at once and rises with factor ``noise_floor_rise`` per window.
            This state carries across windows; ``reset`` clears it.
        noise_floor_rise: 0..1, how fast the floor rises (default 0.1).
    """

    def __init__(
        self,
        sample_rate_hz: int = 16000,
        frame_ms: float = 30.0,
        threshold_dbfs: float = -45.0,
        hysteresis_db: float = 6.0,
        min_speech_share: float = 0.2,
        noise_floor_margin_db: float | None = None,
        noise_floor_rise: float = 0.1,
    ) -> None:
        if sample_rate_hz <= 0:
            raise ConfigError(f"sample_rate_hz must be positive, got {sample_rate_hz}")
        self.frame_samples = round(frame_ms * sample_rate_hz / 1000)
        if self.frame_samples < 1:
            raise ConfigError(f"frame_ms={frame_ms} is shorter than one sample; use e.g. 30")
        if hysteresis_db < 0:
            raise ConfigError(f"hysteresis_db must be >= 0, got {hysteresis_db}")
        if not 0.0 <= min_speech_share <= 1.0:
            raise ConfigError(f"min_speech_share must lie in [0, 1], got {min_speech_share}")
        if not 0.0 < noise_floor_rise <= 1.0:
            raise ConfigError(f"noise_floor_rise must lie in (0, 1], got {noise_floor_rise}")
        self.threshold_dbfs = threshold_dbfs
        self.hysteresis_db = hysteresis_db
        self.min_speech_share = min_speech_share
        self.noise_floor_margin_db = noise_floor_margin_db
        self.noise_floor_rise = noise_floor_rise
        self.noise_floor_dbfs: float | None = None

    def reset(self) -> None:
        """Forget the adaptive noise floor."""
        self.noise_floor_dbfs = None

    def effective_threshold_dbfs(self) -> float:
        """The threshold in force now (fixed, or raised by the noise floor)."""
        if self.noise_floor_margin_db is None or self.noise_floor_dbfs is None:
            return self.threshold_dbfs
        return max(self.threshold_dbfs, self.noise_floor_dbfs + self.noise_floor_margin_db)

    def _track_floor(self, levels: np.ndarray) -> None:
        low = float(np.percentile(levels, 10))
        floor = self.noise_floor_dbfs
        if floor is None or low < floor:
            self.noise_floor_dbfs = low
        else:
            self.noise_floor_dbfs = floor + self.noise_floor_rise * (low - floor)

    def decide(self, samples: np.ndarray) -> GateDecision:
        """Judge one window."""
        levels = frame_levels_dbfs(np.asarray(samples), self.frame_samples)
        if levels.size == 0:
            return GateDecision(False, 0.0, SILENCE_DBFS)
        if self.noise_floor_margin_db is not None:
            self._track_floor(levels)
        on = self.effective_threshold_dbfs()
        hold = on - self.hysteresis_db
        flags = np.zeros(levels.size, dtype=bool)
        previous = False
        for i, lv in enumerate(levels.tolist()):
            previous = flags[i] = lv >= on or (previous and lv >= hold)
        share = int(flags.sum()) / levels.size
        return GateDecision(
            share >= self.min_speech_share,
            share,
            level_dbfs(np.asarray(samples)),
            flags,
            self.frame_samples,
        )
