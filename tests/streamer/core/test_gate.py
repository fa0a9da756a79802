"""EnergyGate on real EmoDB speech, digital silence and low-level noise."""

from __future__ import annotations

import pathlib

import numpy as np
import pytest
import soundfile as sf

from dropformer.errors import ConfigError
from streamer.core.gate import SILENCE_DBFS, EnergyGate, Gate, level_dbfs

SR = 16000
EMODB = pathlib.Path(__file__).parents[2] / "data" / "emodb"
WAVS = sorted(EMODB.glob("*.wav"))


def load(path: pathlib.Path) -> np.ndarray:
    x, sr = sf.read(path, dtype="float32")
    assert sr == SR
    return x


def noise(dbfs: float, seconds: float = 3.0, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(int(seconds * SR)) * 10 ** (dbfs / 20)).astype(np.float32)


def in_window(speech: np.ndarray, seconds: float = 3.0) -> np.ndarray:
    """Place an utterance in the middle of a silent window of ``seconds``."""
    out = np.zeros(int(seconds * SR), dtype=np.float32)
    start = (out.size - speech.size) // 2
    out[start : start + speech.size] = speech
    return out


def test_fixture_has_four_emotions() -> None:
    assert {p.name[5] for p in WAVS} == {"W", "F", "N", "T"}


@pytest.mark.parametrize("path", WAVS, ids=lambda p: p.name)
def test_real_speech_passes(path: pathlib.Path) -> None:
    gate = EnergyGate()
    assert isinstance(gate, Gate)
    decision = gate.decide(in_window(load(path)))
    assert decision.speech
    assert decision.speech_share >= 0.3
    assert -40.0 < decision.level_dbfs < -10.0


def test_digital_silence_and_low_noise_do_not_pass() -> None:
    gate = EnergyGate()
    silent = gate.decide(np.zeros(3 * SR, dtype=np.float32))
    assert not silent.speech and silent.speech_share == 0.0 and silent.level_dbfs == SILENCE_DBFS
    quiet = gate.decide(noise(-60.0))
    assert not quiet.speech and quiet.speech_share == 0.0
    assert quiet.level_dbfs == pytest.approx(-60.0, abs=0.5)
    assert not gate.decide(np.zeros(0, dtype=np.float32)).speech


def test_level_is_rms_dbfs() -> None:
    square = np.tile(np.array([0.5, -0.5], dtype=np.float32), 800)
    assert level_dbfs(square) == pytest.approx(20 * np.log10(0.5))


def test_hysteresis_keeps_a_dipping_segment() -> None:
    # 300 ms at -40 dBFS followed by 600 ms at -48 dBFS (below -45, above -51).
    def square(dbfs: float, ms: int) -> np.ndarray:
        n = SR * ms // 1000
        return (np.where(np.arange(n) % 2, 1.0, -1.0) * 10 ** (dbfs / 20)).astype(np.float32)

    x = np.concatenate([square(-40, 300), square(-48, 600)])
    with_hyst = EnergyGate(hysteresis_db=6.0, min_speech_share=0.5).decide(x)
    without = EnergyGate(hysteresis_db=0.0, min_speech_share=0.5).decide(x)
    assert with_hyst.speech_share == pytest.approx(1.0)
    assert without.speech_share == pytest.approx(1 / 3)
    assert with_hyst.speech and not without.speech


def test_adaptive_noise_floor_rejects_steady_noise_but_keeps_speech() -> None:
    hum = noise(-38.0, seed=1)  # loud enough to pass the fixed -45 dBFS threshold
    assert EnergyGate().decide(hum).speech
    gate = EnergyGate(noise_floor_margin_db=10.0)
    for seed in range(3):
        assert not gate.decide(noise(-38.0, seed=seed)).speech
    assert gate.noise_floor_dbfs is not None and gate.noise_floor_dbfs < -35
    speech = in_window(load(EMODB / "03a01Nc.wav")) + noise(-38.0, seed=9)
    assert gate.decide(speech).speech
    gate.reset()
    assert gate.effective_threshold_dbfs() == -45.0


@pytest.mark.parametrize(
    "kwargs,name",
    [
        ({"frame_ms": 0.0}, "frame_ms"),
        ({"min_speech_share": 1.5}, "min_speech_share"),
        ({"hysteresis_db": -1.0}, "hysteresis_db"),
        ({"sample_rate_hz": 0}, "sample_rate_hz"),
    ],
)
def test_bad_parameters_name_the_field(kwargs: dict, name: str) -> None:
    with pytest.raises(ConfigError, match=name):
        EnergyGate(**kwargs)
