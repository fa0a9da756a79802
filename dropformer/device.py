"""Choosing the torch device a config names (``auto``, ``cpu``, ``cuda``, ``cuda:N``)."""

from __future__ import annotations

import torch

from dropformer.errors import ConfigError


def resolve_device(name: str, key: str = "device") -> torch.device:
    """The torch device for ``name``; ``auto`` picks CUDA when there is one.

    ``key`` is the config key named in errors (``model.device``, ``train.device``).
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"{key}={name!r} but CUDA is not available here; use auto or cpu")
    try:
        return torch.device(name)
    except RuntimeError as exc:
        raise ConfigError(
            f"{key}={name!r} is not a torch device; use auto, cpu or cuda[:N]"
        ) from exc
