"""Per-stream feature normalisation: running statistics that start from the training prior.

A live stream is one voice on one channel for minutes. Standardising each
feature dimension by that stream's own statistics removes what belongs to the
speaker and the channel (pitch range, timbre, microphone, room, level) and
keeps what makes this moment differ from the speaker's usual voice: the
emotion. An utterance classifier cannot do this; a monitor gets it for free.

:class:`StreamNormalizer` (numpy only: it lives in the daemon's sans-I/O
per-stream core, and the same class replays each training speaker as a stream)
keeps exponentially forgetting sums of the stream's speech frames and blends
them with the training data's statistics (the prior)::

    mean = (w0 * prior_mean + S1) / (w0 + S0)          S0: frames seen, decayed (at most ~H)
    var  = (w0 * (prior_var + prior_mean^2) + S2) / (w0 + S0) - mean^2

``w0`` is the prior's weight in frames (``prior_s`` seconds) and the sums
forget with ``time_constant_s``, so the stream's share is bounded by
``time_constant_s / (prior_s + time_constant_s)``. That bound is the guard
against the trap of per-stream statistics: a voice that stays angry for
minutes must not be normalised into neutral.

Causality: a window is normalised with the statistics *before* it, then its
frames are folded in. Training replays each speaker's utterances in a random
order from a random warm-up state (:func:`replay_streams`), so the model sees
exactly the normalisation the daemon will apply, from a stream's first second
to its hundredth minute.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from dropformer.errors import ConfigError


@dataclass
class StreamNormConfig:
    """How a checkpoint's features are normalised per stream (recorded in the checkpoint)."""

    kind: str = "none"
    """'stream' (running per-stream statistics blended with the training prior) or 'none'."""
    prior_s: float = 10.0
    """Weight of the training prior, in seconds of speech: after this much speech the stream counts as much."""
    time_constant_s: float = 60.0
    """The stream's running sums forget with this time constant, in seconds of speech."""
    variance: bool = True
    """Also divide by the blended standard deviation (False: subtract the blended mean only)."""
    frame_rate_hz: float = 50.0
    """Feature frames per second of audio."""
    eps: float = 1e-5
    """Added to the variance before the square root."""

    def __post_init__(self) -> None:
        if self.kind not in ("stream", "none"):
            raise ConfigError(f"stream_norm.kind = {self.kind!r}; use 'stream' or 'none'")
        for name in ("prior_s", "time_constant_s", "frame_rate_hz", "eps"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"stream_norm.{name} = {getattr(self, name)} must be > 0")

    @property
    def enabled(self) -> bool:
        return self.kind == "stream"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StreamNormConfig:
        from dropformer.configio import (
            dataclass_from_dict,  # lazily: the sans-I/O core imports this module
        )

        return dataclass_from_dict(cls, dict(data), "stream_norm")


@dataclass(frozen=True)
class Moments:
    """Frame count, per-dimension mean and mean square of a block of feature frames."""

    count: float
    mean: np.ndarray  # (D,)
    second: np.ndarray  # (D,)

    @classmethod
    def of(cls, frames: np.ndarray) -> Moments:
        x = np.asarray(frames, dtype=np.float64)  # (T, D)
        return cls(float(len(x)), x.mean(0), (x**2).mean(0))


