"""Low-precision matrix products with everything else in fp32, for frozen encoders at inference.

``frontend.products_dtype: bfloat16`` runs every matrix product of a WavLM front end (the
convolutional encoder, the positional convolution, the projections and feed-forward layers)
with bf16 inputs and weights, and keeps the rest in fp32: the residual stream, layer norms,
softmax, the relative position bias and the biases. On CPUs with AMX or AVX512-BF16 the
products are where the time goes, and bf16 products run 3-4x faster there than fp32 ones;
keeping the residual stream in fp32 keeps the answers closer to exact fp32 than casting the
whole model (``dtype: bfloat16``) does. The swap is done once, in place, after loading.

The convolutional encoder runs time-major, each convolution as one matrix product over
unfolded frames: (B, T', C_in * k) @ (C_in * k, C_out), so that the per-frame layer norm needs
no transposes.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


class ProductLinear(nn.Module):
    """``nn.Linear`` whose product runs in ``dtype`` (weight stored in it); bias and output fp32."""

    weight: torch.Tensor
    bias: torch.Tensor | None

    def __init__(self, linear: nn.Linear, dtype: torch.dtype) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.register_buffer("weight", linear.weight.detach().to(dtype))  # (out, in)
        bias = None if linear.bias is None else linear.bias.detach().float()
        self.register_buffer("bias", bias)  # (out,) or None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(x.to(self.weight.dtype), self.weight).float()  # (..., out)
        return y if self.bias is None else y + self.bias


class ProductConv1d(nn.Module):
    """A (grouped) ``nn.Conv1d`` whose product runs in ``dtype``; bias and output fp32."""

    weight: torch.Tensor
    bias: torch.Tensor | None

    def __init__(self, conv: nn.Conv1d, dtype: torch.dtype) -> None:
        super().__init__()
        if isinstance(conv.padding, str):
            raise ValueError(f"ProductConv1d needs numeric padding, got {conv.padding!r}")
        self.stride, self.padding = conv.stride, conv.padding
        self.dilation, self.groups = conv.dilation, conv.groups
        self.register_buffer("weight", conv.weight.detach().to(dtype))  # (C_out, C_in / g, k)
        bias = None if conv.bias is None else conv.bias.detach().float()
        self.register_buffer("bias", bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C_in, T) -> (B, C_out, T')
        y = F.conv1d(
            x.to(self.weight.dtype), self.weight, None,
            self.stride, self.padding, self.dilation, self.groups,
        ).float()  # fmt: skip
        return y if self.bias is None else y + self.bias[:, None]


class TimeMajorConvEncoder(nn.Module):
    """A wav2vec 2.0-style convolutional feature encoder (conv -> layer or group norm -> GELU,
    per layer) computed time-major with each convolution as one product in ``dtype``.

    Takes the encoder's ``conv_layers`` (transformers' WavLM/wav2vec 2.0 layout: ``conv``, an
    optional ``layer_norm`` that is a LayerNorm or GroupNorm, ``activation``). In fp32 it is the
    exact encoder (to float rounding), and faster compiled than transformers' own: the first layer,
    over the raw waveform, becomes a small product instead of a one-channel convolution."""

    def __init__(self, conv_layers: nn.ModuleList, dtype: torch.dtype) -> None:
        super().__init__()
        self.dtype = dtype
        self.kernels: list[int] = []
        self.strides: list[int] = []
        self.norms = nn.ModuleList()
        self.activations: list[Any] = []
        for i, layer in enumerate(conv_layers):
            conv: Any = layer.conv
            c_out, c_in, k = conv.weight.shape
            self.kernels.append(int(k))
            self.strides.append(int(conv.stride[0]))
            # (C_out, C_in, k) -> (C_in * k, C_out), matching unfold's (C_in, k) order
            weight = conv.weight.detach().reshape(c_out, c_in * k).t().contiguous().to(dtype)
            self.register_buffer(f"weight{i}", weight)
            bias = None if conv.bias is None else conv.bias.detach().float()
            self.register_buffer(f"bias{i}", bias)
            norm = getattr(layer, "layer_norm", None)
            self.norms.append(norm.float() if norm is not None else nn.Identity())
            self.activations.append(layer.activation)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:  # (B, S) -> (B, C, T)
        h = wave.float()[:, :, None]  # (B, S, 1) time-major
        for i, (k, s) in enumerate(zip(self.kernels, self.strides, strict=True)):
            frames = h.to(self.dtype).unfold(1, k, s)  # (B, T', C_in, k)
            b, t = frames.shape[:2]
            h = (frames.reshape(b, t, -1) @ getattr(self, f"weight{i}")).float()  # (B, T', C_out)
            bias = getattr(self, f"bias{i}")
            if bias is not None:
                h = h + bias
            norm = self.norms[i]
            if isinstance(norm, nn.GroupNorm):
                h = norm(h.transpose(1, 2)).transpose(1, 2)  # over time, per channel
            else:
                h = norm(h)  # LayerNorm over channels (or identity)
            h = self.activations[i](h)
        return h.transpose(1, 2)  # (B, C, T), the layout the model expects


def products_in(model: Any, dtype: torch.dtype, *, conv_dtype: torch.dtype | None = None) -> None:
    """Swap, in place, a loaded transformers WavLM's products to ``dtype`` and every other
    parameter and buffer to fp32 (see the module docstring); the convolutional feature encoder's
    products run in ``conv_dtype`` (None = ``dtype``; float32 = the exact encoder, time-major).
    ``model`` is a ``WavLMModel`` whose positional convolution's weight norm is already folded."""
    model.feature_extractor = TimeMajorConvEncoder(
        model.feature_extractor.conv_layers, conv_dtype or dtype
    )
    pos = model.encoder.pos_conv_embed
    pos.conv = ProductConv1d(pos.conv, dtype)
    for parent in [model.feature_projection, *model.encoder.modules()]:
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear):
                setattr(parent, name, ProductLinear(child, dtype))
    product_kinds = (ProductLinear, ProductConv1d, TimeMajorConvEncoder)
    for module in model.modules():
        if isinstance(module, product_kinds):
            continue
        for p in module.parameters(recurse=False):
            p.data = p.data.float()
        for name, buf in list(module.named_buffers(recurse=False)):
            if buf is not None and buf.is_floating_point():
                setattr(module, name, buf.float())
