"""Arousal/valence from class probabilities."""

from __future__ import annotations

import numpy as np
import pytest

from dropformer.data import CLASS_NAMES
from streamer.core.affect import PROTOTYPES, arousal_valence, unplaced


def one_hot(label: str) -> dict[str, float]:
    return {label: 1.0}


def test_range_over_random_distributions() -> None:
    rng = np.random.default_rng(7)
    labels = list(PROTOTYPES) + ["unknown_label"]
    for _ in range(500):
        w = rng.dirichlet(np.full(len(labels), 0.3))
        a, v = arousal_valence(dict(zip(labels, w.tolist(), strict=True)))
        assert -1.0 <= a <= 1.0 and -1.0 <= v <= 1.0


def test_circumplex_ordering() -> None:
    angry, sad, happy = (arousal_valence(one_hot(x)) for x in ("angry", "sad", "happy"))
    assert angry[0] > sad[0]  # anger is more aroused than sadness
    assert happy[1] > angry[1]  # happiness is more pleasant than anger
    assert happy[1] > 0 > angry[1] and sad[0] < 0 < angry[0]
    assert arousal_valence(one_hot("neutral")) == (0.0, 0.0)


def test_corpus_synonyms_agree() -> None:
    for a, b in [("anger", "angry"), ("happiness", "happy"), ("joy", "happy"), ("sadness", "sad")]:
        assert arousal_valence(one_hot(a)) == arousal_valence(one_hot(b))
    assert arousal_valence(one_hot("Anger")) == arousal_valence(one_hot("anger"))
    meld = ["neutral", "joy", "sadness", "anger", "surprise", "fear", "disgust"]
    assert all(label in PROTOTYPES for label in meld)
    assert arousal_valence(one_hot("boredom"))[0] < 0


def test_expectation_and_unknown_labels_pull_to_centre() -> None:
    a, v = arousal_valence({"angry": 0.5, "sad": 0.5})
    assert a == pytest.approx((PROTOTYPES["angry"][0] + PROTOTYPES["sad"][0]) / 2)
    assert v == pytest.approx((PROTOTYPES["angry"][1] + PROTOTYPES["sad"][1]) / 2)
    half = arousal_valence({"angry": 0.5, "mystery": 0.5})
    assert half == pytest.approx(tuple(x / 2 for x in PROTOTYPES["angry"]))
    assert arousal_valence({"mystery": 1.0}) == (0.0, 0.0)
    assert arousal_valence({}) == (0.0, 0.0)


def test_custom_prototypes() -> None:
    assert arousal_valence({"x": 1.0}, prototypes={"x": (0.3, -0.2)}) == pytest.approx((0.3, -0.2))


def test_every_class_the_readers_produce_has_a_position_in_its_quadrant() -> None:
    """Russell & Mehrabian's (1977) signs: aroused/unpleasant fear, anger, disgust; aroused/pleasant
    happiness and surprise; calm/unpleasant sadness and boredom; calm/pleasant relaxation."""
    assert unplaced(CLASS_NAMES) == []
    quadrant = {  # (arousal sign, valence sign)
        "happy": (1, 1), "surprise": (1, 1), "angry": (1, -1), "fear": (1, -1),
        "disgust": (1, -1), "sad": (-1, -1), "boredom": (-1, -1), "calm": (-1, 1),
    }  # fmt: skip
    for label, (sa, sv) in quadrant.items():
        a, v = arousal_valence(one_hot(label))
        assert a * sa > 0 and v * sv > 0, label
    fear, sad, bored = (arousal_valence(one_hot(x)) for x in ("fear", "sad", "boredom"))
    assert fear[0] > sad[0] > bored[0]  # fear aroused, sadness low, boredom lowest
    assert arousal_valence(one_hot("fear"))[1] < arousal_valence(one_hot("angry"))[1]
    for a, b in [("fearful", "fear"), ("surprised", "surprise"), ("bored", "boredom"),
                 ("disgusted", "disgust"), ("relaxed", "calm"), ("afraid", "fear")]:  # fmt: skip
        assert arousal_valence(one_hot(a)) == arousal_valence(one_hot(b))


def test_six_class_scores_and_unplaced_labels() -> None:
    six = {"neutral": 0.1, "happy": 0.1, "angry": 0.1, "sad": 0.1, "fear": 0.5, "surprise": 0.1}
    a, v = arousal_valence(six)
    assert a == pytest.approx(sum(w * PROTOTYPES[k][0] for k, w in six.items()))
    assert v == pytest.approx(sum(w * PROTOTYPES[k][1] for k, w in six.items()))
    assert a > 0.3 and v < -0.3  # mostly fear: aroused and unpleasant
    assert unplaced(["neutral", "Grumpy", "FEAR", "meh"]) == ["Grumpy", "meh"]
    assert unplaced(["x"], prototypes={"x": (0.1, 0.1)}) == []
