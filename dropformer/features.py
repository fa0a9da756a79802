"""On-disk feature cache: run the front end once per utterance, reuse it across runs.

Layout: ``<cache_root>/<key>/<uid hash>.npy`` (float16, shape (T, D)) plus
``info.json``. The key hashes the front end's config and the corpus' file list,
so a changed front end or data set never reads stale features. Every file is
written atomically (temporary name, then rename), so an interrupted
extraction resumes where it stopped: files already there are skipped.

For the log-mel front end the cache holds *un-normalised* log-mel
(``normalize="none"``): normalisation is applied after cropping, exactly as the
front end would apply it to the cropped audio (see :func:`normalize_batch`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from dropformer import frontends
from dropformer.data import Utterance
from dropformer.data.audio import load_audio
from dropformer.errors import EmotionMonitorError
from dropformer.frontends import FrontendConfig, build_frontend, normalize_logmel

log = logging.getLogger(__name__)


def raw_frontend_config(cfg: FrontendConfig) -> FrontendConfig:
    """The config whose output is cached: log-mel without normalisation; WavLM unchanged."""
    return dataclasses.replace(cfg, normalize="none") if cfg.kind == "logmel" else cfg


def cache_key(cfg: FrontendConfig, utterances: Sequence[Utterance]) -> str:
    """Hash of the (raw) front-end config, the front end's source code and the sorted file list."""
    h = hashlib.sha256(json.dumps(raw_frontend_config(cfg).to_dict(), sort_keys=True).encode())
    h.update(Path(frontends.__file__).read_bytes())  # a changed front end never reads stale features
    for u in sorted(utterances, key=lambda u: u.uid):
        h.update(f"{u.uid}\t{u.path}\t{u.start_s}\t{u.end_s}\n".encode())
    return h.hexdigest()[:16]


def _file_name(uid: str) -> str:
    return hashlib.sha1(uid.encode()).hexdigest()[:20] + ".npy"


def extract_features(utterances: Sequence[Utterance], cfg: FrontendConfig, cache_root: str | Path,
                     device: str = "cpu", progress: bool = True) -> dict[str, np.ndarray]:
    """Return ``{uid: features (T, D) float16}``, extracting only what the cache lacks.

    An utterance whose audio cannot be decoded is logged and left out of the
    result (the caller counts what is missing); nothing else is skipped.
    """
    folder = Path(cache_root) / cache_key(cfg, utterances)
    folder.mkdir(parents=True, exist_ok=True)
    info = folder / "info.json"
    if not info.exists():
        _atomic_write_text(info, json.dumps({"frontend": raw_frontend_config(cfg).to_dict(),
                                             "utterances": len(utterances)}, indent=2))
    todo = [u for u in utterances if not (folder / _file_name(u.uid)).exists()]
    if todo:
        log.info("extracting %s features for %d of %d utterances into %s", cfg.name, len(todo), len(utterances), folder)
        frontend = build_frontend(raw_frontend_config(cfg)).to(device).eval()
        for u in tqdm(todo, desc=f"features {cfg.name}", unit="utt", disable=not progress):
            try:
                wav = load_audio(u.path, start_s=u.start_s, end_s=u.end_s)
            except EmotionMonitorError as exc:
                log.error("skipping %s: %s", u.uid, exc)
                continue
            with torch.no_grad():
                x = torch.from_numpy(wav)[None].to(device)
                feats, lengths = frontend(x, torch.tensor([x.shape[1]], device=device))
            arr = feats[0, : int(lengths[0])].float().cpu().numpy().astype(np.float16)
            _atomic_save(folder / _file_name(u.uid), arr)
    out: dict[str, np.ndarray] = {}
    for u in utterances:
        f = folder / _file_name(u.uid)
        if f.exists():
            out[u.uid] = np.load(f)
    missing = len(utterances) - len(out)
    if missing:
        log.warning("%d of %d utterances have no features (see the errors above)", missing, len(utterances))
    return out


def normalize_batch(features: torch.Tensor, lengths: torch.Tensor, cfg: FrontendConfig) -> torch.Tensor:
    """Apply the front end's own normalisation to (cropped) cached features (B, T, D)."""
    return normalize_logmel(features, lengths, cfg.normalize) if cfg.kind == "logmel" else features


#: The log-mel front end computes log(mel power + LOGMEL_FLOOR) (dropformer/frontends.py).
LOGMEL_FLOOR = 1e-8


def apply_gain_db(raw_logmel: torch.Tensor, gain_db: torch.Tensor) -> torch.Tensor:
    """Cached un-normalised log-mel (B, T, D) as if the audio had been scaled by ``gain_db`` (B,).

    Exact up to float16 rounding: the absolute floor inside the log makes the
    normalised features depend on level for quiet input, so training with
    random gains teaches the model to ignore what level remains.
    """
    power = (raw_logmel.exp() - LOGMEL_FLOOR).clamp(min=0.0)
    scale = torch.pow(10.0, gain_db / 10.0).to(raw_logmel)[:, None, None]  # power ratio
    return torch.log(power * scale + LOGMEL_FLOOR)


def _atomic_save(path: Path, arr: np.ndarray) -> None:
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    with tmp.open("wb") as fh:
        np.save(fh, arr)
    tmp.replace(path)


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
