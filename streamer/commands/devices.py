"""``emotion-monitor devices``: list audio input devices and their native rates."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

HELP = "list audio input devices and their native sample rates"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--json``."""
    parser.add_argument(
        "--json", action="store_true", help="print the list as JSON instead of a table"
    )


def format_table(devices: list[dict[str, Any]]) -> str:
    """A fixed-width table of :func:`list_input_devices` rows."""
    if not devices:
        return "no audio input devices found (on Linux, is PulseAudio/PipeWire running?)"
    rows = [("index", "name", "channels", "rate_hz", "host_api")] + [
        (
            str(d["index"]),
            d["name"],
            str(d["max_input_channels"]),
            f"{d['default_samplerate']:.0f}",
            d["hostapi"],
        )
        for d in devices
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.append("")
    lines.append("use an index or a name substring as the source's device (e.g. device: pulse)")
    return "\n".join(lines)


def main(args: argparse.Namespace, config: dict[str, Any]) -> int:
    """Print the input devices; exit status 0 (also when there are none)."""
    from streamer.sources.microphone import list_input_devices

    devices = list_input_devices()
    if args.json:
        sys.stdout.write(json.dumps(devices, indent=2) + "\n")
    else:
        sys.stdout.write(format_table(devices) + "\n")
    return 0
