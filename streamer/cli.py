"""``emotion-monitor``: one console script, one subcommand per job.

Every subcommand takes ``--config FILE`` and repeated ``--set dotted.key=value``.
Subcommands live in their own modules and are imported lazily, so
``emotion-monitor --help`` is fast and a missing optional extra only breaks
the subcommand that needs it. A subcommand module provides::

    HELP: str
    SET_EXAMPLE: str  # optional: a key=value of its own config for the --set help
    def add_arguments(parser: argparse.ArgumentParser) -> None
    def main(args: argparse.Namespace, config: dict[str, Any]) -> int

``config`` is the merged YAML + overrides, not yet validated: each
subcommand validates it against its own pydantic model.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import logging
import sys
from collections.abc import Sequence
from typing import Any

from dropformer.configio import load_config
from dropformer.errors import EmotionMonitorError

log = logging.getLogger("emotion_monitor")

# name -> (module, one-line help). Order is the order in --help.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "run": (
        "streamer.commands.run",
        "run the live monitor (default: bundled sample audio + dashboard)",
    ),
    "devices": (
        "streamer.commands.devices",
        "list audio input devices and their native sample rates",
    ),
    "analyze": (
        "streamer.commands.analyze",
        "analyse recordings: timelines, utterance tables, summaries, reports",
    ),
    "watch": ("streamer.commands.watch", "print live estimates from a running monitor"),
    "send": ("streamer.commands.send", "stream a file or the microphone to a remote monitor"),
    "robot": (
        "streamer.commands.robot",
        "act on the estimates: rules -> robot, MQTT, webhook, ROS 2",
    ),
    "serve-model": (
        "streamer.commands.serve_model",
        "serve the model as a shared Ray Serve inference tier for many gateways",
    ),
    "bench": ("streamer.commands.bench", "measure inference time and audio-to-publish latency"),
    "train": ("dropformer.commands.train", "extract features and train DropFormer on a corpus"),
    "evaluate": (
        "dropformer.commands.evaluate",
        "evaluate checkpoints: WA, UA, F1, confusion matrix",
    ),
    "ablate": (
        "dropformer.commands.ablate",
        "train and evaluate the paper's ablation presets (Table 1)",
    ),
    "sweep": ("dropformer.commands.sweep", "KR/DR sweep and the Figure 5 plot"),
    "explain": (
        "dropformer.commands.explain",
        "plot token importance and dropped tokens for one utterance",
    ),
    "convert-whisper": (
        "dropformer.commands.convert_whisper",
        "convert Whisper-base's encoder from the pinned PyPI packages (offline, once)",
    ),
}


def available_subcommands() -> dict[str, tuple[str, str]]:
    """Subcommands whose module exists in this checkout."""
    out = {}
    for name, (module, help_) in SUBCOMMANDS.items():
        if importlib.util.find_spec(module.rsplit(".", 1)[0]) is None:
            continue
        try:
            if importlib.util.find_spec(module) is None:
                continue
        except ModuleNotFoundError:
            continue
        out[name] = (module, help_)
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="emotion-monitor",
        description="Real-time speech-emotion monitor (DropFormer, Interspeech 2024).",
    )
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_) in available_subcommands().items():
        p = sub.add_parser(name, help=help_, description=help_)
        p.add_argument("--config", metavar="FILE", default=None, help="YAML config file")
        p.add_argument(
            "--set",
            metavar="KEY=VALUE",
            dest="overrides",
            action="append",
            default=[],
            help="override a config key, e.g. --set dotted.key=value (repeatable)",
        )
        p.add_argument(
            "--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR (default INFO)"
        )
        p.set_defaults(_module=module)
        # Arguments are added lazily only for the chosen subcommand (see main).
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    # The subcommand is the first word that is not an option; its module adds its
    # arguments before parsing, so that `emotion-monitor CMD --help` lists them.
    command = next((a for a in argv if not a.startswith("-")), None)
    sub_action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    if command in sub_action.choices:
        module = importlib.import_module(SUBCOMMANDS[command][0])
        sub = sub_action.choices[command]
        module.add_arguments(sub)
        example = getattr(module, "SET_EXAMPLE", None)
        if example:  # a key of this subcommand's own config (tests check that it exists)
            for action in sub._actions:
                if action.dest == "overrides":
                    action.help = f"override a config key, e.g. --set {example} (repeatable)"
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 0
    module = importlib.import_module(args._module)
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        config: dict[str, Any] = load_config(
            args.config, args.overrides, getattr(module, "DEFAULTS", None)
        )
        return int(module.main(args, config) or 0)
    except EmotionMonitorError as exc:
        log.error("%s", exc)
        return 2
    except KeyboardInterrupt:
        return 130


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("emotion-monitor")
    except Exception:
        return "unknown"


if __name__ == "__main__":
    sys.exit(main())
