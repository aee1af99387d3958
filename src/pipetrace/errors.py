"""Error analysis: what went wrong, image by image, computed once from per-image predictions.

:class:`Predictions` holds what evaluation saw for every image (file, given label, the
probability of each class, the loss); it is written as ``predictions.csv``. :func:`analyse`
turns it into an :class:`ErrorAnalysis` that the terminal, JSON and HTML views render: the
worst predictions, the most-confused pairs, per-class precision, recall, F1 and support,
top-5 accuracy, calibration (expected calibration error and a reliability diagram), and the
likely label errors.

Likely label errors follow confident learning (Northcutt, Jiang and Chuang, "Confident
Learning: Estimating Uncertainty in Dataset Labels", JAIR 2021, the method behind cleanlab)
in taking each class's threshold from the model's own probabilities, but set it where the
class is *absent*: a_j, the mean probability the model gives class j on the images labelled
otherwise. An image labelled y is a likely label error when the model predicts another class
(strictly likelier than y) and gives y no more than a_y, i.e. its label looks as absent as
the label of an image of another class. The list is ranked by the margin p_predicted - p_y.
Why not confident learning's own rule (another class j reaches t_j, the mean p_j over the images labelled j):
it flags the model's confident mistakes as readily as wrong labels, where a model that is
wrong still gives the true class a share (a cat taken for a dog keeps p_cat ~ 0.17 on the
median) and a wrong label gets what any absent class gets. Measured on CIFAR-10 with 500
planted errors (``make bench-errors``, docs/performance.md): precision 0.92 and recall 0.84
against confident learning's 0.80 and 0.71, and 31 flags on the clean copy against 69. The
predictions must come from a model that did not train on those images (validation), or the
model has learnt their labels, right or wrong.
"""

from __future__ import annotations

import csv
import io
from dataclasses import asdict, dataclass

import numpy as np

CALIBRATION_BINS = 15  # equal-width confidence bins, as Guo et al. (2017) report ECE


@dataclass(frozen=True)
class Predictions:
    """Per-image results of one evaluation pass (rows in dataset order)."""

    paths: list[str]  # one file per row
    labels: np.ndarray  # (N,) int64 given class index
    probs: np.ndarray  # (N, C) float32 softmax probabilities (of the TTA-averaged logits)
    losses: np.ndarray  # (N,) float32 cross-entropy of each image (no label smoothing)
    classes: list[str]  # class index -> name
    split: str = "val"  # which images: "val", "train", "test", ...

    def __post_init__(self):
        n, c = len(self.paths), len(self.classes)
        if self.labels.shape != (n,) or self.probs.shape != (n, c) or self.losses.shape != (n,):
            raise ValueError(f"predictions of {n} images and {c} classes have labels "
                             f"{self.labels.shape}, probs {self.probs.shape}, losses "
                             f"{self.losses.shape}")

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def predicted(self) -> np.ndarray:
        return self.probs.argmax(1) if len(self) else np.zeros(0, np.int64)

    def to_csv(self) -> str:
        """``path, true, predicted, p_true, p_predicted, loss, p_<class>...`` per image."""
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["path", "true", "predicted", "p_true", "p_predicted", "loss",
                    *(f"p_{c}" for c in self.classes)])
        pred = self.predicted
        for i, path in enumerate(self.paths):
            y, p = int(self.labels[i]), int(pred[i])
            w.writerow([path, self.classes[y], self.classes[p], f"{self.probs[i, y]:.6f}",
                        f"{self.probs[i, p]:.6f}", f"{self.losses[i]:.6f}",
                        *(f"{v:.6f}" for v in self.probs[i])])
        return buf.getvalue()

    @classmethod
    def from_csv(cls, text: str, *, split: str = "val") -> Predictions:
        """Read :meth:`to_csv`'s text back (the classes from its header)."""
        rows = list(csv.reader(io.StringIO(text)))
        if not rows or rows[0][:6] != ["path", "true", "predicted", "p_true", "p_predicted",
                                       "loss"]:
            raise ValueError("not a pipetrace predictions.csv (header path,true,predicted,...)")
        classes = [h.removeprefix("p_") for h in rows[0][6:]]
        index = {c: i for i, c in enumerate(classes)}
        body = rows[1:]
        try:
            labels = np.array([index[r[1]] for r in body], np.int64)
            probs = np.array([[float(v) for v in r[6:]] for r in body], np.float64)
            losses = np.array([float(r[5]) for r in body], np.float64)
            probs = probs.reshape(len(body), len(classes))
        except (KeyError, ValueError, IndexError) as exc:
            raise ValueError(f"predictions.csv has a bad row: {exc}") from None
        wrong = ~np.isnan(probs) & ((probs < 0) | (probs > 1))  # nan: a diverged model's row
        if wrong.any():
            row, col = (int(i) for i in np.argwhere(wrong)[0])
            raise ValueError(f"predictions.csv row {row + 2} ({body[row][0]!r}): p_"
                             f"{classes[col]} = {probs[row, col]:g}, not a probability in "
                             "[0, 1]")
        return cls([r[0] for r in body], labels, probs.astype(np.float32),
                   losses.astype(np.float32), classes, split)


