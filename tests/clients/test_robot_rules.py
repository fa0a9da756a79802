"""The robot's rule engine with plain events: episodes, changes, cool-downs, and where
things stand after outages, reconnections (retained state, hello replays) and restarts."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from clients.robot.rules import Firing, RobotRule, RuleEngine
from streamer.core.events import EmotionEstimate, EmotionTransition, validate_event

LABELS = ("neutral", "happy", "angry", "sad")


class Daemon:
    """Events as the daemon publishes them for one stream: estimates every ``hop_ms``,
    a transition whenever the label changes (the first from null)."""

    def __init__(self, sid: str = "head_mic", hop_ms: int = 500) -> None:
        self.sid, self.hop_ms = sid, hop_ms
        self.seq, self.t_ms = 0, 0
        self.label: str | None = None

    def step(
        self, label: str, conf: float = 0.8, *, speech: bool = True, n: int = 1
    ) -> list[dict[str, Any]]:
        out = []
        for _ in range(n):
            self.t_ms += self.hop_ms
            rest = (1 - conf) / 3
            scores = {lab: (conf if lab == label else rest) for lab in LABELS}
            out.append(EmotionEstimate(
                self.sid, self.seq, max(0, self.t_ms - 3000), self.t_ms, speech, label, conf, scores,
                scores if speech else {}, 0.6 if label == "angry" else 0.0, -0.5 if label == "angry" else 0.0,
                150, 98, 20.0, {"name": "dropformer", "frontend": "logmel80", "rev": "t"},
            ).to_dict())  # fmt: skip
            if label != self.label:
                out.append(
                    EmotionTransition(
                        self.sid, self.seq, self.t_ms, self.label, label, conf
                    ).to_dict()
                )
                self.label = label
            self.seq += 1
        for e in out:
            validate_event(e)
        return out

    def restart(self) -> None:
        """The daemon restarted: the stream's seq and audio clock begin again."""
        self.seq, self.t_ms, self.label = 0, 0, None


def feed(
    engine: RuleEngine, events: list[dict[str, Any]], *, replayed: bool = False
) -> list[Firing]:
    return [f for e in events for f in engine.feed(e, replayed=replayed)]


CALM = RobotRule(name="calm_down", streams="head_*", label="angry", min_confidence=0.6,
                 min_duration_ms=2000, cooldown_ms=60_000, max_gap_ms=3000)  # fmt: skip
SMILE = RobotRule(name="smile", label="happy", only_on_change=True, cooldown_ms=0)


def test_fires_once_per_episode_after_the_minimum_duration() -> None:
    d, eng = Daemon(), RuleEngine([CALM])
    assert feed(eng, d.step("neutral", n=3)) == []
    got = feed(eng, d.step("angry", n=10))
    # angry from 2.0 s (first estimate); 2 s later: 4.0 s; once only
    assert [(f.rule, f.audio_ms, f.duration_ms, f.label) for f in got] == [
        ("calm_down", 4000, 2000, "angry")
    ]
    assert feed(eng, d.step("angry", 0.5, n=1)) == []  # confidence dips: the episode ends
    assert feed(eng, d.step("angry", n=6)) == []  # a new episode, but within the cool-down
    other = Daemon("arm_mic")
    assert feed(eng, other.step("angry", n=10)) == []  # not a watched stream


def test_cooldown_and_long_pauses() -> None:
    d, eng = Daemon(), RuleEngine([RobotRule(name="r", label="angry", min_duration_ms=1000, cooldown_ms=5000,
                                             max_gap_ms=2000)])  # fmt: skip
    assert len(feed(eng, d.step("angry", n=4))) == 1  # fires at 1.5 s
    feed(eng, d.step("angry", speech=False, n=6))  # 3 s of silence: no evidence, but a long gap
    got = feed(
        eng, d.step("angry", n=10)
    )  # a new episode from 5.0 s; fires at 6.5 s (cooled: 5 s after 1.5)
    assert [f.audio_ms for f in got] == [6500]


