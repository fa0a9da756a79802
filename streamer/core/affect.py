"""Arousal and valence in [-1, 1] from class probabilities (sans-I/O).

The result is the expectation of each class's prototype position on the
circumplex of affect, weighted by its (smoothed) probability.

Prototype coordinates are approximate positions read off Russell's
circumplex (J. A. Russell, "A circumplex model of affect", J. Personality and
Social Psychology 39(6), 1980, Fig. 2) and cross-checked against the
valence/arousal placement of the Geneva Emotion Wheel (K. R. Scherer, "What
are emotions? And how can they be measured?", Social Science Information
44(4), 2005). They are coarse by design: a rough dimension for dashboards and
robots, not a measurement. Labels not listed contribute (0, 0), i.e. they pull
the estimate toward the neutral centre in proportion to their probability.
"""

from __future__ import annotations

from collections.abc import Mapping

# label -> (arousal, valence), both in [-1, 1]
PROTOTYPES: dict[str, tuple[float, float]] = {
    # IEMOCAP / EmoDB 4 classes
    "neutral": (0.0, 0.0),
    "happy": (0.5, 0.8),
    "angry": (0.8, -0.6),
    "sad": (-0.5, -0.7),
    # MELD 7 classes (neutral above)
    "joy": (0.5, 0.8),
    "sadness": (-0.5, -0.7),
    "anger": (0.8, -0.6),
    "surprise": (0.8, 0.2),
    "fear": (0.7, -0.6),
    "disgust": (0.3, -0.7),
    # synonyms and other common corpora labels (EmoDB, RAVDESS, CREMA-D, IEMOCAP)
    "happiness": (0.5, 0.8),
    "excited": (0.8, 0.6),
    "excitement": (0.8, 0.6),
    "surprised": (0.8, 0.2),
    "fearful": (0.7, -0.6),
    "afraid": (0.7, -0.6),
    "disgusted": (0.3, -0.7),
    "boredom": (-0.7, -0.3),
    "bored": (-0.7, -0.3),
    "calm": (-0.6, 0.4),
    "frustration": (0.4, -0.5),
    "frustrated": (0.4, -0.5),
    "contempt": (0.2, -0.5),
    "anxiety": (0.6, -0.5),
}


def _clip(x: float) -> float:
    return max(-1.0, min(1.0, x))


def arousal_valence(
    scores: Mapping[str, float],
    prototypes: Mapping[str, tuple[float, float]] | None = None,
) -> tuple[float, float]:
    """Return ``(arousal, valence)`` in [-1, 1] as the probability-weighted prototype mean.

    Labels are matched case-insensitively. Scores need not sum to 1 (they are
    divided by their total); all-zero scores give (0, 0).
    """
    table = PROTOTYPES if prototypes is None else prototypes
    total = arousal = valence = 0.0
    for label, weight in scores.items():
        w = max(0.0, float(weight))
        a, v = table.get(label.strip().lower(), (0.0, 0.0))
        total += w
        arousal += w * a
        valence += w * v
    if total <= 0.0:
        return 0.0, 0.0
    return _clip(arousal / total), _clip(valence / total)
