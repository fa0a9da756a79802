"""The robot's rule engine (sans-I/O): the daemon's events in, the rules that fire out.

It is fed the events a robot receives (over MQTT or WebSocket, or read from a
JSONL file for ``--dry-run``) and answers each with the :class:`Firing` s it
causes. Time is each stream's audio time (``audio_end_ms``, ``audio_ms``), so
a recording fires exactly as the live stream did. The condition and the
episode bookkeeping are :mod:`streamer.core.rules`', shared with the daemon's
alert rules.

Two kinds of rule:

* **episode rules** (the default) fire once per episode of matching speech
  estimates (label or arousal/valence region, minimum confidence), after
  ``min_duration_ms``, at most once per ``cooldown_ms``; a non-matching speech
  estimate or a pause longer than ``max_gap_ms`` ends the episode. Silent
  estimates are no evidence either way. This is the alert evaluator's rule.
* **change rules** (``only_on_change``) need a label: their episode is the
  time the smoothed label *is* that label, opened when it changes to it and
  ended when it changes again. They fire once per episode, at the first
  estimate (speech or not: the smoothed label is defined for both) that meets
  the rest of the condition after ``min_duration_ms``; a dip in confidence
  does not end the episode, only a label change does.

Where things stand after an outage. The engine never fires twice for one
episode and never misses the next one because a connection dropped:

* :meth:`RuleEngine.outage` (the connection to the broker or the daemon was
  lost, ``_daemon/status`` went offline) and a stream's ``offline``/``error``
  status bridge the gap: the next matching estimate continues the episode,
  because missing estimates are no evidence that it ended.
* On reconnection the retained ``state`` (the last ``emotion.transition``)
  or the WebSocket hello's transitions say where the label stands: the same
  transition as before means the label never changed (the episode goes on);
  a new one means it did (the episode ended; a new one starts at that
  transition if it is to the rule's label).
* A stream that starts again (an ``online`` status, or estimates whose
  ``seq`` and audio time go back: the daemon restarted) has its times shifted
  to continue where they were, and its episodes bridged; a first label
  (``from: null``) equal to the label before the restart continues the
  label's episode.
* Events seen before (a hello replaying the last estimate, a retained state
  already seen) are ignored; ``replayed`` events (retained, hello) update the
  state but never fire: only live estimates do.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from streamer.core.events import EmotionEstimate, EmotionTransition
from streamer.core.rules import Condition, Episode, Timing


@dataclass(frozen=True)
class RobotRule(Condition):
    """One rule (times in milliseconds of audio); the condition is :class:`Condition`'s."""

    name: str
    min_duration_ms: int = 0
    cooldown_ms: int = 60_000
    max_gap_ms: int = 5_000
    only_on_change: bool = False

    def __post_init__(self) -> None:
        self.timing.check(f"robot rule {self.name}")
        if self.only_on_change and self.label is None:
            raise ValueError(f"robot rule {self.name}: only_on_change needs a label")

    @property
    def timing(self) -> Timing:
        return Timing(self.min_duration_ms, self.cooldown_ms, self.max_gap_ms)


@dataclass(frozen=True)
class Firing:
    """A rule fired on a stream, because of the estimate ``seq`` (at ``audio_ms`` of its audio)."""

    rule: str
    stream_id: str
    seq: int
    audio_ms: int
    duration_ms: int
    """How long the episode had lasted when it fired."""
    label: str
    confidence: float
    arousal: float
    valence: float

    def fields(self) -> dict[str, Any]:
        """The values an action can use: rule, stream_id, seq, audio_ms, duration_ms, label,
        confidence, arousal, valence."""
        return {
            "rule": self.rule,
            "stream_id": self.stream_id,
            "seq": self.seq,
            "audio_ms": self.audio_ms,
            "duration_ms": self.duration_ms,
            "label": self.label,
            "confidence": round(self.confidence, 4),
            "arousal": round(self.arousal, 4),
            "valence": round(self.valence, 4),
        }


@dataclass
class _Stream:
    episodes: list[Episode | None]
    offset_ms: int = 0  # added to this stream's audio times so that they never go back
    last_ms: int = 0  # latest (shifted) time seen
    last_estimate: tuple[int, int] | None = (
        None  # (seq, audio_end_ms) of the latest estimate this session
    )
    last_transition: tuple[int, int, str] | None = None
    label: str | None = None  # the smoothed label as last known...
    label_since_ms: int = 0  # ...and since when (shifted time)


@dataclass
class EngineStats:
    events: int = 0
    duplicates: int = 0
    malformed: int = 0
    restarts: int = 0
    outages: int = 0
    fired: dict[str, int] = field(default_factory=dict)


