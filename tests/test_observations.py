"""Each observation comes from the numbers and says nothing they contradict.

Planted curves give the expected kind; the curves of real runs (tests/fixtures/curves, see
its README) read as a person would read them; and over thousands of random curves every
claim's direction, numbers and rendering agree with the curve.
"""

from __future__ import annotations

import csv
import math
import re
from itertools import pairwise
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipetrace.observations import (
    DIRECTIONS,
    KINDS,
    METRICS,
    Point,
    observe,
    relative_change,
    trend,
)
from pipetrace.report.insight import NEXT_STEP

K = 4  # classes: chance accuracy 0.25
CURVES = Path(__file__).parent / "fixtures" / "curves"


def curve(*rows):
    return [Point(*r) for r in rows]


PLANTED = [
    ("starting to learn", [(1.3, 0.40, 1.2, 0.45)]),
    ("improving", [(1.2, 0.45, 1.1, 0.50), (0.9, 0.60, 0.85, 0.62)]),
    ("slowing", [(1.2, 0.4, 1.1, 0.4), (0.8, 0.6, 0.8, 0.6), (0.7, 0.63, 0.75, 0.64)]),
    ("plateau", [(1.0, 0.5, 1.0, 0.5), (0.8, 0.6, 0.8, 0.6), (0.795, 0.602, 0.8, 0.603)]),
    ("converged", [(0.3, 0.9, 0.3, 0.92), (0.2, 0.95, 0.2, 0.95), (0.199, 0.951, 0.2, 0.952)]),
    ("overfitting", [(0.9, 0.7, 0.7, 0.7), (0.5, 0.85, 0.72, 0.74), (0.3, 0.93, 0.8, 0.73)]),
    ("underfitting", [(1.386, 0.25, 1.386, 0.25), (1.38, 0.26, 1.385, 0.26),
                      (1.375, 0.27, 1.38, 0.27)]),
    ("unstable", [(1.0, 0.5, 1.0, 0.5), (0.8, 0.6, 0.8, 0.6), (0.95, 0.55, 0.9, 0.56)]),
    ("diverging", [(1.0, 0.5, 1.0, 0.5), (0.8, 0.6, 0.8, 0.6), (2.0, 0.3, 2.0, 0.3)]),
    ("diverging", [(1.0, 0.5, 1.0, 0.5), (math.nan, 0.3, math.nan, 0.3)]),
    ("learning rate too high", [(1.4, 0.26, 1.4, 0.25), (1.6, 0.25, 1.7, 0.25),
                                (2.1, 0.24, 2.3, 0.25)]),
    ("validation spike", [(0.9, 0.6, 1.23, 0.55), (0.85, 0.62, 8.49, 0.5)]),
    ("validation at chance", [(1.0, 0.6, 1.5, 0.26), (0.3, 0.95, 2.5, 0.24)]),
    ("mixed", [(1.0, 0.5, 1.0, 0.5), (0.9, 0.55, 0.95, 0.52), (0.85, 0.6, 0.97, 0.48)]),
    ("setback", [(1.0, 0.5, 1.0, 0.5), (0.85, 0.62, 0.9, 0.68), (0.89, 0.60, 0.95, 0.65)]),
]


@pytest.mark.parametrize("kind, rows", PLANTED)
def test_planted_curve_gives_its_observation(kind, rows):
    obs = observe(curve(*rows), K)
    assert obs.kind == kind, obs.text
    assert_true_to(curve(*rows), obs)


def test_a_near_perfect_models_tiny_loss_rise_is_not_called_divergence():
    """0.0008 -> 0.0013 is +60%, but a model at 100% validation accuracy is not diverging
    (a new-user trial's epoch 100 said it was, and told them to lower the learning rate).
    At the usual scale the same +60% still is."""
    tiny = observe(curve((0.01, 1.0, 0.01, 1.0), (0.0008, 1.0, 0.004, 1.0),
                         (0.0013, 1.0, 0.0039, 1.0)), 2)
    assert tiny.kind not in ("diverging", "unstable"), tiny.text
    assert "rose" in tiny.text and "0.0013" in tiny.text  # the rise is still said, as it is
    big = observe(curve((1.0, 0.5, 1.0, 0.5), (0.5, 0.8, 0.6, 0.8), (0.8, 0.6, 0.9, 0.6)), 2)
    assert big.kind == "diverging"


def test_every_kind_is_planted_and_has_a_next_step():
    """insight.NEXT_STEP follows KINDS; the planted curves above cover every kind."""
    assert set(NEXT_STEP) == set(KINDS)
    assert {kind for kind, _ in PLANTED} == set(KINDS)


# -- the misreadings of issue 15, each planted --------------------------------------------------

