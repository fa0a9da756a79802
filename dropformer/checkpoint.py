"""Checkpoints: one folder holding everything needed to rebuild a model and serve it exactly.

    <folder>/config.json        {"format": "dropformer-checkpoint", "version": 2,
                                 "model": DropFormerConfig, "frontend": FrontendConfig,
                                 "stream_norm": StreamNormConfig, "temperature": T,
                                 "labels": [...], "meta": {...}}
    <folder>/model.safetensors  the DropFormer weights, plus ``stream_norm.prior_mean`` and
                                ``stream_norm.prior_var`` (D,) when features are normalised per stream

``stream_norm`` says how the features must be normalised before the model
(per stream, from the stored prior); ``temperature`` divides the logits
(calibration on held-out speakers; 1.0 = none). The engine serves exactly
what the checkpoint records. Version-1 folders (no stream normalisation)
still load.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from dropformer.config import DropFormerConfig
from dropformer.errors import CheckpointError, EmotionMonitorError
from dropformer.frontends import Frontend, FrontendConfig, build_frontend
from dropformer.model import DropFormer
from dropformer.normalization import StreamNormalizer, StreamNormConfig

FORMAT = "dropformer-checkpoint"
VERSION = 2
PRIOR_KEYS = ("stream_norm.prior_mean", "stream_norm.prior_var")


@dataclass
class Checkpoint:
    model: DropFormer
    config: DropFormerConfig
    frontend_config: FrontendConfig
    labels: list[str]
    meta: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None
    stream_norm: StreamNormConfig = field(default_factory=StreamNormConfig)
    norm_prior: tuple[np.ndarray, np.ndarray] | None = None  # (mean, var), each (D,)
    temperature: float = 1.0

    def build_frontend(self) -> Frontend:
        return build_frontend(self.frontend_config)

    def new_normalizer(self) -> StreamNormalizer | None:
        """A fresh per-stream normaliser as this checkpoint expects, or None when it expects none."""
        if not self.stream_norm.enabled:
            return None
        assert self.norm_prior is not None
        return StreamNormalizer(self.norm_prior[0], self.norm_prior[1], self.stream_norm)


def save_checkpoint(
    path: str | Path,
    model: DropFormer,
    *,
    frontend_config: FrontendConfig,
    labels: list[str],
    meta: dict[str, Any] | None = None,
    stream_norm: StreamNormConfig | None = None,
    norm_prior: tuple[np.ndarray, np.ndarray] | None = None,
    temperature: float = 1.0,
) -> Path:
    """Write ``model`` and everything needed to rebuild and serve it into the folder ``path``."""
    if len(labels) != model.cfg.num_classes:
        raise CheckpointError(
            f"{len(labels)} labels given for a model with {model.cfg.num_classes} classes"
        )
    stream_norm = stream_norm or StreamNormConfig()
    if stream_norm.enabled and norm_prior is None:
        raise CheckpointError("stream_norm.kind=stream needs the training prior (norm_prior)")
    if not temperature > 0:
        raise CheckpointError(f"temperature = {temperature} must be > 0")
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if stream_norm.enabled and norm_prior is not None:
        for key, arr in zip(PRIOR_KEYS, norm_prior, strict=True):
            state[key] = torch.as_tensor(np.asarray(arr), dtype=torch.float32).contiguous()
    tmp = folder / "model.safetensors.tmp"
    save_file(state, str(tmp), metadata={"format": FORMAT})
    tmp.replace(folder / "model.safetensors")
    doc = {
        "format": FORMAT,
        "version": VERSION,
        "model": model.cfg.to_dict(),
        "frontend": frontend_config.to_dict(),
        "stream_norm": stream_norm.to_dict(),
        "temperature": float(temperature),
        "labels": list(labels),
        "meta": meta or {},
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
            raise CheckpointError(
                f"checkpoint {str(folder)!r} lacks {f.name}; point to a folder written by save_checkpoint"
            )
    try:
        doc = json.loads(cfg_file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{cfg_file} is not valid JSON: {exc}") from exc
    if doc.get("format") != FORMAT or int(doc.get("version", 0)) > VERSION:
        raise CheckpointError(
            f"{cfg_file} is not a {FORMAT} v<={VERSION} file (format={doc.get('format')!r})"
        )
    try:
        cfg = DropFormerConfig.from_dict(doc["model"])
        fe = FrontendConfig.from_dict(doc["frontend"])
        labels = [str(x) for x in doc["labels"]]
        norm = StreamNormConfig.from_dict(doc.get("stream_norm") or {})
        temperature = float(doc.get("temperature", 1.0))
    except (KeyError, TypeError, ValueError, EmotionMonitorError) as exc:
        raise CheckpointError(f"{cfg_file} is malformed: {exc}") from exc
    meta = dict(doc.get("meta", {}))
    if not norm.enabled and isinstance(meta.get("stream_norm"), dict):
        raise CheckpointError(
            f"{cfg_file} was trained with per-stream normalisation ({meta['stream_norm'].get('kind')!r}) that this "
            "version cannot serve exactly; retrain it with train.feature_norm=stream"
        )
    if len(labels) != cfg.num_classes:
        raise CheckpointError(f"{cfg_file}: {len(labels)} labels for {cfg.num_classes} classes")
    if not temperature > 0:
        raise CheckpointError(f"{cfg_file}: temperature = {temperature} must be > 0")
    model = DropFormer(cfg)
    try:
        state = load_file(str(weights), device="cpu")
        prior = tuple(state.pop(k).double().numpy() for k in PRIOR_KEYS if k in state)
        model.load_state_dict(state)
    except (RuntimeError, OSError) as exc:
        raise CheckpointError(f"weights in {weights} do not match the config: {exc}") from exc
    if norm.enabled and len(prior) != 2:
        raise CheckpointError(
            f"{weights} lacks the stream-normalisation prior ({', '.join(PRIOR_KEYS)})"
        )
    model.to(map_location).eval()
    return Checkpoint(
        model,
        cfg,
        fe,
        labels,
        meta,
        folder,
        norm,
        (prior[0], prior[1]) if norm.enabled else None,
        temperature,
    )
