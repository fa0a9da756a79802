"""Speaker-independent folds with a validation set taken from the training side.

Schemes:

- ``speaker``: leave one speaker out (EmoDB: 10 folds).
- ``group``: leave one group out (IEMOCAP: the 5 sessions; fold i tests session i).
- ``kfold``: ``num_folds`` folds grouped by speaker (no speaker in two parts).
- ``all``: one fold that trains on everything (no validation, no test): the
  final model to ship, selected by its last epoch.
- ``split``: the corpus' own split (MELD / manifest ``split`` column): one fold,
  train = ``train``, validation = ``dev``/``val``, test = ``test``.
- ``corpus``: leave one corpus out (``data.sources``): train on the others, test
  on the one left out.

With several corpora, ``test_sources`` limits the test folds of ``speaker`` and
``kfold`` to those corpora's speakers; every other corpus always trains.

Validation (for model selection) holds out ``val_count`` groups of the same kind
as the test fold, taken from the training side (the next ones after the test
group in sorted order). ``val_count=0`` leaves validation empty; training then
selects by the last epoch, or by the test fold when asked (the paper's practice).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from sklearn.model_selection import GroupKFold

from dropformer.data import Utterance
from dropformer.errors import ConfigError, DataError

Scheme = Literal["speaker", "group", "kfold", "split", "all", "corpus"]


@dataclass
class Fold:
    """One train/validation/test partition; ``index`` is 1-based."""

    index: int
    name: str
    train: list[Utterance]
    val: list[Utterance]
    test: list[Utterance]


def _key(u: Utterance, scheme: Scheme) -> str:
    return u.group if scheme == "group" else u.corpus if scheme == "corpus" else u.speaker


def make_folds(
    utts: Sequence[Utterance],
    scheme: Scheme = "speaker",
    num_folds: int = 5,
    val_count: int = 1,
    test_sources: Sequence[str] | None = None,
) -> list[Fold]:
    """Build the folds of ``scheme`` (see the module docstring)."""
    if not utts:
        raise DataError("no utterances to split into folds; check data.root")
    if scheme == "split":
        return [_split_fold(utts)]
    if scheme == "all":
        return [Fold(1, "all", list(utts), [], [])]
    if scheme not in ("speaker", "group", "kfold", "corpus"):
        raise ConfigError(
            f"train.folds_scheme={scheme!r} is unknown; use speaker, group, kfold, split, all or corpus"
        )
    key_scheme: Scheme = scheme if scheme in ("group", "corpus") else "speaker"
    testable = [u for u in utts if not test_sources or u.corpus in test_sources]
    if not testable:
        raise ConfigError(
            f"train.test_sources={list(test_sources or [])} match no utterance; use data.sources names"
        )
    keys = sorted({_key(u, key_scheme) for u in testable})
    if scheme == "kfold":
        if not 2 <= num_folds <= len(keys):
            raise ConfigError(
                f"train.num_folds={num_folds} must lie in 2..{len(keys)} (number of speakers)"
            )
        groups = [_key(u, key_scheme) for u in testable]
        parts = [
            sorted({groups[i] for i in test})
            for _, test in GroupKFold(num_folds).split(testable, groups=groups)
        ]
    else:
        if len(keys) < 2:
            raise DataError(
                f"leave-one-{key_scheme}-out needs at least 2 {key_scheme}s, found {keys}"
            )
        parts = [[k] for k in keys]
    if val_count < 0 or val_count > len(parts) - 2 and val_count > 0:
        raise ConfigError(
            f"train.val_count={val_count} leaves no training data with {len(parts)} folds; "
            f"use 0..{max(len(parts) - 2, 0)}"
        )
    folds = []
    for i, test_keys in enumerate(parts):
        val_keys = [k for j in range(1, val_count + 1) for k in parts[(i + j) % len(parts)]]
        test_set, val_set = set(test_keys), set(val_keys)
        folds.append(
            Fold(
                index=i + 1,
                name="+".join(test_keys),
                train=[u for u in utts if _key(u, key_scheme) not in test_set | val_set],
                val=[u for u in utts if _key(u, key_scheme) in val_set],
                test=[u for u in utts if _key(u, key_scheme) in test_set],
            )
        )
    return folds


def _split_fold(utts: Sequence[Utterance]) -> Fold:
    by: dict[str, list[Utterance]] = {}
    for u in utts:
        by.setdefault(u.group.lower(), []).append(u)
    val = by.get("dev", []) + by.get("val", []) + by.get("valid", []) + by.get("validation", [])
    if not by.get("train") or not by.get("test"):
        raise DataError(
            f"folds_scheme=split needs 'train' and 'test' groups, found {sorted(by)}; "
            "add a split column to the manifest or use folds_scheme=speaker"
        )
    return Fold(1, "test", by["train"], val, by["test"])


def select_folds(folds: Sequence[Fold], wanted: Sequence[int] | None) -> list[Fold]:
    """Keep the folds whose 1-based index is in ``wanted`` (all when ``None``)."""
    if wanted is None:
        return list(folds)
    bad = [w for w in wanted if not 1 <= w <= len(folds)]
    if bad:
        raise ConfigError(f"train.folds={list(wanted)}: {bad} not in 1..{len(folds)}")
    return [f for f in folds if f.index in set(wanted)]
