"""Optional TensorBoard logging of the epoch metrics (``train --tensorboard``)."""

from __future__ import annotations

from pathlib import Path

from .records import EpochRecord, Observer


class TensorBoardObserver(Observer):
    """Write each epoch's metrics as scalars; needs ``pip install pipetrace[tensorboard]``."""

    def __init__(self, logdir: str | Path):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:
            raise ValueError("--tensorboard needs the tensorboard package: "
                             "pip install 'pipetrace[tensorboard]'") from exc
        self.writer = SummaryWriter(str(logdir))

    def on_epoch_end(self, record: EpochRecord) -> None:
        for name in ("train_loss", "train_acc", "val_loss", "val_acc", "lr", "images_per_s"):
            value = getattr(record, name)
            if value is not None:
                self.writer.add_scalar(name.replace("_", "/", 1), value, record.epoch)
        self.writer.flush()

    def on_train_end(self, result) -> None:
        self.writer.close()