class RuleEngine:
    """Evaluate ``rules`` on every stream's events; see the module docstring."""

    def __init__(self, rules: Sequence[RobotRule]) -> None:
        names = [r.name for r in rules]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"robot rule names must be unique; repeated: {dupes}")
        self.rules = list(rules)
        self.stats = EngineStats(fired=dict.fromkeys(names, 0))
        self._streams: dict[str, _Stream] = {}

    def _stream(self, stream_id: str) -> _Stream:
        st = self._streams.get(stream_id)
        if st is None:
            st = _Stream([Episode() if r.watches(stream_id) else None for r in self.rules])
            self._streams[stream_id] = st
        return st

    # ----------------------------------------------------------------- input
    def outage(self, stream_id: str | None = None) -> None:
        """Events may have been missed (connection lost, daemon or stream offline):
        bridge the episodes of ``stream_id`` (None: of every stream)."""
        self.stats.outages += 1
        for sid, st in self._streams.items():
            if stream_id is None or sid == stream_id:
                for ep in st.episodes:
                    if ep is not None:
                        ep.bridge()

    def feed(self, event: Mapping[str, Any], *, replayed: bool = False) -> list[Firing]:
        """One event the daemon published; the rules it fires (never for ``replayed`` ones)."""
        self.stats.events += 1
        kind = event.get("type") if isinstance(event, Mapping) else None
        try:
            if kind == "emotion.estimate":
                return self._estimate(EmotionEstimate.from_dict(event), replayed)
            if kind == "emotion.transition":
                self._transition(EmotionTransition.from_dict(event), replayed)
            elif kind == "stream.status":
                sid, state = event["stream_id"], event["state"]
                if state in ("offline", "error") and isinstance(sid, str):
                    self.outage(sid)
                elif state == "online" and isinstance(sid, str) and sid in self._streams:
                    st = self._streams[sid]
                    if (
                        st.last_estimate is not None
                    ):  # the stream starts again (the daemon restarted)
                        self._restart(st, int(event["audio_ms"]))
            elif kind == "daemon.status":
                if event["state"] == "offline":
                    self.outage()
        except (KeyError, TypeError, ValueError, AttributeError):
            self.stats.malformed += 1
        return []

    # ------------------------------------------------------------- internals
    def _restart(self, st: _Stream, raw_ms: int) -> None:
        """The stream started again: shift its times to go on from where they were, bridge its episodes."""
        st.offset_ms = st.last_ms - raw_ms
        st.last_estimate = st.last_transition = None
        self.stats.restarts += 1
        for ep in st.episodes:
            if ep is not None:
                ep.bridge()

    def _shift(self, st: _Stream, raw_ms: int, *, at_least_last: bool = False) -> int:
        """The stream's (shifted) time; ``at_least_last``: never before the latest time seen."""
        t = raw_ms + st.offset_ms
        if at_least_last:
            t = max(t, st.last_ms)
        st.last_ms = max(st.last_ms, t)
        return t

    def _label_changed(self, st: _Stream, label: str, since_ms: int) -> None:
        """The smoothed label became ``label`` at ``since_ms``: episodes of the old label end,
        change episodes of the new one open (episode rules start at their next matching estimate)."""
        st.label, st.label_since_ms = label, since_ms
        for rule, ep in zip(self.rules, st.episodes):
            if ep is None or rule.label is None:
                continue
            if rule.only_on_change and label == rule.label:
                ep.open(since_ms)
            elif label != rule.label or since_ms > ep.last_match_ms:
                ep.end()  # it left the label (perhaps and came back, unseen)

    def _seen(
        self, st: _Stream, key: Any, last: Any, order: tuple[int, int], replayed: bool
    ) -> bool:
        """Whether an estimate or transition was seen before; a replayed one also when it is
        not newer than the latest estimate (which already told where things stood)."""
        if key == last or (replayed and st.last_estimate is not None and order <= st.last_estimate):
            self.stats.duplicates += 1
            return True
        return False

    def _transition(self, tr: EmotionTransition, replayed: bool) -> None:
        st = self._stream(tr.stream_id)
        key = (int(tr.seq), int(tr.audio_ms), tr.to_label)
        if self._seen(st, key, st.last_transition, key[:2], replayed):
            return  # e.g. the retained state again after a reconnect: the label did not change
        t = self._shift(st, int(tr.audio_ms), at_least_last=True)
        st.last_transition = key
        if tr.to_label != st.label:
            self._label_changed(st, tr.to_label, t)
        elif tr.from_label is not None and t > st.label_since_ms:
            self._label_changed(
                st, tr.to_label, t
            )  # a change into the label we had not seen: it came back
        # (a first label, from null, equal to the one before a restart: the label goes on)

    def _estimate(self, est: EmotionEstimate, replayed: bool) -> list[Firing]:
        st = self._stream(est.stream_id)
        key = (int(est.seq), int(est.audio_end_ms))
        if self._seen(st, key, st.last_estimate, key, replayed):
            return []  # e.g. the hello's last estimate, seen before
        if (
            st.last_estimate is not None
            and key[0] < st.last_estimate[0]
            and key[1] < st.last_estimate[1]
        ):
            self._restart(st, key[1])  # seq and audio time went back: the daemon restarted
        t = self._shift(st, key[1])
        st.last_estimate = key
        if est.label != st.label:
            self._label_changed(st, est.label, t)
        if replayed:
            return []
        out: list[Firing] = []
        for rule, ep in zip(self.rules, st.episodes):
            if ep is None:
                continue
            if rule.only_on_change:
                fired = ep.hold(t, rule.matches(est), rule.timing)
            elif est.speech:
                fired = ep.step(t, rule.matches(est), rule.timing)
            else:
                continue  # silence is no evidence for an episode of speech
            if fired:
                assert ep.start_ms is not None
                self.stats.fired[rule.name] += 1
                out.append(Firing(rule.name, est.stream_id, int(est.seq), int(est.audio_end_ms),
                                  t - ep.start_ms, est.label, float(est.confidence),
                                  float(est.arousal), float(est.valence)))  # fmt: skip
        return out
