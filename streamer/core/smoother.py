"""Per-stream smoothing of class probabilities: time-based EMA plus hysteresis (sans-I/O).

The EMA weight of an update depends on the audio time elapsed since the
previous one, ``alpha = 1 - exp(-dt / tau)``, so smoothing is the same in
seconds whatever the hop: two updates 1 s apart with the same probabilities
equal one update 2 s later.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from dropformer.errors import ConfigError

SilencePolicy = Literal["hold", "decay"]


@dataclass(frozen=True)
class SmootherUpdate:
    """The smoothed state after one update.

    ``confidence`` is the smoothed score of ``label`` (which, thanks to the
    hysteresis, is not always the top score). ``transition`` is
    ``(from_label, to_label)`` when the label changed on this update; the
    first label ever set is not a transition.
    """

    scores: dict[str, float]
    label: str
    confidence: float
    transition: tuple[str, str] | None


class Smoother:
    """EMA of class probabilities with a label that switches reluctantly.

    Args:
        labels: class names, in the order of the probability vectors.
        sample_rate_hz: sample rate of the ``end_sample`` indices (default 16000).
        time_constant_s: EMA time constant tau in seconds (default 1.0; 0
            disables smoothing).
        switch_margin: the new top class must beat the current label's
            smoothed score by at least this much to take over (default 0.1).
        min_dwell_s: a label is kept at least this long, in audio seconds,
            before it may change (default 1.0).
        silence: ``"hold"`` (default) keeps the scores through silence and
            pauses the EMA clock, so speech after a pause blends in as if the
            pause had not happened; ``"decay"`` moves the scores toward a
            one-hot ``neutral_label`` (uniform when the labels have none) with
            ``decay_time_constant_s``.
        decay_time_constant_s: decay time constant in seconds (default 5.0).
        neutral_label: the label silence decays toward (default "neutral").
    """

    def __init__(
        self,
        labels: Sequence[str],
        *,
        sample_rate_hz: int = 16000,
        time_constant_s: float = 1.0,
        switch_margin: float = 0.1,
        min_dwell_s: float = 1.0,
        silence: SilencePolicy = "hold",
        decay_time_constant_s: float = 5.0,
        neutral_label: str = "neutral",
    ) -> None:
        self.labels = [str(x) for x in labels]
        if not self.labels or len(set(self.labels)) != len(self.labels):
            raise ConfigError(f"labels must be a non-empty list of distinct names, got {labels!r}")
        if sample_rate_hz <= 0:
            raise ConfigError(f"sample_rate_hz must be positive, got {sample_rate_hz}")
        for name, value in (
            ("time_constant_s", time_constant_s),
            ("min_dwell_s", min_dwell_s),
            ("switch_margin", switch_margin),
        ):
            if not (math.isfinite(value) and value >= 0):
                raise ConfigError(f"{name} must be a finite number >= 0, got {value}")
        if not (math.isfinite(decay_time_constant_s) and decay_time_constant_s > 0):
            raise ConfigError(f"decay_time_constant_s must be > 0, got {decay_time_constant_s}")
        if silence not in ("hold", "decay"):
            raise ConfigError(f"silence must be 'hold' or 'decay', got {silence!r}")
        self.sample_rate_hz = sample_rate_hz
        self.tau_samples = time_constant_s * sample_rate_hz
        self.decay_tau_samples = decay_time_constant_s * sample_rate_hz
        self.switch_margin = switch_margin
        self.min_dwell_samples = round(min_dwell_s * sample_rate_hz)
        self.silence_policy: SilencePolicy = silence
        n = len(self.labels)
        self.rest = np.full(n, 1.0 / n)
        if neutral_label in self.labels:
            self.rest = np.zeros(n)
            self.rest[self.labels.index(neutral_label)] = 1.0
        self.reset()

    def reset(self) -> None:
        """Forget the smoothed state (new stream)."""
        self._scores: np.ndarray | None = None
        self._label = -1
        self._label_since = 0
        self._last_sample = 0

    @property
    def started(self) -> bool:
        """True once the first speech update has been applied."""
        return self._scores is not None

    def check_probs(self, probs: np.ndarray) -> np.ndarray:
        """Return ``probs`` as float64, or raise ValueError saying what is wrong."""
        p = np.asarray(probs, dtype=np.float64)
        if p.shape != (len(self.labels),):
            raise ValueError(
                f"probs must have shape ({len(self.labels)},) for labels {self.labels}, got {p.shape}"
            )
        if not np.all(np.isfinite(p)) or np.any(p < 0):
            raise ValueError(f"probs must be finite and >= 0, got {p.tolist()}")
        if abs(p.sum() - 1.0) > 1e-3:
            raise ValueError(
                f"probs must sum to 1 (got {p.sum():.4f}); pass softmax probabilities, not logits"
            )
        return p / p.sum()

    def _advance(self, end_sample: int) -> int:
        if end_sample < self._last_sample:
            raise ValueError(
                f"end_sample {end_sample} is before the last update at {self._last_sample}; "
                "apply updates in audio order"
            )
        dt = end_sample - self._last_sample
        self._last_sample = end_sample
        return dt

    def update(self, probs: np.ndarray, end_sample: int) -> SmootherUpdate:
        """Blend in one window's probabilities; the window ends at ``end_sample``.
        Raises ValueError (see :meth:`check_probs`) for invalid probabilities."""
        return self.apply(self.check_probs(probs), end_sample)

    def apply(self, p: np.ndarray, end_sample: int) -> SmootherUpdate:
        """:meth:`update` for probabilities :meth:`check_probs` already returned."""
        if self._scores is None:
            self._last_sample = end_sample
            self._scores = p
            self._label = int(np.argmax(p))
            self._label_since = end_sample
            return self._result(None)
        dt = self._advance(end_sample)
        alpha = 1.0 - math.exp(-dt / self.tau_samples) if self.tau_samples > 0 else 1.0
        self._scores = (1.0 - alpha) * self._scores + alpha * p
        return self._result(self._maybe_switch(end_sample))

    def silence(self, end_sample: int) -> SmootherUpdate:
        """A silent window ended at ``end_sample``: hold or decay the scores.

        Before the first speech update, returns the resting state (the
        neutral one-hot, or uniform) without starting the smoother.
        """
        if self._scores is None:
            label = int(np.argmax(self.rest))
            return SmootherUpdate(
                self._as_dict(self.rest), self.labels[label], float(self.rest[label]), None
            )
        dt = self._advance(end_sample)
        if self.silence_policy == "hold":
            return self._result(None)
        beta = 1.0 - math.exp(-dt / self.decay_tau_samples)
        self._scores = (1.0 - beta) * self._scores + beta * self.rest
        return self._result(self._maybe_switch(end_sample))

    def _maybe_switch(self, end_sample: int) -> tuple[str, str] | None:
        assert self._scores is not None
        top = int(np.argmax(self._scores))
        if top == self._label:
            return None
        margin = self._scores[top] - self._scores[self._label]
        held = end_sample - self._label_since
        if margin + 1e-12 < self.switch_margin or held < self.min_dwell_samples:
            return None
        before, self._label, self._label_since = self._label, top, end_sample
        return self.labels[before], self.labels[top]

    def _as_dict(self, scores: np.ndarray) -> dict[str, float]:
        return {name: float(s) for name, s in zip(self.labels, scores, strict=True)}

    def _result(self, transition: tuple[str, str] | None) -> SmootherUpdate:
        assert self._scores is not None
        return SmootherUpdate(
            self._as_dict(self._scores),
            self.labels[self._label],
            float(self._scores[self._label]),
            transition,
        )
