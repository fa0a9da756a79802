"""On-disk feature cache: run the front end once per utterance, reuse it across runs.

Layout: ``<cache_root>/<key>/<uid hash>.npy`` (float16, shape (T, D)) plus
``info.json``; once extracted, the files are packed into one ``packed.npy`` with
a ``packed.json`` index (rows per file). The key hashes the front end's config, the listening condition
(clean, or a corruption of :mod:`dropformer.augment`, drawn with a seed per
utterance) and the corpus' file list, so a changed front end or data set never
reads stale features. Every file is written atomically (temporary name, then
rename), so an interrupted extraction resumes where it stopped: files already
there are skipped. Cached arrays are memory-mapped when read, so parallel
training processes share one copy in the page cache.

For the log-mel front end the cache holds *un-normalised* log-mel
(``normalize="none"``): normalisation is applied after cropping, exactly as the
front end would apply it to the cropped audio (see :func:`normalize_batch`).
"""

from __future__ import annotations

import dataclasses
import functools
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
from dropformer.augment import Condition, apply, babble_pool, seeded_rng
from dropformer.data import Utterance
from dropformer.data.audio import load_audio
from dropformer.errors import EmotionMonitorError
from dropformer.frontends import Frontend, FrontendConfig, build_frontend, normalize_logmel

log = logging.getLogger(__name__)


def raw_frontend_config(cfg: FrontendConfig) -> FrontendConfig:
    """The config whose output is cached: log-mel without normalisation; WavLM unchanged."""
    return dataclasses.replace(cfg, normalize="none") if cfg.kind == "logmel" else cfg


def cache_key(
    cfg: FrontendConfig, utterances: Sequence[Utterance], condition: Condition | None = None
) -> str:
    """Hash of the (raw) front-end config, the condition, the front end's source code and the sorted file list."""
    raw = raw_frontend_config(cfg).to_dict()
    raw.pop("compile", None)  # how it runs, not what it computes
    raw.pop("compile_prepack", None)
    h = hashlib.sha256(json.dumps(raw, sort_keys=True).encode())
    if condition is not None:
        h.update(json.dumps(condition.to_dict(), sort_keys=True).encode())
        h.update(Path(apply.__code__.co_filename).read_bytes())
    h.update(
        Path(frontends.__file__).read_bytes()
    )  # a changed front end never reads stale features
    for u in sorted(utterances, key=lambda u: u.uid):
        h.update(f"{u.uid}\t{u.path}\t{u.start_s}\t{u.end_s}\n".encode())
    return h.hexdigest()[:16]


def _file_name(uid: str) -> str:
    return hashlib.sha1(uid.encode()).hexdigest()[:20] + ".npy"


def extract_features(
    utterances: Sequence[Utterance],
    cfg: FrontendConfig,
    cache_root: str | Path,
    device: str = "cpu",
    progress: bool = True,
    condition: Condition | None = None,
    workers: int = 1,
) -> dict[str, np.ndarray]:
    """Return ``{uid: features (T, D) float16}``, extracting only what the cache lacks.

    ``condition`` corrupts each waveform first (babble draws on the other
    utterances of ``utterances``). ``workers`` > 1 extracts in that many
    processes (one torch thread each). An utterance whose audio cannot be
    decoded is logged and left out of the result (the caller counts what is
    missing); nothing else is skipped.
    """
    folder = Path(cache_root) / cache_key(cfg, utterances, condition)
    folder.mkdir(parents=True, exist_ok=True)
    info = folder / "info.json"
    if not info.exists():
        _atomic_write_text(
            info,
            json.dumps(
                {
                    "frontend": raw_frontend_config(cfg).to_dict(),
                    "condition": condition.to_dict() if condition else None,
                    "utterances": len(utterances),
                },
                indent=2,
            ),
        )
    index_file = folder / "packed.json"
    done = set(json.loads(index_file.read_text())) if index_file.exists() else set()
    todo = [
        u
        for u in utterances
        if _file_name(u.uid) not in done and not (folder / _file_name(u.uid)).exists()
    ]
    if todo:
        what = f"{cfg.name}" + (f" [{condition.name}]" if condition else "")
        log.info(
            "extracting %s features for %d of %d utterances into %s",
            what,
            len(todo),
            len(utterances),
            folder,
        )
        job = _Job(raw_frontend_config(cfg), folder, device, condition, list(utterances))
        bar = tqdm(total=len(todo), desc=f"features {what}", unit="utt", disable=not progress)
        if workers <= 1:
            _job_init(job)
            for u in todo:
                _extract_one(u)
                bar.update(1)
        else:
            import multiprocessing as mp
            from concurrent.futures import ProcessPoolExecutor

            chunks = [todo[i : i + 16] for i in range(0, len(todo), 16)]
            job.threads = 1
            with ProcessPoolExecutor(
                workers, mp_context=mp.get_context("spawn"), initializer=_job_init, initargs=(job,)
            ) as pool:
                for count in pool.map(_extract_many, chunks):
                    bar.update(count)
        bar.close()
    out = _load_packed(folder, utterances)
    missing = len(utterances) - len(out)
    if missing:
        log.warning(
            "%d of %d utterances have no features (see the errors above)", missing, len(utterances)
        )
    return out


