"""``emotion-monitor evaluate``: WA, UA, weighted/macro F1 and confusion matrices.

Two modes:

- ``--run DIR``: every finished fold of a training run; each fold's selected
  checkpoint (``foldNN/best``) is scored on that fold's test speakers, with the
  run's own config (corpus, folds, front end). Mean ± std over folds.
- ``--checkpoint C``: one checkpoint on every utterance of the corpus in the
  config (``data.*``), e.g. a model trained elsewhere on a new corpus.

Both normalise features per speaker-stream when the checkpoint asks for it
(each speaker replayed as a stream from a cold start). ``--streaming`` adds
the streaming protocol (:mod:`streamer.replay`): each test speaker becomes one
stream of one-emotion episodes analysed by the daemon itself, scored by the
share of speech time on which the smoothed label is right
(``streaming.json``/``streaming.md``).

Writes ``evaluation.json`` and ``evaluation.md`` (to ``--out``, default: the run
folder or the current folder) and prints the Markdown.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

HELP = "evaluate checkpoints: WA, UA, F1, confusion matrix (per fold, mean ± std)"
SET_EXAMPLE = "train.device=cpu"
log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--run", help="a training run folder (holds config.json and foldNN/)")
    group.add_argument(
        "--checkpoint", help="one checkpoint folder, scored on the whole corpus of --config"
    )
    parser.add_argument("--out", default=None, help="folder for evaluation.json and evaluation.md")
    parser.add_argument(
        "--norm-start",
        choices=("cold", "warm"),
        default="cold",
        help="per-stream normalisation: cold = each speaker replayed from a cold start (default); "
        "warm = as if the speaker's other utterances had been heard first. "
        "Results go to evaluation_warm.* for warm",
    )
    parser.add_argument(
        "--streaming",
        action="store_true",
        help="also run each test speaker as one live stream through the daemon (streaming protocol)",
    )
    parser.add_argument(
        "--episode-s",
        type=float,
        default=12.0,
        help="streaming: seconds of one emotion before the next episode (default 12; a large value "
        "plays all of a speaker's utterances of one emotion in a row, the long one-emotion test)",
    )
    parser.add_argument(
        "--stream-name",
        default="streaming",
        metavar="NAME",
        help="streaming: results go to NAME.json, NAME.md and NAME/ (default streaming)",
    )
    parser.add_argument(
        "--stream-set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="streaming: daemon config override, e.g. smoothing.time_constant_s=1 (repeatable)",
    )


def main(args: argparse.Namespace, config: dict[str, Any]) -> int:
    from dropformer.checkpoint import load_checkpoint
    from dropformer.configio import deep_merge
    from dropformer.errors import CheckpointError
    from dropformer.training import (
        StreamNorm,
        evaluate_items,
        parse_config,
        prepare,
        resolve_device,
        write_summary,
    )

    def norm_of(ckpt: Any) -> StreamNorm | None:
        return (
            StreamNorm(ckpt.stream_norm, ckpt.norm_prior) if ckpt.norm_prior is not None else None
        )

    streams: list[tuple[str, Path, list[Any]]] = []

    if args.run:
        run = Path(args.run)
        saved = run / "config.json"
        if not saved.is_file():
            raise CheckpointError(
                f"{run} has no config.json; pass the folder that `emotion-monitor train` wrote"
            )
        cfg = parse_config(deep_merge(json.loads(saved.read_text()), config))
        corpus, folds, feats = prepare(cfg)
        device = resolve_device(cfg.train.device)
        results = []
        for fold in folds:
            best = run / f"fold{fold.index:02d}" / "best"
            if not (best / "config.json").is_file():
                log.warning("fold %d (%s) has no checkpoint yet; left out", fold.index, fold.name)
                continue
            ckpt = load_checkpoint(best, map_location=device)
            res = evaluate_items(
                ckpt.model,
                fold.test,
                feats,
                list(corpus.labels),
                ckpt.frontend_config,
                device,
                cfg.train.eval_window_s,
                norm_of(ckpt),
                args.norm_start,
            )
            results.append({**res, "fold": fold.index, "name": fold.name})
            streams.append((f"fold{fold.index:02d}", best, fold.test))
        if not results:
            raise CheckpointError(f"no fold in {run} has a checkpoint; train first")
        title = f"{corpus.name} {cfg.model.preset}"
    else:
        cfg = parse_config(config)
        ckpt = load_checkpoint(args.checkpoint)
        cfg = parse_config({**cfg.model_dump(), "frontend": ckpt.frontend_config.to_dict()})
        corpus, _, feats = prepare(
            cfg.model_copy(
                update={
                    "train": cfg.train.model_copy(
                        update={"folds_scheme": "all", "selection": "last"}
                    )
                }
            )
        )
        if list(corpus.labels) != ckpt.labels:
            raise CheckpointError(
                f"checkpoint labels {ckpt.labels} differ from the corpus labels {list(corpus.labels)}; "
                "set data.labels to the checkpoint's"
            )
        device = resolve_device(cfg.train.device)
        res = evaluate_items(
            ckpt.model.to(device),
            corpus.utterances,
            feats,
            ckpt.labels,
            ckpt.frontend_config,
            device,
            cfg.train.eval_window_s,
            norm_of(ckpt),
            args.norm_start,
        )
        by_speaker: dict[str, list[Any]] = {}
        for u in corpus.utterances:
            by_speaker.setdefault(u.speaker, []).append(u)
        streams += [
            (f"speaker-{spk.replace('/', '-')}", Path(args.checkpoint), utts)
            for spk, utts in sorted(by_speaker.items())
        ]
        results = [{**res, "fold": 1, "name": "all"}]
        title = f"{corpus.name} {Path(args.checkpoint).name}"
    out = Path(args.out or (args.run or "."))
    out.mkdir(parents=True, exist_ok=True)
    stem = "evaluation" if args.norm_start == "cold" else f"evaluation_{args.norm_start}"
    doc = write_summary(
        out, results, f"{title} ({args.norm_start} start)" if norm_of(ckpt) else title, stem=stem
    )
    print((out / f"{stem}.md").read_text())
    log.info(
        "wrote %s and %s (UA %.1f%%)",
        out / f"{stem}.json",
        out / f"{stem}.md",
        100 * doc["utterance"]["mean"]["ua"],
    )
    if args.streaming:
        from dropformer.configio import apply_overrides
        from streamer.replay import evaluate_stream, streaming_table

        labels = list(corpus.labels)
        daemon_overrides = apply_overrides({}, args.stream_set)
        rows = [
            evaluate_stream(
                ckpt_dir,
                utts,
                out / args.stream_name,
                name,
                labels,
                episode_s=args.episode_s,
                overrides=daemon_overrides,
            )
            for name, ckpt_dir, utts in streams
        ]
        table = streaming_table(rows, labels)
        (out / f"{args.stream_name}.json").write_text(json.dumps(rows, indent=1))
        (out / f"{args.stream_name}.md").write_text(
            f"### {title}: streaming protocol (smoothed label over speech time; episodes of {args.episode_s:g} s"
            + (f"; daemon {' '.join(args.stream_set)}" if args.stream_set else "")
            + f")\n\n{table}\n"
        )
        print(table)
    return 0
