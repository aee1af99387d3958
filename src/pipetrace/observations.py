"""The Observation column: a sentence about the learning curve, derived from its numbers.

``observe(history)`` looks at the curve up to the last epoch and names what is happening
(starting to learn, improving, slowing, plateau, overfitting, underfitting, unstable,
diverging, converged), with the numbers that show it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

KINDS = ("starting to learn", "improving", "slowing", "plateau", "overfitting", "underfitting",
         "unstable", "diverging", "converged")


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


@dataclass(frozen=True)
class Observation:
    kind: str  # one of KINDS
    text: str  # a sentence with the numbers behind it


def _pct(new: float, old: float) -> float:
    """Relative change in percent (negative = fell)."""
    return (new - old) / abs(old) * 100 if old else 0.0


def observe(history: Sequence[Point], num_classes: int) -> Observation:
    """Describe the last point of ``history`` in the light of the ones before it."""
    if not history:
        raise ValueError("observe() needs at least one epoch")
    chance = 1.0 / max(num_classes, 1)
    now = history[-1]
    if not all(math.isfinite(v) for v in (now.train_loss, now.loss)):
        return Observation("diverging", "Loss became NaN or infinite: training diverged; "
                           "lower the learning rate or check the inputs for NaN.")
    if len(history) == 1:
        word = "with a high" if now.train_loss > 0.5 * math.log(max(num_classes, 2)) else "with a"
        return Observation(
            "starting to learn",
            f"Model starts learning {word} loss of {now.train_loss:.2f} and accuracy "
            f"{now.acc:.2f} (chance is {chance:.2f}).")
    prev = history[-2]
    d_train = _pct(now.train_loss, prev.train_loss)
    d_acc = (now.acc - prev.acc) * 100  # percentage points
    best_val_loss = min((p.val_loss for p in history[:-1] if p.val_loss is not None), default=None)

    if d_train > 50 or (len(history) >= 3 and d_train > 10
                        and _pct(prev.train_loss, history[-3].train_loss) > 10):
        return Observation("diverging", f"Training loss rose {d_train:.0f}% to "
                           f"{now.train_loss:.2f}: the run is diverging; lower the learning rate.")
    if d_train > 10:
        return Observation("unstable", f"Training loss rose {d_train:.0f}% "
                           f"({prev.train_loss:.2f} -> {now.train_loss:.2f}): unstable; a lower "
                           "learning rate or more warm-up would steady it.")
    if (now.val_loss is not None and best_val_loss is not None
            and now.val_loss > best_val_loss * 1.05 and d_train < -2
            and now.train_acc - now.acc > 0.05):
        return Observation(
            "overfitting",
            f"Validation loss rose to {now.val_loss:.2f} (best {best_val_loss:.2f}) while "
            f"training loss fell {-d_train:.0f}%: overfitting; train accuracy "
            f"{now.train_acc:.2f} vs validation {now.acc:.2f}.")
    learned = (now.acc - chance) / (1 - chance) if chance < 1 else 1.0
    if len(history) >= 3 and learned < 0.25 and abs(d_train) < 5:
        return Observation("underfitting", f"Accuracy {now.acc:.2f} is only {learned:.0%} of "
                           f"the way from chance ({chance:.2f}) to perfect and the loss barely "
                           "moves: underfitting; try a larger model, a higher learning rate or "
                           "more epochs.")
    if abs(d_train) < 2 and abs(d_acc) < 1:
        if now.acc >= 0.9 or now.train_acc >= 0.98:
            return Observation("converged", f"Training converges: loss {now.train_loss:.2f} "
                               f"and accuracy {now.acc:.2f} hardly change any more.")
        return Observation("plateau", f"Loss {now.train_loss:.2f} and accuracy {now.acc:.2f} "
                           "hardly change: a plateau; a lower learning rate or a better model "
                           "may help.")
    prev_drop = _pct(prev.train_loss, history[-3].train_loss) if len(history) >= 3 else None
    if d_train < 0 and prev_drop is not None and prev_drop < -4 and d_train > prev_drop / 2:
        return Observation(
            "slowing", f"Loss still falls ({prev.train_loss:.2f} -> {now.train_loss:.2f}, "
            f"{d_train:.0f}%) but more slowly than before ({prev_drop:.0f}%); accuracy "
            f"{now.acc:.2f}.")
    if d_train <= 0 or d_acc > 0:
        if now.acc >= 0.85 and d_acc >= 0:
            tail = "reaches a good level"
        else:
            tail = "improves as the model learns features"
        return Observation(
            "improving", f"Loss falls {-d_train:.0f}% to {now.train_loss:.2f} and accuracy "
            f"{tail}: {now.acc:.2f} ({d_acc:+.0f} points).")
    return Observation("plateau", f"Loss {now.train_loss:.2f} stopped falling; accuracy "
                       f"{now.acc:.2f}.")
