"""explain on real speech writes a sensible PNG with one row per layer."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import torch

from dropformer.checkpoint import save_checkpoint
from dropformer.config import preset
from dropformer.data.audio import load_audio
from dropformer.explain import explain
from dropformer.frontends import FrontendConfig
from dropformer.model import DropFormer
from streamer.cli import main as cli

WAV = Path(__file__).resolve().parents[1] / "data" / "emodb" / "03a01Wa.wav"


def test_explain_cli_writes_png(tmp_path: Path) -> None:
    torch.manual_seed(0)
    cfg = preset(
        "dropformer",
        input_dim=80,
        num_classes=4,
        d_model=32,
        num_heads=2,
        ffn_dim=64,
        head_hidden=(32,),
    )
    save_checkpoint(
        tmp_path / "ckpt",
        DropFormer(cfg),
        frontend_config=FrontendConfig(kind="logmel"),
        labels=["neutral", "happy", "angry", "sad"],
    )
    from dropformer.checkpoint import load_checkpoint

    expl = explain(load_checkpoint(tmp_path / "ckpt"), load_audio(WAV))
    assert (
        expl.importance.shape[0] == 4 and abs(expl.importance.shape[1] - 94) <= 2
    )  # 1.88 s at 50 Hz
    dropped = np.isnan(expl.importance).sum(axis=1)
    assert dropped[0] == 0 and all(np.diff(dropped) > 0)  # TDM drops more tokens at every layer
    assert expl.kept_tokens[0] - expl.kept_tokens[1] == dropped[1]
    out = tmp_path / "fig.png"
    assert (
        cli(["explain", "--checkpoint", str(tmp_path / "ckpt"), str(WAV), "--out", str(out)]) == 0
    )
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    assert 600 <= width <= 2000 and 400 <= height <= 2000 and len(data) > 20_000
