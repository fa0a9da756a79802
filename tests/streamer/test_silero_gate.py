"""SileroGate: the packaged Silero VAD on real EmoDB speech, silence and noise."""

from __future__ import annotations

import pathlib

import numpy as np
import pytest
import soundfile as sf

from dropformer.errors import ConfigError
from streamer.core.gate import Gate

torch = pytest.importorskip("torch")
pytest.importorskip("silero_vad")

from streamer.silero_gate import SileroGate  # noqa: E402

SR = 16000
EMODB = pathlib.Path(__file__).parents[1] / "data" / "emodb"


@pytest.fixture(scope="module")
def gate() -> SileroGate:
    threads = torch.get_num_threads()
    g = SileroGate()
    # Importing silero_vad calls torch.set_num_threads(1); the gate must undo that.
    assert torch.get_num_threads() == threads
    return g


def window_with(utterance: np.ndarray, seconds: float = 3.0) -> np.ndarray:
    out = np.zeros(int(seconds * SR), dtype=np.float32)
    start = (out.size - utterance.size) // 2
    out[start : start + utterance.size] = utterance
    return out


@pytest.mark.parametrize("name", ["03a01Wa.wav", "03a02Ta.wav"])
def test_real_speech_is_speech(gate: SileroGate, name: str) -> None:
    assert isinstance(gate, Gate)
    x, sr = sf.read(EMODB / name, dtype="float32")
    assert sr == SR
    d = gate.decide(window_with(x))
    assert d.speech and d.speech_share > 0.3


def test_silence_and_noise_are_not_speech(gate: SileroGate) -> None:
    assert not gate.decide(np.zeros(3 * SR, dtype=np.float32)).speech
    rng = np.random.default_rng(0)
    hiss = (rng.standard_normal(3 * SR) * 1e-3).astype(np.float32)  # -60 dBFS
    threads = torch.get_num_threads()
    d = gate.decide(hiss)
    assert torch.get_num_threads() == threads
    assert not d.speech and d.level_dbfs == pytest.approx(-60, abs=0.5)


def test_each_window_is_judged_alone(gate: SileroGate) -> None:
    x, _ = sf.read(EMODB / "03a01Nc.wav", dtype="float32")
    w = window_with(x)
    first = gate.chunk_probabilities(w)
    gate.decide(np.zeros(SR, dtype=np.float32))
    np.testing.assert_allclose(gate.chunk_probabilities(w), first, atol=1e-6)
    assert first.size == -(-w.size // 512)


def test_unsupported_rate_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="sample_rate_hz"):
        SileroGate(sample_rate_hz=44100)
