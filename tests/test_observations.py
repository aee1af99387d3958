"""Each observation comes from the numbers: planted curves give the expected kind."""

import math

import pytest

from pipetrace.observations import Point, observe

K = 4  # classes: chance accuracy 0.25


def curve(*rows):
    return [Point(*r) for r in rows]


@pytest.mark.parametrize("kind, rows", [
    ("starting to learn", [(1.3, 0.40, 1.2, 0.45)]),
    ("improving", [(1.2, 0.45, 1.1, 0.50), (0.9, 0.60, 0.85, 0.62)]),
    ("slowing", [(1.2, 0.4, 1.1, 0.4), (0.8, 0.6, 0.8, 0.6), (0.7, 0.63, 0.75, 0.64)]),
    ("plateau", [(1.0, 0.5, 1.0, 0.5), (0.8, 0.6, 0.8, 0.6), (0.795, 0.602, 0.8, 0.603)]),
    ("converged", [(0.3, 0.9, 0.3, 0.92), (0.2, 0.95, 0.2, 0.95), (0.199, 0.951, 0.2, 0.952)]),
    ("overfitting", [(0.9, 0.7, 0.8, 0.7), (0.5, 0.85, 0.7, 0.74), (0.3, 0.93, 0.8, 0.73)]),
    ("underfitting", [(1.386, 0.25, 1.386, 0.25), (1.38, 0.26, 1.385, 0.26),
                      (1.375, 0.27, 1.38, 0.27)]),
    ("unstable", [(1.0, 0.5, 1.0, 0.5), (0.8, 0.6, 0.8, 0.6), (0.95, 0.55, 0.9, 0.56)]),
    ("diverging", [(1.0, 0.5, 1.0, 0.5), (2.0, 0.3, 2.0, 0.3)]),
    ("diverging", [(1.0, 0.5, 1.0, 0.5), (math.nan, 0.3, math.nan, 0.3)]),
])
def test_planted_curve_gives_its_observation(kind, rows):
    obs = observe(curve(*rows), K)
    assert obs.kind == kind, obs.text


def test_observation_text_carries_the_numbers():
    obs = observe(curve((1.2, 0.45, 1.1, 0.50), (0.9, 0.60, 0.85, 0.62)), K)
    assert "0.90" in obs.text and "0.62" in obs.text and "25%" in obs.text


def test_observation_changes_when_the_curve_changes():
    base = [(1.2, 0.45, 1.1, 0.50), (0.9, 0.60, 0.85, 0.62)]
    worse = [(1.2, 0.45, 1.1, 0.50), (1.5, 0.40, 1.4, 0.41)]
    assert observe(curve(*base), K).text != observe(curve(*worse), K).text


def test_no_validation_uses_training_numbers():
    obs = observe([Point(1.0, 0.5), Point(0.7, 0.7)], K)
    assert obs.kind == "improving" and "0.70" in obs.text
