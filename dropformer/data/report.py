"""A data-set reading report: every skipped entry is listed, never silently dropped."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field

from dropformer.errors import DataError

log = logging.getLogger(__name__)


@dataclass
class Problem:
    """One entry that could not be used: where it is, and what is wrong with it."""

    where: str
    reason: str

    def __str__(self) -> str:
        return f"{self.where}: {self.reason}"


@dataclass
class DataReport:
    """What a reader found: usable count, excluded entries (by label) and problems.

    ``excluded`` counts entries left out on purpose (a label outside the class
    set, e.g. IEMOCAP frustration); ``problems`` lists entries that should have
    been usable but are not (missing file, malformed line, unknown code).
    """

    corpus: str
    used: int = 0
    excluded: Counter[str] = field(default_factory=Counter)
    problems: list[Problem] = field(default_factory=list)

    def problem(self, where: str, reason: str) -> None:
        self.problems.append(Problem(where, reason))

    def exclude(self, label: str) -> None:
        self.excluded[label] += 1

    def summary(self) -> str:
        """Multi-line text: counts first, then every problem on its own line."""
        excl = ", ".join(f"{k}={v}" for k, v in sorted(self.excluded.items())) or "none"
        lines = [
            f"{self.corpus}: {self.used} utterances used; excluded by label: {excl}; "
            f"{len(self.problems)} problem(s)"
        ]
        lines += [f"  - {p}" for p in self.problems]
        return "\n".join(lines)

    def log(self) -> None:
        (log.warning if self.problems else log.info)("%s", self.summary())

    def check(self, strict: bool) -> None:
        """Log the report; with ``strict`` raise :class:`DataError` if any problem was found."""
        self.log()
        if strict and self.problems:
            raise DataError(
                self.summary() + "\nfix or remove these entries, or set data.strict=false "
                "to train on the usable ones"
            )
        if self.used == 0:
            raise DataError(
                self.summary() + "\nno usable utterances: check data.root points at the corpus"
            )
