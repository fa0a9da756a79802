"""Trained models shipped with the package.

``emodb_logmel/``: DropFormer (d_model 128, 4 layers, 0.56 M parameters) on the log-mel
front end, trained on all 339 files of the 4-class Berlin EmoDB subset (10 speakers);
labels neutral, happy, angry, sad. Its ``config.json`` meta holds the exact command;
BENCHMARKS.md ("EmoDB (leave-one-speaker-out)") reports how the same recipe does on
unseen speakers.
"""

from __future__ import annotations

from pathlib import Path

#: Folder of the default checkpoint (pass it to ``dropformer.load_checkpoint``).
DEFAULT_MODEL: Path = Path(__file__).resolve().parent / "emodb_logmel"
