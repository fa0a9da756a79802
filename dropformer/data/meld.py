"""MELD from the official CSVs and media folders; 7 classes; audio decoded by ffmpeg."""

from __future__ import annotations

import csv
from pathlib import Path

from dropformer.data import Corpus, Utterance
from dropformer.data.report import DataReport

MELD_CLASSES: tuple[str, ...] = (
    "neutral",
    "joy",
    "sadness",
    "anger",
    "surprise",
    "fear",
    "disgust",
)

#: split -> (CSV file, media folder) as in the official release.
MELD_SPLITS: dict[str, tuple[str, str]] = {
    "train": ("train_sent_emo.csv", "train_splits"),
    "dev": ("dev_sent_emo.csv", "dev_splits_complete"),
    "test": ("test_sent_emo.csv", "output_repeated_splits_test"),
}
_REQUIRED = ("Speaker", "Emotion", "Dialogue_ID", "Utterance_ID")


def read_meld(
    root: str | Path,
    labels: tuple[str, ...] = MELD_CLASSES,
    media_suffixes: tuple[str, ...] = (".mp4", ".wav"),
) -> Corpus:
    """Read MELD; group = split (train/dev/test), speaker = the CSV's Speaker column.

    A row whose media file (``dia{D}_utt{U}.mp4``) is missing is a problem in the
    report; a row whose emotion is not in ``labels`` is excluded.
    """
    base = Path(root)
    report = DataReport("meld")
    utts: list[Utterance] = []
    for split, (csv_name, media) in MELD_SPLITS.items():
        csv_path = base / csv_name
        if not csv_path.is_file():
            report.problem(str(csv_path), f"missing MELD CSV for split {split!r}")
            continue
        with csv_path.open(encoding="utf-8", errors="replace", newline="") as fh:
            reader = csv.DictReader(fh)
            missing_cols = [c for c in _REQUIRED if c not in (reader.fieldnames or [])]
            if missing_cols:
                report.problem(str(csv_path), f"missing column(s) {missing_cols}")
                continue
            for lineno, row in enumerate(reader, 2):
                where = f"{csv_path}:{lineno}"
                emotion = (row["Emotion"] or "").strip().lower()
                try:
                    d, u = int(row["Dialogue_ID"]), int(row["Utterance_ID"])
                except (TypeError, ValueError):
                    report.problem(where, "Dialogue_ID/Utterance_ID is not an integer")
                    continue
                if emotion not in labels:
                    report.exclude(emotion or "<empty>")
                    continue
                stem = f"dia{d}_utt{u}"
                path = next(
                    (p for s in media_suffixes if (p := base / media / f"{stem}{s}").is_file()),
                    None,
                )
                if path is None:
                    report.problem(str(base / media / f"{stem}.mp4"), "missing media file")
                    continue
                utts.append(
                    Utterance(
                        f"{split}/{stem}", path, emotion, (row["Speaker"] or "?").strip(), split
                    )
                )
    report.used = len(utts)
    return Corpus("meld", utts, labels, report)
