"""IEMOCAP from the official release tree, 4 classes (happy = hap + exc).

Labels come from ``Session*/dialog/EmoEvaluation/*.txt`` lines such as
``[6.2901 - 8.2357]\tSes01F_impro01_F000\tneu\t[2.5000, 2.5000, 2.5000]``;
audio from ``Session*/sentences/wav/<dialog>/<utterance>.wav``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

from dropformer.data import FOUR_CLASSES, Corpus, Utterance
from dropformer.data.report import DataReport

#: IEMOCAP codes onto the 4 classes; every other code (fru, sur, fea, dis, oth, xxx) is excluded.
DEFAULT_LABEL_MAP: dict[str, str] = {
    "neu": "neutral",
    "hap": "happy",
    "exc": "happy",
    "ang": "angry",
    "sad": "sad",
}

_LINE = re.compile(
    r"^\[(?P<start>\d+(?:\.\d+)?) - (?P<end>\d+(?:\.\d+)?)\]\t(?P<utt>\S+)\t(?P<code>\w+)\t\["
)
_UTT = re.compile(r"^Ses0(?P<sess>[1-5])[FM]_.+_(?P<gender>[FM])\d{3}$")


def read_iemocap(
    root: str | Path,
    label_map: Mapping[str, str] | None = None,
    labels: tuple[str, ...] = FOUR_CLASSES,
    sessions: tuple[int, ...] = (1, 2, 3, 4, 5),
) -> Corpus:
    """Read IEMOCAP; speaker = session + gender (``Ses01F``), group = session number as text."""
    base = Path(root)
    mapping = dict(label_map or DEFAULT_LABEL_MAP)
    report = DataReport("iemocap")
    utts: list[Utterance] = []
    for s in sessions:
        eval_dir = base / f"Session{s}" / "dialog" / "EmoEvaluation"
        files = sorted(eval_dir.glob("*.txt")) if eval_dir.is_dir() else []
        if not files:
            report.problem(
                str(eval_dir),
                "no EmoEvaluation/*.txt files; is data.root the IEMOCAP release folder?",
            )
            continue
        for txt in files:
            for lineno, line in enumerate(
                txt.read_text(encoding="utf-8", errors="replace").splitlines(), 1
            ):
                if not line.startswith("["):
                    continue  # per-annotator lines (C-E1: ...) and headers
                where = f"{txt}:{lineno}"
                m = _LINE.match(line)
                if m is None:
                    report.problem(where, f"malformed label line {line[:60]!r}")
                    continue
                name, code = m["utt"], m["code"]
                u = _UTT.match(name)
                if u is None:
                    report.problem(
                        where, f"utterance name {name!r} is not like Ses01F_impro01_F000"
                    )
                    continue
                target = mapping.get(code)
                if target is None:
                    report.exclude(code)
                    continue
                if target not in labels:
                    report.problem(
                        where, f"label map sends {code!r} to {target!r}, not one of {labels}"
                    )
                    continue
                dialog = name.rsplit("_", 1)[0]
                wav = base / f"Session{s}" / "sentences" / "wav" / dialog / f"{name}.wav"
                if not wav.is_file():
                    report.problem(str(wav), f"missing wav for labelled utterance {name}")
                    continue
                start_s, end_s = float(m["start"]), float(m["end"])
                utts.append(
                    Utterance(name, wav, target, f"Ses0{s}{u['gender']}", str(s), end_s - start_s)
                )
    report.used = len(utts)
    return Corpus("iemocap", utts, labels, report)
