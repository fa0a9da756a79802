"""``emotion-monitor train``: extract features (cached) and train every fold of a corpus."""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from pathlib import Path
from typing import Any

HELP = "extract features and train DropFormer on a corpus (every fold, resumable)"
log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default=None, help="run folder (overrides out_dir)")
    parser.add_argument("--export", default=None, metavar="DIR",
                        help="copy fold 1's selected model to the checkpoint folder DIR, with the command in its meta "
                             "(use with --set train.folds_scheme=all to ship a model trained on everything)")


def main(args: argparse.Namespace, config: dict[str, Any]) -> int:
    from dropformer.training import parse_config, run_training

    if args.out:
        config = {**config, "out_dir": args.out}
    cfg = parse_config(config)
    summary = run_training(cfg)
    if "utterance" in summary:
        u = summary["utterance"]["mean"]
        print(f"{cfg.out_dir}: UA {100 * u['ua']:.1f}%  WA {100 * u['wa']:.1f}%  (mean over folds; "
              f"details in {cfg.out_dir}/summary.md)")
    if args.export:
        from dropformer.checkpoint import load_checkpoint, save_checkpoint

        ckpt = load_checkpoint(Path(cfg.out_dir) / "fold01" / "best")
        command = "emotion-monitor " + " ".join(shlex.quote(a) for a in sys.argv[1:]) \
            if Path(sys.argv[0]).name in ("emotion-monitor", "cli.py", "__main__.py") else None
        meta = {**ckpt.meta, "command": command, "train_config": cfg.model_dump(),
                "parameters": sum(p.numel() for p in ckpt.model.parameters())}
        save_checkpoint(args.export, ckpt.model, frontend_config=ckpt.frontend_config, labels=ckpt.labels, meta=meta)
        print(f"exported {args.export}")
    return 0
