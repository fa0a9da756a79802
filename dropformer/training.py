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

Several corpora (``data.sources``) are read into one list with prefixed
speakers; folds can leave one speaker out (only of ``train.test_sources``,
the others always train) or one corpus out (``folds_scheme: corpus``).
Batches can be balanced over corpus and class (``train.balance``).

Per-stream normalisation (``train.feature_norm: stream``): every epoch each
training speaker is replayed as a live stream (random order, random warm-up,
:func:`dropformer.normalization.replay_streams`) and each utterance is
normalised with the statistics the daemon would have at that point; test
speakers are replayed from a cold start. Live conditions (``train.augment``):
each epoch each training speaker is heard clean or under one condition of
:mod:`dropformer.augment` (features extracted once per condition). Test sets
are scored clean and under each of ``train.eval_conditions``. Logits are kept
so that :func:`write_summary` can fit temperature scaling on held-out speakers
and report the expected calibration error.
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
from pydantic import Field, field_validator
from torch import nn
from tqdm import tqdm

from dropformer.augment import EVAL_CONDITIONS, TRAIN_CONDITIONS, condition
from dropformer.checkpoint import load_checkpoint, save_checkpoint
from dropformer.config import DropFormerConfig, preset
from dropformer.configio import StrictModel, validate
from dropformer.data import Corpus, Utterance
from dropformer.data.folds import Fold, make_folds, select_folds
from dropformer.data.load import SourceSpec, load_corpus, load_sources
from dropformer.device import resolve_device as _resolve_device
from dropformer.errors import ConfigError, DataError
from dropformer.features import apply_gain_db, extract_features, normalize_batch
from dropformer.frontends import FrontendConfig
from dropformer.metrics import (
    Scores,
    compute_scores,
    expected_calibration_error,
    fit_temperature,
    markdown_table,
    softmax,
    summarize,
)
from dropformer.model import DropFormer
from dropformer.normalization import (
    Moments,
    StreamNormalizer,
    StreamNormConfig,
    prior_from,
    replay_streams,
)

log = logging.getLogger(__name__)


CorpusName = Literal["emodb", "nemo", "iemocap", "meld", "manifest"]


class SourceSection(StrictModel):
    corpus: CorpusName
    name: str | None = Field(None, pattern=r"^[A-Za-z0-9_-]{1,32}$")
    """Prefix of this source's speakers and utterances (default: the corpus name)."""
    root: str | None = None
    manifest: str | None = None
    label_map: dict[str, str | None] | None = None


