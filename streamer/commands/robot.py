"""``emotion-monitor robot``: act on the monitor's estimates (rules -> robot actions).

    emotion-monitor robot --config configs/robot.yaml
    emotion-monitor robot --config configs/robot.yaml --dry-run events.jsonl

The config (``--config FILE``, ``--set key=value``) is :class:`clients.robot.config.RobotConfig`;
``configs/robot.yaml`` documents every key. ``--dry-run FILE.jsonl`` connects to
nothing and runs no action: it prints which rule would fire, and when, on a
recorded file of events (the daemon's ``publish.jsonl``), to tune rules offline.

Exit status: 0 after Ctrl-C/SIGTERM or a dry run; 2 for a bad config or file.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from pathlib import Path
from typing import Any

from dropformer.configio import validate

HELP = "act on the estimates: rules -> log, MQTT, webhook, command, ROS 2 (rosbridge)"
SET_EXAMPLE = "input.kind=websocket"
DEFAULTS: dict[str, Any] = {}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``--dry-run FILE.jsonl``."""
    parser.add_argument("--dry-run", metavar="FILE.jsonl", default=None,
                        help="print which rule would fire on a recorded JSONL file of events, and exit")  # fmt: skip


def main(args: argparse.Namespace, config: dict[str, Any]) -> int:
    from clients.robot.app import RobotClient, dry_run
    from clients.robot.config import RobotConfig

    cfg = validate(RobotConfig, config, source="robot config")
    if args.dry_run is not None:
        dry_run(cfg, Path(args.dry_run), sys.stdout)
        return 0

    async def serve() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, stop.set)
        async with RobotClient(cfg) as robot:
            await robot.run(stop)

    asyncio.run(serve())
    return 0
