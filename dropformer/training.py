"""Train and evaluate DropFormer, one fold at a time, resumably.

A run folder holds ``config.json`` (the validated config) and one
``fold<NN>/`` per fold with ``state.pt`` (model, optimizer, scheduler, epoch,
RNG state: training resumes from it after an interruption), ``best/`` (the
selected model, a :func:`save_checkpoint` folder), ``history.json`` and, once
the fold is finished, ``result.json`` (test predictions and scores). A rerun
skips finished folds and resumes unfinished ones.

Model selection (``train.selection``): ``val`` = best UA on a validation set
held out from the training speakers/sessions (default, honest); ``last`` = the
final epoch; ``test`` = best UA on the test fold itself, the practice of many
SER papers (optimistic: it selects on the data it reports).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field
from torch import nn
from tqdm import tqdm

from dropformer.checkpoint import load_checkpoint, save_checkpoint
from dropformer.config import DropFormerConfig, preset
from dropformer.configio import StrictModel, validate
from dropformer.data import Corpus, Utterance
from dropformer.data.folds import Fold, make_folds, select_folds
from dropformer.data.load import load_corpus
from dropformer.errors import ConfigError
from dropformer.features import apply_gain_db, extract_features, normalize_batch
from dropformer.frontends import FrontendConfig
from dropformer.metrics import Scores, compute_scores, markdown_table, summarize
from dropformer.model import DropFormer

log = logging.getLogger(__name__)


class DataSection(StrictModel):
    corpus: Literal["emodb", "iemocap", "meld", "manifest"] = "emodb"
    root: str | None = None
    manifest: str | None = None
    labels: list[str] | None = None
    label_map: dict[str, str | None] | None = None
    strict: bool = False


class ModelSection(StrictModel):
    preset: str = "dropformer"
    overrides: dict[str, Any] = Field(default_factory=dict)


class TrainSection(StrictModel):
    folds_scheme: Literal["speaker", "group", "kfold", "split", "all"] = "speaker"
    num_folds: int = Field(5, ge=2)
    folds: list[int] | None = None
    val_count: int = Field(1, ge=0)
    selection: Literal["val", "last", "test"] = "val"
    epochs: int = Field(60, ge=1)
    batch_size: int = Field(32, ge=1)
    optimizer: Literal["sgd", "adam", "adamw"] = "adamw"
    lr: float = Field(1e-3, gt=0)
    momentum: float = 0.9
    weight_decay: float = Field(0.0, ge=0)
    scheduler: Literal["cosine", "none"] = "cosine"
    warmup_epochs: int = Field(0, ge=0)
    max_crop_s: float | None = Field(3.0, gt=0)
    eval_window_s: float | None = Field(3.0, gt=0)
    freq_masks: int = Field(0, ge=0)
    freq_mask_bands: int = Field(8, ge=1)
    time_masks: int = Field(0, ge=0)
    time_mask_frames: int = Field(10, ge=1)
    gain_db: tuple[float, float] | None = None
    feature_norm: Literal["frontend", "online"] = "frontend"
    online_time_constant_s: float = Field(30.0, gt=0)
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    class_weighted: bool = False
    grad_clip: float | None = 1.0
    seed: int = 0
    device: str = "auto"
    num_threads: int | None = None
    checkpoint_every_epochs: int = Field(1, ge=1)
    progress: bool = True


class TrainConfig(StrictModel):
    data: DataSection = Field(default_factory=DataSection)
    frontend: dict[str, Any] = Field(default_factory=lambda: {"kind": "logmel"})
    model: ModelSection = Field(default_factory=ModelSection)
    train: TrainSection = Field(default_factory=lambda: TrainSection())
    cache_dir: str = "cache/features"
    out_dir: str = "runs/default"


def parse_config(raw: dict[str, Any]) -> TrainConfig:
    cfg = validate(TrainConfig, raw, source="training config")
    frontend_config(cfg)  # fail early on bad front-end keys
    return cfg


def frontend_config(cfg: TrainConfig) -> FrontendConfig:
    """The front end the model is shipped with (``normalize="none"`` with online per-stream normalisation)."""
    fe = FrontendConfig.from_dict(dict(cfg.frontend))
    if cfg.train.feature_norm == "online":
        if fe.kind != "logmel":
            raise ConfigError("train.feature_norm=online needs frontend.kind=logmel")
        if cfg.train.gain_db is not None:
            raise ConfigError("train.feature_norm=online already removes the stream level; set train.gain_db=null")
        return dataclasses.replace(fe, normalize="none")
    return fe


def model_config(cfg: TrainConfig, input_dim: int, num_classes: int) -> DropFormerConfig:
    try:
        return preset(cfg.model.preset, input_dim=input_dim, num_classes=num_classes, **cfg.model.overrides)
    except TypeError as exc:
        raise ConfigError(f"model.overrides: {exc}; use DropFormerConfig field names") from exc


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"train.device={name!r} but CUDA is not available; use auto or cpu")
    return torch.device(name)


@dataclass
class Batch:
    features: torch.Tensor  # (B, T, D) normalised
    lengths: torch.Tensor  # (B,)
    targets: torch.Tensor  # (B,)


def make_batch(items: Sequence[np.ndarray], targets: Sequence[int], fe: FrontendConfig, device: torch.device,
               gain_db: torch.Tensor | None = None) -> Batch:
    """Pad cached features into a batch, optionally re-level them (log-mel), and apply the front end's normalisation."""
    lengths = torch.tensor([len(x) for x in items], dtype=torch.long)
    feats = torch.zeros(len(items), int(lengths.max()), items[0].shape[1])
    for i, x in enumerate(items):
        feats[i, : len(x)] = torch.from_numpy(x.astype(np.float32))
    if gain_db is not None and fe.kind == "logmel":
        feats = apply_gain_db(feats, gain_db)
    feats = normalize_batch(feats, lengths, fe)
    return Batch(feats.to(device), lengths.to(device), torch.tensor(list(targets), dtype=torch.long, device=device))


