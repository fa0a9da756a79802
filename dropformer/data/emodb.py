"""Berlin EmoDB, labels from the file names (``03a01Fa.wav``: speaker 03, text a01, F = happiness)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import soundfile as sf

from dropformer.data import FOUR_CLASSES, Corpus, Utterance
from dropformer.data.report import DataReport

#: EmoDB's emotion letters and their (English) names.
EMODB_CODES: dict[str, str] = {
    "W": "anger",
    "F": "happiness",
    "N": "neutral",
    "T": "sadness",
    "L": "boredom",
    "E": "disgust",
    "A": "fear",
}

#: EmoDB's names onto the project's class names (:data:`dropformer.data.CLASS_NAMES`). A class
#: that is not one of ``labels`` is excluded (and counted): the default four classes leave out
#: boredom, disgust and fear; ``data.labels`` with ``fear`` takes EmoDB's fear files in.
DEFAULT_LABEL_MAP: dict[str, str | None] = {
    "anger": "angry",
    "happiness": "happy",
    "neutral": "neutral",
    "sadness": "sad",
    "boredom": "boredom",
    "disgust": "disgust",
    "fear": "fear",
}

_NAME = re.compile(r"^(?P<spk>\d\d)(?P<text>[a-z]\d\d)(?P<code>[A-Z])(?P<ver>[a-z])$")


def read_emodb(
    root: str | Path,
    label_map: Mapping[str, str | None] | None = None,
    labels: tuple[str, ...] = FOUR_CLASSES,
) -> Corpus:
    """Read EmoDB from ``root`` (a folder holding the wavs, or holding ``wav/``).

    ``label_map`` maps EmoDB names (``anger``, ``boredom``, ...) to class names,
    or to ``None`` to exclude them (counted in the report), over
    :data:`DEFAULT_LABEL_MAP`; ``labels`` fixes the classes and their order. A
    default class that is not in ``labels`` is excluded; ``label_map`` sending a
    name outside ``labels`` is a problem, and so is a wav whose name does not
    follow the EmoDB pattern.
    """
    base = Path(root)
    wav_dir = base / "wav" if (base / "wav").is_dir() else base
    report = DataReport("emodb")
    explicit = dict(label_map or {})
    mapping = {**DEFAULT_LABEL_MAP, **explicit}
    if not wav_dir.is_dir():
        report.problem(str(base), "folder does not exist; set data.root to the EmoDB folder")
        return Corpus("emodb", [], labels, report)
    utts: list[Utterance] = []
    for path in sorted(wav_dir.glob("*.wav")):
        m = _NAME.match(path.stem)
        if m is None or m["code"] not in EMODB_CODES:
            report.problem(str(path), "name does not follow EmoDB's pattern like 03a01Fa.wav")
            continue
        name = EMODB_CODES[m["code"]]
        target = mapping.get(name)
        if target is None or (target not in labels and name not in explicit):
            report.exclude(name)
            continue
        if target not in labels:
            report.problem(
                str(path), f"label map sends {name!r} to {target!r}, not one of {labels}"
            )
            continue
        try:
            duration_s = sf.info(str(path)).duration
        except (RuntimeError, sf.LibsndfileError) as exc:
            report.problem(str(path), f"unreadable wav ({exc})")
            continue
        utts.append(Utterance(path.stem, path, target, m["spk"], "", float(duration_s)))
    report.used = len(utts)
    return Corpus("emodb", utts, labels, report)
