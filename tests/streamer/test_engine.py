"""The engine serves exactly what a checkpoint records: per-stream normalisation and temperature."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from dropformer import DropFormer, FrontendConfig, preset, save_checkpoint
from dropformer.errors import CheckpointError
from dropformer.normalization import StreamNormConfig
from streamer.engine import Engine

SPEECH = Path(__file__).resolve().parents[1] / "data" / "emodb" / "03a01Wa.wav"
LABELS = ["neutral", "happy", "angry", "sad"]


def _checkpoint(folder: Path, **kwargs: object) -> Path:
    torch.manual_seed(0)
    model = DropFormer(
        preset("dropformer", input_dim=80, d_model=32, num_heads=2, ffn_dim=64, head_hidden=(32,))
    )
    return save_checkpoint(
        folder,
        model,
        frontend_config=FrontendConfig(kind="logmel", normalize="none"),
        labels=LABELS,
        **kwargs,
    )  # type: ignore[arg-type]


def test_stream_normalisation_and_temperature_are_applied(tmp_path: Path) -> None:
    prior = (np.full(80, -8.0), np.full(80, 9.0))
    folder = _checkpoint(
        tmp_path / "c",
        stream_norm=StreamNormConfig(kind="stream"),
        norm_prior=prior,
        temperature=2.0,
    )
    engine = Engine.load(str(folder), device="cpu")
    assert engine.info["stream_norm"] == "stream" and engine.info["temperature"] == 2.0
    wave, _ = sf.read(SPEECH, dtype="float32")
    cold = engine.run([wave])
    assert (
        cold.moments is not None and cold.moments[0].count == 92
    )  # frames of this window, for the stream
    # by hand: log-mel, standardised by the prior, the model, softmax of logits / 2
    with torch.no_grad():
        feats, lengths = engine.frontend(torch.from_numpy(wave)[None], torch.tensor([len(wave)]))
        x = (feats - torch.tensor(-8.0)) / torch.sqrt(torch.tensor(9.0 + 1e-5))
        expected = torch.softmax(engine.model(x, lengths).logits / 2.0, -1).numpy()
    np.testing.assert_allclose(cold.probs, expected, atol=1e-5)
    np.testing.assert_allclose(cold.moments[0].mean, feats[0].double().mean(0).numpy(), rtol=1e-6)
    # a stream's own statistics change the answer
    own = (cold.moments[0].mean.astype(np.float32), np.ones(80, dtype=np.float32))
    warm = engine.run([wave], [own])
    assert not np.allclose(warm.probs, cold.probs)
    assert engine.new_normalizer() is not None


def test_old_online_checkpoints_are_refused_not_served_silently(tmp_path: Path) -> None:
    folder = _checkpoint(
        tmp_path / "old", meta={"stream_norm": {"kind": "online", "time_constant_s": 30}}
    )
    doc = json.loads((folder / "config.json").read_text())
    del doc["stream_norm"]
    doc["version"] = 1
    (folder / "config.json").write_text(json.dumps(doc))
    with pytest.raises(CheckpointError, match="retrain"):
        Engine.load(str(folder), device="cpu")


def test_a_checkpoint_without_its_prior_is_refused(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="prior"):
        _checkpoint(tmp_path / "x", stream_norm=StreamNormConfig(kind="stream"))
