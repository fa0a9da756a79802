"""DropFormer: a dynamic noise-dropping Transformer for speech emotion recognition.

Public API (imported lazily so ``import dropformer.errors`` stays torch-free)::

    from dropformer import DropFormerConfig, DropFormer, load_checkpoint
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "DropFormerConfig": "dropformer.config",
    "PRESETS": "dropformer.config",
    "preset": "dropformer.config",
    "DropFormer": "dropformer.model",
    "DropFormerOutput": "dropformer.model",
    "compile_for_inference": "dropformer.compiled",
    "FrontendConfig": "dropformer.frontends",
    "build_frontend": "dropformer.frontends",
    "Checkpoint": "dropformer.checkpoint",
    "load_checkpoint": "dropformer.checkpoint",
    "save_checkpoint": "dropformer.checkpoint",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'dropformer' has no attribute {name!r}")
