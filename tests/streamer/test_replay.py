"""The streaming protocol's parts: composing a speaker's stream, scoring the label shown over speech time."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dropformer.data.emodb import read_emodb
from streamer.replay import Segment, compose_stream, timeline_accuracy

FIXTURE = Path(__file__).resolve().parents[1] / "data" / "emodb"
LABELS = ["neutral", "happy", "angry", "sad"]


def test_compose_groups_one_emotion_into_episodes() -> None:
    utts = [u for u in read_emodb(FIXTURE).utterances if u.speaker == "03"]
    wave, segments = compose_stream(utts, episode_s=1.0, gap_s=0.5, seed="s")
    assert sorted(s.uid for s in segments) == sorted(u.uid for u in utts)
    assert all(
        b.start_sample - a.end_sample == 8000 for a, b in zip(segments, segments[1:], strict=False)
    )
    assert len(wave) == segments[-1].end_sample + 8000
    again, same = compose_stream(utts, episode_s=1.0, gap_s=0.5, seed="s")
    assert np.array_equal(wave, again) and same == segments  # seeded


def test_timeline_scores_the_label_shown_at_each_moment() -> None:
    sr = 16000
    segs = [Segment(0, 2 * sr, "angry", "a"), Segment(3 * sr, 5 * sr, "sad", "b")]
    estimates = [
        {"audio_end_ms": 1000, "label": "angry"},
        {"audio_end_ms": 3500, "label": "angry"},
        {"audio_end_ms": 4000, "label": "sad"},
    ]
    r = timeline_accuracy(estimates, segs, LABELS)
    # angry: nothing shown for the first second, then right for 1 s; sad: wrong for 1 s, right for 1 s
    assert r["speech_s"] == pytest.approx(4.0)
    assert r["per_class"] == {"angry": pytest.approx(0.5), "sad": pytest.approx(0.5)}
    assert r["accuracy"] == pytest.approx(0.5)
