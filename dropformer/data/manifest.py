"""CSV manifests ``path,label,speaker[,split]`` (paths relative to the manifest)."""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from dropformer.data import FOUR_CLASSES, Corpus, Utterance
from dropformer.data.report import DataReport
from dropformer.errors import DataError


def read_manifest(
    path: str | Path,
    labels: Sequence[str] | None = None,
    label_map: Mapping[str, Any] | None = None,
) -> Corpus:
    """Read a manifest; ``labels`` fixes the class order (others are excluded).

    ``label_map`` renames the manifest's labels first (``None`` as a value excludes one).

    Without ``labels``: the 4 shared classes in their usual order if the
    manifest only uses those, else the sorted set of labels found.
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(
            f"manifest {str(p)!r} does not exist; set data.manifest to a CSV with path,label,speaker"
        )
    report = DataReport(f"manifest {p.name}")
    with p.open(encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in ("path", "label", "speaker") if c not in (reader.fieldnames or [])]
        if missing:
            raise DataError(
                f"manifest {str(p)!r} lacks column(s) {missing}; the header must be path,label,speaker[,split]"
            )
        rows = list(enumerate(reader, 2))
    mapping = dict(label_map or {})

    def mapped(raw: str) -> str | None:
        return mapping.get(raw, raw) if raw in mapping else raw

    found = sorted({m for _, r in rows if (m := mapped((r["label"] or "").strip()))} - {""})
    if labels is None:
        labels = (
            tuple(c for c in FOUR_CLASSES if c in found)
            if set(found) <= set(FOUR_CLASSES)
            else tuple(found)
        )
    utts: list[Utterance] = []
    for lineno, row in rows:
        where = f"{p}:{lineno}"
        rel, raw, speaker = (
            (row["path"] or "").strip(),
            (row["label"] or "").strip(),
            (row["speaker"] or "").strip(),
        )
        if not rel or not raw or not speaker:
            report.problem(where, "empty path, label or speaker")
            continue
        label = mapped(raw)
        if label is None:
            report.exclude(raw)
            continue
        if label not in labels:
            report.exclude(label)
            continue
        audio = (p.parent / rel).resolve()
        if not audio.is_file():
            report.problem(str(audio), "missing audio file")
            continue
        utts.append(Utterance(rel, audio, label, speaker, (row.get("split") or "").strip()))
    report.used = len(utts)
    return Corpus(f"manifest:{p.stem}", utts, tuple(labels), report)
