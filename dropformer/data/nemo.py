"""nEMO (Polish, acted; Christop, LREC-COLING 2024): ``labels.csv`` (file, speaker, emotion) beside ``wav/``.

The upstream release lists its files in ``data.tsv`` (``file_id``, ``emotion``,
``speaker_id``); both layouts are read. Licence CC BY-NC-SA 4.0: models
trained on it carry the same terms.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping
from pathlib import Path

from dropformer.data import FOUR_CLASSES, Corpus, Utterance
from dropformer.data.report import DataReport

#: nEMO's emotion names onto the project's class names (:data:`dropformer.data.CLASS_NAMES`). A
#: class that is not one of ``labels`` is excluded (and counted): the default four classes leave
#: out fear and surprise; ``data.labels`` with ``fear`` or ``surprise`` takes those files in.
DEFAULT_LABEL_MAP: dict[str, str | None] = {
    "anger": "angry",
    "happiness": "happy",
    "neutral": "neutral",
    "sadness": "sad",
    "fear": "fear",
    "surprised": "surprise",
    "surprise": "surprise",
}


def read_nemo(
    root: str | Path,
    label_map: Mapping[str, str | None] | None = None,
    labels: tuple[str, ...] = FOUR_CLASSES,
) -> Corpus:
    """Read nEMO from ``root`` (holding ``labels.csv`` or ``data.tsv``, and the audio in ``wav/`` or ``data/``).

    ``label_map`` maps nEMO's names over :data:`DEFAULT_LABEL_MAP` (``None``
    excludes); a default class that is not in ``labels`` is excluded, while
    ``label_map`` sending a name outside ``labels`` is a problem.
    """
    base = Path(root)
    report = DataReport("nemo")
    explicit = dict(label_map or {})
    mapping = {**DEFAULT_LABEL_MAP, **explicit}
    index = next((base / n for n in ("labels.csv", "data.tsv") if (base / n).is_file()), None)
    if index is None:
        report.problem(str(base), "has no labels.csv or data.tsv; set data.root to the nEMO folder")
        return Corpus("nemo", [], labels, report)
    audio_dir = next((base / d for d in ("wav", "data", "samples") if (base / d).is_dir()), base)
    with index.open(encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t" if index.suffix == ".tsv" else ","))
    utts: list[Utterance] = []
    for lineno, row in enumerate(rows, 2):
        name = (row.get("file") or row.get("file_id") or "").strip()
        emotion = (row.get("emotion") or "").strip().lower()
        speaker = (row.get("speaker") or row.get("speaker_id") or "").strip()
        if not name or not emotion or not speaker:
            report.problem(f"{index}:{lineno}", "empty file, emotion or speaker")
            continue
        if emotion not in mapping:
            report.problem(
                f"{index}:{lineno}", f"unknown emotion {emotion!r}; add it to data.label_map"
            )
            continue
        target = mapping[emotion]
        if target is None or (target not in labels and emotion not in explicit):
            report.exclude(emotion)
            continue
        if target not in labels:
            report.problem(
                f"{index}:{lineno}",
                f"label map sends {emotion!r} to {target!r}, not one of {labels}",
            )
            continue
        path = audio_dir / name
        if not path.suffix:
            path = next(
                (path.with_suffix(s) for s in (".wav", ".flac") if path.with_suffix(s).is_file()),
                path,
            )
        if not path.is_file():
            report.problem(str(path), "missing audio file")
            continue
        duration = row.get("duration_s")
        utts.append(
            Utterance(path.stem, path, target, speaker, "", float(duration) if duration else None)
        )
    report.used = len(utts)
    return Corpus("nemo", utts, labels, report)
