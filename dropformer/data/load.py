"""Pick the reader from a ``data`` config section; combine several corpora into one."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from dropformer.data import FOUR_CLASSES, Corpus, Utterance
from dropformer.data.report import DataReport
from dropformer.errors import ConfigError

CORPORA = ("emodb", "nemo", "iemocap", "meld", "manifest")


def load_corpus(
    corpus: str,
    root: str | Path | None,
    manifest: str | Path | None = None,
    labels: tuple[str, ...] | None = None,
    label_map: Mapping[str, Any] | None = None,
    strict: bool = False,
) -> Corpus:
    """Read ``corpus`` (emodb, nemo, iemocap, meld or manifest), log its report, honour ``strict``."""
    if corpus == "manifest":
        if manifest is None:
            raise ConfigError(
                "data.manifest is required with data.corpus=manifest; set it to a CSV file"
            )
        from dropformer.data.manifest import read_manifest

        result = read_manifest(manifest, labels, label_map=label_map)
    else:
        if root is None:
            raise ConfigError(
                f"data.root is required with data.corpus={corpus}; pass --set data.root=/path/to/{corpus}"
            )
        kw: dict[str, Any] = {} if labels is None else {"labels": labels}
        if corpus == "emodb":
            from dropformer.data.emodb import read_emodb

            result = read_emodb(root, label_map=label_map, **kw)
        elif corpus == "nemo":
            from dropformer.data.nemo import read_nemo

            result = read_nemo(root, label_map=label_map, **kw)
        elif corpus == "iemocap":
            from dropformer.data.iemocap import read_iemocap

            result = read_iemocap(root, label_map=label_map, **kw)
        elif corpus == "meld":
            from dropformer.data.meld import read_meld

            result = read_meld(root, **kw)
        else:
            raise ConfigError(f"data.corpus={corpus!r} is unknown; use one of {', '.join(CORPORA)}")
    result.report.check(strict)
    return result


@dataclasses.dataclass(frozen=True)
class SourceSpec:
    """One corpus of ``data.sources``: which reader, where, and how its labels map onto the classes."""

    name: str
    corpus: str
    root: str | None = None
    manifest: str | None = None
    label_map: Mapping[str, Any] | None = None


def load_sources(
    sources: Sequence[SourceSpec], labels: tuple[str, ...] | None = None, strict: bool = False
) -> Corpus:
    """Read each source and combine them: uids and speakers prefixed ``<name>/``, ``corpus`` = the name.

    Every source must use the same class names (``labels``; default the four
    shared classes); each source's ``label_map`` maps its own names onto them.
    """
    names = [s.name for s in sources]
    if not sources:
        raise ConfigError("data.sources is empty; list at least one corpus")
    if len(set(names)) != len(names):
        raise ConfigError(f"data.sources names must be unique; got {names}")
    classes = labels or FOUR_CLASSES
    utts: list[Utterance] = []
    report = DataReport("+".join(names))
    for spec in sources:
        part = load_corpus(spec.corpus, spec.root, spec.manifest, classes, spec.label_map, strict)
        if tuple(part.labels) != tuple(classes):
            raise ConfigError(
                f"data.sources[{spec.name}] has classes {part.labels}, expected {classes}; "
                "set data.labels and each source's label_map to the same class names"
            )
        utts += [
            dataclasses.replace(
                u, uid=f"{spec.name}/{u.uid}", speaker=f"{spec.name}/{u.speaker}", corpus=spec.name
            )
            for u in part.utterances
        ]
        report.used += part.report.used
        report.excluded.update({f"{spec.name}:{k}": v for k, v in part.report.excluded.items()})
        report.problems += part.report.problems
    return Corpus(report.corpus, utts, tuple(classes), report)