def test_only_on_change_fires_once_per_change_to_the_label() -> None:
    d, eng = Daemon(), RuleEngine([SMILE])
    feed(eng, d.step("neutral", n=2))
    got = feed(eng, d.step("happy", 0.4, n=3))  # min_confidence 0: fires on the change itself
    assert [(f.rule, f.seq) for f in got] == [("smile", 2)]
    assert feed(eng, d.step("happy", 0.3, n=5)) == []  # same label: no more
    feed(eng, d.step("neutral", n=1))
    assert len(feed(eng, d.step("happy", n=1))) == 1  # a new change
    picky = RuleEngine([RobotRule(name="p", label="happy", only_on_change=True, min_confidence=0.7,
                                  min_duration_ms=1000, cooldown_ms=0)])  # fmt: skip
    d2 = Daemon()
    feed(picky, d2.step("neutral"))
    # a dip in confidence does not end the change episode; it fires once it is held 1 s and confident
    got = feed(
        picky, d2.step("happy", 0.5, n=3) + d2.step("happy", 0.4) + d2.step("happy", 0.8, n=3)
    )
    assert [f.seq for f in got] == [5]  # happy since 1.0 s; at 2.0 s and after, first >= 0.7: 3.0 s


def test_arousal_valence_region() -> None:
    tense = RobotRule(name="tense", arousal_min=0.5, valence_max=-0.3, min_duration_ms=0)
    d, eng = Daemon(), RuleEngine([tense])
    assert feed(eng, d.step("neutral", n=2)) == []
    got = feed(eng, d.step("angry", n=3))
    assert len(got) == 1 and got[0].arousal == 0.6 and got[0].valence == -0.5


def test_connection_outage_does_not_duplicate_an_episode() -> None:
    d, eng = Daemon(), RuleEngine([CALM])
    assert len(feed(eng, d.step("angry", n=6))) == 1
    eng.outage()  # the broker went away...
    d.step("angry", n=20)  # ...while 10 s of the same episode went by unseen
    retained = [e for e in d.step("angry") if e["type"] == "emotion.estimate"]
    # on reconnection the retained state is the transition seen long ago: nothing changed
    first = {"type": "emotion.transition", "v": 1, "stream_id": "head_mic", "seq": 0, "audio_ms": 500,
             "from": None, "to": "angry", "confidence": 0.8}  # fmt: skip
    assert feed(eng, [first], replayed=True) == []
    assert feed(eng, retained) == []  # the gap is bridged: the same episode, fired already
    assert feed(eng, d.step("angry", n=4)) == []
    assert eng.stats.duplicates == 1


def test_a_change_seen_only_in_the_retained_state_starts_the_next_episode() -> None:
    d, eng = Daemon(), RuleEngine([replace(CALM, cooldown_ms=0), SMILE])
    assert len(feed(eng, d.step("angry", n=6))) == 1
    eng.outage()
    missed = d.step("neutral", n=3) + d.step("angry", n=2)  # unseen: left angry and came back
    retained = [e for e in missed if e["type"] == "emotion.transition"][-1]
    assert (
        feed(eng, [retained], replayed=True) == []
    )  # where things stand: angry again, since 4.5 s
    got = feed(eng, d.step("angry", n=6))
    assert [(f.rule, f.audio_ms) for f in got] == [
        ("calm_down", 8000)
    ]  # a new episode, 2 s after 6.0 s
    # the same through a label the change rule cares about: happy since the outage
    eng.outage()
    missed = d.step("happy", n=2)
    feed(eng, [e for e in missed if e["type"] == "emotion.transition"], replayed=True)
    assert [f.rule for f in feed(eng, d.step("happy"))] == ["smile"]


