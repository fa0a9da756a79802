"""``emotion-monitor ablate``: train and evaluate several presets (Table 1) with one config."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

HELP = "train and evaluate the paper's ablation presets (Table 1) on one corpus"
SET_EXAMPLE = "train.device=cpu"
log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--presets",
        default="dropformer,no_tdm,static_only,dynamic_only,no_da,vanilla",
        help="comma-separated presets (default: all six of Table 1)",
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="presets trained in parallel processes (each gets train.num_threads, default 1 thread)",
    )
    parser.add_argument(
        "--out", default=None, help="run folder (overrides out_dir); one sub-folder per preset"
    )


def main(args: argparse.Namespace, config: dict[str, Any]) -> int:
    from dropformer.config import PRESET_TITLES, PRESETS
    from dropformer.errors import ConfigError
    from dropformer.training import parse_config

    presets = [p.strip() for p in args.presets.split(",") if p.strip()]
    unknown = [p for p in presets if p not in PRESETS]
    if unknown:
        raise ConfigError(f"--presets: unknown {unknown}; choose from {sorted(PRESETS)}")
    base = parse_config(config)
    root = Path(args.out or base.out_dir)
    raws = []
    for name in presets:
        raw = base.model_dump()
        raw["model"]["preset"] = name
        raw["out_dir"] = str(root / name)
        raws.append(raw)
    rows = dict(zip(presets, run_many(raws, args.jobs), strict=True))
    table = ablation_table(rows, PRESET_TITLES)
    (root / "ablation.md").write_text(table + "\n")
    (root / "ablation.json").write_text(
        json.dumps(
            {k: v["utterance"]["mean"] | {"std": v["utterance"]["std"]} for k, v in rows.items()},
            indent=1,
        )
    )
    print(table)
    return 0


def run_many(raws: list[dict[str, Any]], jobs: int) -> list[dict[str, Any]]:
    """Train each config (in ``jobs`` spawned processes when > 1, 1 torch thread each by default)."""
    from dropformer.training import parse_config, run_training

    if jobs <= 1:
        return [run_training(parse_config(raw)) for raw in raws]
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    for raw in raws:
        raw["train"]["num_threads"] = raw["train"]["num_threads"] or 1
    with ProcessPoolExecutor(jobs, mp_context=mp.get_context("spawn")) as pool:
        return list(pool.map(_train_one, raws))


def _train_one(raw: dict[str, Any]) -> dict[str, Any]:
    """Worker-process entry: train one preset (logging set up again in the child)."""
    from dropformer.training import parse_config, run_training

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    return run_training(parse_config(raw))


def ablation_table(rows: dict[str, dict[str, Any]], titles: dict[str, str]) -> str:
    """Markdown: one row per preset, UA/WA mean ± std over folds (utterance and 3 s window level)."""
    lines = [
        "| model | UA % | WA % | UA % (3 s windows) | WA % (3 s windows) |",
        "|---|---|---|---|---|",
    ]
    for name, summary in rows.items():
        cells = []
        for level in ("utterance", "window"):
            if level not in summary:
                cells += ["-", "-"]
                continue
            m, s = summary[level]["mean"], summary[level]["std"]
            cells += [f"{100 * m[k]:.1f} ± {100 * s[k]:.1f}" for k in ("ua", "wa")]
        lines.append(f"| {titles.get(name, name)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
