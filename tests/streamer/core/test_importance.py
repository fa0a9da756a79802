"""The compact importance object: spans, scaling, the dropped-token mask, the envelope,
and the stream core attaching it to estimates only when asked."""

from __future__ import annotations

import numpy as np
import pytest

from streamer.core.events import validate_event
from streamer.core.importance import (
    MAX_ENVELOPE_POINTS,
    MAX_IMPORTANCE_POINTS,
    TokenImportance,
    downsample_importance,
    dropped_hex,
    envelope,
    parse_dropped_hex,
    spans,
    summarise,
)
from streamer.core.smoother import Smoother
from streamer.core.stream import StreamCore, WindowRequest
from streamer.core.windower import Windower

LABELS = ["neutral", "happy", "angry", "sad"]
MODEL = {"name": "dropformer", "frontend": "logmel80", "rev": "t"}


def test_spans_cover_everything_once() -> None:
    for n in (0, 1, 7, 50, 51, 150, 1499):
        parts = spans(n, 50)
        assert len(parts) == min(n, 50)
        covered = [i for a, b in parts for i in range(a, b)]
        assert covered == list(range(n))
        assert all(b > a for a, b in parts)


def test_importance_is_scaled_per_window_and_dropped_spans_are_null() -> None:
    values = np.array([1.0, 3.0, np.nan, np.nan, 2.0, 5.0], dtype=np.float32)
    assert downsample_importance(values, 3) == [0.0, None, 1.0]  # means 2, -, 3.5
    assert downsample_importance(values, 50) == [0.0, 0.5, None, None, 0.25, 1.0]
    assert downsample_importance(np.full(4, 0.7), 2) == [0.0, 0.0]
    assert downsample_importance(np.full(3, np.nan), 3) == [None, None, None]
    long = np.linspace(0, 1, 150)
    out = downsample_importance(long)
    assert len(out) == MAX_IMPORTANCE_POINTS and out[0] == 0.0 and out[-1] == 1.0
    assert out == sorted(out)  # span means of a rising ramp rise


@pytest.mark.parametrize("n", [0, 1, 3, 4, 5, 150, 151])
def test_dropped_mask_round_trips(n: int) -> None:
    rng = np.random.default_rng(n)
    mask = rng.random(n) < 0.3
    text = dropped_hex(mask)
    assert len(text) == -(-n // 4) and set(text) <= set("0123456789abcdef")
    np.testing.assert_array_equal(parse_dropped_hex(text, n), mask)


def test_dropped_mask_bit_order_is_documented() -> None:
    assert dropped_hex(np.array([True, False, False, False, False, True])) == "84"
    with pytest.raises(ValueError, match="hex digits"):
        parse_dropped_hex("8", 6)


def test_envelope_is_the_peak_of_each_span() -> None:
    x = np.zeros(16000, dtype=np.float32)
    x[8000] = -0.5
    x[100] = 2.0  # clipped audio never leaves [0, 1]
    env = envelope(x)
    assert len(env) == MAX_ENVELOPE_POINTS
    assert env[0] == 1.0 and env[50] == 0.5 and sum(env) == 1.5


def _core(importance: bool) -> StreamCore:
    return StreamCore(
        "mic0",
        LABELS,
        windower=Windower(window_s=1.0, hop_s=1.0),
        gate=None,
        smoother=Smoother(LABELS),
        model_info=MODEL,
        importance=importance,
    )


@pytest.mark.parametrize("importance", [True, False])
def test_core_attaches_importance_only_when_asked(importance: bool) -> None:
    core = _core(importance)
    t = np.arange(16000) / 16000
    samples = (0.8 * np.sin(2 * np.pi * 220 * t) * (t > 0.5)).astype(
        np.float32
    )  # sound in the second half
    reqs = [r for r in core.push(samples) if isinstance(r, WindowRequest)]
    assert len(reqs) == 1
    values = np.linspace(0.1, 0.9, 50).astype(np.float32)
    values[:5] = np.nan  # dropped before the last layer
    dropped = np.isnan(values)
    dropped[5:9] = True  # dropped by the last layer
    imp = TokenImportance(values, dropped, layer=4)
    events = core.on_result(0, np.array([0.1, 0.2, 0.6, 0.1]), 50, 41, 12.0, None, importance=imp)
    est = next(e for e in events if e.TYPE == "emotion.estimate")
    doc = est.to_dict()
    validate_event(doc)
    if not importance:
        assert "importance" not in doc
        return
    got = doc["importance"]
    assert got["layer"] == 4 and got["tokens"] == 50
    assert got["values"][:5] == [None] * 5 and got["values"][5] == 0.0 and got["values"][-1] == 1.0
    assert (
        got["dropped"] == dropped_hex(dropped) and parse_dropped_hex(got["dropped"], 50).sum() == 9
    )
    env = got["envelope"]
    assert max(env[:45]) == 0.0 and min(env[55:]) > 0.7  # the waveform: silence, then the tone
    assert got == summarise(imp, env)
