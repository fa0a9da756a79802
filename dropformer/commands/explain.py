"""``emotion-monitor explain``: plot token importance and dropped tokens for one utterance."""

from __future__ import annotations

import argparse
import logging
from typing import Any

HELP = "plot token importance and dropped tokens for one utterance (Figure 6 style PNG)"
log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("audio", help="audio file (any rate; resampled to 16 kHz mono)")
    parser.add_argument(
        "--checkpoint", required=True, help="checkpoint folder (config.json + model.safetensors)"
    )
    parser.add_argument("--out", default="explain.png", help="PNG to write (default explain.png)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")


def main(args: argparse.Namespace, config: dict[str, Any]) -> int:
    from dropformer.checkpoint import load_checkpoint
    from dropformer.data.audio import load_audio
    from dropformer.explain import explain, plot_explanation

    ckpt = load_checkpoint(args.checkpoint)
    wav = load_audio(args.audio)
    expl = explain(ckpt, wav, device=args.device)
    out = plot_explanation(expl, wav, args.out)
    print(
        f"{args.audio}: {expl.label} "
        + " ".join(f"{k}={p:.2f}" for k, p in zip(expl.labels, expl.probs, strict=True))
        + f"; tokens per layer {expl.kept_tokens}; wrote {out}"
    )
    return 0
