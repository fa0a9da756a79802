"""Trained models shipped with the package (each folder holds a model card, ``README.md``).

- ``whisper_emodb_nemo/`` (the daemon's default): Whisper-base's encoder (layers 2-3,
  frozen) + a DropFormer head, per-stream feature normalisation, trained on EmoDB
  (German) and nEMO (Polish) with live-condition augmentation. Weights under
  CC BY-NC-SA 4.0 (nEMO's terms): non-commercial.
- ``whisper_emodb/``: the same recipe on EmoDB alone (CC0 data): MIT, for commercial use.
- ``emodb_logmel/``: the log-mel DropFormer (0.56 M parameters) for the smallest devices.

Pick one by name with ``model.checkpoint: <name>`` in the daemon config.
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent
#: The daemon's default model.
DEFAULT_NAME = "whisper_emodb_nemo"


def bundled(name: str | None = None) -> Path | None:
    """The folder of a shipped model (default: the daemon's default), or None if it is not there."""
    folder = ROOT / (name or DEFAULT_NAME)
    return folder if (folder / "config.json").is_file() else None


def names() -> list[str]:
    """The shipped models present in this installation."""
    return sorted(p.parent.name for p in ROOT.glob("*/config.json"))


def resolve(checkpoint: str | Path | None) -> Path | None:
    """A checkpoint folder from a path or a shipped model's name (None: the default, if shipped)."""
    if checkpoint is None:
        return bundled()
    path = Path(checkpoint).expanduser()
    if not path.exists() and str(checkpoint) in names():
        return bundled(str(checkpoint))
    return path
