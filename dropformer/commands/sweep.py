"""``emotion-monitor sweep``: train on a keep-rate x drop-rate grid and draw Figure 5 (UA vs KR, one line per DR)."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

HELP = "KR/DR sweep and the Figure 5 plot (UA vs keep rate, one line per drop rate)"
SET_EXAMPLE = "train.device=cpu"
log = logging.getLogger(__name__)


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v.strip()]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--keep-rates",
        type=_floats,
        default=[0.05, 0.1, 0.2, 0.3],
        help="comma-separated KR values",
    )
    parser.add_argument(
        "--drop-rates", type=_floats, default=[0.05, 0.1, 0.2], help="comma-separated DR values"
    )
    parser.add_argument(
        "--jobs", type=int, default=1, help="grid points trained in parallel processes"
    )
    parser.add_argument("--out", default=None, help="sweep folder (overrides out_dir)")


def main(args: argparse.Namespace, config: dict[str, Any]) -> int:
    from dropformer.commands.ablate import run_many
    from dropformer.training import parse_config

    base = parse_config(config)
    root = Path(args.out or base.out_dir)
    grid = [(kr, dr) for dr in args.drop_rates for kr in args.keep_rates]
    raws = []
    for kr, dr in grid:
        raw = base.model_dump()
        raw["model"]["overrides"] = {**raw["model"]["overrides"], "keep_rate": kr, "drop_rate": dr}
        raw["out_dir"] = str(root / f"kr{kr:g}_dr{dr:g}")
        raws.append(raw)
    results = run_many(raws, args.jobs)
    points = [
        {
            "keep_rate": kr,
            "drop_rate": dr,
            "ua": r["utterance"]["mean"]["ua"],
            "wa": r["utterance"]["mean"]["wa"],
            "ua_std": r["utterance"]["std"]["ua"],
        }
        for (kr, dr), r in zip(grid, results, strict=True)
    ]
    (root / "sweep.json").write_text(json.dumps(points, indent=1))
    png = plot_sweep(points, root / "figure5.png")
    print("| KR | DR | UA % | WA % |\n|---|---|---|---|")
    for p in points:
        print(
            f"| {p['keep_rate']:g} | {p['drop_rate']:g} | {100 * p['ua']:.1f} | {100 * p['wa']:.1f} |"
        )
    print(f"wrote {png}")
    return 0


def plot_sweep(points: list[dict[str, float]], out: Path) -> Path:
    """UA (%) against KR, one line per DR (matplotlib Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for dr in sorted({p["drop_rate"] for p in points}):
        pts = sorted((p["keep_rate"], 100 * p["ua"]) for p in points if p["drop_rate"] == dr)
        ax.plot([x for x, _ in pts], [y for _, y in pts], marker="o", label=f"DR = {dr:g}")
    ax.set_xlabel("keep rate KR")
    ax.set_ylabel("UA (%)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
