"""Alert rules evaluated on smoothed estimates (sans-I/O).

A rule names the streams it watches (a glob on the stream id, e.g.
``*.caller``, and optionally a role such as ``caller``) and a condition on
the smoothed estimate: the label, a minimum confidence, and bounds on arousal
and valence. The condition must hold for ``min_duration_ms`` of audio before
an alert fires, and then fires once for that episode, however long it lasts.

Episodes, in audio time (the estimates' ``audio_end_ms``; no wall clock):

* an episode starts at the first matching speech estimate;
* it goes on while speech estimates match and no two matching estimates are
  more than ``max_gap_ms`` apart (silence between sentences is allowed, a
  long pause ends the episode);
* a speech estimate that does not match ends it;
* silent estimates (``speech=false``) neither extend nor end an episode: the
  smoother holds the last label through silence, which is not evidence;
* an alert fires when the episode has lasted ``min_duration_ms`` (from its
  first to its latest matching estimate) and at least ``cooldown_ms`` of
  audio has passed since this rule's last alert on this stream. One episode
  gives at most one alert.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from streamer.core.events import Alert, EmotionEstimate, Severity
from streamer.core.rules import Condition, Episode, Timing

NAME_RE: Final = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")


@dataclass(frozen=True)
class AlertRule(Condition):
    """One rule; times are milliseconds of audio. See the module docstring.

    The condition (``streams``, ``role``, ``label``, ``min_confidence``,
    ``arousal_min`` ... ``valence_max``) is :class:`streamer.core.rules.Condition`'s,
    keyword-only.
    """

    name: str
    """The alert's ``kind``, e.g. ``sustained_anger``."""
    min_duration_ms: int = 0
    cooldown_ms: int = 60_000
    max_gap_ms: int = 5_000
    severity: Severity = "warning"
    message: str | None = None
    """Text of the alert; ``{stream_id}``, ``{label}``, ``{confidence}``, ``{duration_s}``
    are filled in. None: a sentence made from the rule."""

    def __post_init__(self) -> None:
        if not NAME_RE.match(self.name):
            raise ValueError(
                f"alert rule name {self.name!r} must be 1-64 letters, digits or _ . : -"
            )
        self.timing.check(f"alert rule {self.name}")

    @property
    def timing(self) -> Timing:
        return Timing(self.min_duration_ms, self.cooldown_ms, self.max_gap_ms)

    def text(self, est: EmotionEstimate, duration_ms: int) -> str:
        fields = {
            "stream_id": est.stream_id,
            "label": est.label,
            "confidence": f"{est.confidence:.0%}",
            "duration_s": f"{duration_ms / 1000:.0f}",
        }
        if self.message is not None:
            try:
                return self.message.format(**fields)
            except (KeyError, IndexError, ValueError):
                return self.message
        return f"{est.label} {fields['confidence']} for {fields['duration_s']} s on {est.stream_id}"


class AlertEvaluator:
    """Evaluate ``rules`` on every stream's estimates; see the module docstring.

    ``open(stream_id, role)`` registers a stream's role (streams never opened
    have no role); ``close(stream_id)`` forgets all state of a stream that
    ended, so a day of calls does not grow it.
    """

    def __init__(self, rules: Sequence[AlertRule]) -> None:
        names = [r.name for r in rules]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"alert rule names must be unique; repeated: {dupes}")
        self.rules = list(rules)
        self._roles: dict[str, str | None] = {}
        self._state: dict[str, list[Episode | None]] = {}
        self.fired = 0

    @property
    def streams(self) -> int:
        """Streams with state held."""
        return len(self._state)

    def open(self, stream_id: str, role: str | None = None) -> None:
        """A stream starts (again): forget its old state and remember its role."""
        self._state.pop(stream_id, None)
        self._roles[stream_id] = role

    def close(self, stream_id: str) -> None:
        """A stream ended: release its state."""
        self._state.pop(stream_id, None)
        self._roles.pop(stream_id, None)

    def _episodes(self, stream_id: str) -> list[Episode | None]:
        eps = self._state.get(stream_id)
        if eps is None:
            role = self._roles.get(stream_id)
            eps = [Episode() if r.watches(stream_id, role) else None for r in self.rules]
            self._state[stream_id] = eps
        return eps

    def update(self, est: EmotionEstimate) -> list[Alert]:
        """One smoothed estimate in; the alerts it triggers out (usually none)."""
        if not self.rules or not est.speech:
            return []
        out: list[Alert] = []
        t = int(est.audio_end_ms)
        for rule, ep in zip(self.rules, self._episodes(est.stream_id)):
            if ep is None:
                continue
            if not ep.step(t, rule.matches(est), rule.timing):
                continue
            assert ep.start_ms is not None
            self.fired += 1
            out.append(
                Alert(
                    est.stream_id,
                    rule.name,
                    rule.severity,
                    rule.text(est, t - ep.start_ms),
                    t,
                    seq=est.seq,
                    label=est.label,
                    confidence=est.confidence,
                    arousal=est.arousal,
                    valence=est.valence,
                    episode_start_ms=ep.start_ms,
                )
            )
        return out