def random_crop(x: np.ndarray, max_frames: int | None, rng: random.Random) -> np.ndarray:
    if max_frames is None or len(x) <= max_frames:
        return x
    start = rng.randrange(len(x) - max_frames + 1)
    return x[start : start + max_frames]


def spec_augment(b: Batch, t: TrainSection, gen: torch.Generator) -> None:
    """In-place frequency and time masking (masked values set to 0 = the normalised mean)."""
    bsz, steps, dim = b.features.shape
    for i in range(bsz):
        for _ in range(t.freq_masks):
            w = int(torch.randint(0, t.freq_mask_bands + 1, (1,), generator=gen))
            f0 = int(torch.randint(0, max(dim - w, 1), (1,), generator=gen))
            b.features[i, :, f0 : f0 + w] = 0.0
        n = int(b.lengths[i])
        for _ in range(t.time_masks):
            w = min(int(torch.randint(0, t.time_mask_frames + 1, (1,), generator=gen)), n // 4)
            t0 = int(torch.randint(0, max(n - w, 1), (1,), generator=gen))
            b.features[i, t0 : t0 + w] = 0.0


def windows(x: np.ndarray, window_frames: int, hop_frames: int) -> list[np.ndarray]:
    """Split (T, D) into windows of ``window_frames`` with ``hop_frames`` hop (one if shorter)."""
    if len(x) <= window_frames:
        return [x]
    starts = list(range(0, len(x) - window_frames + 1, hop_frames))
    if starts[-1] + window_frames < len(x):
        starts.append(len(x) - window_frames)
    return [x[s : s + window_frames] for s in starts]


@torch.no_grad()
def predict(model: DropFormer, items: Sequence[np.ndarray], fe: FrontendConfig, device: torch.device,
            batch_size: int = 32) -> np.ndarray:
    """Class probabilities (N, C) for whole feature sequences."""
    model.eval()
    order = sorted(range(len(items)), key=lambda i: len(items[i]))
    probs = np.zeros((len(items), model.cfg.num_classes), dtype=np.float64)
    for s in range(0, len(order), batch_size):
        idx = order[s : s + batch_size]
        b = make_batch([items[i] for i in idx], [0] * len(idx), fe, device)
        p = torch.softmax(model(b.features, b.lengths).logits.float(), -1).cpu().numpy()
        probs[idx] = p
    return probs


def evaluate_items(model: DropFormer, utts: Sequence[Utterance], feats: dict[str, np.ndarray], labels: Sequence[str],
                   fe: FrontendConfig, device: torch.device, window_s: float | None = None) -> dict[str, Any]:
    """Scores on whole utterances and, with ``window_s``, on windows (each window labelled as its utterance)."""
    have = [u for u in utts if u.uid in feats]
    y = [list(labels).index(u.label) for u in have]
    probs = predict(model, [feats[u.uid] for u in have], fe, device)
    pred = probs.argmax(1).tolist()
    out: dict[str, Any] = {"utterance": compute_scores(y, pred, labels).to_dict(),
                           "predictions": {u.uid: {"true": t, "pred": p, "probs": [round(float(v), 5) for v in pr]}
                                           for u, t, p, pr in zip(have, y, pred, probs, strict=True)}}
    if window_s:
        win = round(window_s * fe.frame_rate_hz)
        wins, wy = [], []
        for u, t in zip(have, y, strict=True):
            for w in windows(feats[u.uid], win, max(win // 2, 1)):
                wins.append(w)
                wy.append(t)
        wp = predict(model, wins, fe, device).argmax(1).tolist()
        out["window"] = compute_scores(wy, wp, labels).to_dict()
        out["window_predictions"] = {"true": wy, "pred": wp}
    return out


def _set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_optimizer(model: nn.Module, t: TrainSection) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if t.optimizer == "sgd":
        return torch.optim.SGD(params, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay)
    if t.optimizer == "adam":
        return torch.optim.Adam(params, lr=t.lr, weight_decay=t.weight_decay)
    return torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay)


def build_scheduler(opt: torch.optim.Optimizer, t: TrainSection, steps_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    total = max(t.epochs * steps_per_epoch, 1)
    warm = t.warmup_epochs * steps_per_epoch

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        if t.scheduler == "none":
            return 1.0
        return 0.5 * (1.0 + math.cos(math.pi * min(step - warm, total - warm) / max(total - warm, 1)))

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def train_fold(cfg: TrainConfig, fold: Fold, corpus: Corpus, feats: dict[str, np.ndarray], run_dir: Path) -> dict[str, Any]:
    """Train one fold (resuming if ``state.pt`` exists); return its ``result.json`` content."""
    t = cfg.train
    fold_dir = run_dir / f"fold{fold.index:02d}"
    result_file = fold_dir / "result.json"
    if result_file.exists():
        log.info("fold %d (%s) already finished; skipping", fold.index, fold.name)
        return dict(json.loads(result_file.read_text()))
    fold_dir.mkdir(parents=True, exist_ok=True)
    device = resolve_device(t.device)
    fe = frontend_config(cfg)
    labels = list(corpus.labels)
    train_utts = [u for u in fold.train if u.uid in feats]
    dim = next(iter(feats.values())).shape[1]
    mcfg = model_config(cfg, dim, len(labels))
    seed = t.seed * 1000 + fold.index
    _set_seed(seed)
    model = DropFormer(mcfg).to(device)
    opt = build_optimizer(model, t)
    steps = math.ceil(len(train_utts) / t.batch_size)
    sched = build_scheduler(opt, t, steps)
    counts = np.bincount([labels.index(u.label) for u in train_utts], minlength=len(labels)).astype(np.float64)
    weight = torch.tensor(counts.sum() / (len(labels) * np.maximum(counts, 1)), dtype=torch.float32, device=device) \
        if t.class_weighted else None
    loss_fn = nn.CrossEntropyLoss(weight=weight, label_smoothing=t.label_smoothing)
    sel_set = {"val": fold.val, "test": fold.test, "last": []}[t.selection]
    if fold.name == "all" and t.selection != "last":
        raise ConfigError("train.folds_scheme=all has no validation or test set; set train.selection=last")
    if t.selection == "val" and not fold.val:
        raise ConfigError("train.selection=val but this fold has no validation set; set train.val_count>=1 "
                          "or train.selection=last")
    if t.selection == "test":
        log.warning("train.selection=test: the model is selected on the test fold (the paper's practice); "
                    "scores are optimistic")
    state_file = fold_dir / "state.pt"
    start_epoch, best, history = 0, -1.0, []
    if state_file.exists():
        st = torch.load(state_file, map_location=device, weights_only=False)
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["optimizer"])
        sched.load_state_dict(st["scheduler"])
        start_epoch, best, history = st["epoch"], st["best"], st["history"]
        random.setstate(st["py_rng"])
        torch.set_rng_state(st["torch_rng"])
        log.info("fold %d: resuming at epoch %d", fold.index, start_epoch + 1)
    rng = random.Random(seed + start_epoch)
    gen = torch.Generator().manual_seed(seed + start_epoch)
    max_frames = None if t.max_crop_s is None else round(t.max_crop_s * fe.frame_rate_hz)
    meta: dict[str, Any] = {"corpus": corpus.name, "fold": fold.index, "test": fold.name,
                            "preset": cfg.model.preset, "selection": t.selection}
    if t.feature_norm == "online":
        meta["stream_norm"] = {"kind": "online", "time_constant_s": t.online_time_constant_s,
                               "note": "feed raw log-mel through dropformer.normalization.OnlineNormalizer per stream"}
    bar = tqdm(range(start_epoch, t.epochs), desc=f"fold {fold.index}/{fold.name}", unit="ep", disable=not t.progress,
               initial=start_epoch, total=t.epochs)
    for epoch in bar:
        model.train()
        order = list(range(len(train_utts)))
        rng.shuffle(order)
        total_loss = 0.0
        for s in range(0, len(order), t.batch_size):
            idx = order[s : s + t.batch_size]
            gains = None if t.gain_db is None else \
                torch.empty(len(idx)).uniform_(t.gain_db[0], t.gain_db[1], generator=gen)
            b = make_batch([random_crop(feats[train_utts[i].uid], max_frames, rng) for i in idx],
                           [labels.index(train_utts[i].label) for i in idx], fe, device, gains)
            spec_augment(b, t, gen)
            loss = loss_fn(model(b.features, b.lengths).logits, b.targets)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if t.grad_clip:
                nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
            opt.step()
            sched.step()
            total_loss += float(loss.detach()) * len(idx)
        entry: dict[str, Any] = {"epoch": epoch + 1, "loss": total_loss / len(order), "lr": sched.get_last_lr()[0]}
        if sel_set:
            ev = evaluate_items(model, sel_set, feats, labels, fe, device)["utterance"]
            entry[f"{t.selection}_ua"], entry[f"{t.selection}_wa"] = ev["ua"], ev["wa"]
        history.append(entry)
        score = entry.get(f"{t.selection}_ua", float(epoch))
        if score > best or t.selection == "last":
            best = score
            save_checkpoint(fold_dir / "best", model, frontend_config=fe, labels=labels, meta={**meta, "epoch": epoch + 1})
        log.debug("fold %d epoch %d: %s", fold.index, epoch + 1, entry)
        bar.set_postfix({k: round(v, 4) for k, v in entry.items() if k not in ("epoch",)})
        if (epoch + 1) % t.checkpoint_every_epochs == 0 or epoch + 1 == t.epochs:
            torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                        "epoch": epoch + 1, "best": best, "history": history, "py_rng": random.getstate(),
                        "torch_rng": torch.get_rng_state()}, fold_dir / "state.tmp")
            (fold_dir / "state.tmp").replace(state_file)
    (fold_dir / "history.json").write_text(json.dumps(history, indent=1))
    ckpt = load_checkpoint(fold_dir / "best", map_location=device)
    res = evaluate_items(ckpt.model, fold.test, feats, labels, fe, device, t.eval_window_s) if fold.test else {}
    res.update({"fold": fold.index, "name": fold.name, "epoch": ckpt.meta.get("epoch"),
                "n_train": len(train_utts), "n_val": len(fold.val), "n_test": len(fold.test)})
    if fold.test:
        log.info("fold %d (%s): test UA %.3f WA %.3f (epoch %s)", fold.index, fold.name,
                 res["utterance"]["ua"], res["utterance"]["wa"], res["epoch"])
    result_file.write_text(json.dumps(res, indent=1))
    state_file.unlink(missing_ok=True)  # finished: the resume state is no longer needed
    return res


