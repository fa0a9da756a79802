"""Online per-stream normalisation: level-free, causal, forgets with its time constant."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dropformer.data import Utterance
from dropformer.normalization import OnlineNormalizer, OnlineNormConfig, simulate_streams


def test_running_stats_match_numpy_until_the_time_constant() -> None:
    rng = np.random.default_rng(0)
    blocks = [rng.normal(3.0, 2.0, size=(n, 4)) for n in (30, 70, 100)]  # 200 frames < 30 s * 50 Hz
    norm = OnlineNormalizer(4)
    for b in blocks:
        norm.update(b)
    every = np.concatenate(blocks)
    np.testing.assert_allclose(norm.mean, every.mean(0), rtol=1e-9)
    np.testing.assert_allclose(norm.std, np.sqrt(every.var(0) + 1e-5), rtol=1e-9)


def test_gain_is_irrelevant_and_old_audio_is_forgotten() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(0.0, 1.0, size=(150, 8))
    a, b = OnlineNormalizer(8), OnlineNormalizer(8)
    # a gain of g multiplies power, i.e. adds log(g^2) to every log-mel value
    np.testing.assert_allclose(a(x), b(x + np.log(0.01**2)), atol=1e-6)
    fast = OnlineNormalizer(8, OnlineNormConfig(time_constant_s=2.0))
    fast.update(rng.normal(0.0, 1.0, size=(500, 8)))
    for _ in range(20):  # 20 s of a louder channel
        fast.update(rng.normal(5.0, 1.0, size=(50, 8)))
    assert np.all(np.abs(fast.mean - 5.0) < 0.2)
    fast.reset()
    assert fast.frames_seen == 0


def test_simulated_streams_keep_speakers_apart() -> None:
    feats = {f"{s}{i}": np.full((10, 2), 10.0 if s == "a" else -10.0, dtype=np.float16) + i
             for s in "ab" for i in range(3)}
    utts = [Utterance(uid, Path(uid), "x", uid[0]) for uid in feats]
    out = simulate_streams(utts, feats, OnlineNormConfig())
    assert set(out) == set(feats)
    # speaker b's very different level never leaks into speaker a's statistics: each stream is centred on its own
    for s in "ab":
        vals = np.concatenate([out[f"{s}{i}"] for i in range(3)]).astype(np.float32)
        assert abs(float(vals.mean())) < 1.0
