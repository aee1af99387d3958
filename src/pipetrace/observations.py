"""The Observation column: what the learning curve shows, as claims that quote its numbers.

``observe(history, num_classes)`` names what the last epoch shows (one of :data:`KINDS`).
Every change it mentions is a :class:`Claim` — a metric, a direction, the two values and
the epochs they come from — and the sentence is rendered from those claims, so the words
"rose" and "fell" always agree with the numbers beside them (``tests/test_observations.py``
checks that over thousands of random curves).

The rules, in the order they are tried (the first that fits names the epoch):

* ``diverging``: a loss became NaN or infinite;
* ``learning rate too high``: the training loss has risen in every epoch since the first
  (two epochs at least);
* ``diverging``: the training loss rose more than 50% in one epoch (or more than 10% in each
  of the last two) after falling before;
* ``validation spike``: the validation loss at least doubled in one epoch while the
  training loss did not rise by more than 10%;
* ``validation at chance``: training accuracy is high while validation accuracy stays near
  chance, or validation is clearly below chance while training learns: the classic sign of
  a mismatch between the splits;
* ``overfitting``: the validation loss rose in each of the last ``patience`` epochs while
  the training loss fell over them;
* ``unstable``: the training loss rose more than 10% in one epoch;
* a rise of the training loss counts for ``diverging`` and ``unstable`` only when it is
  also more than 1% of the guessing loss ln k (:data:`NOISE`): a near-perfect model's loss
  going from 0.0008 to 0.0013 is +60% but not a divergence;
* ``underfitting``: after three epochs accuracy is still near chance and the loss barely moves;
* otherwise the last epoch's training loss and accuracy decide: ``improving`` (or
  ``slowing``, when the fall is less than half the one before), ``plateau`` /
  ``converged`` (neither moved), ``mixed`` (they disagree) or ``setback`` (worse).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise

KINDS = ("starting to learn", "improving", "slowing", "plateau", "converged", "mixed",
         "setback", "overfitting", "underfitting", "validation spike", "validation at chance",
         "learning rate too high", "unstable", "diverging")
METRICS = {"train_loss": "training loss", "val_loss": "validation loss",
           "train_acc": "training accuracy", "val_acc": "validation accuracy"}
DIRECTIONS = ("rose", "fell", "held")
LOSS_FLAT = 0.02  # a loss that moved by less than this fraction of itself "held"
ACC_FLAT = 0.01  # an accuracy that moved by less than this (1 point) "held"
SPIKE = 2.0  # validation loss multiplied by at least this in one epoch: a spike
UNSTABLE = 0.10  # training loss up by more than this fraction in one epoch: unstable
BLOW_UP = 0.50  # ... by more than this: diverging
NOISE = 0.01  # a training loss that rose by less than this share of the guessing loss, ln k,
# is a near-perfect model's noise (0.0008 -> 0.0013 is +60%), not instability or divergence


@dataclass(frozen=True)
class Point:
    """One epoch of the curve (validation values are None when there is no validation set)."""

    train_loss: float
    train_acc: float
    val_loss: float | None = None
    val_acc: float | None = None

    @property
    def acc(self) -> float:
        return self.val_acc if self.val_acc is not None else self.train_acc

    @property
    def loss(self) -> float:
        return self.val_loss if self.val_loss is not None else self.train_loss

    def value(self, metric: str) -> float | None:
        return getattr(self, metric)


@dataclass(frozen=True)
class Claim:
    """One change the sentence states: ``metric`` went ``direction`` from ``start`` (at epoch
    ``since``) to ``end`` (at epoch ``epoch``). Epochs are 1-based."""

    metric: str  # a key of METRICS
    direction: str  # "rose", "fell" or "held" (moved by less than LOSS_FLAT / ACC_FLAT)
    start: float  # the metric at epoch `since`
    end: float  # the metric at epoch `epoch`
    since: int
    epoch: int

    @property
    def is_accuracy(self) -> bool:
        return self.metric.endswith("_acc")

    def change(self) -> str:
        """The numbers of the change: '9% (1.45 -> 1.32)', '8 points (0.31 -> 0.39)', 'at 0.67'."""
        if self.direction == "held":
            a, b = f"{self.start:.2f}", f"{self.end:.2f}"
            return f"at {b}" if a == b else f"at {b} (from {a})"
        a, b = _pair(self.start, self.end)
        if self.is_accuracy:
            amount = _amount(abs(self.end - self.start) * 100)
            return f"{amount} point{'' if amount == '1' else 's'} ({a} -> {b})"
        return f"{_amount(abs(relative_change(self.end, self.start)) * 100)}% ({a} -> {b})"

    def text(self) -> str:
        """'training loss fell 9% (1.45 -> 1.32)', 'validation accuracy held at 0.67'."""
        return f"{METRICS[self.metric]} {self.direction} {self.change()}"


@dataclass(frozen=True)
class Observation:
    kind: str  # one of KINDS
    text: str  # a sentence with the numbers behind it, rendered from `claims`
    claims: tuple[Claim, ...] = ()  # every change the text states


def relative_change(new: float, old: float) -> float:
    """(new - old) / |old|: negative when it fell; 0 when ``old`` is 0 and nothing moved."""
    if old == 0:
        return 0.0 if new == 0 else math.copysign(math.inf, new)
    return (new - old) / abs(old)


def trend(metric: str, start: float, end: float) -> str:
    """"rose", "fell" or "held", with the thresholds the claims use."""
    moved = end - start if metric.endswith("_acc") else relative_change(end, start)
    flat = ACC_FLAT if metric.endswith("_acc") else LOSS_FLAT
    if abs(moved) < flat:
        return "held"
    return "rose" if moved > 0 else "fell"


def _amount(x: float) -> str:
    """A magnitude for a sentence: '9', '0.4' (never '0' for something that moved)."""
    return f"{x:.0f}" if x >= 1 else (f"{x:.1f}" if x >= 0.05 else f"{x:.2g}")


def _pair(a: float, b: float) -> tuple[str, str]:
    """Both values with just enough decimals (2 to 6) to tell them apart."""
    for digits in range(2, 7):
        sa, sb = f"{a:.{digits}f}", f"{b:.{digits}f}"
        if sa != sb:
            return sa, sb
    return sa, sb


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


class _Curve:
    """The history with 1-based epoch access and claim building."""

    def __init__(self, history: Sequence[Point], num_classes: int):
        self.h = list(history)
        self.n = len(self.h)
        self.k = max(num_classes, 1)
        self.chance = 1.0 / self.k
        self.has_val = self.h[-1].val_loss is not None
        self.acc = "val_acc" if self.h[-1].val_acc is not None else "train_acc"
        self.noise = NOISE * math.log(self.k)

    def rose(self, since: int, epoch: int, share: float) -> bool:
        """The training loss rose by more than ``share`` of itself, and by more than noise."""
        a, b = self.at("train_loss", since), self.at("train_loss", epoch)
        return relative_change(b, a) > share and b - a > self.noise

    def at(self, metric: str, epoch: int) -> float:
        return self.h[epoch - 1].value(metric)

    def claim(self, metric: str, since: int, epoch: int, direction: str | None = None) -> Claim:
        """The change of ``metric`` between two epochs; ``direction`` is what the rule
        asserts (None: say whatever the numbers show)."""
        a, b = self.at(metric, since), self.at(metric, epoch)
        return Claim(metric, direction or trend(metric, a, b), a, b, since, epoch)

    def learned(self, acc: float) -> float:
        """Share of the way from chance to perfect accuracy."""
        return (acc - self.chance) / (1 - self.chance) if self.chance < 1 else 1.0


def _obs(kind: str, text: str, *claims: Claim) -> Observation:
    return Observation(kind, text, tuple(claims))


def observe(history: Sequence[Point], num_classes: int, *, patience: int = 2) -> Observation:
    """Describe the last point of ``history`` in the light of the ones before it.

    Values before the last epoch are expected finite (training stops at a NaN loss).
    ``patience`` is how many epochs in a row the validation loss must have risen, while the
    training loss fell, before the epoch is called overfitting.
    """
    if not history:
        raise ValueError("observe() needs at least one epoch")
    c = _Curve(history, num_classes)
    now, n = c.h[-1], c.n
    if not all(math.isfinite(v) for v in (now.train_loss, now.loss)):
        return _obs("diverging", f"Loss became NaN or infinite in epoch {n}: training diverged; "
                    "lower the learning rate or check the inputs for NaN.")
    if n == 1:
        return _obs("starting to learn",
                    f"First epoch: training loss {now.train_loss:.2f} (guessing gives "
                    f"{math.log(c.k):.2f}), {METRICS[c.acc]} {now.acc:.2f} (chance "
                    f"{c.chance:.2f}).")
    for rule in (_rate_too_high, _diverging, _validation_spike, _validation_at_chance):
        found = rule(c)
        if found:
            return found
    found = _overfitting(c, patience) or _unstable(c) or _underfitting(c)
    return found or _last_epoch(c)


def _diverging(c: _Curve) -> Observation | None:
    n = c.n
    if c.rose(n - 1, n, BLOW_UP):
        claims = (c.claim("train_loss", n - 1, n, "rose"),)
    elif c.rose(n - 1, n, UNSTABLE) and n >= 3 and c.rose(n - 2, n - 1, UNSTABLE):
        claims = (c.claim("train_loss", n - 2, n - 1, "rose"), c.claim("train_loss", n - 1, n, "rose"))
    else:
        return None
    said = " and then ".join(cl.text() for cl in claims)
    return _obs("diverging", f"{_cap(said)}: the run is diverging; lower the learning rate.",
                *claims)


def _rate_too_high(c: _Curve) -> Observation | None:
    losses = [c.at("train_loss", e) for e in range(1, c.n + 1)]
    if c.n < 3 or not all(b > a for a, b in pairwise(losses)):
        return None
    claim = c.claim("train_loss", 1, c.n, "rose")
    if trend("train_loss", claim.start, claim.end) != "rose":
        return None
    return _obs("learning rate too high",
                f"{_cap(claim.text())}, rising in each of the {c.n - 1} epochs since the first: "
                "the learning rate is too high; lower it (`pipetrace lr-find` suggests one).",
                claim)


def _validation_spike(c: _Curve) -> Observation | None:
    n = c.n
    if not c.has_val:
        return None
    v0, v1 = c.at("val_loss", n - 1), c.at("val_loss", n)
    train_up = relative_change(c.at("train_loss", n), c.at("train_loss", n - 1))
    if not (v0 > 0 and v1 >= SPIKE * v0 and v1 - v0 >= 0.1 and train_up <= UNSTABLE):
        return None
    spike, train = c.claim("val_loss", n - 1, n, "rose"), c.claim("train_loss", n - 1, n)
    return _obs("validation spike",
                f"{_cap(spike.text())} while {train.text()}: a validation spike, this epoch's "
                "weights do badly on the held-out images (batch-norm running statistics from "
                "few steps, or too high a learning rate); watch whether it recovers.",
                spike, train)


def _validation_at_chance(c: _Curve) -> Observation | None:
    now = c.h[-1]
    if now.val_acc is None or c.chance >= 1:
        return None
    margin = 0.15 * (1 - c.chance)
    below = now.val_acc < c.chance - margin
    # validation near chance while training has learned, or clearly below chance (wrong in
    # a systematic way) while training is well on its way
    if not ((c.learned(now.train_acc) >= 0.6 and now.val_acc <= c.chance + margin)
            or (below and c.learned(now.train_acc) >= 0.3)):
        return None
    return _obs("validation at chance",
                f"Training accuracy {now.train_acc:.2f} but validation accuracy "
                f"{now.val_acc:.2f}, {'below' if below else 'close to'} chance ({c.chance:.2f}): "
                "what the model learns does not carry over to the validation images. The "
                "classic cause is a mismatch between the splits: different preprocessing, or "
                "class folders that map to different labels.")


def _overfitting(c: _Curve, patience: int) -> Observation | None:
    n, k = c.n, max(patience, 1)
    if not c.has_val or n <= k:
        return None
    vals = [c.at("val_loss", e) for e in range(n - k, n + 1)]
    if not all(b > a for a, b in pairwise(vals)):
        return None
    val, train = c.claim("val_loss", n - k, n, "rose"), c.claim("train_loss", n - k, n, "fell")
    if trend("val_loss", val.start, val.end) != "rose" or trend(
            "train_loss", train.start, train.end) != "fell":
        return None
    now = c.h[-1]
    return _obs("overfitting",
                f"Overfitting: in each of the last {k} epochs validation loss rose, in all "
                f"{val.change()}, while {train.text()}; training accuracy {now.train_acc:.2f}, "
                f"validation {now.val_acc:.2f}.", val, train)


def _unstable(c: _Curve) -> Observation | None:
    n = c.n
    if not c.rose(n - 1, n, UNSTABLE):
        return None
    claim = c.claim("train_loss", n - 1, n, "rose")
    return _obs("unstable", f"{_cap(claim.text())}: unstable; a lower learning rate or a longer "
                "warm-up would steady it.", claim)


def _underfitting(c: _Curve) -> Observation | None:
    n, now = c.n, c.h[-1]
    if n < 3:
        return None
    loss = c.claim("train_loss", n - 2, n)
    learned = c.learned(now.acc)
    if learned >= 0.25 or abs(relative_change(loss.end, loss.start)) >= 0.05:
        return None
    return _obs("underfitting",
                f"{_cap(METRICS[c.acc])} {now.acc:.2f} is only {max(learned, 0):.0%} of the way "
                f"from chance ({c.chance:.2f}) to perfect after {n} epochs, and over the last two "
                f"the {loss.text()}: underfitting; try a larger model, a higher learning rate "
                "or more epochs.", loss)


def _last_epoch(c: _Curve) -> Observation:
    """Improving, slowing, plateau, converged, mixed or setback: the last epoch decides."""
    n, now = c.n, c.h[-1]
    loss, acc = c.claim("train_loss", n - 1, n), c.claim(c.acc, n - 1, n)
    both = f"{_cap(loss.text())} and {acc.text()}"
    if (loss.direction == "fell" and acc.direction != "fell") or (
            loss.direction == "held" and acc.direction == "rose"):
        if n >= 3 and loss.direction == "fell":
            before = c.claim("train_loss", n - 2, n - 1)
            drop, drop_before = (relative_change(cl.end, cl.start) for cl in (loss, before))
            if before.direction == "fell" and drop_before < -0.04 and drop > drop_before / 2:
                return _obs("slowing", f"{_cap(loss.text())}, less than half the fall of "
                            f"{before.change()} the epoch before; {acc.text()}.",
                            loss, before, acc)
        good = "; a good level" if now.acc >= 0.85 else ""
        return _obs("improving", f"{both}{good}.", loss, acc)
    if loss.direction == "held" and acc.direction == "held":
        if now.acc >= 0.9 or now.train_acc >= 0.98:
            return _obs("converged", f"{both}: converged.", loss, acc)
        return _obs("plateau", f"{both}: a plateau; a lower learning rate, more augmentation or "
                    "a larger model may help.", loss, acc)
    if loss.direction == "fell" or acc.direction == "rose":  # one better, the other worse
        return _obs("mixed", f"{_cap(loss.text())} but {acc.text()}: the two disagree this "
                    "epoch (noise, or the start of overfitting).", loss, acc)
    return _obs("setback", f"{both}: a setback this epoch; one epoch is noise, several in a row "
                "call for a lower learning rate.", loss, acc)
