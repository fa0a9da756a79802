"""Which Whisper-base encoder layers carry emotion? A linear probe, per layer and per pair of layers.

For each utterance of EmoDB and nEMO, the outputs of all six encoder layers
are extracted once (through the project's own front end and feature cache);
each candidate is pooled (mean and standard deviation over frames, after
standardising the frames by speaker, or not) and scored with a logistic
regression: EmoDB leave-one-speaker-out UA, and leave-one-corpus-out UA in both
directions. This is how ``configs/train/whisper.yaml`` chose layers 2-3
(BENCHMARKS.md, "Choosing the encoder layers")::

    python tools/probe_layers.py --emodb /path/to/emodb --nemo /path/to/nemo
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import recall_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from tqdm import tqdm

from dropformer import training
from dropformer.configio import load_config

log = logging.getLogger("probe_layers")
WIDTH = 512  # Whisper-base's d_model


def pooled(
    feats: Sequence[np.ndarray], layers: Sequence[int], groups: np.ndarray | None
) -> np.ndarray:
    """Mean and std over frames of the chosen layers (0-based), frames standardised per group if given."""
    cols = np.concatenate([np.arange(layer * WIDTH, (layer + 1) * WIDTH) for layer in layers])
    stats = {}
    if groups is not None:
        for g in np.unique(groups):
            frames = np.concatenate(
                [np.asarray(feats[i][:, cols], dtype=np.float64) for i in np.where(groups == g)[0]]
            )
            stats[g] = (frames.mean(0), frames.std(0) + 1e-5)
    out = []
    for i, f in enumerate(feats):
        x = np.asarray(f[:, cols], dtype=np.float64)
        if groups is not None:
            mean, std = stats[groups[i]]
            x = (x - mean) / std
        out.append(np.concatenate([x.mean(0), x.std(0)]))
    return np.stack(out)


def ua(model: object, x: np.ndarray, y: np.ndarray) -> float:
    return float(recall_score(y, model.predict(x), average="macro"))  # type: ignore[attr-defined]


def probe(
    x: np.ndarray, y: np.ndarray, speakers: np.ndarray, corpora: np.ndarray
) -> dict[str, float]:
    def fit(mask: np.ndarray) -> object:
        return make_pipeline(StandardScaler(), LogisticRegression(C=0.05, max_iter=2000)).fit(
            x[mask], y[mask]
        )

    emodb = corpora == "emodb"
    loso = [
        ua(fit(emodb & (speakers != s)), x[speakers == s], y[speakers == s])
        for s in np.unique(speakers[emodb])
    ]
    return {
        "emodb_loso": float(np.mean(loso)),
        "nemo_to_emodb": ua(fit(corpora == "nemo"), x[emodb], y[emodb]),
        "emodb_to_nemo": ua(fit(emodb), x[~emodb], y[~emodb]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--emodb", required=True, help="EmoDB folder")
    parser.add_argument("--nemo", required=True, help="nEMO folder")
    parser.add_argument(
        "--cache-dir", default="cache/features", help="feature cache (default cache/features)"
    )
    args = parser.parse_args()
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    raw = load_config(
        "configs/train/whisper.yaml",
        [
            f"data.sources.0.root={args.emodb}",
            f"data.sources.1.root={args.nemo}",
            f"cache_dir={args.cache_dir}",
            "frontend.layer=6",
            "frontend.concat_layers=6",
            "train.augment.conditions=[]",
            "train.eval_conditions=[]",
        ],
    )
    cfg = training.parse_config(raw)
    corpus = training.load_data(cfg)
    feats_by_uid = training.extract(cfg, corpus.utterances)
    utts = [u for u in corpus.utterances if u.uid in feats_by_uid]
    feats = [feats_by_uid[u.uid] for u in utts]
    y = np.array([corpus.labels.index(u.label) for u in utts])
    speakers = np.array([u.speaker for u in utts])
    corpora = np.array([u.corpus for u in utts])
    candidates = [[i] for i in range(6)] + [[1, 2], [0, 1, 2]]
    print("| layers | normalisation | EmoDB LOSO UA % | nEMO -> EmoDB UA % | EmoDB -> nEMO UA % |")
    print("|---|---|---|---|---|")
    for layers in tqdm(candidates, desc="probing"):
        for norm, groups in (("none", None), ("per speaker", speakers)):
            r = probe(pooled(feats, layers, groups), y, speakers, corpora)
            print(
                f"| {'+'.join(str(i + 1) for i in layers)} | {norm} | {100 * r['emodb_loso']:.1f} | "
                f"{100 * r['nemo_to_emodb']:.1f} | {100 * r['emodb_to_nemo']:.1f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
