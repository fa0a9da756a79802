"""Corpus readers (IEMOCAP, MELD, EmoDB, CSV manifests), folds and audio loading.

Every reader returns a :class:`Corpus`: the usable :class:`Utterance` list,
the class names, and a :class:`DataReport` listing each excluded or broken entry.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from dropformer.data.report import DataReport, Problem

#: The shared 4-class label set (IEMOCAP protocol); EmoDB maps onto it.
FOUR_CLASSES: tuple[str, ...] = ("neutral", "happy", "angry", "sad")

#: Every class name the corpus readers map onto by default (EmoDB and nEMO), for ``data.labels``:
#: the four above, then EmoDB's fear, disgust and boredom and nEMO's fear and surprise.
CLASS_NAMES: tuple[str, ...] = (*FOUR_CLASSES, "fear", "disgust", "surprise", "boredom")


@dataclass(frozen=True)
class Utterance:
    """One labelled recording.

    ``group`` is the corpus' natural partition: the IEMOCAP session
    (``"1"``..``"5"``), the MELD split (``train``/``dev``/``test``), a manifest's
    ``split`` column, or ``""``. ``uid`` is unique within the corpus; when
    several corpora are combined (``data.sources``) ``uid`` and ``speaker``
    are prefixed with the source name and ``corpus`` names the source.
    """

    uid: str
    path: Path
    label: str
    speaker: str
    group: str = ""
    duration_s: float | None = None
    start_s: float | None = None
    end_s: float | None = None
    corpus: str = ""


@dataclass
class Corpus:
    """Usable utterances, the ordered class names, and the reading report."""

    name: str
    utterances: list[Utterance]
    labels: tuple[str, ...]
    report: DataReport = field(default_factory=lambda: DataReport("?"))

    def label_index(self, label: str) -> int:
        return self.labels.index(label)


__all__ = ["CLASS_NAMES", "FOUR_CLASSES", "Corpus", "DataReport", "Problem", "Utterance"]
