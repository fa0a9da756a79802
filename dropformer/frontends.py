"""Front ends: waveform (B, N) at 16 kHz and lengths (B,) -> features (B, T, D), lengths (B,).

- ``wavlm``: a frozen ``transformers.WavLMModel`` loaded with ``from_pretrained``
  (hub id or local folder), cut after the chosen layer so the layers above it
  never run; the output of that layer is returned (50 Hz). The waveform
  normalisation the checkpoint's feature extractor asks for is applied per
  utterance over its valid samples.
- ``logmel``: 80 log-mel bands (25 ms windows, 10 ms hop) averaged in pairs to
  50 Hz, built on ``transformers.audio_utils.mel_filter_bank``; per-utterance
  mean/variance normalisation per band by default, which also removes the
  absolute recording level.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dropformer.configio import dataclass_from_dict
from dropformer.errors import CheckpointError, ConfigError

log = logging.getLogger(__name__)

SAMPLE_RATE_HZ = 16000


@dataclass
class FrontendConfig:
    """Which front end turns audio into the features DropFormer reads."""

    kind: str = "wavlm"
    """'wavlm' (frozen WavLM layer) or 'logmel' (small CPUs, offline use)."""
    model: str = "microsoft/wavlm-large"
    """wavlm: a Hugging Face hub id or a local folder saved with save_pretrained."""
    layer: int = 12
    """wavlm: the transformer layer whose output is used (1-based; layers above are removed)."""
    normalize_waveform: bool | None = None
    """wavlm: zero-mean/unit-variance per utterance; None = what the checkpoint's feature extractor says."""
    dtype: str = "float32"
    """wavlm: 'float32' or 'bfloat16' weights. bf16 is for GPUs: on the CPU build measured here its
    convolutions ran ~30x slower and the whole front end 16x slower (BENCHMARKS.md)."""
    n_mels: int = 80
    """logmel: mel bands."""
    win_ms: float = 25.0
    """logmel: analysis window length in milliseconds."""
    hop_ms: float = 10.0
    """logmel: hop between analysis windows in milliseconds."""
    frame_rate_hz: float = 50.0
    """logmel: output token rate after pooling (must divide 1000/hop_ms)."""
    normalize: str = "utterance"
    """logmel: 'utterance' (mean/variance per band over valid frames), 'level' (one mean/std over
    all bands and frames: removes the recording level but keeps the spectral tilt) or 'none'."""

    def __post_init__(self) -> None:
        if self.kind not in ("wavlm", "logmel"):
            raise ConfigError(f"frontend.kind = {self.kind!r}; use 'wavlm' or 'logmel'")
        if self.layer < 1:
            raise ConfigError(f"frontend.layer = {self.layer} must be >= 1 (1-based transformer layer)")
        if self.dtype not in ("float32", "bfloat16"):
            raise ConfigError(f"frontend.dtype = {self.dtype!r}; use 'float32' or 'bfloat16'")
        if self.normalize not in ("utterance", "level", "none"):
            raise ConfigError(f"frontend.normalize = {self.normalize!r}; use 'utterance', 'level' or 'none'")
        base_rate = 1000.0 / self.hop_ms
        if self.frame_rate_hz <= 0 or abs(base_rate / self.frame_rate_hz - round(base_rate / self.frame_rate_hz)) > 1e-6:
            raise ConfigError(f"frontend.frame_rate_hz = {self.frame_rate_hz} must divide 1000/hop_ms = {base_rate}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FrontendConfig:
        return dataclass_from_dict(cls, data, "frontend")

    @property
    def name(self) -> str:
        """Short description used in events, e.g. 'wavlm-large@12' or 'logmel80'."""
        if self.kind == "logmel":
            return f"logmel{self.n_mels}"
        return f"{Path(self.model.rstrip('/')).name.lower()}@{self.layer}"


class Frontend(nn.Module):
    """Common interface; subclasses set ``feature_dim`` and ``frame_rate_hz``."""

    config: FrontendConfig
    feature_dim: int
    frame_rate_hz: float

    def forward(self, waveform: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError


def masked_standardize(x: torch.Tensor, lengths: torch.Tensor, dim: int, eps: float) -> torch.Tensor:
    """Zero mean, unit variance along ``dim`` over the first ``lengths`` entries; padding set to 0."""
    valid = torch.arange(x.shape[dim], device=x.device)[None, :] < lengths[:, None]  # (B, N)
    shape = [x.shape[0]] + [1] * (x.dim() - 1)
    shape[dim] = x.shape[dim]
    m = valid.reshape(shape).to(x.dtype)
    n = m.sum(dim=dim, keepdim=True).clamp(min=1)
    mean = (x * m).sum(dim=dim, keepdim=True) / n
    var = (((x - mean) * m) ** 2).sum(dim=dim, keepdim=True) / n
    return (x - mean) / torch.sqrt(var + eps) * m


def normalize_logmel(feats: torch.Tensor, lengths: torch.Tensor, mode: str) -> torch.Tensor:
    """Normalise log-mel (B, T, M) over each item's valid frames.

    'utterance': per band (classic CMVN; also removes the spectral shape);
    'level': one mean and std over all bands and frames (a gain is a constant
    shift of log-mel, so this removes level exactly, keeping the spectral tilt);
    'none': unchanged.
    """
    if mode == "utterance":
        return masked_standardize(feats, lengths, dim=1, eps=1e-5)
    if mode == "level":
        b, t, m = feats.shape
        flat = masked_standardize(feats.reshape(b, t * m), lengths * m, dim=1, eps=1e-5)  # (B, T*M)
        return flat.reshape(b, t, m)
    return feats


class LogMelFrontend(Frontend):
    def __init__(self, config: FrontendConfig) -> None:
        super().__init__()
        from transformers.audio_utils import mel_filter_bank

        self.config = config
        self.win_samples = round(SAMPLE_RATE_HZ * config.win_ms / 1000)
        self.hop_samples = round(SAMPLE_RATE_HZ * config.hop_ms / 1000)
        self.n_fft = 1 << (self.win_samples - 1).bit_length()
        self.pool = round(1000.0 / config.hop_ms / config.frame_rate_hz)
        fb = mel_filter_bank(
            num_frequency_bins=self.n_fft // 2 + 1, num_mel_filters=config.n_mels, min_frequency=20.0,
            max_frequency=SAMPLE_RATE_HZ / 2, sampling_rate=SAMPLE_RATE_HZ, norm="slaney", mel_scale="slaney",
        )
        self.mel_fb: torch.Tensor
        self.window: torch.Tensor
        self.register_buffer("mel_fb", torch.from_numpy(fb).float(), persistent=False)  # (F, M)
        self.register_buffer("window", torch.hann_window(self.win_samples), persistent=False)
        self.feature_dim = config.n_mels
        self.frame_rate_hz = config.frame_rate_hz

    def output_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        frames = torch.div(lengths - self.n_fft, self.hop_samples, rounding_mode="floor") + 1  # stft frames span n_fft
        return torch.div(frames.clamp(min=0), self.pool, rounding_mode="floor")

    def forward(self, waveform: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        waveform = waveform.float()
        spec = torch.stft(
            waveform, self.n_fft, hop_length=self.hop_samples, win_length=self.win_samples,
            window=self.window, center=False, return_complex=True,
        )  # (B, F, frames)
        mel = spec.abs().pow(2).transpose(1, 2) @ self.mel_fb  # (B, frames, M)
        logmel = torch.log(mel + 1e-8)
        b, n, m = logmel.shape
        n_pooled = n // self.pool
        feats = logmel[:, : n_pooled * self.pool].reshape(b, n_pooled, self.pool, m).mean(2)  # (B, T, M)
        out_lengths = self.output_lengths(lengths.to(waveform.device)).clamp(max=n_pooled)
        return normalize_logmel(feats, out_lengths, self.config.normalize), out_lengths


class WavLMFrontend(Frontend):
    """Frozen WavLM, truncated after ``config.layer``; returns that layer's output."""

    def __init__(self, config: FrontendConfig) -> None:
        super().__init__()
        from transformers import WavLMModel

        self.config = config
        try:
            model = WavLMModel.from_pretrained(config.model)
        except (OSError, ValueError) as exc:
            raise CheckpointError(
                f"cannot load WavLM from {config.model!r}: {exc}. Set frontend.model to a local folder "
                "saved with save_pretrained, or to a hub id with network access (HF_HUB_OFFLINE unset)."
            ) from exc
        total = len(model.encoder.layers)
        if config.layer > total:
            raise ConfigError(f"frontend.layer = {config.layer} but {config.model!r} has only {total} layers")
        model.encoder.layers = model.encoder.layers[: config.layer]  # layers above are never run
        model.config.num_hidden_layers = config.layer
        model.eval().requires_grad_(False)
        if config.dtype == "bfloat16":
            model = model.to(torch.bfloat16)  # type: ignore[arg-type]
        self.wavlm = model
        self.normalize_waveform = config.normalize_waveform
        if self.normalize_waveform is None:
            self.normalize_waveform = _feature_extractor_normalizes(config.model)
        self._captured: list[torch.Tensor] = []
        model.encoder.layers[-1].register_forward_hook(self._capture)
        self.feature_dim = int(model.config.hidden_size)
        self.frame_rate_hz = 50.0

    def _capture(self, module: nn.Module, inputs: Any, output: Any) -> None:
        self._captured.append(output[0] if isinstance(output, tuple) else output)

    def train(self, mode: bool = True) -> WavLMFrontend:
        super().train(mode)
        self.wavlm.eval()  # always frozen
        return self

    def output_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        return self.wavlm._get_feat_extract_output_lengths(lengths).long()  # type: ignore[arg-type]

    def forward(self, waveform: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        lengths = lengths.to(waveform.device)
        x = waveform.float()
        if self.normalize_waveform:
            x = masked_standardize(x, lengths, dim=1, eps=1e-7)
        x = x.to(next(self.wavlm.parameters()).dtype)
        attention_mask = (torch.arange(x.shape[1], device=x.device)[None, :] < lengths[:, None]).long()
        self._captured.clear()
        with torch.no_grad():
            self.wavlm(x, attention_mask=attention_mask)
        feats = self._captured.pop().float()  # (B, T, D) output of the chosen layer
        out_lengths = self.output_lengths(lengths).clamp(max=feats.shape[1])
        mask = torch.arange(feats.shape[1], device=feats.device)[None, :] < out_lengths[:, None]
        return feats * mask[..., None], out_lengths


def _feature_extractor_normalizes(source: str) -> bool:
    try:
        from transformers import Wav2Vec2FeatureExtractor

        return bool(Wav2Vec2FeatureExtractor.from_pretrained(source).do_normalize)
    except (OSError, ValueError):
        log.warning("no feature-extractor config found for %r; normalising the waveform (WavLM-Large's setting)", source)
        return True


def build_frontend(config: FrontendConfig) -> Frontend:
    """Construct the front end a config names (loads WavLM weights when kind='wavlm')."""
    return LogMelFrontend(config) if config.kind == "logmel" else WavLMFrontend(config)
