"""streamer.core stays sans-I/O: importing it pulls in no torch, asyncio, sockets or sound."""

from __future__ import annotations

import subprocess
import sys

FORBIDDEN = ["torch", "asyncio", "socket", "sounddevice", "websockets", "aiomqtt"]


def test_core_imports_only_numpy_and_stdlib() -> None:
    code = (
        "import importlib, pkgutil, sys, streamer.core\n"
        "for m in pkgutil.iter_modules(streamer.core.__path__):\n"
        "    importlib.import_module('streamer.core.' + m.name)\n"
        f"bad = [m for m in {FORBIDDEN!r} if m in sys.modules]\n"
        "print(','.join(bad))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == ""