@dataclass(frozen=True)
class ClassMetrics:
    name: str
    precision: float  # of the images predicted as this class, the share that are (0 if none)
    recall: float  # of the images of this class, the share predicted as it
    f1: float  # harmonic mean of precision and recall (0 when both are 0)
    support: int  # images of this class


@dataclass(frozen=True)
class ImageError:
    """One image the model got wrong (or a likely label error)."""

    index: int  # row in the predictions (dataset order)
    path: str
    given: str  # the label in the dataset
    predicted: str  # the model's top class (a label error: the class it suggests)
    p_given: float  # the model's probability of the given label
    p_predicted: float
    loss: float


@dataclass(frozen=True)
class CalibrationBin:
    low: float  # confidence range [low, high)
    high: float
    count: int  # images whose top probability falls here
    confidence: float | None  # their mean top probability
    accuracy: float | None  # the share of them that are right


@dataclass(frozen=True)
class ErrorAnalysis:
    """Everything the error views show, computed from one :class:`Predictions`."""

    split: str
    images: int
    accuracy: float
    top5_accuracy: float | None  # when there are more than 5 classes
    per_class: list[ClassMetrics]
    macro_f1: float
    most_confused: list[tuple[str, str, int]]  # (true, predicted, count), most first
    ece: float  # expected calibration error over CALIBRATION_BINS bins, 0-1
    calibration: list[CalibrationBin]
    top_losses: list[ImageError]  # the images with the highest loss, worst first
    label_issues: list[ImageError]  # likely label errors, likeliest first
    label_thresholds: dict[str, float]  # the per-class threshold a_j of label_issues
    method: str = ("per-class thresholds from the model's probabilities, as in confident "
                   "learning, set where a class is absent: the model predicts another class, "
                   "strictly likelier, and gives the given class y no more than a_y, the mean "
                   "p_y over the images labelled otherwise; ranked by p_predicted - p_y")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["most_confused"] = [list(t) for t in self.most_confused]
        return d


def per_class_metrics(labels: np.ndarray, predicted: np.ndarray, classes: list[str]
                      ) -> list[ClassMetrics]:
    """Precision, recall, F1 and support per class (scikit-learn's, zero_division=0)."""
    out = []
    for j, name in enumerate(classes):
        tp = int(((predicted == j) & (labels == j)).sum())
        n_pred, support = int((predicted == j).sum()), int((labels == j).sum())
        p = tp / n_pred if n_pred else 0.0
        r = tp / support if support else 0.0
        out.append(ClassMetrics(name, p, r, 2 * p * r / (p + r) if p + r else 0.0, support))
    return out


