"""Smoother: EMA in seconds, hysteresis, dwell time, silence policies, validation."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dropformer.errors import ConfigError
from streamer.core.smoother import Smoother, SmootherUpdate

SR = 16000
LABELS = ["neutral", "happy", "angry", "sad"]


def p(*values: float) -> np.ndarray:
    return np.array(values, dtype=np.float64)


def scores(update: SmootherUpdate) -> np.ndarray:
    return np.array([update.scores[k] for k in LABELS])


def test_first_update_takes_probs_as_is() -> None:
    u = Smoother(LABELS).update(p(0.1, 0.2, 0.6, 0.1), end_sample=3 * SR)
    assert scores(u) == pytest.approx([0.1, 0.2, 0.6, 0.1])
    assert u.label == "angry" and u.confidence == pytest.approx(0.6) and u.transition is None


def test_alpha_follows_elapsed_audio_time() -> None:
    tau_s, dt_s = 2.0, 0.5
    s = Smoother(LABELS, time_constant_s=tau_s)
    a, b = p(1, 0, 0, 0), p(0, 1, 0, 0)
    s.update(a, 0)
    u = s.update(b, int(dt_s * SR))
    alpha = 1 - math.exp(-dt_s / tau_s)
    assert scores(u) == pytest.approx((1 - alpha) * a + alpha * b)


def test_two_updates_one_second_apart_equal_one_update_after_two_seconds() -> None:
    a, b = p(0.7, 0.1, 0.1, 0.1), p(0.1, 0.1, 0.7, 0.1)
    hop1 = Smoother(LABELS, time_constant_s=2.0)
    hop1.update(a, 0)
    hop1.update(b, SR)
    u1 = hop1.update(b, 2 * SR)
    hop2 = Smoother(LABELS, time_constant_s=2.0)
    hop2.update(a, 0)
    u2 = hop2.update(b, 2 * SR)
    assert scores(u1) == pytest.approx(scores(u2))
    assert scores(u1) != pytest.approx(b, abs=0.05)  # not converged: the equality is not trivial


def test_no_flip_flop_on_alternating_near_equal_probs() -> None:
    x, y = p(0.0, 0.52, 0.48, 0.0), p(0.0, 0.48, 0.52, 0.0)
    steady = Smoother(LABELS, time_constant_s=0.0, switch_margin=0.1, min_dwell_s=0.0)
    jumpy = Smoother(LABELS, time_constant_s=0.0, switch_margin=0.0, min_dwell_s=0.0)
    steady_flips = jumpy_flips = 0
    for i in range(20):
        probs = x if i % 2 == 0 else y
        steady_flips += steady.update(probs, i * SR).transition is not None
        jumpy_flips += jumpy.update(probs, i * SR).transition is not None
    assert steady_flips == 0
    assert jumpy_flips == 19  # without a margin every window flips


def test_dwell_time_delays_a_clear_switch() -> None:
    s = Smoother(LABELS, time_constant_s=0.0, switch_margin=0.1, min_dwell_s=2.0)
    s.update(p(0.9, 0.0, 0.1, 0.0), 0)
    hop = SR // 2
    labels, transitions = [], []
    for k in range(1, 7):
        u = s.update(p(0.0, 0.0, 1.0, 0.0), k * hop)
        labels.append(u.label)
        if u.transition:
            transitions.append((k * hop, u.transition))
    assert labels == ["neutral", "neutral", "neutral", "angry", "angry", "angry"]
    assert transitions == [(2 * SR, ("neutral", "angry"))]
    assert u.confidence == pytest.approx(1.0)


def test_hold_keeps_scores_and_pauses_the_clock() -> None:
    s = Smoother(LABELS, time_constant_s=2.0, silence="hold")
    s.update(p(0, 0, 1, 0), 0)
    for k in range(1, 31):  # 30 s of silence
        u = s.silence(k * SR)
        assert scores(u) == pytest.approx([0, 0, 1, 0]) and u.label == "angry"
    # Speech after the pause blends by one hop, not by 30 s.
    u = s.update(p(0, 0, 0, 1), 31 * SR)
    alpha = 1 - math.exp(-1 / 2.0)
    assert scores(u) == pytest.approx([0, 0, 1 - alpha, alpha])


def test_decay_moves_toward_neutral_and_switches_label() -> None:
    s = Smoother(LABELS, silence="decay", decay_time_constant_s=5.0, min_dwell_s=1.0)
    s.update(p(0, 0, 1, 0), 0)
    u = s.silence(5 * SR)
    assert scores(u) == pytest.approx([1 - math.exp(-1), 0, math.exp(-1), 0])
    assert u.label == "neutral" and u.transition == ("angry", "neutral")
    u = s.silence(60 * SR)
    assert u.scores["neutral"] == pytest.approx(1.0, abs=1e-4)


def test_decay_without_neutral_goes_uniform() -> None:
    s = Smoother(["joy", "anger"], silence="decay", decay_time_constant_s=1.0)
    s.update(p(0.0, 1.0), 0)
    u = s.silence(30 * SR)
    assert list(u.scores.values()) == pytest.approx([0.5, 0.5])


def test_silence_before_any_speech_is_the_resting_state() -> None:
    s = Smoother(LABELS, silence="decay")
    u = s.silence(SR)
    assert u.label == "neutral" and u.transition is None and not s.started


@pytest.mark.parametrize(
    "probs,message",
    [
        (p(0.5, 0.5), "shape"),
        (p(np.nan, 0.5, 0.5, 0.0), "finite"),
        (p(-0.1, 0.6, 0.5, 0.0), ">= 0"),
        (p(2.0, 1.0, 0.5, 0.3), "logits"),
    ],
)
def test_bad_probs_are_rejected_with_a_reason(probs: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Smoother(LABELS).update(probs, 0)


def test_updates_must_follow_audio_order() -> None:
    s = Smoother(LABELS)
    s.update(p(1, 0, 0, 0), 2 * SR)
    with pytest.raises(ValueError, match="audio order"):
        s.update(p(1, 0, 0, 0), SR)


@pytest.mark.parametrize(
    "kwargs,name",
    [
        ({"time_constant_s": -1.0}, "time_constant_s"),
        ({"min_dwell_s": float("inf")}, "min_dwell_s"),
        ({"silence": "forget"}, "silence"),
        ({"decay_time_constant_s": 0.0}, "decay_time_constant_s"),
    ],
)
def test_bad_config_names_the_field(kwargs: dict, name: str) -> None:
    with pytest.raises(ConfigError, match=name):
        Smoother(LABELS, **kwargs)


def test_duplicate_labels_rejected() -> None:
    with pytest.raises(ConfigError, match="labels"):
        Smoother(["a", "a"])
