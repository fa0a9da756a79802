"""Classification metrics for emotion recognition (sklearn underneath).

WA (weighted accuracy) is plain accuracy; UA (unweighted accuracy) is the
mean of per-class recalls (macro recall). Both are fractions in [0, 1].
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, recall_score


@dataclass
class Scores:
    """Metrics of one evaluation; ``confusion[i][j]`` counts true class i predicted as j."""

    wa: float
    ua: float
    weighted_f1: float
    macro_f1: float
    confusion: list[list[int]]
    labels: list[str]
    count: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def compute_scores(
    y_true: Sequence[int] | np.ndarray, y_pred: Sequence[int] | np.ndarray, labels: Sequence[str]
) -> Scores:
    """WA, UA, weighted/macro F1 and the confusion matrix over all ``labels``.

    Classes absent from ``y_true`` contribute a recall of 0 to UA only if they
    are predicted (sklearn's ``zero_division=0`` with the label list fixed);
    classes neither present nor predicted are left out of the averages.
    """
    t, p = np.asarray(y_true, dtype=int), np.asarray(y_pred, dtype=int)
    present = sorted(set(t.tolist()) | set(p.tolist()))
    idx = list(range(len(labels)))
    return Scores(
        wa=float(accuracy_score(t, p)),
        ua=float(recall_score(t, p, labels=present, average="macro", zero_division=0)),
        weighted_f1=float(f1_score(t, p, labels=present, average="weighted", zero_division=0)),
        macro_f1=float(f1_score(t, p, labels=present, average="macro", zero_division=0)),
        confusion=confusion_matrix(t, p, labels=idx).tolist(),
        labels=list(labels),
        count=int(t.size),
    )


@dataclass
class Summary:
    """Per-fold scores, their mean and standard deviation, and the pooled confusion matrix."""

    folds: dict[str, Scores]
    mean: dict[str, float] = field(default_factory=dict)
    std: dict[str, float] = field(default_factory=dict)
    pooled: Scores | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "folds": {k: v.to_dict() for k, v in self.folds.items()},
            "mean": self.mean,
            "std": self.std,
            "pooled": self.pooled.to_dict() if self.pooled else None,
        }


METRIC_NAMES = ("wa", "ua", "weighted_f1", "macro_f1")


def summarize(
    folds: dict[str, Scores], predictions: dict[str, tuple[list[int], list[int]]] | None = None
) -> Summary:
    """Mean and (population) standard deviation over folds; pooled scores if predictions are given."""
    out = Summary(folds)
    for m in METRIC_NAMES:
        vals = np.array([getattr(s, m) for s in folds.values()], dtype=float)
        out.mean[m] = float(vals.mean()) if vals.size else float("nan")
        out.std[m] = float(vals.std()) if vals.size else float("nan")
    if predictions and folds:
        labels = next(iter(folds.values())).labels
        t = [y for tr, _ in predictions.values() for y in tr]
        p = [y for _, pr in predictions.values() for y in pr]
        out.pooled = compute_scores(t, p, labels)
    return out


def markdown_table(summary: Summary, title: str = "") -> str:
    """A Markdown table: one row per fold, then mean ± std, then the pooled confusion matrix."""
    pct = 100.0
    lines = [f"### {title}", ""] if title else []
    lines += [
        "| fold | n | WA % | UA % | weighted F1 % | macro F1 % |",
        "|---|---|---|---|---|---|",
    ]
    for name, s in summary.folds.items():
        lines.append(
            f"| {name} | {s.count} | {s.wa * pct:.1f} | {s.ua * pct:.1f} | "
            f"{s.weighted_f1 * pct:.1f} | {s.macro_f1 * pct:.1f} |"
        )
    m, sd = summary.mean, summary.std
    lines.append(
        "| **mean ± std** | | "
        + " | ".join(f"**{m[k] * pct:.1f} ± {sd[k] * pct:.1f}**" for k in METRIC_NAMES)
        + " |"
    )
    if summary.pooled is not None:
        lines += ["", confusion_markdown(summary.pooled)]
    return "\n".join(lines)


def confusion_markdown(scores: Scores) -> str:
    """Confusion matrix as a Markdown table (rows: true class, columns: predicted)."""
    head = "| true \\ predicted | " + " | ".join(scores.labels) + " | recall % |"
    lines = [head, "|---" * (len(scores.labels) + 2) + "|"]
    for name, row in zip(scores.labels, scores.confusion, strict=True):
        total = sum(row)
        rec = f"{100.0 * row[scores.labels.index(name)] / total:.1f}" if total else "-"
        lines.append(f"| {name} | " + " | ".join(str(v) for v in row) + f" | {rec} |")
    return "\n".join(lines)


def expected_calibration_error(
    probs: np.ndarray, y_true: Sequence[int] | np.ndarray, n_bins: int = 15
) -> float:
    """ECE: |accuracy - confidence| of the top class, averaged over equal-width confidence bins by their share."""
    p = np.asarray(probs, dtype=np.float64)
    t = np.asarray(y_true, dtype=int)
    if p.size == 0:
        return float("nan")
    conf, pred = p.max(1), p.argmax(1)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, n_bins - 1)
    ece = 0.0
    for b in range(n_bins):
        sel = which == b
        if sel.any():
            ece += sel.mean() * abs(float((pred[sel] == t[sel]).mean()) - float(conf[sel].mean()))
    return float(ece)


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return np.asarray(e / e.sum(axis=-1, keepdims=True))


def fit_temperature(logits: np.ndarray, y_true: Sequence[int] | np.ndarray) -> float:
    """Temperature scaling (Guo et al., 2017): the T > 0 minimising the NLL of softmax(logits / T)."""
    from scipy.optimize import minimize_scalar

    z = np.asarray(logits, dtype=np.float64)
    t = np.asarray(y_true, dtype=int)
    if z.size == 0:
        return 1.0

    def nll(log_t: float) -> float:
        p = softmax(z, float(np.exp(log_t)))
        return float(-np.log(p[np.arange(len(t)), t] + 1e-12).mean())

    res = minimize_scalar(nll, bounds=(np.log(0.05), np.log(20.0)), method="bounded")
    return float(np.exp(res.x))