class StreamNormalizer:
    """Running statistics of one stream's features, blended with the training prior (numpy only)."""

    def __init__(
        self, prior_mean: np.ndarray, prior_var: np.ndarray, config: StreamNormConfig
    ) -> None:
        self.config = config
        self.prior_mean = np.asarray(prior_mean, dtype=np.float64)  # (D,)
        self.prior_second = np.asarray(prior_var, dtype=np.float64) + self.prior_mean**2
        self.prior_frames = config.prior_s * config.frame_rate_hz
        self.horizon_frames = config.time_constant_s * config.frame_rate_hz
        self.reset()

    def reset(self) -> None:
        """Forget the stream (a new caller on the same line): back to the prior."""
        self.frames = 0.0  # S0: decayed frame count
        self.sum1 = np.zeros_like(self.prior_mean)  # S1
        self.sum2 = np.zeros_like(self.prior_mean)  # S2
        self.speech_s = 0.0  # seconds of speech folded in (not decayed)

    def update(self, block: Moments | np.ndarray) -> None:
        """Fold a block of speech frames (T, D), or its :class:`Moments`, into the running sums."""
        m = block if isinstance(block, Moments) else Moments.of(block)
        if m.count <= 0:
            return
        decay = float(np.exp(-m.count / self.horizon_frames))
        weight = (1.0 - decay) / (
            1.0 - float(np.exp(-1.0 / self.horizon_frames))
        )  # a per-frame EMA's, any block size
        self.frames = self.frames * decay + weight
        self.sum1 = self.sum1 * decay + weight * m.mean
        self.sum2 = self.sum2 * decay + weight * m.second
        self.speech_s += m.count / self.config.frame_rate_hz

    def stats(self) -> tuple[np.ndarray, np.ndarray]:
        """Current ``(mean, std)`` (float32, (D,)) to standardise the next window with."""
        w = self.prior_frames + self.frames
        mean = (self.prior_frames * self.prior_mean + self.sum1) / w
        if self.config.variance:
            second = (self.prior_frames * self.prior_second + self.sum2) / w
        else:
            second = (
                self.prior_second - self.prior_mean**2 + mean**2
            )  # prior variance around the blended mean
        std = np.sqrt(np.maximum(second - mean**2, 0.0) + self.config.eps)
        return mean.astype(np.float32), std.astype(np.float32)

    @property
    def stream_share(self) -> float:
        """How much the stream (vs the prior) weighs in the statistics now, in [0, 1)."""
        return self.frames / (self.prior_frames + self.frames)

    def normalize(self, frames: np.ndarray) -> np.ndarray:
        """``frames`` (T, D) standardised by the current statistics (float32)."""
        mean, std = self.stats()
        return ((np.asarray(frames, dtype=np.float32) - mean) / std).astype(np.float32)

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        """Normalise ``frames`` with the statistics before them, then fold them in (the live order)."""
        out = self.normalize(frames)
        self.update(frames)
        return out


def prior_from(features: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Pooled per-dimension mean and variance over every frame of ``features`` (each (T, D))."""
    count, s1, s2 = 0.0, 0.0, 0.0
    for f in features:
        x = np.asarray(f, dtype=np.float64)
        count += len(x)
        s1 = s1 + x.sum(0)
        s2 = s2 + (x**2).sum(0)
    if count == 0:
        raise ConfigError("no feature frames to compute the normalisation prior from")
    mean = np.asarray(s1) / count
    return mean, np.maximum(np.asarray(s2) / count - mean**2, 0.0)


def replay_streams(
    streams: Mapping[str, Sequence[str]],
    features: Mapping[str, np.ndarray],
    prior: tuple[np.ndarray, np.ndarray],
    config: StreamNormConfig,
    rng: random.Random,
    warmup: bool = True,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The ``(mean, std)`` each utterance is normalised with when its speaker is replayed as a stream.

    ``streams`` maps a stream (a speaker) to its utterance ids. Each stream's
    utterances are played in an order drawn from ``rng``; with ``warmup`` the
    replay starts at a random point of a longer random history (each
    utterance may come early, with little adaptation, or late), so that
    training covers every state the live normaliser passes through.
    """
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for _, uids in sorted(streams.items()):
        order = [u for u in uids if u in features]
        rng.shuffle(order)
        norm = StreamNormalizer(prior[0], prior[1], config)
        if warmup and order:
            history = rng.sample(
                order, rng.randrange(len(order) + 1)
            )  # speech heard before this replay
            for uid in history:
                norm.update(features[uid])
            if rng.random() < 0.25:
                norm.reset()  # some streams start cold
        for uid in order:
            out[uid] = norm.stats()
            norm.update(features[uid])
    return out
