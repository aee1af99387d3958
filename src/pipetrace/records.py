"""The records of a training run and the observer contract that receives them.

``train_one_epoch``/``fit`` produce an :class:`EpochRecord` per epoch and a
:class:`TrainResult` at the end; the views (terminal, JSON, HTML, TensorBoard) read them.
Records sit below both producers and views, so neither imports the other.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from .batch_view import BatchView
from .config import TrainConfig
from .distributed import DistInfo, RankRecord
from .errors import ErrorAnalysis, Predictions
from .findings import Finding
from .model import ModelConfig
from .observations import Point
from .trace import DataFlow
from .transforms import Preprocess


@dataclass(frozen=True)
class EpochRecord:
    """One row of the training trace."""

    epoch: int  # 1-based
    train_loss: float
    train_acc: float
    val_loss: float | None
    val_acc: float | None
    lr: float  # learning rate at the end of the epoch
    seconds: float  # wall time of the epoch, validation included
    images_per_s: float  # training images per second (all processes)
    bad_images: int = 0  # files skipped in this epoch
    observation: str = ""  # what the curve shows, in words
    observation_kind: str = ""  # one of observations.KINDS
    frozen: bool = False  # fine-tuning: the pretrained layers were frozen (a head-only epoch)

    def point(self) -> Point:
        return Point(self.train_loss, self.train_acc, self.val_loss, self.val_acc)

    def _repr_html_(self) -> str:  # Jupyter: the report's epoch table, one row
        from .report.notebook import epochs_html

        return epochs_html([self])


@dataclass(frozen=True)
class WeightsReport:
    """Where a run's initial weights came from and how they fitted the model.

    "Tensors" are the model's state-dict entries (weights and buffers). The ``head`` ones
    depend on the class count (the classifier); every other one must come from the weights.
    """

    source: str  # "torchvision ResNet18_Weights.IMAGENET1K_V1", "timm resnet18.a1_in1k", "file"
    file: str  # the file the tensors were read from (for a download: its cache path)
    total: int  # tensors of the model
    loaded: tuple[str, ...]  # model tensors filled from the weights
    head: tuple[str, ...]  # model tensors whose shape depends on the class count
    new: tuple[str, ...]  # model tensors not from the weights: left at their initialisation
    skipped: tuple[str, ...]  # tensors of the weights the model did not take (another head)
    preprocess: Preprocess | None = None  # the contract the weights were trained with

    @property
    def pretrained(self) -> frozenset[str]:
        """The model tensors that came from the weights and are not the head."""
        return frozenset(self.loaded) - set(self.head)

    def summary(self) -> str:
        """'loaded 120 of 122 tensors; new: fc.weight, fc.bias; not used: ...'."""
        parts = [f"loaded {len(self.loaded)} of {self.total} tensors"]
        if self.new:
            parts.append(f"new (initialised here): {_names(self.new)}")
        if self.skipped:
            parts.append(f"not used from the weights: {_names(self.skipped)}")
        return "; ".join(parts)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["preprocess"] = self.preprocess.to_dict() if self.preprocess else None
        return d

    @classmethod
    def from_dict(cls, d: dict) -> WeightsReport:
        pre = Preprocess.from_dict(d["preprocess"]) if d.get("preprocess") else None
        return cls(d["source"], d["file"], int(d["total"]), tuple(d["loaded"]), tuple(d["head"]),
                   tuple(d["new"]), tuple(d["skipped"]), pre)


@dataclass(frozen=True)
class LRSuggestion:
    """What a learning-rate range test's curve suggests, and what the choice rests on."""

    lr: float  # the suggested peak learning rate
    rule: str  # the rule applied, e.g. "a tenth of the rate at the lowest loss"
    reason: str  # the sentence that explains the choice with the curve's numbers
    minimum: float  # the rate at the lowest smoothed loss
    steepest: float | None  # the rate where the smoothed loss falls fastest (None: it never fell)
    divergence: float | None  # the first rate past the minimum where the loss diverged (None: not reached)
    smoothed: tuple[float, ...]  # the smoothed loss of each step the suggestion was read from


@dataclass(frozen=True)
class LRFinderResult:
    """A learning-rate range test (an exponential ramp over a model copy) and its suggestion."""

    lrs: tuple[float, ...]  # the run's learning rate at each step (other groups keep their ratio)
    losses: tuple[float, ...]  # the training loss at each step
    suggested: LRSuggestion
    stopped: str  # why the ramp ended: "the loss diverged at 3.2e+00", "the last step"
    held: dict  # what the test kept as the run will have it: optimizer, batch, groups, ...

    @property
    def lr(self) -> float:
        return self.suggested.lr

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> LRFinderResult:
        s = dict(d["suggested"])
        s["smoothed"] = tuple(s["smoothed"])
        return cls(tuple(d["lrs"]), tuple(d["losses"]), LRSuggestion(**s), d["stopped"],
                   dict(d["held"]))


def _names(names: tuple[str, ...], most: int = 4) -> str:
    shown = ", ".join(names[:most])
    return shown + (f" and {len(names) - most} more" if len(names) > most else "")


@dataclass
class TrainResult:
    """What a run produced; the report renders this, it computes nothing itself."""

    run_dir: str
    config: TrainConfig
    classes: list[str]
    preprocess: Preprocess
    model_config: ModelConfig
    records: list[EpochRecord]
    confusion: list[list[int]]  # [true][predicted] counts on the validation set
    flow: DataFlow | None  # the data flow as it ran: the run's first batch, traced
    probes: list[dict]  # sampled model-input statistics
    bad_files: list[tuple[str, str]]  # (path, reason) skipped
    params: int
    dist: DistInfo = field(default_factory=DistInfo)
    ranks: list[RankRecord] = field(default_factory=list)  # last epoch, one per process
    dataset: dict = field(default_factory=dict)  # split layout and counts
    timing: dict = field(default_factory=dict)  # seconds: total, data, train
    stopped: str = ""  # "" | "interrupted" | "diverged: ..."
    interrupted_at: tuple[int, int, int] | None = None  # (epoch, step, steps per epoch) at Ctrl-C
    findings: list[Finding] = field(default_factory=list)  # what the checks found in this run
    batch_view: BatchView | None = None  # a few training images as the model gets them
    predictions: Predictions | None = None  # the last evaluation, image by image
    predictions_epoch: int | None = None  # the epoch whose model made them (saved as last.pt)
    errors: ErrorAnalysis | None = None  # what went wrong in it (errors.analyse)
    weights: WeightsReport | None = None  # where the initial weights came from, how they fitted
    lr_find: LRFinderResult | None = None  # the range test that chose the lr (`--lr auto`)

    @property
    def per_class_accuracy(self) -> list[float | None]:
        return [row[i] / sum(row) if sum(row) else None for i, row in enumerate(self.confusion)]

    def _repr_html_(self) -> str:  # Jupyter: the finished run
        from .report.notebook import run_html

        return run_html(self)


class Observer:
    """Hooks for views of a run; every method is optional."""

    def on_train_start(self, info: dict) -> None: ...
    def on_batch_end(self, epoch: int, step: int, steps: int, loss: float, images_per_s: float) -> None: ...
    def on_epoch_end(self, record: EpochRecord) -> None: ...
    def on_train_end(self, result: TrainResult) -> None: ...