def test_a_rising_loss_is_never_said_to_fall():
    """'Loss falls -5% to 0.89' was said of a loss that rose."""
    obs = observe(curve((1.0, 0.5, 1.0, 0.5), (0.85, 0.62, 0.9, 0.68), (0.89, 0.60, 0.95, 0.65)), K)
    assert "training loss rose 5% (0.85 -> 0.89)" in obs.text.lower()
    assert "fall" not in obs.text and "-5" not in obs.text


def test_a_falling_accuracy_is_never_said_to_improve():
    """'accuracy improves as the model learns features: 0.65 (-3 points)'."""
    obs = observe(curve((1.0, 0.5, 1.0, 0.5), (0.8, 0.66, 0.8, 0.68), (0.7, 0.7, 0.78, 0.65)), K)
    assert obs.kind == "mixed"
    assert "validation accuracy fell 3 points (0.68 -> 0.65)" in obs.text
    assert "improv" not in obs.text


def test_a_validation_loss_that_fell_is_not_said_to_rise():
    """'Validation loss rose to 0.75 (best 0.71)' was said when it fell from 1.32."""
    rows = [(1.0, 0.5, 0.9, 0.5), (0.8, 0.6, 0.71, 0.7), (0.6, 0.7, 1.32, 0.6), (0.5, 0.8, 0.75, 0.7)]
    obs = observe(curve(*rows), K)
    assert obs.kind != "overfitting" and "validation loss rose" not in obs.text, obs.text


def test_a_validation_spike_is_named():
    """A validation-loss spike from 1.23 to 8.49 went unmentioned."""
    obs = observe(curve((0.9, 0.6, 1.23, 0.55), (0.85, 0.62, 8.49, 0.5)), K)
    assert obs.kind == "validation spike"
    assert "validation loss rose 590% (1.23 -> 8.49)" in obs.text.lower()


def test_overfitting_needs_validation_to_worsen_epoch_after_epoch():
    base = [(0.9, 0.7, 0.70, 0.7), (0.5, 0.85, 0.72, 0.74), (0.3, 0.93, 0.80, 0.73)]
    assert observe(curve(*base), K, patience=2).kind == "overfitting"
    assert observe(curve(*base), K, patience=3).kind != "overfitting"
    dip = [*base[:2], (0.3, 0.93, 0.71, 0.73)]  # fell back in the last epoch
    assert observe(curve(*dip), K).kind != "overfitting"


def test_chance_level_validation_names_the_split_mismatch():
    obs = observe(curve((1.0, 0.6, 1.5, 0.26), (0.3, 0.95, 2.5, 0.02)), K)
    assert obs.kind == "validation at chance"
    assert "below chance (0.25)" in obs.text and "label" in obs.text


def test_observation_changes_when_the_curve_changes():
    base = [(1.2, 0.45, 1.1, 0.50), (0.9, 0.60, 0.85, 0.62)]
    worse = [(1.2, 0.45, 1.1, 0.50), (1.5, 0.40, 1.4, 0.41)]
    assert observe(curve(*base), K).text != observe(curve(*worse), K).text


def test_no_validation_uses_training_numbers():
    obs = observe([Point(1.0, 0.5), Point(0.7, 0.7)], K)
    assert obs.kind == "improving" and "training accuracy rose 20 points (0.50 -> 0.70)" in obs.text


# -- the property: no claim contradicts the curve -----------------------------------------------

CHANGE = re.compile(r"\((-?[\d.]+(?:e-?\d+)?) -> (-?[\d.]+(?:e-?\d+)?)\)")
SIGNED_AMOUNT = re.compile(r"(?:rose|fell|fall of|jumped|by)\s+[-+]")


def assert_true_to(history, obs):
    """Every claim of ``obs`` quotes ``history``, points the way its numbers go, and is in
    the sentence as rendered; the kind's own condition holds."""
    assert obs.kind in KINDS
    n = len(history)
    assert not SIGNED_AMOUNT.search(obs.text), obs.text
    for c in obs.claims:
        assert c.metric in METRICS and c.direction in DIRECTIONS
        assert 1 <= c.since < c.epoch <= n
        assert c.start == history[c.since - 1].value(c.metric)
        assert c.end == history[c.epoch - 1].value(c.metric)
        if c.direction == "rose":
            assert c.end > c.start, (c, obs.text)
        elif c.direction == "fell":
            assert c.end < c.start, (c, obs.text)
        else:
            assert trend(c.metric, c.start, c.end) == "held", (c, obs.text)
        said = c.change()
        assert said in obs.text, (said, obs.text)
        m = CHANGE.search(said)
        if m and c.direction != "held":  # the quoted numbers point the same way
            a, b = float(m.group(1)), float(m.group(2))
            assert (b > a) if c.direction == "rose" else (b < a), (said, c)
            amount = float(said.split("%")[0].split(" ")[0])
            expected = (abs(c.end - c.start) * 100 if c.is_accuracy
                        else abs(relative_change(c.end, c.start)) * 100)
            assert amount > 0 and math.isclose(amount, expected, rel_tol=0.5, abs_tol=0.51)
    now, prev = history[-1], history[-2] if n > 1 else None
    if obs.kind == "learning rate too high":
        assert all(b.train_loss > a.train_loss for a, b in pairwise(history))
    if obs.kind == "overfitting":
        assert prev.val_loss < now.val_loss and now.train_loss < history[-3].train_loss
    if obs.kind == "validation spike":
        assert now.val_loss >= 2 * prev.val_loss
    if obs.kind == "validation at chance":
        assert now.train_acc > now.val_acc
    if obs.kind in ("improving", "slowing"):
        assert now.train_loss <= prev.train_loss * 1.02 and now.acc >= prev.acc - 0.01
    if obs.kind in ("plateau", "converged"):
        assert abs(now.acc - prev.acc) < 0.01