def calibration(probs: np.ndarray, labels: np.ndarray, bins: int = CALIBRATION_BINS
                ) -> tuple[float, list[CalibrationBin]]:
    """Expected calibration error and the reliability diagram's bins (top-1 confidence), over
    the rows without a NaN (a diverged model's)."""
    finite = np.isfinite(probs).all(1) if len(probs) else np.zeros(0, bool)
    probs, labels = probs[finite], labels[finite]  # a row with NaN has no confidence
    conf = probs.max(1) if len(probs) else np.zeros(0)
    right = probs.argmax(1) == labels if len(probs) else np.zeros(0, bool)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1], right=False), 0, bins - 1)
    out, ece = [], 0.0
    for b in range(bins):
        mask = which == b
        n = int(mask.sum())
        c = float(conf[mask].mean()) if n else None
        a = float(right[mask].mean()) if n else None
        if n:
            ece += n / len(conf) * abs(a - c)
        out.append(CalibrationBin(float(edges[b]), float(edges[b + 1]), n, c, a))
    return ece, out


def label_issues(pred: Predictions) -> tuple[list[ImageError], dict[str, float]]:
    """Likely label errors and the per-class thresholds a_j (see the module docstring)."""
    probs, labels, n_classes = pred.probs, pred.labels, len(pred.classes)
    finite = np.isfinite(probs).all(1)  # a row with NaN (a diverged model) is never flagged
    absent = np.full(n_classes, -np.inf)  # no image of another class: nothing is flagged
    for j in range(n_classes):
        others = (labels != j) & finite
        if others.any():
            absent[j] = probs[others, j].mean()
    rows = np.arange(len(pred))
    p_given, predicted = probs[rows, labels], pred.predicted
    issue = (finite & (predicted != labels) & (p_given <= absent[labels])
             & (probs[rows, predicted] > p_given))  # a tie is no suggestion
    found = [ImageError(int(i), pred.paths[i], pred.classes[labels[i]],
                        pred.classes[predicted[i]], float(p_given[i]),
                        float(probs[i, predicted[i]]), float(pred.losses[i]))
             for i in np.flatnonzero(issue)]
    found.sort(key=lambda e: e.p_predicted - e.p_given, reverse=True)
    return found, {c: float(t) for c, t in zip(pred.classes, absent, strict=True)
                   if np.isfinite(t)}


def analyse(pred: Predictions, *, top: int = 12, confused: int = 10) -> ErrorAnalysis:
    """The whole error analysis of ``pred``; ``top`` worst images, ``confused`` pairs."""
    labels, predicted, classes = pred.labels, pred.predicted, pred.classes
    n = len(pred)
    per_class = per_class_metrics(labels, predicted, classes)
    top5 = None
    if len(classes) > 5 and n:
        top5 = float((np.argsort(-pred.probs, 1)[:, :5] == labels[:, None]).any(1).mean())
    pairs: dict[tuple[int, int], int] = {}
    for y, p in zip(labels.tolist(), predicted.tolist(), strict=True):
        if y != p:
            pairs[(y, p)] = pairs.get((y, p), 0) + 1
    most = sorted(pairs.items(), key=lambda kv: (-kv[1], kv[0]))[:confused]
    ece, bins = calibration(pred.probs, labels)
    worst = np.argsort(-pred.losses, kind="stable")[:top] if n else []
    top_losses = [ImageError(int(i), pred.paths[i], classes[labels[i]], classes[predicted[i]],
                             float(pred.probs[i, labels[i]]), float(pred.probs[i, predicted[i]]),
                             float(pred.losses[i])) for i in worst]
    issues, thresholds = label_issues(pred)
    return ErrorAnalysis(
        split=pred.split, images=n, accuracy=float((predicted == labels).mean()) if n else 0.0,
        top5_accuracy=top5, per_class=per_class,
        macro_f1=float(np.mean([c.f1 for c in per_class if c.support])) if n else 0.0,
        most_confused=[(classes[y], classes[p], c) for (y, p), c in most], ece=ece,
        calibration=bins, top_losses=top_losses, label_issues=issues,
        label_thresholds=thresholds)