def _load_packed(folder: Path, utterances: Sequence[Utterance]) -> dict[str, np.ndarray]:
    """Every cached utterance as a view into one memory-mapped array (packed once from the per-utterance files).

    One mapping per cache folder: thousands of per-file mappings would each
    hold a file descriptor. The per-utterance files are removed once packed;
    ``packed.json`` maps each file name to its rows.
    """
    packed, index_file = folder / "packed.npy", folder / "packed.json"
    index: dict[str, list[int]] = json.loads(index_file.read_text()) if index_file.exists() else {}
    loose = sorted(p for p in folder.glob("*.npy") if p.name != "packed.npy")
    if loose:  # new files since the last packing: pack again, old rows included
        arrays = {}
        if packed.exists():
            old = np.load(packed, mmap_mode="r")
            arrays = {name: np.asarray(old[a : a + n]) for name, (a, n) in index.items()}
            del old
        arrays.update({p.name: np.load(p) for p in loose})
        rows, index, start = [], {}, 0
        for name in sorted(arrays):
            rows.append(arrays[name])
            index[name] = [start, len(arrays[name])]
            start += len(arrays[name])
        tmp = folder / f"packed.{os.getpid()}.tmp.npy"
        np.save(tmp, np.concatenate(rows) if rows else np.zeros((0, 0), dtype=np.float16))
        tmp.replace(packed)
        _atomic_write_text(index_file, json.dumps(index))
        for p in loose:
            p.unlink(missing_ok=True)
    if not packed.exists():
        return {}
    data = np.load(packed, mmap_mode="r")
    out: dict[str, np.ndarray] = {}
    for u in utterances:
        where = index.get(_file_name(u.uid))
        if where is not None:
            out[u.uid] = data[where[0] : where[0] + where[1]]
    return out


@dataclasses.dataclass
class _Job:
    cfg: FrontendConfig
    folder: Path
    device: str
    condition: Condition | None
    pool: list[Utterance]
    threads: int | None = (
        None  # torch threads per worker process (1: workers never oversubscribe the cores)
    )


_JOB: _Job | None = None
_FRONTEND: Frontend | None = None


def _job_init(job: _Job) -> None:
    """Per process: the job and its front end (one torch thread in worker processes)."""
    global _JOB, _FRONTEND
    if (
        _FRONTEND is not None
        and _JOB is not None
        and _JOB.cfg == job.cfg
        and _JOB.device == job.device
    ):
        _JOB = job
        return
    if job.threads:
        torch.set_num_threads(job.threads)
    _JOB, _FRONTEND = job, build_frontend(job.cfg).to(job.device).eval()


def _extract_many(chunk: Sequence[Utterance]) -> int:
    for u in chunk:
        _extract_one(u)
    return len(chunk)


def _extract_one(u: Utterance) -> None:
    assert _JOB is not None and _FRONTEND is not None
    job = _JOB
    try:
        wav = load_audio(u.path, start_s=u.start_s, end_s=u.end_s)
    except EmotionMonitorError as exc:
        log.error("skipping %s: %s", u.uid, exc)
        return
    if job.condition is not None:
        others = [o for o in job.pool if o.speaker != u.speaker] or job.pool
        draw = babble_pool(
            [
                functools.partial(load_audio, o.path, start_s=o.start_s, end_s=o.end_s)
                for o in others
            ]
        )
        wav = apply(job.condition, wav, seeded_rng(u.uid, job.condition.name), draw)
    with torch.no_grad():
        x = torch.from_numpy(wav)[None].to(job.device)
        feats, lengths = _FRONTEND(x, torch.tensor([x.shape[1]], device=job.device))
    arr = feats[0, : int(lengths[0])].float().cpu().numpy().astype(np.float16)
    _atomic_save(job.folder / _file_name(u.uid), arr)


def normalize_batch(
    features: torch.Tensor, lengths: torch.Tensor, cfg: FrontendConfig
) -> torch.Tensor:
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
