"""The model side of inference: front end + DropFormer, loaded once, run on batches.

Only the worker thread calls :meth:`Engine.run`. Knows nothing of streams,
queues or the event loop.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dropformer import Checkpoint, DropFormer, FrontendConfig, load_checkpoint, preset, pretrained
from dropformer.device import resolve_device
from dropformer.normalization import Moments, StreamNormalizer
from streamer.core.importance import TokenImportance

#: Per-stream normalisation statistics handed in with a window: (mean, std), each (D,) float32.
NormStats = tuple[np.ndarray, np.ndarray]

log = logging.getLogger(__name__)

DEFAULT_LABELS = ["neutral", "happy", "angry", "sad"]


def bundled_checkpoint(name: str | None = None) -> Path | None:
    """A trained model shipped inside the package (default: the daemon's default model), if present."""
    return pretrained.bundled(name)


@dataclass
class BatchResult:
    probs: np.ndarray  # (B, C) softmax probabilities (calibrated by the checkpoint's temperature)
    tokens_in: np.ndarray  # (B,) tokens entering the first block
    tokens_kept: np.ndarray  # (B,) tokens left after the last block
    compute_ms: float
    moments: list[Moments] | None = (
        None  # per window: its raw features' moments (per-stream normalisation)
    )
    importance: list[TokenImportance] | None = (
        None  # per window: last layer's token importance, TDM's drops
    )


class Engine:
    """Front end + DropFormer on one device, with the labels and a description for events."""

    def __init__(
        self, checkpoint: Checkpoint, device: torch.device, *, random_init: bool = False
    ) -> None:
        self.device = device
        self.labels = list(checkpoint.labels)
        self.model = checkpoint.model.to(device).eval()
        self.frontend = checkpoint.build_frontend().to(device).eval()
        self.random_init = random_init
        self.checkpoint = checkpoint
        self.temperature = checkpoint.temperature
        self.stream_norm = checkpoint.stream_norm
        prior = checkpoint.new_normalizer()
        self._cold: NormStats | None = prior.stats() if prior is not None else None
        rev = _weights_rev(checkpoint.path) if checkpoint.path else "random"
        self.info: dict[str, Any] = {
            "name": "dropformer",
            "frontend": checkpoint.frontend_config.name,
            "rev": rev,
            "random_init": random_init,
        }
        if checkpoint.stream_norm.enabled:
            self.info["stream_norm"] = checkpoint.stream_norm.kind
        if checkpoint.temperature != 1.0:
            self.info["temperature"] = round(checkpoint.temperature, 4)
        for key in ("trained_on", "licence"):
            if key in checkpoint.meta:
                self.info[key] = checkpoint.meta[key]

    def new_normalizer(self) -> StreamNormalizer | None:
        """A fresh per-stream normaliser of the kind the checkpoint was trained with (None: it needs none)."""
        return self.checkpoint.new_normalizer()

    @classmethod
    def load(
        cls,
        checkpoint: str | Path | None,
        *,
        device: str = "auto",
        frontend_model: str | None = None,
        threads: int | None = None,
        frontend_overrides: dict[str, Any] | None = None,
    ) -> Engine:
        """Load ``checkpoint`` (a folder or a shipped model's name; None: the bundled default model, else a random
        log-mel model, loudly). ``frontend_overrides`` replace fields of the checkpoint's front-end config
        (e.g. ``{"dtype": "bfloat16"}``)."""
        if threads:
            torch.set_num_threads(threads)
        dev = resolve_device(device, "model.device")
        random_init = False
        path = pretrained.resolve(checkpoint) if checkpoint else bundled_checkpoint()
        if path is None:
            log.warning(
                "!!! No trained model is available: using a RANDOMLY INITIALISED DropFormer. "
                "Its estimates are meaningless. Set model.checkpoint to a trained checkpoint. !!!"
            )
            torch.manual_seed(0)
            model = DropFormer(
                preset(
                    "dropformer",
                    input_dim=80,
                    d_model=128,
                    num_heads=8,
                    ffn_dim=256,
                    head_hidden=(128,),
                )
            )
            ckpt = Checkpoint(
                model.eval(), model.cfg, FrontendConfig(kind="logmel"), list(DEFAULT_LABELS), {}
            )
            random_init = True
        else:
            ckpt = load_checkpoint(path)
        if frontend_model is not None:
            ckpt.frontend_config.model = frontend_model
        if frontend_overrides:
            ckpt.frontend_config = FrontendConfig.from_dict(
                {**ckpt.frontend_config.to_dict(), **frontend_overrides}
            )
        engine = cls(ckpt, dev, random_init=random_init)
        log.info(
            "model %s (front end %s, labels %s) on %s",
            engine.info["rev"],
            engine.info["frontend"],
            engine.labels,
            dev,
        )
        return engine

    def warm_up(self, window_samples: int, batch_sizes: tuple[int, ...] = (1,)) -> float:
        """Run windows of low noise through the model once per batch size, so that one-time costs
        (compiling with ``frontend.compile``, kernel selection, allocator growth) are paid at start-up,
        not on the first live window.
        Returns the seconds it took."""
        t0 = time.perf_counter()
        self.frontend.prepare(window_samples)  # frontend.compile: compiles for this length now
        rng = np.random.default_rng(0)
        for b in batch_sizes:
            self.run(
                [(1e-3 * rng.standard_normal(window_samples)).astype(np.float32) for _ in range(b)]
            )
        return time.perf_counter() - t0

    @torch.inference_mode()
    def run(
        self, waves: list[np.ndarray], norms: list[NormStats | None] | None = None
    ) -> BatchResult:
        """Classify a batch of 16 kHz mono windows of any lengths.

        When the checkpoint normalises features per stream, ``norms[i]`` is
        the (mean, std) window i's stream hands in (None: the training prior,
        as a stream's first window gets); the result then carries each
        window's raw feature moments for the stream to fold in.
        """
        t0 = time.perf_counter()
        lengths = torch.tensor([len(w) for w in waves], dtype=torch.long)
        batch = torch.zeros(len(waves), int(lengths.max()), dtype=torch.float32)
        for i, w in enumerate(waves):
            batch[i, : len(w)] = torch.from_numpy(np.ascontiguousarray(w, dtype=np.float32))
        feats, feat_lengths = self.frontend(
            batch.to(self.device), lengths.to(self.device)
        )  # (B, T, D), (B,)
        moments = None
        if self._cold is not None:
            feats, moments = self._normalize(feats, feat_lengths, norms or [None] * len(waves))
        out = self.model(feats, feat_lengths)
        probs = torch.softmax(out.logits.float() / self.temperature, dim=-1).cpu().numpy()  # (B, C)
        kept = out.kept_tokens.cpu().numpy()  # (B, L + 1)
        return BatchResult(
            probs,
            kept[:, 0],
            kept[:, -1],
            (time.perf_counter() - t0) * 1000.0,
            moments,
            importance=token_importance(out.importance, kept),
        )

    def _normalize(
        self, feats: torch.Tensor, lengths: torch.Tensor, norms: list[NormStats | None]
    ) -> tuple[torch.Tensor, list[Moments]]:
        """Standardise each item's valid frames by its stream's statistics; return its raw moments too."""
        assert self._cold is not None
        if len(norms) != feats.shape[0]:
            raise ValueError(
                f"{len(norms)} normalisation entries for a batch of {feats.shape[0]} windows"
            )
        moments = []
        out = torch.zeros_like(feats)
        for i, stats in enumerate(norms):
            n = int(lengths[i])
            x = feats[i, : max(n, 1)].double()  # (T, D); an empty item yields a zero-count block
            moments.append(
                Moments(float(n), x.mean(0).cpu().numpy(), (x * x).mean(0).cpu().numpy())
            )
            mean, std = stats if stats is not None else self._cold
            out[i, :n] = (feats[i, :n] - torch.from_numpy(mean).to(feats)) / torch.from_numpy(
                std
            ).to(feats)
        return out, moments


def token_importance(
    per_layer: list[torch.Tensor], kept: np.ndarray
) -> list[TokenImportance] | None:
    """Each window's last-layer importance on its own time axis and the tokens TDM dropped.

    ``per_layer`` is DropFormer's ``importance`` ((B, T) per layer, NaN where a token was
    padding or dropped before the layer), ``kept`` its ``kept_tokens`` ((B, L + 1)). The
    last layer's own TDM drops its ``kept[:, -2] - kept[:, -1]`` least important tokens,
    ties broken by time as the model does (a stable sort).
    """
    if not per_layer:
        return None
    last = per_layer[-1].float().cpu().numpy()  # (B, T)
    out = []
    for i in range(last.shape[0]):
        values = last[i, : int(kept[i, 0])].astype(np.float32)  # (T_i,)
        seen = np.isfinite(values)
        dropped = ~seen
        n_last = int(kept[i, -2] - kept[i, -1])
        if n_last > 0:
            idx = np.flatnonzero(seen)
            dropped[idx[np.argsort(values[idx], kind="stable")[:n_last]]] = True
        out.append(TokenImportance(values, dropped, len(per_layer)))
    return out


def _weights_rev(folder: Path) -> str:
    weights = folder / "model.safetensors"
    h = hashlib.sha256()
    with open(weights, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return f"{folder.name}@{h.hexdigest()[:12]}"
