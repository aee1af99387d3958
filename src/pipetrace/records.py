"""The records of a training run and the observer contract that receives them.

``train_one_epoch``/``fit`` produce an :class:`EpochRecord` per epoch and a
:class:`TrainResult` at the end; the views (terminal, JSON, HTML, TensorBoard) read them.
Records sit below both producers and views, so neither imports the other.
"""

from __future__ import annotations

from dataclasses import dataclass, field

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

    def point(self) -> Point:
        return Point(self.train_loss, self.train_acc, self.val_loss, self.val_acc)

    def _repr_html_(self) -> str:  # Jupyter: the report's epoch table, one row
        from .report.notebook import epochs_html

        return epochs_html([self])


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
    errors: ErrorAnalysis | None = None  # what went wrong in it (errors.analyse)

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


