"""``emotion-monitor watch``: print live estimates from a running monitor.

Config keys (top level of ``--config FILE`` or ``--set key=value``): ``url``,
``token`` (better: the EMOTION_MONITOR_TOKEN environment variable), ``streams``, ``json``, ``count``, ``once``, ``open_timeout_s``,
``backoff_initial_s``, ``backoff_max_s``, ``bar_width_chars`` (see
:class:`clients.watch.WatchConfig`). Command-line flags override them.

Exit status: 0 when ``--count`` estimates were printed or the connection
ended under ``--once``; 2 for a bad config or a failed connection under
``--once``; 130 on Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from dropformer.configio import validate

HELP = "print live estimates from a running monitor"
SET_EXAMPLE = "url=ws://127.0.0.1:8765/ws"

DEFAULTS: dict[str, Any] = {}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--url``, ``--stream``, ``--json``, ``--count`` and ``--once``."""
    parser.add_argument(
        "--url", default=None, help="WebSocket URL of the monitor (default ws://127.0.0.1:8765/ws)"
    )
    parser.add_argument(
        "--token",
        default=None,
        help="the monitor's token (better: the EMOTION_MONITOR_TOKEN environment variable)",
    )
    parser.add_argument(
        "--stream",
        dest="streams",
        metavar="ID",
        action="append",
        default=None,
        help="only this stream (repeatable; default: every stream)",
    )
    parser.add_argument(
        "--json",
        dest="json_lines",
        action="store_const",
        const=True,
        default=None,
        help="print raw events as JSON lines (for piping)",
    )
    parser.add_argument(
        "--count", type=int, metavar="N", default=None, help="exit after N estimates"
    )
    parser.add_argument(
        "--once",
        action="store_const",
        const=True,
        default=None,
        help="do not reconnect: exit when the connection fails or closes",
    )


def main(args: argparse.Namespace, config: dict[str, Any]) -> int:
    """Validate the config (flags win over config keys) and run the watch."""
    from clients.watch import WatchConfig, watch

    merged = dict(config)
    for key, value in (
        ("url", args.url),
        ("token", args.token),
        ("streams", args.streams),
        ("json", args.json_lines),
        ("count", args.count),
        ("once", args.once),
    ):
        if value is not None:
            merged.pop("json_lines" if key == "json" else key, None)
            merged[key] = value
    cfg = validate(WatchConfig, merged, source="watch config")
    asyncio.run(watch(cfg))
    return 0
