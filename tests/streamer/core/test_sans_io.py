"""streamer.core stays sans-I/O: importing it pulls in no torch, asyncio, sockets or sound,
nor anything heavy (YAML, pydantic, transformers). It shares the project's error hierarchy
(``dropformer.errors``) and the per-stream normaliser with the model package, and nothing
else of it: both are numpy/stdlib only."""

from __future__ import annotations

import subprocess
import sys

FORBIDDEN = [
    "torch",
    "asyncio",
    "socket",
    "sounddevice",
    "websockets",
    "aiomqtt",
    "yaml",
    "pydantic",
    "transformers",
    "soundfile",
    "soxr",
    "jsonschema",
    "streamer.config",
    "dropformer.configio",
]
SHARED = ["dropformer", "dropformer.errors", "dropformer.normalization"]


def test_core_imports_only_numpy_and_stdlib() -> None:
    code = (
        "import importlib, pkgutil, sys, streamer.core\n"
        "for m in pkgutil.iter_modules(streamer.core.__path__):\n"
        "    importlib.import_module('streamer.core.' + m.name)\n"
        f"bad = [m for m in {FORBIDDEN!r} if m in sys.modules]\n"
        "bad += [m for m in sys.modules if m.startswith('dropformer') and m not in "
        + repr(SHARED)
        + "]\n"
        "print(','.join(bad))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == ""