def prepare(cfg: TrainConfig) -> tuple[Corpus, list[Fold], dict[str, np.ndarray]]:
    """Read the corpus, build the folds and make sure every feature is cached."""
    d, t = cfg.data, cfg.train
    corpus = load_corpus(d.corpus, d.root, d.manifest, tuple(d.labels) if d.labels else None, d.label_map, d.strict)
    folds = select_folds(make_folds(corpus.utterances, t.folds_scheme, t.num_folds,
                                    0 if t.selection != "val" else t.val_count), t.folds)
    if t.num_threads:
        torch.set_num_threads(t.num_threads)
    feats = extract_features(corpus.utterances, frontend_config(cfg), cfg.cache_dir,
                             device=str(resolve_device(t.device)), progress=t.progress)
    if t.feature_norm == "online":
        from dropformer.normalization import OnlineNormConfig, simulate_streams

        feats = simulate_streams(corpus.utterances, feats, OnlineNormConfig(t.online_time_constant_s), seed=t.seed)
    return corpus, folds, feats


def run_training(cfg: TrainConfig) -> dict[str, Any]:
    """Train every selected fold, then write ``summary.json`` and ``summary.md``; return the summary."""
    torch.use_deterministic_algorithms(True, warn_only=True)
    if cfg.train.num_threads:
        torch.set_num_threads(cfg.train.num_threads)
    run_dir = Path(cfg.out_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(json.dumps(cfg.model_dump(), indent=2))
    corpus, folds, feats = prepare(cfg)
    results = [train_fold(cfg, f, corpus, feats, run_dir) for f in folds]
    return write_summary(run_dir, results, title=f"{corpus.name} {cfg.model.preset}")


def write_summary(run_dir: Path, results: Sequence[dict[str, Any]], title: str, stem: str = "summary") -> dict[str, Any]:
    """Mean ± std over folds for utterance- and window-level scores, as ``<stem>.json`` and ``<stem>.md``."""
    doc: dict[str, Any] = {}
    md: list[str] = []
    results = [r for r in results if "utterance" in r]  # folds without a test set have no scores
    for level in ("utterance", "window"):
        if not results or not all(level in r for r in results):
            continue
        scores = {f"{r['fold']}:{r['name']}": Scores(**r[level]) for r in results}
        if level == "utterance":
            preds = {f"{r['fold']}:{r['name']}": ([p["true"] for p in r["predictions"].values()],
                                                    [p["pred"] for p in r["predictions"].values()]) for r in results}
        else:
            preds = {f"{r['fold']}:{r['name']}": (r["window_predictions"]["true"], r["window_predictions"]["pred"])
                     for r in results}
        s = summarize(scores, preds)
        doc[level] = s.to_dict()
        md.append(markdown_table(s, f"{title}: {level} level"))
    (run_dir / f"{stem}.json").write_text(json.dumps(doc, indent=1))
    (run_dir / f"{stem}.md").write_text("\n\n".join(md) + "\n")
    return doc