def test_hello_replays_are_not_events_twice_and_never_fire() -> None:
    d, eng = Daemon(), RuleEngine([SMILE])
    events = d.step("neutral", n=2) + d.step("happy", n=2)
    assert [f.rule for f in feed(eng, events)] == ["smile"]
    hello = [e for e in events if e["type"] == "emotion.transition"] + [events[-1]]
    assert feed(eng, hello, replayed=True) == []
    assert eng.stats.restarts == 0 and eng.stats.duplicates == len(hello)
    # a robot that starts now learns the label from the hello, and fires on the next live estimate
    late = RuleEngine([SMILE])
    assert feed(late, hello, replayed=True) == []
    assert [f.rule for f in feed(late, d.step("happy"))] == ["smile"]


def test_daemon_restart_continues_the_episode_of_the_same_label() -> None:
    d, eng = Daemon(), RuleEngine([CALM, SMILE])
    feed(eng, d.step("happy", n=2))
    assert [f.rule for f in feed(eng, d.step("angry", n=6))] == ["calm_down"]
    eng.feed({"type": "daemon.status", "v": 1, "state": "offline", "reason": "connection lost"})
    d.restart()
    assert feed(eng, d.step("angry", n=8)) == []  # seq and audio time begin again: no duplicate
    assert eng.stats.restarts == 1
    feed(eng, d.step("neutral", n=2))
    got = feed(eng, d.step("happy") + d.step("angry", n=6))
    assert [f.rule for f in got] == ["smile"]  # calm_down: the next episode is within its cool-down
    d.restart()
    # after a restart a first label other than the one before is a change (angry -> happy)
    assert [f.rule for f in feed(eng, d.step("happy", n=2))] == ["smile"]
    assert [f.rule for f in feed(eng, d.step("neutral") + d.step("happy"))] == ["smile"]


def test_malformed_events_are_counted_not_raised() -> None:
    eng = RuleEngine([CALM])
    for bad in ({"type": "emotion.estimate", "v": 1}, {"type": "emotion.transition", "stream_id": 3},
                {"type": "stream.status"}, "text", {"type": "unknown"}):  # fmt: skip
        assert eng.feed(bad) == []  # type: ignore[arg-type]
    assert eng.stats.malformed == 3


def test_rule_validation() -> None:
    with pytest.raises(ValueError, match="only_on_change needs a label"):
        RobotRule(name="x", only_on_change=True)
    with pytest.raises(ValueError, match="max_gap_ms"):
        RobotRule(name="x", label="angry", max_gap_ms=0)
    with pytest.raises(ValueError, match="repeated"):
        RuleEngine([CALM, CALM])


def test_state_sent_before_queued_estimates_after_a_broker_restart() -> None:
    """The daemon's publisher re-sends retained state first, then what it queued while the
    broker was away: a transition newer than the estimates that follow it."""
    d, eng = Daemon(), RuleEngine([replace(CALM, cooldown_ms=0)])
    assert len(feed(eng, d.step("angry", n=6))) == 1
    eng.outage()
    queued = d.step("neutral", n=2) + d.step("angry", n=2)
    state = [e for e in queued if e["type"] == "emotion.transition"][-1]
    estimates = [e for e in queued if e["type"] == "emotion.estimate"]
    got = feed(eng, [state, *estimates]) + feed(eng, d.step("angry", n=6))
    assert eng.stats.restarts == 0
    assert [f.audio_ms for f in got] == [6500]  # the next episode (angry again from 4.5 s), once


def test_an_online_status_starts_the_stream_again() -> None:
    d, eng = Daemon(), RuleEngine([CALM])
    assert len(feed(eng, d.step("angry", n=6))) == 1
    d.restart()
    online = {"type": "stream.status", "v": 1, "stream_id": "head_mic", "state": "online", "audio_ms": 0,
              "counters": {}}  # fmt: skip
    assert feed(eng, [online]) == []
    assert eng.stats.restarts == 1
    assert feed(eng, d.step("angry", n=6)) == []  # the same label goes on across the restart
    assert eng.stats.restarts == 1