class DataSection(StrictModel):
    corpus: CorpusName = "emodb"
    root: str | None = None
    manifest: str | None = None
    labels: list[str] | None = None
    """The classes, in the model's output order (default null: neutral, happy, angry, sad). The
    EmoDB and nEMO readers also map onto fear, disgust, surprise and boredom (dropformer.data.CLASS_NAMES)."""
    label_map: dict[str, str | None] | None = None
    strict: bool = False
    sources: list[SourceSection] | None = None
    """Several corpora trained together (replaces corpus/root/manifest/label_map)."""

    @field_validator("labels")
    @classmethod
    def _distinct_labels(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and (len(v) < 2 or len(set(v)) != len(v)):
            raise ValueError(
                f"needs at least 2 distinct class names, got {v}; e.g. [neutral, happy, angry, sad, fear]"
            )
        return v

    def specs(self) -> list[SourceSpec]:
        assert self.sources is not None
        return [
            SourceSpec(s.name or s.corpus, s.corpus, s.root, s.manifest, s.label_map)
            for s in self.sources
        ]


class ModelSection(StrictModel):
    preset: str = "dropformer"
    overrides: dict[str, Any] = Field(default_factory=dict)


class AugmentSection(StrictModel):
    conditions: list[str] = Field(default_factory=list)
    """Training conditions of dropformer.augment (noise, babble, reverb, telephone, level); [] = clean only."""
    clean_prob: float = Field(0.4, ge=0, le=1)
    """Each epoch, the chance that a training speaker is heard clean (else one condition, uniformly)."""


class TrainSection(StrictModel):
    folds_scheme: Literal["speaker", "group", "kfold", "split", "all", "corpus"] = "speaker"
    test_sources: list[str] | None = None
    """With data.sources and speaker/kfold folds: only these sources' speakers are tested (the rest always train)."""
    balance: Literal["none", "class", "source_class"] = "none"
    """Draw training utterances so that classes (and sources) weigh equally per epoch."""
    samples_per_epoch: int | None = Field(None, ge=1)
    """Training utterances drawn per epoch (with balance != none); null = as many as there are."""
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
    feature_norm: Literal["frontend", "stream"] = "frontend"
    stream_norm: dict[str, Any] = Field(default_factory=dict)
    """StreamNormConfig fields (prior_s, time_constant_s, variance) for feature_norm=stream."""
    augment: AugmentSection = Field(default_factory=AugmentSection)
    eval_conditions: list[str] = Field(default_factory=list)
    """Also score test sets under these fixed conditions (noise10, babble10, reverb, telephone)."""
    extract_workers: int = Field(1, ge=1, le=64)
    """Processes extracting features (one torch thread each)."""
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
    stream_norm_config(cfg)
    for name in cfg.train.augment.conditions:
        if name not in TRAIN_CONDITIONS:
            raise ConfigError(
                f"train.augment.conditions: {name!r} is unknown; choose from {sorted(TRAIN_CONDITIONS)}"
            )
    for name in cfg.train.eval_conditions:
        if name not in EVAL_CONDITIONS:
            raise ConfigError(
                f"train.eval_conditions: {name!r} is unknown; choose from {sorted(EVAL_CONDITIONS)}"
            )
    names = [s.name or s.corpus for s in cfg.data.sources or []]
    for name in cfg.train.test_sources or []:
        if name not in names:
            raise ConfigError(f"train.test_sources: {name!r} is not a data.sources name ({names})")
    return cfg


def frontend_config(cfg: TrainConfig) -> FrontendConfig:
    """The front end the model is shipped with (log-mel un-normalised under per-stream normalisation)."""
    fe = FrontendConfig.from_dict(dict(cfg.frontend))
    if cfg.train.feature_norm == "stream" and fe.kind == "logmel":
        if cfg.train.gain_db is not None:
            raise ConfigError(
                "train.feature_norm=stream already removes the stream level; set train.gain_db=null"
            )
        return dataclasses.replace(fe, normalize="none")
    return fe


def stream_norm_config(cfg: TrainConfig) -> StreamNormConfig:
    """What the trained checkpoint will ask the daemon to do per stream."""
    if cfg.train.feature_norm != "stream":
        if cfg.train.stream_norm:
            raise ConfigError("train.stream_norm is set but train.feature_norm is not 'stream'")
        return StreamNormConfig()
    try:
        return StreamNormConfig.from_dict(
            {
                "kind": "stream",
                **cfg.train.stream_norm,
                "frame_rate_hz": frontend_config(cfg).frame_rate_hz,
            }
        )
    except ConfigError as exc:
        raise ConfigError(f"train.{exc}") from exc


def model_config(cfg: TrainConfig, input_dim: int, num_classes: int) -> DropFormerConfig:
    try:
        return preset(
            cfg.model.preset, input_dim=input_dim, num_classes=num_classes, **cfg.model.overrides
        )
    except TypeError as exc:
        raise ConfigError(f"model.overrides: {exc}; use DropFormerConfig field names") from exc


def resolve_device(name: str) -> torch.device:
    return _resolve_device(name, "train.device")


@dataclass
class Batch:
    features: torch.Tensor  # (B, T, D) normalised
    lengths: torch.Tensor  # (B,)
    targets: torch.Tensor  # (B,)


Norm = tuple[np.ndarray, np.ndarray]  # (mean, std), each (D,): what a stream normaliser hands out


def make_batch(
    items: Sequence[np.ndarray],
    targets: Sequence[int],
    fe: FrontendConfig,
    device: torch.device,
    gain_db: torch.Tensor | None = None,
    norms: Sequence[Norm] | None = None,
) -> Batch:
    """Pad cached features into a batch, re-level them (log-mel), and normalise them: per stream
    (``norms``, one (mean, std) per item) or by the front end's own normalisation."""
    lengths = torch.tensor([len(x) for x in items], dtype=torch.long)
    feats = torch.zeros(len(items), int(lengths.max()), items[0].shape[1])
    for i, x in enumerate(items):
        arr = np.asarray(x, dtype=np.float32)
        if norms is not None:
            arr = ((arr - norms[i][0]) / norms[i][1]).astype(np.float32)
        feats[i, : len(x)] = torch.from_numpy(arr)
    if gain_db is not None and fe.kind == "logmel":
        feats = apply_gain_db(feats, gain_db)
    if norms is None:
        feats = normalize_batch(feats, lengths, fe)
    return Batch(
        feats.to(device),
        lengths.to(device),
        torch.tensor(list(targets), dtype=torch.long, device=device),
    )


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
def predict_logits(
    model: DropFormer,
    items: Sequence[np.ndarray],
    fe: FrontendConfig,
    device: torch.device,
    norms: Sequence[Norm] | None = None,
    batch_size: int = 32,
) -> np.ndarray:
    """Logits (N, C) for whole feature sequences (each normalised with its ``norms`` entry if given)."""
    model.eval()
    order = sorted(range(len(items)), key=lambda i: len(items[i]))
    logits = np.zeros((len(items), model.cfg.num_classes), dtype=np.float64)
    for s in range(0, len(order), batch_size):
        idx = order[s : s + batch_size]
        b = make_batch(
            [items[i] for i in idx],
            [0] * len(idx),
            fe,
            device,
            norms=None if norms is None else [norms[i] for i in idx],
        )
        logits[idx] = model(b.features, b.lengths).logits.float().cpu().numpy()
    return logits


def predict(
    model: DropFormer,
    items: Sequence[np.ndarray],
    fe: FrontendConfig,
    device: torch.device,
    batch_size: int = 32,
    norms: Sequence[Norm] | None = None,
) -> np.ndarray:
    """Class probabilities (N, C) for whole feature sequences."""
    return softmax(predict_logits(model, items, fe, device, norms, batch_size))


@dataclass
class StreamNorm:
    """A checkpoint's per-stream normalisation: its config and the training prior (mean, var)."""

    config: StreamNormConfig
    prior: tuple[np.ndarray, np.ndarray]


def eval_norms(
    utts: Sequence[Utterance],
    feats: dict[str, np.ndarray],
    norm: StreamNorm | None,
    start: str = "cold",
    seed: str = "eval",
) -> dict[str, Norm] | None:
    """How the daemon would normalise each test utterance, each speaker being one stream.

    ``cold``: the speaker's utterances replayed from a cold start in a seeded
    random order (the first ones normalised by the training prior alone).
    ``warm``: each utterance normalised as if all the speaker's *other*
    utterances had been heard first (a stream that has listened for a while).
    Causal either way: an utterance never sees its own statistics.
    """
    if norm is None:
        return None
    streams = speaker_streams(utts)
    if start == "cold":
        return replay_streams(
            streams, feats, norm.prior, norm.config, random.Random(seed), warmup=False
        )
    if start != "warm":
        raise ConfigError(f"normalisation start {start!r}: use 'cold' or 'warm'")
    out: dict[str, Norm] = {}
    rng = random.Random(seed)
    for uids in streams.values():
        order = [u for u in uids if u in feats]
        rng.shuffle(order)
        moments = {uid: Moments.of(feats[uid]) for uid in order}
        for uid in order:
            normalizer = StreamNormalizer(norm.prior[0], norm.prior[1], norm.config)
            for other in order:
                if other != uid:
                    normalizer.update(moments[other])
            out[uid] = normalizer.stats()
    return out


def evaluate_items(
    model: DropFormer,
    utts: Sequence[Utterance],
    feats: dict[str, np.ndarray],
    labels: Sequence[str],
    fe: FrontendConfig,
    device: torch.device,
    window_s: float | None = None,
    norm: StreamNorm | None = None,
    start: str = "cold",
) -> dict[str, Any]:
    """Scores on whole utterances and, with ``window_s``, on windows (each window labelled as its utterance).

    With ``norm``, features are normalised per speaker-stream as the daemon would (:func:`eval_norms`,
    from a ``cold`` or ``warm`` start).
    Logits are returned too (rounded), for calibration.
    """
    have = [u for u in utts if u.uid in feats]
    y = [list(labels).index(u.label) for u in have]
    stats = eval_norms(have, feats, norm, start)
    norms = None if stats is None else [stats[u.uid] for u in have]
    logits = predict_logits(model, [feats[u.uid] for u in have], fe, device, norms)
    probs = softmax(logits)
    pred = probs.argmax(1).tolist()
    out: dict[str, Any] = {
        "utterance": compute_scores(y, pred, labels).to_dict(),
        "predictions": {
            u.uid: {
                "true": t,
                "pred": p,
                "probs": [round(float(v), 5) for v in pr],
                "logits": [round(float(v), 4) for v in lg],
            }
            for u, t, p, pr, lg in zip(have, y, pred, probs, logits, strict=True)
        },
    }
    if window_s:
        win = round(window_s * fe.frame_rate_hz)
        wins, wy, wn = [], [], []
        for i, (u, t) in enumerate(zip(have, y, strict=True)):
            for w in windows(feats[u.uid], win, max(win // 2, 1)):
                wins.append(w)
                wy.append(t)
                if norms is not None:
                    wn.append(norms[i])
        wl = predict_logits(model, wins, fe, device, wn if norms is not None else None)
        wp = wl.argmax(1).tolist()
        out["window"] = compute_scores(wy, wp, labels).to_dict()
        out["window_predictions"] = {"true": wy, "pred": wp, "logits": np.round(wl, 4).tolist()}
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


def build_scheduler(
    opt: torch.optim.Optimizer, t: TrainSection, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LambdaLR:
    total = max(t.epochs * steps_per_epoch, 1)
    warm = t.warmup_epochs * steps_per_epoch

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        if t.scheduler == "none":
            return 1.0
        return 0.5 * (
            1.0 + math.cos(math.pi * min(step - warm, total - warm) / max(total - warm, 1))
        )

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def epoch_order(
    utts: Sequence[Utterance], balance: str, rng: random.Random, size: int | None = None
) -> list[int]:
    """Indices of one epoch: a shuffle, or ``size`` draws (with replacement) that weigh classes (and sources)
    equally."""
    if balance == "none":
        order = list(range(len(utts)))
        rng.shuffle(order)
        return order
    keys = [u.label if balance == "class" else f"{u.corpus}\x1f{u.label}" for u in utts]
    counts = {k: keys.count(k) for k in set(keys)}
    weights = [1.0 / (len(counts) * counts[k]) for k in keys]
    return rng.choices(range(len(utts)), weights=weights, k=size or len(utts))


def speaker_streams(utts: Sequence[Utterance]) -> dict[str, list[str]]:
    """Each speaker's utterance ids in a fixed order (a speaker is replayed as one stream)."""
    streams: dict[str, list[str]] = {}
    for u in utts:
        streams.setdefault(u.speaker, []).append(u.uid)
    return {k: sorted(v) for k, v in streams.items()}


def train_fold(
    cfg: TrainConfig,
    fold: Fold,
    corpus: Corpus,
    feats: dict[str, np.ndarray],
    run_dir: Path,
    augmented: dict[str, dict[str, np.ndarray]] | None = None,
    evaluated: dict[str, dict[str, np.ndarray]] | None = None,
) -> dict[str, Any]:
    """Train one fold (resuming if ``state.pt`` exists); return its ``result.json`` content.

    ``augmented`` holds the features of each training condition, ``evaluated``
    those of each evaluation condition (both ``{condition: {uid: (T, D)}}``).
    """
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
    steps = math.ceil(
        (t.samples_per_epoch if t.balance != "none" and t.samples_per_epoch else len(train_utts))
        / t.batch_size
    )
    sched = build_scheduler(opt, t, steps)
    counts = np.bincount([labels.index(u.label) for u in train_utts], minlength=len(labels)).astype(
        np.float64
    )
    weight = (
        torch.tensor(
            counts.sum() / (len(labels) * np.maximum(counts, 1)), dtype=torch.float32, device=device
        )
        if t.class_weighted
        else None
    )
    loss_fn = nn.CrossEntropyLoss(weight=weight, label_smoothing=t.label_smoothing)
    sel_set = {"val": fold.val, "test": fold.test, "last": []}[t.selection]
    if fold.name == "all" and t.selection != "last":
        raise ConfigError(
            "train.folds_scheme=all has no validation or test set; set train.selection=last"
        )
    if t.selection == "val" and not fold.val:
        raise ConfigError(
            "train.selection=val but this fold has no validation set; set train.val_count>=1 "
            "or train.selection=last"
        )
    if t.selection == "test":
        log.warning(
            "train.selection=test: the model is selected on the test fold (the paper's practice); "
            "scores are optimistic"
        )
    norm_cfg = stream_norm_config(cfg)
    snorm = (
        StreamNorm(norm_cfg, prior_from([feats[u.uid] for u in train_utts]))
        if norm_cfg.enabled
        else None
    )
    streams = speaker_streams(train_utts)
    augmented = {k: v for k, v in (augmented or {}).items() if v}
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
    meta: dict[str, Any] = {
        "corpus": corpus.name,
        "fold": fold.index,
        "test": fold.name,
        "preset": cfg.model.preset,
        "selection": t.selection,
    }
    bar = tqdm(
        range(start_epoch, t.epochs),
        desc=f"fold {fold.index}/{fold.name}",
        unit="ep",
        disable=not t.progress,
        initial=start_epoch,
        total=t.epochs,
    )
    for epoch in bar:
        model.train()
        heard = feats
        if augmented:  # each speaker-stream is heard clean or under one condition this epoch
            heard = dict(feats)
            for uids in streams.values():
                if rng.random() >= t.augment.clean_prob:
                    bank = augmented[rng.choice(sorted(augmented))]
                    heard.update({uid: bank[uid] for uid in uids if uid in bank})
        norms = replay_streams(streams, heard, snorm.prior, snorm.config, rng) if snorm else None
        order = epoch_order(train_utts, t.balance, rng, t.samples_per_epoch)
        total_loss = 0.0
        for s in range(0, len(order), t.batch_size):
            idx = order[s : s + t.batch_size]
            gains = (
                None
                if t.gain_db is None
                else torch.empty(len(idx)).uniform_(t.gain_db[0], t.gain_db[1], generator=gen)
            )
            b = make_batch(
                [random_crop(heard[train_utts[i].uid], max_frames, rng) for i in idx],
                [labels.index(train_utts[i].label) for i in idx],
                fe,
                device,
                gains,
                norms=None if norms is None else [norms[train_utts[i].uid] for i in idx],
            )
            spec_augment(b, t, gen)
            loss = loss_fn(model(b.features, b.lengths).logits, b.targets)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if t.grad_clip:
                nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
            opt.step()
            sched.step()
            total_loss += float(loss.detach()) * len(idx)
        entry: dict[str, Any] = {
            "epoch": epoch + 1,
            "loss": total_loss / len(order),
            "lr": sched.get_last_lr()[0],
        }
        if sel_set:
            ev = evaluate_items(model, sel_set, feats, labels, fe, device, norm=snorm)["utterance"]
            entry[f"{t.selection}_ua"], entry[f"{t.selection}_wa"] = ev["ua"], ev["wa"]
        history.append(entry)
        score = entry.get(f"{t.selection}_ua", float(epoch))
        if score > best or t.selection == "last":
            best = score
            save_checkpoint(
                fold_dir / "best",
                model,
                frontend_config=fe,
                labels=labels,
                meta={**meta, "epoch": epoch + 1},
                stream_norm=norm_cfg,
                norm_prior=snorm.prior if snorm else None,
            )
        log.debug("fold %d epoch %d: %s", fold.index, epoch + 1, entry)
        bar.set_postfix({k: round(v, 4) for k, v in entry.items() if k not in ("epoch",)})
        if (epoch + 1) % t.checkpoint_every_epochs == 0 or epoch + 1 == t.epochs:
            torch.save(
                {
                    "model": model.state_dict(),
                    "optimizer": opt.state_dict(),
                    "scheduler": sched.state_dict(),
                    "epoch": epoch + 1,
                    "best": best,
                    "history": history,
                    "py_rng": random.getstate(),
                    "torch_rng": torch.get_rng_state(),
                },
                fold_dir / "state.tmp",
            )
            (fold_dir / "state.tmp").replace(state_file)
    (fold_dir / "history.json").write_text(json.dumps(history, indent=1))
    ckpt = load_checkpoint(fold_dir / "best", map_location=device)
    res = evaluate_checkpoint(
        ckpt.model, fold.test, feats, labels, fe, device, t.eval_window_s, snorm, evaluated
    )
    res.update(
        {
            "fold": fold.index,
            "name": fold.name,
            "epoch": ckpt.meta.get("epoch"),
            "n_train": len(train_utts),
            "n_val": len(fold.val),
            "n_test": len(fold.test),
        }
    )
    if fold.test:
        log.info(
            "fold %d (%s): test UA %.3f WA %.3f (epoch %s)",
            fold.index,
            fold.name,
            res["utterance"]["ua"],
            res["utterance"]["wa"],
            res["epoch"],
        )
    result_file.write_text(json.dumps(res, indent=1))
    state_file.unlink(missing_ok=True)  # finished: the resume state is no longer needed
    return res


def evaluate_checkpoint(
    model: DropFormer,
    test: Sequence[Utterance],
    feats: dict[str, np.ndarray],
    labels: Sequence[str],
    fe: FrontendConfig,
    device: torch.device,
    window_s: float | None,
    norm: StreamNorm | None,
    evaluated: dict[str, dict[str, np.ndarray]] | None,
) -> dict[str, Any]:
    """Clean scores (with predictions and logits) plus UA/WA under each evaluation condition."""
    if not test:
        return {}
    res = evaluate_items(model, test, feats, labels, fe, device, window_s, norm)
    for name, bank in (evaluated or {}).items():
        ev = evaluate_items(model, test, bank, labels, fe, device, window_s, norm)
        res.setdefault("conditions", {})[name] = {
            level: {k: ev[level][k] for k in ("ua", "wa", "count")}
            for level in ("utterance", "window")
            if level in ev
        }
    return res


def load_data(cfg: TrainConfig) -> Corpus:
    """The corpus of ``data`` (one reader, or several combined by ``data.sources``)."""
    d = cfg.data
    labels = tuple(d.labels) if d.labels else None
    if d.sources:
        return load_sources(d.specs(), labels, d.strict)
    return load_corpus(d.corpus, d.root, d.manifest, labels, d.label_map, d.strict)


def extract(
    cfg: TrainConfig, utts: Sequence[Utterance], condition_name: str | None = None
) -> dict[str, np.ndarray]:
    """Cached features of ``utts`` (one cache per source), clean or under a named condition."""
    t = cfg.train
    cond = None if condition_name is None else condition(condition_name)
    by_source: dict[str, list[Utterance]] = {}
    for u in utts:
        by_source.setdefault(u.corpus, []).append(u)
    out: dict[str, np.ndarray] = {}
    for part in by_source.values():
        out.update(
            extract_features(
                part,
                frontend_config(cfg),
                cfg.cache_dir,
                device=str(resolve_device(t.device)),
                progress=t.progress,
                condition=cond,
                workers=t.extract_workers,
            )
        )
    return out


def check_classes(corpus: Corpus) -> None:
    """Refuse to train a class that no utterance has (its output would never be learnt)."""
    present = {u.label for u in corpus.utterances}
    empty = [c for c in corpus.labels if c not in present]
    if corpus.utterances and empty:
        raise DataError(
            f"data.labels {list(corpus.labels)}: no utterance of {corpus.name} is labelled {empty}; "
            "remove them from data.labels, or add data (or a source's label_map) that has them"
        )


def prepare(cfg: TrainConfig) -> tuple[Corpus, list[Fold], dict[str, np.ndarray]]:
    """Read the corpus, build the folds and make sure every (clean) feature is cached."""
    t = cfg.train
    corpus = load_data(cfg)
    check_classes(corpus)
    folds = select_folds(
        make_folds(
            corpus.utterances,
            t.folds_scheme,
            t.num_folds,
            0 if t.selection != "val" else t.val_count,
            t.test_sources,
        ),
        t.folds,
    )
    if t.num_threads:
        torch.set_num_threads(t.num_threads)
    return corpus, folds, extract(cfg, corpus.utterances)


def prepare_conditions(
    cfg: TrainConfig, corpus: Corpus, folds: Sequence[Fold]
) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, dict[str, np.ndarray]]]:
    """Features under each training condition (training utterances) and evaluation condition (test utterances)."""
    t = cfg.train
    train_uids = {u.uid for f in folds for u in f.train}
    test_uids = {u.uid for f in folds for u in f.test}
    augmented = {
        name: extract(cfg, [u for u in corpus.utterances if u.uid in train_uids], name)
        for name in t.augment.conditions
    }
    evaluated = {
        name: extract(cfg, [u for u in corpus.utterances if u.uid in test_uids], f"eval:{name}")
        for name in t.eval_conditions
        if name != "clean"
    }
    return augmented, evaluated


def run_training(cfg: TrainConfig) -> dict[str, Any]:
    """Train every selected fold, then write ``summary.json`` and ``summary.md``; return the summary."""
    torch.use_deterministic_algorithms(True, warn_only=True)
    if cfg.train.num_threads:
        torch.set_num_threads(cfg.train.num_threads)
    run_dir = Path(cfg.out_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(json.dumps(cfg.model_dump(), indent=2))
    corpus, folds, feats = prepare(cfg)
    augmented, evaluated = prepare_conditions(cfg, corpus, folds)
    results = [train_fold(cfg, f, corpus, feats, run_dir, augmented, evaluated) for f in folds]
    return write_summary(run_dir, results, title=f"{corpus.name} {cfg.model.preset}")


def write_summary(
    run_dir: Path, results: Sequence[dict[str, Any]], title: str, stem: str = "summary"
) -> dict[str, Any]:
    """Mean ± std over folds for utterance- and window-level scores, as ``<stem>.json`` and ``<stem>.md``."""
    doc: dict[str, Any] = {}
    md: list[str] = []
    results = [r for r in results if "utterance" in r]  # folds without a test set have no scores
    for level in ("utterance", "window"):
        if not results or not all(level in r for r in results):
            continue
        scores = {f"{r['fold']}:{r['name']}": Scores(**r[level]) for r in results}
        if level == "utterance":
            preds = {
                f"{r['fold']}:{r['name']}": (
                    [p["true"] for p in r["predictions"].values()],
                    [p["pred"] for p in r["predictions"].values()],
                )
                for r in results
            }
        else:
            preds = {
                f"{r['fold']}:{r['name']}": (
                    r["window_predictions"]["true"],
                    r["window_predictions"]["pred"],
                )
                for r in results
            }
        s = summarize(scores, preds)
        doc[level] = s.to_dict()
        md.append(markdown_table(s, f"{title}: {level} level"))
    if results and all("conditions" in r for r in results):
        doc["conditions"], table = condition_summary(results)
        md.append(table)
    calibration = calibrate(results)
    if calibration:
        doc["calibration"] = calibration
        c = calibration
        md.append(
            f"Calibration (temperature scaling fitted on the other folds' held-out speakers, 3 s windows): "
            f"ECE {100 * c['ece_window_raw']:.1f}% -> {100 * c['ece_window_calibrated']:.1f}% on windows, "
            f"{100 * c['ece_utterance_raw']:.1f}% -> {100 * c['ece_utterance_calibrated']:.1f}% on utterances; "
            f"temperature fitted on all folds: {c['temperature']:.3f}"
        )
    (run_dir / f"{stem}.json").write_text(json.dumps(doc, indent=1))
    (run_dir / f"{stem}.md").write_text("\n\n".join(md) + "\n")
    return doc


def condition_summary(results: Sequence[dict[str, Any]]) -> tuple[dict[str, Any], str]:
    """Mean UA/WA over folds under each evaluation condition (clean first), and a Markdown table."""
    rows: dict[str, dict[str, float]] = {"clean": {}}
    names = ["clean"] + sorted(results[0]["conditions"])
    for level in ("utterance", "window"):
        if all(level in r for r in results):
            rows["clean"][f"{level}_ua"] = float(np.mean([r[level]["ua"] for r in results]))
            for name in names[1:]:
                vals = [
                    r["conditions"][name][level]["ua"]
                    for r in results
                    if level in r["conditions"].get(name, {})
                ]
                rows.setdefault(name, {})[f"{level}_ua"] = (
                    float(np.mean(vals)) if vals else float("nan")
                )
    lines = ["| condition | UA % (utterances) | UA % (3 s windows) |", "|---|---|---|"]
    for name in names:
        r = rows.get(name, {})
        cells = [f"{100 * r[k]:.1f}" if k in r else "-" for k in ("utterance_ua", "window_ua")]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return rows, "\n".join(lines)


def calibrate(results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Temperature scaling on held-out speakers, and the expected calibration error before and after.

    For each fold the temperature is fitted on the *other* folds' test logits
    (3 s windows), so the ECE reported for a fold is measured on speakers the
    temperature never saw; ``temperature`` is the fit on every fold (the one
    to ship with a model trained on everything).
    """
    have = [r for r in results if "window_predictions" in r and "logits" in r["window_predictions"]]
    if not have:
        return {}
    win = [
        (np.asarray(r["window_predictions"]["logits"]), np.asarray(r["window_predictions"]["true"]))
        for r in have
    ]
    utt = [
        (
            np.asarray([p["logits"] for p in r["predictions"].values()]),
            np.asarray([p["true"] for p in r["predictions"].values()]),
        )
        for r in have
    ]
    ece: dict[str, list[float]] = {
        k: [] for k in ("window_raw", "window_calibrated", "utterance_raw", "utterance_calibrated")
    }
    for i in range(len(have)):
        others = [w for j, w in enumerate(win) if j != i] or win
        temp = fit_temperature(
            np.concatenate([o[0] for o in others]), np.concatenate([o[1] for o in others])
        )
        for level, (z, y) in (("window", win[i]), ("utterance", utt[i])):
            ece[f"{level}_raw"].append(expected_calibration_error(softmax(z), y))
            ece[f"{level}_calibrated"].append(expected_calibration_error(softmax(z, temp), y))
    all_z, all_y = np.concatenate([w[0] for w in win]), np.concatenate([w[1] for w in win])
    out: dict[str, Any] = {f"ece_{k}": float(np.mean(v)) for k, v in ece.items()}
    out["temperature"] = fit_temperature(all_z, all_y)
    out["held_out_folds"] = len(have)
    return out
