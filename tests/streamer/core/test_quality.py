"""Audio-quality measures on real speech: clean, telephone, noisy, clipped, silent."""

from __future__ import annotations

import math
import pathlib
import time

import numpy as np
import pytest
import soundfile as sf
import soxr

from dropformer.augment import telephone_channel
from streamer.core.events import Quality, validate_event
from streamer.core.quality import measure

SR = 16000
EMODB = pathlib.Path(__file__).parents[2] / "data" / "emodb"
FILES = ["03a01Fa.wav", "03a01Nc.wav", "10a02Na.wav", "16a02Wb.wav"]


def speech(name: str) -> np.ndarray:
    x, sr = sf.read(EMODB / name, dtype="float32")
    assert sr == SR
    return np.asarray(x)


def finite(q: Quality) -> bool:
    return all(math.isfinite(v) for v in (q.level_dbfs, q.clipping, q.snr_db, q.bandwidth_hz))


@pytest.mark.parametrize("name", FILES)
def test_clean_speech_is_wideband_and_a_telephone_line_is_flagged(name: str) -> None:
    x = speech(name)
    clean = measure(x)
    assert not clean.telephone_band and clean.bandwidth_hz > 3400
    assert -40 < clean.level_dbfs < -5 and clean.snr_db > 25 and clean.clipping < 0.001
    for narrow in (
        telephone_channel(x),  # 300-3400 Hz, 8 kHz, G.711 mu-law and back
        soxr.resample(soxr.resample(x, SR, 8000), 8000, SR),  # 8 kHz sampling only
    ):
        q = measure(narrow)
        assert q.telephone_band and q.bandwidth_hz < 4000 and finite(q)


@pytest.mark.parametrize("name", FILES)
def test_noise_lowers_the_snr_and_clipping_is_counted(name: str) -> None:
    x = speech(name)
    rng = np.random.default_rng(0)
    noise = rng.standard_normal(x.size).astype(np.float32) * np.sqrt(np.mean(np.square(x)))
    clean, noisy = measure(x), measure(x + noise)  # white noise at 0 dB SNR
    assert noisy.snr_db < 10 and clean.snr_db - noisy.snr_db > 20
    assert not noisy.telephone_band  # white noise fills the band
    clipped = measure(np.clip(x * 20, -1, 1))
    assert clipped.clipping > 0.05 and clipped.level_dbfs > clean.level_dbfs + 10


def test_silence_and_odd_input_give_finite_values() -> None:
    for x in (np.zeros(48000, np.float32), np.zeros(0, np.float32), np.zeros(7, np.float32)):
        q = measure(x)
        assert finite(q) and q.level_dbfs == -120 and q.snr_db == 0 and not q.telephone_band
    steady = measure(np.full(16000, 0.5, np.float32))  # DC: all energy at 0 Hz
    assert finite(steady) and steady.bandwidth_hz < 100
    full = measure(np.ones(1600, np.float32))
    assert full.clipping == 1.0 and full.level_dbfs == 0.0
    with pytest.raises(ValueError, match="1-D"):
        measure(np.zeros((2, 100), np.float32))


def test_fits_the_schema_and_is_cheap() -> None:
    x = np.tile(speech(FILES[0]), 2)[: 3 * SR]  # a 3 s window
    q = measure(x)
    event = {
        "type": "emotion.utterance", "v": 1, "stream_id": "s", "seq": 0, "audio_start_ms": 0,
        "audio_end_ms": 3000, "label": "happy", "confidence": 0.5,
        "scores": {"happy": 0.5, "sad": 0.5}, "arousal": 0.0, "valence": 0.0,
        "tokens": {"in": 1, "kept": 1}, "latency_ms": 1.0,
        "model": {"name": "m", "frontend": "f", "rev": "r"}, "truncated": False,
        "quality": q.to_dict(),
    }  # fmt: skip
    validate_event(event)
    measure(x)
    t0 = time.perf_counter()
    for _ in range(20):
        measure(x)
    assert (time.perf_counter() - t0) / 20 < 0.02  # about 1.5 ms here; generous for slow CI
