"""Windower: exact positions, chunking invariance, early windows, flush, bounded memory."""

from __future__ import annotations

import numpy as np
import pytest

from dropformer.errors import ConfigError
from streamer.core.windower import FirstWindow, Windower, expected_window_count


def _ramp(n: int) -> np.ndarray:
    # Sample i has value i: every window's content reveals its true position.
    return np.arange(n, dtype=np.float32)


def _run(windower: Windower, signal: np.ndarray, chunks: list[int]) -> list[tuple[int, int]]:
    spans = []
    pos = 0
    for size in chunks:
        for w in windower.push(signal[pos : pos + size]):
            spans.append((w.start_sample, w.end_sample))
            np.testing.assert_array_equal(w.samples, signal[w.start_sample : w.end_sample])
            assert w.duration_samples == w.samples.size
        pos += size
        assert windower.buffered_samples <= windower.window_samples
    for w in windower.flush():
        spans.append((w.start_sample, w.end_sample))
        np.testing.assert_array_equal(w.samples, signal[w.start_sample : w.end_sample])
    return spans


def test_positions_at_16k_with_hand_computed_spans() -> None:
    sr = 16000
    spans = _run(Windower(sr, 3.0, 1.0), _ramp(int(5.5 * sr)), [int(5.5 * sr)])
    assert spans == [(0, 48000), (16000, 64000), (32000, 80000), (40000, 88000)]


def test_early_windows_grow_then_full_windows_follow() -> None:
    sr = 16000
    w = Windower(sr, 3.0, 1.0, first_window="early", min_window_s=1.0)
    spans = _run(w, _ramp(int(4.2 * sr)), [320] * (int(4.2 * sr) // 320))
    assert spans == [(0, 16000), (0, 32000), (0, 48000), (16000, 64000), (19200, 67200)]


CONFIGS = [
    # (window_s, hop_s, first_window, min_window_s)
    (3.0, 1.0, "full", 1.0),
    (3.0, 1.0, "early", 1.0),
    (3.0, 0.7, "early", 0.5),
    (2.0, 2.0, "full", 2.0),
    (1.0, 2.5, "full", 0.3),  # hop > window: gaps between windows
    (2.5, 1.0, "early", 2.5),  # early asked for, but min_window_s equals window_s
]


@pytest.mark.parametrize("window_s,hop_s,first_window,min_window_s", CONFIGS)
def test_same_windows_for_any_chunking(
    window_s: float, hop_s: float, first_window: FirstWindow, min_window_s: float
) -> None:
    sr = 100  # small rate: many random chunkings stay fast
    rng = np.random.default_rng(1234)
    for n in [0, 1, 29, 100, 250, 300, 301, 999, 1234]:
        signal = _ramp(n)
        make = lambda: Windower(sr, window_s, hop_s, first_window, min_window_s)  # noqa: E731
        reference = _run(make(), signal, [n])
        expected = expected_window_count(n, sr, window_s, hop_s, first_window, min_window_s)
        assert len(reference) == expected, (n, reference)
        for _ in range(15):
            sizes: list[int] = []
            while sum(sizes) < n:
                sizes.append(int(rng.choice([0, 1, 3, 17, 64, 250, 1000])))
            assert _run(make(), signal, sizes) == reference


def test_windows_follow_hop_and_end_at_stream_end() -> None:
    sr, n = 100, 1234
    spans = _run(Windower(sr, 3.0, 0.7, "full", 1.0), _ramp(n), [n])
    full = spans[:-1]
    assert all(e - s == 300 for s, e in full)
    assert [s for s, _ in full] == list(range(0, n - 300 + 1, 70))
    assert spans[-1] == (n - 300, n)


def test_flush_rules() -> None:
    sr = 100
    # Shorter than a window but >= min_window_s: one window covering all of it.
    assert _run(Windower(sr, 3.0, 1.0), _ramp(150), [150]) == [(0, 150)]
    # Shorter than min_window_s: nothing.
    assert _run(Windower(sr, 3.0, 1.0), _ramp(99), [99]) == []
    # Stream ends exactly on a window end: no extra window.
    assert _run(Windower(sr, 3.0, 1.0), _ramp(400), [400]) == [(0, 300), (100, 400)]
    w = Windower(sr, 3.0, 1.0)
    w.push(_ramp(150))
    assert len(w.flush()) == 1 and w.flush() == []
    with pytest.raises(RuntimeError, match="reset"):
        w.push(_ramp(10))
    w.reset()
    assert w.push(_ramp(300))[0].end_sample == 300


def test_memory_is_bounded_on_a_long_stream() -> None:
    w = Windower(16000, 3.0, 1.0)
    frame = np.zeros(16000 // 50, dtype=np.float32)
    n_windows = 0
    for _ in range(50 * 60):  # one minute of 20 ms frames
        n_windows += len(w.push(frame))
        assert w.buffered_samples <= w.window_samples
    assert n_windows == 58


@pytest.mark.parametrize(
    "kwargs,name",
    [
        ({"window_s": 0.0}, "window_s"),
        ({"hop_s": -1.0}, "hop_s"),
        ({"sample_rate_hz": 0}, "sample_rate_hz"),
        ({"first_window": "soon"}, "first_window"),
        ({"min_window_s": 5.0}, "min_window_s"),
        ({"window_s": float("nan")}, "window_s"),
    ],
)
def test_bad_parameters_name_the_field(kwargs: dict, name: str) -> None:
    with pytest.raises(ConfigError, match=name):
        Windower(**kwargs)


def test_rejects_2d_frames() -> None:
    with pytest.raises(ValueError, match="1-D"):
        Windower().push(np.zeros((10, 2), dtype=np.float32))
