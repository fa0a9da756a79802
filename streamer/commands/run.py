"""``emotion-monitor run``: the live monitor.

With no config it replays the bundled sample audio in real time through the
default model and serves the dashboard and events on http://127.0.0.1:8765/.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
from typing import Any

from dropformer.configio import validate
from streamer.config import DaemonConfig, config_summary

HELP = "run the live monitor"
SET_EXAMPLE = "model.device=cpu"
# The default stream as a plain dict, so that `--set streams.0.source.path=...`
# works without a config file (the YAML file and --set are merged on top; every
# other default comes from the config models).
DEFAULTS: dict[str, Any] = {"streams": [{"id": "demo", "source": {"kind": "file", "loop": True}}]}
log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--duration-s", type=float, default=None, help="stop after this many seconds"
    )
    parser.add_argument(
        "--print-config", action="store_true", help="print the validated config and exit"
    )


def main(args: argparse.Namespace, config: dict[str, Any]) -> int:
    if args.duration_s is not None:
        config = {**config, "duration_s": args.duration_s}
    cfg = validate(DaemonConfig, config, source="daemon config")
    if args.print_config:
        print(json.dumps(config_summary(cfg), indent=2))
        return 0
    from streamer.daemon import run_daemon

    return asyncio.run(run_daemon(cfg))