losses = st.floats(0.001, 20.0)
accuracies = st.floats(0.0, 1.0)


@st.composite
def histories(draw):
    """Random curves: independent noise, or random walks (which make the trends and rules
    fire), with or without validation, sometimes ending in NaN."""
    n = draw(st.integers(1, 10))
    val = draw(st.booleans())
    if draw(st.booleans()):
        rows = [(draw(losses), draw(accuracies), draw(losses), draw(accuracies)) for _ in range(n)]
    else:
        step = draw(st.sampled_from([0.005, 0.03, 0.15, 0.6]))
        walk = st.floats(-step, step)
        tl, ta, vl, va = draw(losses), draw(accuracies), draw(losses), draw(accuracies)
        rows = []
        for _ in range(n):
            rows.append((tl, ta, vl, va))
            tl, vl = tl * math.exp(draw(walk)), vl * math.exp(draw(walk) * 3)
            ta, va = (min(1.0, max(0.0, a + draw(walk) / 3)) for a in (ta, va))
    if draw(st.integers(0, 9)) == 0:
        rows[-1] = (math.nan, rows[-1][1], math.nan, rows[-1][3])
    return [Point(*r) if val else Point(r[0], r[1]) for r in rows], draw(st.integers(2, 100))


@settings(max_examples=3000, deadline=None)
@given(histories())
def test_no_observation_contradicts_its_numbers(case):
    history, k = case
    for i in range(1, len(history) + 1):
        assert_true_to(history[:i], observe(history[:i], k))


# -- curves of real runs ---------------------------------------------------------------------------

def read_curve(name: str) -> list[Point]:
    opt = lambda v: None if v in ("", "None") else float(v)  # noqa: E731
    with open(CURVES / name, newline="") as f:
        return [Point(float(r["train_loss"]), float(r["train_acc"]), opt(r["val_loss"]),
                      opt(r["val_acc"])) for r in csv.DictReader(f)]


def observe_all(points, k):
    return [observe(points[:i], k) for i in range(1, len(points) + 1)]


REAL = {  # fixture -> (classes, the kind of each epoch as a person reads the curve)
    "photos-resnet18-random.csv": (2, [
        "starting to learn", "setback", "validation spike", "validation spike", "improving",
        "unstable", "improving", "slowing", "improving", "overfitting"]),
    "demo.csv": (4, ["starting to learn"] + ["improving"] * 4),
    "cifar-3-epochs.csv": (10, ["starting to learn", "improving", "slowing"]),
    "shapes-val-labels-rotated.csv": (4, [
        "starting to learn", "improving", "overfitting", "validation at chance",
        "validation at chance"]),
}


@pytest.mark.parametrize("name", sorted(REAL))
def test_real_curves_read_as_a_person_reads_them(name):
    k, kinds = REAL[name]
    points = read_curve(name)
    seen = observe_all(points, k)
    assert [o.kind for o in seen] == kinds, [(o.kind, o.text) for o in seen]
    for i, obs in enumerate(seen, start=1):
        assert_true_to(points[:i], obs)


def test_the_rotated_labels_are_named_as_a_split_mismatch():
    seen = observe_all(read_curve("shapes-val-labels-rotated.csv"), 4)
    assert seen[-1].text.startswith("Training accuracy 0.86 but validation accuracy 0.04, "
                                    "below chance (0.25)")
    assert "class folders that map to different labels" in seen[-1].text


def test_the_issue_run_names_its_spike_and_its_setback():
    """The random-init resnet18 run on the ant/bee photos, as issue 15 found it."""
    seen = observe_all(read_curve("photos-resnet18-random.csv"), 2)
    assert "Training loss rose 6% (0.72 -> 0.77)" in seen[1].text
    assert "Validation loss rose 274% (2.19 -> 8.18)" in seen[3].text
    assert "Training loss fell 23% (0.72 -> 0.55)" in seen[4].text
