"""Arousal and valence in [-1, 1] from class probabilities (sans-I/O).

The result is the expectation of each class's prototype position on the
circumplex of affect, weighted by its (smoothed) probability, so it works
for whichever labels a model has: four, six or seven classes.

Positions are published norms, not tuned here: the pleasure (valence) and
arousal scores, on a -1..1 scale, that J. A. Russell and A. Mehrabian
measured for emotion terms ("Evidence for a three-factor theory of
emotions", Journal of Research in Personality 11(3), 1977, 273-294), as
tabulated for the basic emotions by Hoffmann et al. ("Mapping discrete
emotions into the dimensional space: an empirical approach", IEEE SMC 2012)
and by Gebhard's ALMA (AAMAS 2005). Each class name takes the term that names
it (``angry``/``anger`` the term angry, ``fear`` fearful, ``calm`` relaxed,
``boredom`` bored); synonyms share one position. ``neutral`` is the centre
(0, 0) by definition. The four shared classes keep the positions they had
since schema version 1 (read off Russell's 1980 circumplex, in the same
quadrants and order as the 1977 norms), so that alert and robot rules written
against them keep their meaning. Four labels without a term in that table
(``excited``, ``frustration``, ``contempt``, ``anxiety``) keep coarse
positions read off Russell's circumplex ("A circumplex model of affect",
J. Personality and Social Psychology 39(6), 1980, Fig. 2); they are marked
below. The scores are coarse by design: a rough dimension for dashboards
and robots, not a measurement.

A label with no position (see :func:`unplaced`) sits at the neutral centre
(0, 0): it pulls the estimate toward the centre in proportion to its
probability. The daemon warns at start-up, naming such labels of its model.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

# label -> (arousal, valence), both in [-1, 1]; Russell & Mehrabian (1977) unless marked
PROTOTYPES: dict[str, tuple[float, float]] = {
    # the four shared classes (IEMOCAP protocol; EmoDB and nEMO map onto them): positions read off
    # Russell (1980), Fig. 2, unchanged since schema version 1 so that users' alert and robot rules
    # keep their meaning (Russell & Mehrabian's 1977 norms: happy (0.51, 0.81), angry (0.59, -0.51),
    # sad (-0.27, -0.63): the same quadrants and order)
    "neutral": (0.0, 0.0),  # the centre, by definition
    "happy": (0.5, 0.8),
    "angry": (0.8, -0.6),
    "sad": (-0.5, -0.7),
    # the further classes of EmoDB (fear, disgust, boredom), nEMO (fear, surprise), MELD, RAVDESS
    "fear": (0.60, -0.64),  # fearful
    "disgust": (0.35, -0.60),  # disgusted
    "surprise": (0.67, 0.40),  # surprised
    "boredom": (-0.62, -0.65),  # bored
    "calm": (-0.46, 0.68),  # relaxed
    # synonyms: each corpus' own spelling of a class above
    "happiness": (0.5, 0.8),
    "joy": (0.5, 0.8),  # MELD's name for the happy class
    "anger": (0.8, -0.6),
    "sadness": (-0.5, -0.7),
    "fearful": (0.60, -0.64),
    "afraid": (0.60, -0.64),
    "disgusted": (0.35, -0.60),
    "surprised": (0.67, 0.40),
    "bored": (-0.62, -0.65),
    "relaxed": (-0.46, 0.68),
    # not in the 1977 table: coarse positions read off Russell (1980), Fig. 2
    "excited": (0.8, 0.6),
    "excitement": (0.8, 0.6),
    "frustration": (0.4, -0.5),
    "frustrated": (0.4, -0.5),
    "contempt": (0.2, -0.5),
    "anxiety": (0.6, -0.5),
}


def _clip(x: float) -> float:
    return max(-1.0, min(1.0, x))


def _key(label: str) -> str:
    return label.strip().lower()


def unplaced(
    labels: Iterable[str], prototypes: Mapping[str, tuple[float, float]] | None = None
) -> list[str]:
    """The ``labels`` that have no position (they count as the neutral centre), in their order."""
    table = PROTOTYPES if prototypes is None else prototypes
    return [label for label in labels if _key(label) not in table]


def arousal_valence(
    scores: Mapping[str, float],
    prototypes: Mapping[str, tuple[float, float]] | None = None,
) -> tuple[float, float]:
    """Return ``(arousal, valence)`` in [-1, 1] as the probability-weighted prototype mean.

    Labels are matched case-insensitively; a label with no position counts as
    (0, 0). Scores need not sum to 1 (they are divided by their total);
    all-zero scores give (0, 0).
    """
    table = PROTOTYPES if prototypes is None else prototypes
    total = arousal = valence = 0.0
    for label, weight in scores.items():
        w = max(0.0, float(weight))
        a, v = table.get(_key(label), (0.0, 0.0))
        total += w
        arousal += w * a
        valence += w * v
    if total <= 0.0:
        return 0.0, 0.0
    return _clip(arousal / total), _clip(valence / total)
