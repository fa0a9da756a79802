"""``emotion-monitor train``: extract features (cached) and train every fold of a corpus."""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from pathlib import Path
from typing import Any

HELP = "extract features and train DropFormer on a corpus (every fold, resumable)"
SET_EXAMPLE = "train.device=cpu"
log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default=None, help="run folder (overrides out_dir)")
    parser.add_argument(
        "--export",
        default=None,
        metavar="DIR",
        help="copy a fold's selected model (--export-fold) to the checkpoint folder DIR, with the command, the data, "
        "their licences and the temperature in its meta (use with --set train.folds_scheme=all "
        "to ship a model trained on everything)",
    )
    parser.add_argument(
        "--temperature-from",
        default=None,
        metavar="RUN",
        help="with --export: calibrate with the temperature fitted on RUN's held-out speakers "
        "(RUN/summary.json, from a leave-one-speaker-out run of the same recipe)",
    )
    parser.add_argument(
        "--export-fp16", action="store_true", help="with --export: store the weights in float16"
    )
    parser.add_argument(
        "--export-fold",
        type=int,
        default=1,
        metavar="N",
        help="with --export: the fold whose model is exported (default 1; e.g. 2 of a "
        "leave-one-corpus-out run: the model trained without the second corpus)",
    )


def main(args: argparse.Namespace, config: dict[str, Any]) -> int:
    from dropformer.training import parse_config, run_training

    if args.out:
        config = {**config, "out_dir": args.out}
    cfg = parse_config(config)
    summary = run_training(cfg)
    if "utterance" in summary:
        u = summary["utterance"]["mean"]
        print(
            f"{cfg.out_dir}: UA {100 * u['ua']:.1f}%  WA {100 * u['wa']:.1f}%  (mean over folds; "
            f"details in {cfg.out_dir}/summary.md)"
        )
    if args.export:
        export(cfg, Path(args.export), args.temperature_from, args.export_fp16, args.export_fold)
        print(f"exported {args.export}")
    return 0


#: Licences of the corpora a shipped model may be trained on (a model carries its data's terms).
DATA_LICENCES = {
    "emodb": "CC0-1.0",
    "nemo": "CC-BY-NC-SA-4.0",
    "iemocap": "IEMOCAP release licence (research only)",
    "meld": "GPL-3.0",
}


def export(cfg: Any, folder: Path, temperature_from: str | None, fp16: bool, fold: int = 1) -> None:
    """A fold's selected model as a shippable checkpoint: the command, data, licences and temperature in its meta.

    The data are the corpora that fold trained on: all sources but the held-out one in a leave-one-corpus-out run.
    """
    import json

    from dropformer.checkpoint import load_checkpoint, save_checkpoint
    from dropformer.errors import ConfigError

    source = Path(cfg.out_dir) / f"fold{fold:02d}" / "best"
    if not (source / "config.json").is_file():
        raise ConfigError(
            f"--export-fold {fold}: {source} holds no finished model; pick a fold of {cfg.out_dir}"
        )
    ckpt = load_checkpoint(source)
    temperature = ckpt.temperature
    if temperature_from:
        summary = Path(temperature_from) / "summary.json"
        try:
            temperature = float(json.loads(summary.read_text())["calibration"]["temperature"])
        except (OSError, KeyError, ValueError) as exc:
            raise ConfigError(
                f"--temperature-from: {summary} has no calibration.temperature ({exc}); point it at a "
                "finished leave-one-speaker-out run of this recipe"
            ) from exc
    command = (
        "emotion-monitor " + " ".join(shlex.quote(a) for a in sys.argv[1:])
        if Path(sys.argv[0]).name in ("emotion-monitor", "cli.py", "__main__.py")
        else None
    )
    held_out = (
        ckpt.meta.get("test") if cfg.train.folds_scheme == "corpus" else None
    )  # a corpus left out
    corpora = sorted(
        {s.corpus for s in cfg.data.sources if s.name != held_out}
        if cfg.data.sources
        else {cfg.data.corpus}
    )
    meta = {
        **ckpt.meta,
        "command": command,
        "train_config": cfg.model_dump(),
        "parameters": sum(p.numel() for p in ckpt.model.parameters()),
        "trained_on": "+".join(corpora),
        "data_licences": {c: DATA_LICENCES.get(c, "see the corpus' own licence") for c in corpora},
        "licence": "CC-BY-NC-SA-4.0" if "nemo" in corpora else "MIT",
        "temperature_from": temperature_from,
    }
    model = ckpt.model.half() if fp16 else ckpt.model
    save_checkpoint(
        folder,
        model,
        frontend_config=ckpt.frontend_config,
        labels=ckpt.labels,
        meta=meta,
        stream_norm=ckpt.stream_norm,
        norm_prior=ckpt.norm_prior,
        temperature=temperature,
    )
