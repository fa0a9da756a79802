"""``emotion-monitor analyze``: recordings through the daemon, as fast as it goes.

``emotion-monitor analyze FILE|FOLDER|MANIFEST [--out DIR] [--report]
[--channels mix|separate] [--workers N]``. The config is the daemon's (the same
model, windows, gate and smoother as ``run``); the options set keys of its
``analyze`` section. Each recording gets a folder under ``--out`` with
``timeline.jsonl`` (the daemon's own events), ``utterances.csv``/``.json``,
``summary.json``/``.csv`` (and ``report*.png`` with ``--report``); a folder or
manifest also gets one combined ``summary.csv`` and ``utterances.csv`` (and
``index.html``). docs/analyze.md lists every column. Exit status 1 when any
recording failed (each is named in the log and in the ``error`` column).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from dropformer.configio import validate
from streamer.config import DaemonConfig

HELP = "analyse recordings: timelines, utterance tables, summaries, reports"
SET_EXAMPLE = "analyze.channel_names=[agent,customer]"
log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "target",
        metavar="FILE|FOLDER|MANIFEST",
        help="an audio file, a folder, or a .csv/.jsonl manifest",
    )
    parser.add_argument(
        "--out",
        metavar="DIR",
        default=None,
        help="output folder (analyze.out_dir, default ./analysis)",
    )
    parser.add_argument(
        "--report",
        action="store_true",
        default=None,
        help="draw a PNG per recording and channel (analyze.report)",
    )
    parser.add_argument(
        "--channels",
        choices=("mix", "separate"),
        default=None,
        help="mix channels to one stream, or one stream per channel (analyze.channels, default mix)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        metavar="N",
        help="recordings at once, each process with its own model (analyze.workers, default 1)",
    )


def main(args: argparse.Namespace, config: dict[str, Any]) -> int:
    from streamer.analysis import analyze_batch, find_inputs, quiet_daemon_logs, write_csv

    section = dict(config.get("analyze") or {})
    for key, value in (
        ("out_dir", args.out),
        ("report", args.report),
        ("channels", args.channels),
        ("workers", args.workers),
    ):
        if value is not None:
            section[key] = value
    # Nothing listens: the analysis publishes to files (the ingest section keeps its names
    # and analyse_agent, which decide the channels analysed).
    ingest = dict(config.get("ingest") or {})
    ingest.update(enabled=False, twilio={**(ingest.get("twilio") or {}), "enabled": False})
    config = {**config, "analyze": section, "ingest": ingest}
    config.setdefault("publish", {})
    config["publish"] = {**config["publish"], "websocket": {"enabled": False}}
    cfg = validate(DaemonConfig, config, source="analyze config")
    a = cfg.analyze
    if a.report:
        from streamer.report import require_matplotlib

        require_matplotlib()
    inputs, collection = find_inputs(args.target)
    out_dir = Path(a.out_dir)
    quiet_daemon_logs(logging.getLogger().getEffectiveLevel())
    result = analyze_batch(cfg, inputs, out_dir, report=a.report, workers=a.workers)
    if collection:
        write_csv(out_dir / "summary.csv", result.summary_rows)
        write_csv(out_dir / "utterances.csv", result.utterance_rows)
        if a.report:
            from streamer.report import write_index

            write_index(out_dir, result.summary_rows, result.reports)
    ok = len(inputs) - len(result.failed)
    print(f"analysed {ok} of {len(inputs)} recording(s) into {out_dir}/")
    for name in [i.name for i in inputs if str(i.path) not in result.failed][:5]:
        print(f"  {out_dir / name}/summary.json")
    if collection:
        print(f"  {out_dir / 'summary.csv'} (one row per recording and channel)")
    if result.failed:
        log.error(
            "%d recording(s) failed: %s",
            len(result.failed),
            "; ".join(f"{p}: {why}" for p, why in result.failed.items()),
        )
        return 1
    return 0
