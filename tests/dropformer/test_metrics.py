"""Metrics against hand-computed cases."""

from __future__ import annotations

import pytest

from dropformer.metrics import compute_scores, confusion_markdown, markdown_table, summarize

LABELS = ["neutral", "happy", "angry", "sad"]


def test_scores_of_a_hand_computed_case() -> None:
    # true:  n n n n h h a a a s      pred: n n n h h a a a a s
    t = [0, 0, 0, 0, 1, 1, 2, 2, 2, 3]
    p = [0, 0, 0, 1, 1, 2, 2, 2, 2, 3]
    s = compute_scores(t, p, LABELS)
    assert s.confusion == [[3, 1, 0, 0], [0, 1, 1, 0], [0, 0, 3, 0], [0, 0, 0, 1]]
    assert s.wa == pytest.approx(8 / 10)
    assert s.ua == pytest.approx((3 / 4 + 1 / 2 + 1 + 1) / 4)
    # per-class F1: n: P=1 R=.75 -> 6/7; h: P=.5 R=.5 -> .5; a: P=.75 R=1 -> 6/7; s: 1
    f1 = [6 / 7, 0.5, 6 / 7, 1.0]
    assert s.macro_f1 == pytest.approx(sum(f1) / 4)
    assert s.weighted_f1 == pytest.approx((4 * f1[0] + 2 * f1[1] + 3 * f1[2] + 1 * f1[3]) / 10)
    assert "| happy | 0 | 1 | 1 | 0 | 50.0 |" in confusion_markdown(s)


def test_summary_mean_std_and_pooled() -> None:
    a = compute_scores([0, 1], [0, 1], ["x", "y"])  # perfect
    b = compute_scores([0, 0, 1, 1], [0, 1, 1, 1], ["x", "y"])  # WA .75, UA (.5 + 1)/2
    s = summarize({"1": a, "2": b}, {"1": ([0, 1], [0, 1]), "2": ([0, 0, 1, 1], [0, 1, 1, 1])})
    assert s.mean["wa"] == pytest.approx(0.875) and s.std["wa"] == pytest.approx(0.125)
    assert s.mean["ua"] == pytest.approx(0.875)
    assert s.pooled is not None and s.pooled.confusion == [[2, 1], [0, 3]]
    assert s.pooled.wa == pytest.approx(5 / 6)
    table = markdown_table(s, "t")
    assert "**87.5 ± 12.5**" in table and "| 2 | 4 | 75.0 | 75.0 |" in table
