import json
from pathlib import Path

import pytest
import torch

from dropformer import load_checkpoint
from dropformer.errors import CheckpointError


def test_checkpoint_round_trip_gives_identical_logits(tiny_checkpoint: Path) -> None:
    ckpt = load_checkpoint(tiny_checkpoint)
    assert ckpt.labels == ["neutral", "happy", "angry", "sad"]
    assert ckpt.frontend_config.kind == "logmel"
    assert not ckpt.model.training
    fe = ckpt.build_frontend()
    wave = torch.randn(1, 32000)
    feats, lengths = fe(wave, torch.tensor([32000]))
    again = load_checkpoint(tiny_checkpoint / "config.json")
    assert torch.equal(ckpt.model(feats, lengths).logits, again.model(feats, lengths).logits)


def test_checkpoint_errors(tmp_path: Path, tiny_checkpoint: Path) -> None:
    with pytest.raises(CheckpointError, match="lacks config.json"):
        load_checkpoint(tmp_path)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "model.safetensors").write_bytes((tiny_checkpoint / "model.safetensors").read_bytes())
    doc = json.loads((tiny_checkpoint / "config.json").read_text())
    doc["model"]["d_model"] = 128
    (bad / "config.json").write_text(json.dumps(doc))
    with pytest.raises(CheckpointError, match="do not match"):
        load_checkpoint(bad)
