"""Per-stream normalisation: starts at the training prior, adapts to the stream, stays bounded, is causal."""

from __future__ import annotations

import random

import numpy as np
import pytest

from dropformer.errors import ConfigError
from dropformer.normalization import (
    Moments,
    StreamNormalizer,
    StreamNormConfig,
    prior_from,
    replay_streams,
)

D = 6
CFG = StreamNormConfig(kind="stream", prior_s=10.0, time_constant_s=60.0)


def stream_of(mean: float, std: float, seconds: float, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(mean, std, size=(int(seconds * 50), D))


def test_starts_at_the_prior_and_weighs_the_stream_by_its_speech_time() -> None:
    norm = StreamNormalizer(np.zeros(D), np.ones(D), CFG)
    mean, std = norm.stats()
    np.testing.assert_allclose(mean, 0.0)
    np.testing.assert_allclose(std, np.sqrt(1.0 + CFG.eps), rtol=1e-6)
    norm.update(stream_of(4.0, 1.0, 10.0))  # 10 s of speech = the prior's weight
    mean, _ = norm.stats()
    assert norm.stream_share == pytest.approx(0.5 * (1 - 0.08), abs=0.05)  # half, less what decayed
    assert np.all(np.abs(mean - 2.0) < 0.3)


def test_a_voice_that_stays_angry_for_minutes_is_not_normalised_into_neutral() -> None:
    """The stream's share is bounded by time_constant / (prior + time_constant): a constant shift survives."""
    norm = StreamNormalizer(np.zeros(D), np.ones(D), CFG)
    angry = stream_of(3.0, 1.0, 600.0)  # ten minutes far from the training mean
    for block in np.array_split(angry, 600):
        norm.update(block)
    bound = CFG.time_constant_s / (CFG.prior_s + CFG.time_constant_s)
    assert norm.stream_share == pytest.approx(bound, rel=0.02)
    residual = norm.normalize(angry[-50:]).mean()
    assert (
        residual > 0.25
    )  # a seventh of the shift never adapts away (in units of the blended spread)
    unbounded = StreamNormalizer(
        np.zeros(D),
        np.ones(D),
        StreamNormConfig(kind="stream", prior_s=0.01, time_constant_s=1000.0),
    )
    for block in np.array_split(angry, 600):
        unbounded.update(block)
    assert (
        abs(unbounded.normalize(angry[-50:]).mean()) < 0.1
    )  # without the bound it would be erased


def test_old_audio_is_forgotten_and_reset_returns_to_the_prior() -> None:
    norm = StreamNormalizer(
        np.zeros(D), np.ones(D), StreamNormConfig(kind="stream", prior_s=1.0, time_constant_s=5.0)
    )
    norm.update(stream_of(-5.0, 1.0, 60.0))
    norm.update(
        stream_of(5.0, 1.0, 30.0, seed=1)
    )  # a new channel: after 6 time constants only it counts
    mean, _ = norm.stats()
    assert np.all(
        np.abs(mean - 5.0 * 5.0 / 6.0) < 0.3
    )  # the prior (0) still holds its 1 s against ~5 s
    norm.reset()
    np.testing.assert_allclose(norm.stats()[0], 0.0)


def test_moments_and_frames_fold_in_identically() -> None:
    x = stream_of(1.0, 2.0, 3.0)
    a, b = (
        StreamNormalizer(np.zeros(D), np.ones(D), CFG),
        StreamNormalizer(np.zeros(D), np.ones(D), CFG),
    )
    a.update(x)
    b.update(Moments.of(x))
    np.testing.assert_array_equal(a.stats()[0], b.stats()[0])
    np.testing.assert_array_equal(a.stats()[1], b.stats()[1])


def test_mean_only_keeps_the_prior_spread() -> None:
    norm = StreamNormalizer(
        np.zeros(D), np.full(D, 4.0), StreamNormConfig(kind="stream", variance=False)
    )
    norm.update(stream_of(2.0, 10.0, 100.0))
    _, std = norm.stats()
    np.testing.assert_allclose(std, 2.0, rtol=1e-4)


def test_replay_is_causal_and_keeps_speakers_apart() -> None:
    feats = {
        f"{s}{i}": np.full((50, D), 10.0 if s == "a" else -10.0) + i for s in "ab" for i in range(4)
    }
    prior = prior_from(list(feats.values()))
    streams = {"a": [f"a{i}" for i in range(4)], "b": [f"b{i}" for i in range(4)]}
    stats = replay_streams(streams, feats, prior, CFG, random.Random(0), warmup=False)
    assert set(stats) == set(feats)
    # cold replay: exactly one utterance per speaker is normalised by the prior alone (the first one)
    firsts = [uid for uid, (m, _) in stats.items() if np.allclose(m, prior[0])]
    assert sorted(u[0] for u in firsts) == ["a", "b"]
    # speaker b never shifts speaker a's statistics: a's means only move towards +10
    for uid, (mean, _) in stats.items():
        assert (mean >= prior[0] - 1e-6).all() if uid[0] == "a" else (mean <= prior[0] + 1e-6).all()
    warm = replay_streams(streams, feats, prior, CFG, random.Random(1), warmup=True)
    assert set(warm) == set(feats)


def test_config_errors_name_the_key() -> None:
    with pytest.raises(ConfigError, match="stream_norm.kind"):
        StreamNormConfig(kind="online")
    with pytest.raises(ConfigError, match="stream_norm.prior_s"):
        StreamNormConfig(kind="stream", prior_s=0)
    with pytest.raises(ConfigError, match="unknown stream_norm keys"):
        StreamNormConfig.from_dict({"kind": "stream", "tau": 3})
