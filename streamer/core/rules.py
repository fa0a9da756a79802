"""What alert rules and robot rules share (sans-I/O): a condition on a smoothed
estimate, and the episode it opens and closes.

:class:`Condition` says which streams a rule watches (a glob on the stream id,
optionally a role) and what a smoothed estimate must show: a label, a minimum
confidence, bounds on arousal and valence.

:class:`Episode` is one rule's state on one stream, in audio milliseconds (no
wall clock). :meth:`Episode.step` takes one observation (matching or not) and
says whether the rule fires now:

* an episode starts at the first matching observation and ends at the first
  one that does not match, or when two matching observations are more than
  ``max_gap_ms`` apart (a long pause starts a new episode);
* it fires once, when it has lasted ``min_duration_ms`` (from its first to
  its latest matching observation) and at least ``cooldown_ms`` have passed
  since the rule last fired on this stream. One episode fires at most once;
* :meth:`Episode.bridge` marks an outage (a lost connection, a restarted
  daemon): the next matching observation continues the episode whatever the
  gap, because missing observations are no evidence that it ended.

Episodes bounded by label changes instead ("only on change" robot rules) are
opened with :meth:`Episode.open` when the smoothed label becomes the rule's,
ended with :meth:`Episode.end` when it changes again, and fire through
:meth:`Episode.hold`: once, on the first matching observation after
``min_duration_ms`` (and the cool-down); observations that do not match
(a dip in confidence) do not end them.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Protocol


class Affect(Protocol):
    """What a condition reads from an estimate (``EmotionEstimate`` has it)."""

    @property
    def label(self) -> str: ...

    @property
    def confidence(self) -> float: ...

    @property
    def arousal(self) -> float: ...

    @property
    def valence(self) -> float: ...


@dataclass(frozen=True, kw_only=True)
class Condition:
    """Which streams a rule watches and what their smoothed estimate must show."""

    streams: str = "*"
    """fnmatch glob on the stream id (``*.caller``)."""
    role: str | None = None
    """Only streams with this role (from ingest metadata or the Twilio track name)."""
    label: str | None = None
    """The smoothed label must be this one (None: any label)."""
    min_confidence: float = 0.0
    """The smoothed score of the label must be at least this."""
    arousal_min: float | None = None
    arousal_max: float | None = None
    valence_min: float | None = None
    valence_max: float | None = None

    def watches(self, stream_id: str, role: str | None = None) -> bool:
        """Whether the condition applies to the stream."""
        if self.role is not None and role != self.role:
            return False
        return fnmatch.fnmatchcase(stream_id, self.streams)

    def matches(self, est: Affect) -> bool:
        """Whether the estimate meets the condition (speech or not: the caller decides)."""
        if self.label is not None and est.label != self.label:
            return False
        if est.confidence < self.min_confidence:
            return False
        for value, low, high in (
            (est.arousal, self.arousal_min, self.arousal_max),
            (est.valence, self.valence_min, self.valence_max),
        ):
            if low is not None and value < low:
                return False
            if high is not None and value > high:
                return False
        return True


@dataclass(frozen=True)
class Timing:
    """When an episode fires, in milliseconds of audio (see the module docstring)."""

    min_duration_ms: int = 0
    cooldown_ms: int = 60_000
    max_gap_ms: int = 5_000

    def check(self, what: str) -> None:
        """Raise ValueError naming ``what`` for negative durations or a zero gap."""
        for key in ("min_duration_ms", "cooldown_ms"):
            if getattr(self, key) < 0:
                raise ValueError(f"{what}: {key} must be >= 0")
        if self.max_gap_ms <= 0:
            raise ValueError(f"{what}: max_gap_ms must be > 0")


@dataclass
class Episode:
    """One rule's episode on one stream (see the module docstring)."""

    start_ms: int | None = None
    """Audio time of the episode's first matching observation (None: no episode)."""
    last_match_ms: int = 0
    fired: bool = False
    last_fire_ms: int | None = None
    bridged: bool = False
    """An outage since the last observation: the next match continues the episode."""

    @property
    def active(self) -> bool:
        return self.start_ms is not None

    def end(self) -> None:
        """The episode is over (a non-matching observation, a label change)."""
        self.start_ms, self.fired, self.bridged = None, False, False

    def bridge(self) -> None:
        """An outage: do not end the episode for the gap it leaves."""
        self.bridged = True

    def open(self, t_ms: int) -> None:
        """A new episode starting at ``t_ms`` (the label became the rule's), not yet fired."""
        self.start_ms, self.last_match_ms, self.fired, self.bridged = t_ms, t_ms, False, False

    def _fire_if_due(self, t_ms: int, timing: Timing) -> bool:
        assert self.start_ms is not None
        cooled = self.last_fire_ms is None or t_ms - self.last_fire_ms >= timing.cooldown_ms
        if not self.fired and t_ms - self.start_ms >= timing.min_duration_ms and cooled:
            self.fired, self.last_fire_ms = True, t_ms
            return True
        return False

    def hold(self, t_ms: int, matched: bool, timing: Timing) -> bool:
        """One observation of an episode opened by :meth:`open`; True when it fires now."""
        if self.start_ms is None or not matched:
            return False
        self.last_match_ms = max(self.last_match_ms, t_ms)
        return self._fire_if_due(t_ms, timing)

    def step(self, t_ms: int, matched: bool, timing: Timing) -> bool:
        """One observation at audio time ``t_ms``; True when the rule fires now."""
        if not matched:
            self.end()
            return False
        if (
            self.start_ms is not None
            and t_ms - self.last_match_ms > timing.max_gap_ms
            and not self.bridged
        ):
            self.end()  # a long pause: a new episode
        self.bridged = False
        if self.start_ms is None:
            self.start_ms = t_ms
        self.last_match_ms = t_ms
        return self._fire_if_due(t_ms, timing)
