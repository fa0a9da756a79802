"""Checkpoints: one folder holding everything needed to rebuild a model.

    <folder>/config.json        {"format": "dropformer-checkpoint", "version": 1,
                                 "model": DropFormerConfig, "frontend": FrontendConfig,
                                 "labels": [...], "meta": {...}}
    <folder>/model.safetensors  the DropFormer weights
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from dropformer.config import DropFormerConfig
from dropformer.errors import CheckpointError, EmotionMonitorError
from dropformer.frontends import Frontend, FrontendConfig, build_frontend
from dropformer.model import DropFormer

FORMAT = "dropformer-checkpoint"
VERSION = 1


@dataclass
class Checkpoint:
    model: DropFormer
    config: DropFormerConfig
    frontend_config: FrontendConfig
    labels: list[str]
    meta: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    def build_frontend(self) -> Frontend:
        return build_frontend(self.frontend_config)


def save_checkpoint(
    path: str | Path, model: DropFormer, *, frontend_config: FrontendConfig, labels: list[str], meta: dict[str, Any] | None = None
) -> Path:
    """Write ``model`` and everything needed to rebuild it into the folder ``path``."""
    if len(labels) != model.cfg.num_classes:
        raise CheckpointError(f"{len(labels)} labels given for a model with {model.cfg.num_classes} classes")
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tmp = folder / "model.safetensors.tmp"
    save_file(state, str(tmp), metadata={"format": FORMAT})
    tmp.replace(folder / "model.safetensors")
    doc = {
        "format": FORMAT, "version": VERSION, "model": model.cfg.to_dict(),
        "frontend": frontend_config.to_dict(), "labels": list(labels), "meta": meta or {},
    }
    (folder / "config.json").write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    return folder


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> Checkpoint:
    """Load a checkpoint folder (or its config.json) into a model in eval mode."""
    folder = Path(path)
    if folder.is_file() and folder.name == "config.json":
        folder = folder.parent
    cfg_file, weights = folder / "config.json", folder / "model.safetensors"
    for f in (cfg_file, weights):
        if not f.is_file():
            raise CheckpointError(f"checkpoint {str(folder)!r} lacks {f.name}; point to a folder written by save_checkpoint")
    try:
        doc = json.loads(cfg_file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{cfg_file} is not valid JSON: {exc}") from exc
    if doc.get("format") != FORMAT or int(doc.get("version", 0)) > VERSION:
        raise CheckpointError(f"{cfg_file} is not a {FORMAT} v<={VERSION} file (format={doc.get('format')!r})")
    try:
        cfg = DropFormerConfig.from_dict(doc["model"])
        fe = FrontendConfig.from_dict(doc["frontend"])
        labels = [str(x) for x in doc["labels"]]
    except (KeyError, TypeError, EmotionMonitorError) as exc:
        raise CheckpointError(f"{cfg_file} is malformed: {exc}") from exc
    if len(labels) != cfg.num_classes:
        raise CheckpointError(f"{cfg_file}: {len(labels)} labels for {cfg.num_classes} classes")
    model = DropFormer(cfg)
    try:
        model.load_state_dict(load_file(str(weights), device="cpu"))
    except (RuntimeError, OSError) as exc:
        raise CheckpointError(f"weights in {weights} do not match the config: {exc}") from exc
    model.to(map_location).eval()
    return Checkpoint(model, cfg, fe, labels, dict(doc.get("meta", {})), folder)
