"""Alert rules with plain estimates: episodes, durations, gaps, cool-downs, roles."""

from __future__ import annotations

import pytest

from streamer.core.alerts import AlertEvaluator, AlertRule
from streamer.core.events import EmotionEstimate, validate_event

LABELS = ("neutral", "happy", "angry", "sad")


def est(
    sid: str,
    t_ms: int,
    label: str,
    conf: float = 0.8,
    *,
    speech: bool = True,
    arousal: float = 0.5,
    valence: float = -0.4,
    seq: int = 0,
) -> EmotionEstimate:
    rest = (1 - conf) / 3
    scores = {lab: (conf if lab == label else rest) for lab in LABELS}
    return EmotionEstimate(sid, seq, max(0, t_ms - 3000), t_ms, speech, label, conf, scores,
                           scores if speech else {}, arousal, valence, 150, 98, 20.0,
                           {"name": "dropformer", "frontend": "logmel80", "rev": "t"})  # fmt: skip


def run(
    ev: AlertEvaluator,
    sid: str,
    labels: list[str],
    *,
    start_ms: int = 3000,
    hop_ms: int = 1000,
    speech: list[bool] | None = None,
    conf: float = 0.8,
) -> list[tuple[int, str]]:
    out = []
    for i, lab in enumerate(labels):
        s = speech[i] if speech else True
        for a in ev.update(est(sid, start_ms + i * hop_ms, lab, conf, speech=s, seq=i)):
            validate_event(a.to_dict())
            out.append((a.audio_ms, a.kind))
    return out


ANGER = AlertRule("sustained_anger", streams="*.caller", label="angry", min_confidence=0.6,
                  min_duration_ms=3000, cooldown_ms=20000, max_gap_ms=5000)  # fmt: skip


def test_one_alert_per_episode_after_the_minimum_duration() -> None:
    ev = AlertEvaluator([ANGER])
    got = run(
        ev, "c1.caller", ["neutral", "angry", "angry", "angry", "angry", "angry", "angry", "angry"]
    )
    # first angry estimate at 4 s; 3 s later (7 s) it has lasted long enough; once only
    assert got == [(7000, "sustained_anger")]


def test_short_bursts_never_alert() -> None:
    ev = AlertEvaluator([ANGER])
    assert (
        run(
            ev, "c1.caller", ["angry", "angry", "neutral", "angry", "angry", "angry", "neutral"] * 3
        )
        == []
    )


def test_confidence_threshold() -> None:
    ev = AlertEvaluator([ANGER])
    assert run(ev, "c1.caller", ["angry"] * 10, conf=0.5) == []
    assert run(AlertEvaluator([ANGER]), "c1.caller", ["angry"] * 10, conf=0.6) == [
        (6000, "sustained_anger")
    ]


def test_a_new_episode_alerts_again_only_after_the_cooldown() -> None:
    ev = AlertEvaluator([ANGER])
    labels = ["angry"] * 5 + ["neutral"] + ["angry"] * 5 + ["neutral"] * 10 + ["angry"] * 5
    got = run(ev, "c1.caller", labels)
    # episode 1 alerts at 6 s; episode 2 (9-13 s) is within the 20 s cool-down; episode 3 (24-28 s) alerts
    assert got == [(6000, "sustained_anger"), (27000, "sustained_anger")]


def test_silence_neither_extends_nor_breaks_but_a_long_gap_does() -> None:
    ev = AlertEvaluator([ANGER])
    # angry, 3 silent windows (the smoother holds "angry"), angry again: 4 s gap < 5 s: one episode
    labels = ["angry", "angry", "angry", "angry", "angry", "angry"]
    speech = [True, False, False, False, True, True]
    assert run(ev, "a.caller", labels, speech=speech) == [(7000, "sustained_anger")]
    # held "angry" through silence is no evidence: only two speech estimates 6 s apart
    ev = AlertEvaluator([ANGER])
    assert (
        run(
            ev,
            "b.caller",
            ["angry"] + ["angry"] * 5 + ["angry"],
            speech=[True] + [False] * 5 + [True],
        )
        == []
    )


def test_streams_glob_and_role() -> None:
    by_role = AlertRule("calm_agent", role="agent", label="neutral", min_duration_ms=0)
    ev = AlertEvaluator([ANGER, by_role])
    ev.open("x.agent", role="agent")
    ev.open("y.caller", role="caller")
    assert run(ev, "x.agent", ["angry"] * 6) == []  # glob *.caller does not match
    assert run(ev, "x.agent", ["neutral"], start_ms=20000) == [(20000, "calm_agent")]
    assert run(ev, "y.caller", ["neutral"] * 3) == []  # role caller
    assert run(ev, "mic0", ["angry"] * 6) == []


def test_arousal_valence_conditions() -> None:
    rule = AlertRule("distress", arousal_min=0.4, valence_max=-0.3, min_duration_ms=1000)
    ev = AlertEvaluator([rule])
    a = ev.update(est("s", 1000, "angry", arousal=0.6, valence=-0.5))
    b = ev.update(est("s", 2000, "sad", arousal=0.45, valence=-0.4))
    assert a == [] and len(b) == 1 and b[0].episode_start_ms == 1000 and b[0].label == "sad"
    assert ev.update(est("s", 3000, "angry", arousal=0.3, valence=-0.5)) == []  # ends the episode


def test_close_releases_state_and_open_resets_it() -> None:
    ev = AlertEvaluator([ANGER])
    run(ev, "c1.caller", ["angry"] * 3)
    assert ev.streams == 1
    ev.close("c1.caller")
    assert ev.streams == 0
    # the same id again (a new call): a fresh episode, no memory of the old one
    assert run(ev, "c1.caller", ["angry"] * 4, start_ms=0) == [(3000, "sustained_anger")]


def test_message_template_and_payload() -> None:
    rule = AlertRule("loud", label="angry", min_duration_ms=0, severity="critical",
                     message="{stream_id}: {label} at {confidence} for {duration_s} s")  # fmt: skip
    [alert] = AlertEvaluator([rule]).update(est("call9.caller", 4000, "angry", 0.9, seq=7))
    d = alert.to_dict()
    validate_event(d)
    assert d["message"] == "call9.caller: angry at 90% for 0 s"
    assert (d["severity"], d["seq"], d["confidence"], d["episode_start_ms"]) == (
        "critical",
        7,
        0.9,
        4000,
    )


def test_rules_are_checked() -> None:
    with pytest.raises(ValueError, match="unique"):
        AlertEvaluator([ANGER, ANGER])
    with pytest.raises(ValueError, match="max_gap_ms"):
        AlertRule("x", label="angry", max_gap_ms=0)
    with pytest.raises(ValueError, match="name"):
        AlertRule("bad name", label="angry")
