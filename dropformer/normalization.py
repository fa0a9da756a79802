"""Online per-stream normalisation of log-mel features (numpy only, usable live).

The log-mel front end normalises each input (utterance or live window) by its
own per-band mean and variance. :class:`OnlineNormalizer` instead keeps a
running per-band mean and variance for one *stream* (one microphone, one call
leg), so a window is normalised by the speaker's and channel's longer-term
statistics: the stream's level and channel colouring are removed, while what
makes this window differ from the speaker's usual voice is kept.

The daemon would keep one instance per stream, feed it the un-normalised
log-mel frames of each speech window (``FrontendConfig(normalize="none")``), and
pass the normalised frames to the model. Statistics are an exponential moving
average with time constant ``time_constant_s``; until that much audio has been
seen they are the plain cumulative average (no start-up bias).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from dropformer.data import Utterance


@dataclass
class OnlineNormConfig:
    """Settings of the per-stream running normalisation."""

    time_constant_s: float = 30.0
    """EMA time constant in seconds of (speech) audio fed to the normaliser."""
    frame_rate_hz: float = 50.0
    """Feature frames per second (the log-mel front end: 50)."""
    eps: float = 1e-5
    """Added to the variance before the square root."""


class OnlineNormalizer:
    """Running per-band mean/variance of one stream's features; stateful, numpy only."""

    def __init__(self, num_bands: int, config: OnlineNormConfig | None = None) -> None:
        self.config = config or OnlineNormConfig()
        self.num_bands = num_bands
        self.reset()

    def reset(self) -> None:
        """Forget the stream (e.g. a new caller on the same line)."""
        self.frames_seen = 0
        self.mean = np.zeros(self.num_bands, dtype=np.float64)
        self.second = np.ones(self.num_bands, dtype=np.float64)

    def update(self, frames: np.ndarray) -> None:
        """Fold ``frames`` (T, D) into the running statistics (one block update)."""
        x = np.asarray(frames, dtype=np.float64)
        n = len(x)
        if n == 0:
            return
        horizon = self.config.time_constant_s * self.config.frame_rate_hz
        # weight of the new block: cumulative average at first, then EMA with the time constant
        w = max(n / (self.frames_seen + n), 1.0 - (1.0 - 1.0 / horizon) ** n)
        self.mean = (1 - w) * self.mean + w * x.mean(0)
        self.second = (1 - w) * self.second + w * (x**2).mean(0)
        self.frames_seen += n

    @property
    def std(self) -> np.ndarray:
        return np.sqrt(np.maximum(self.second - self.mean**2, 0.0) + self.config.eps)

    def normalize(self, frames: np.ndarray) -> np.ndarray:
        """``frames`` standardised by the current statistics (float32)."""
        return ((np.asarray(frames, dtype=np.float64) - self.mean) / self.std).astype(np.float32)

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        """Update with ``frames``, then normalise them (what the live path does per window)."""
        self.update(frames)
        return self.normalize(frames)


def simulate_streams(utterances: Sequence[Utterance], feats: dict[str, np.ndarray], config: OnlineNormConfig,
                     seed: int = 0) -> dict[str, np.ndarray]:
    """Normalise corpus features as if each speaker were one live stream.

    Each speaker's utterances are played in a seeded random order through one
    :class:`OnlineNormalizer`; an utterance is normalised with the statistics
    right after it was fed (the live behaviour, causal within the stream).
    """
    by_speaker: dict[str, list[Utterance]] = {}
    for u in utterances:
        if u.uid in feats:
            by_speaker.setdefault(u.speaker, []).append(u)
    out: dict[str, np.ndarray] = {}
    for speaker, utts in sorted(by_speaker.items()):
        order = sorted(utts, key=lambda u: u.uid)
        random.Random(f"{seed}:{speaker}").shuffle(order)
        norm = OnlineNormalizer(next(iter(feats.values())).shape[1], config)
        for u in order:
            out[u.uid] = norm(feats[u.uid].astype(np.float32)).astype(np.float16)
    return out
