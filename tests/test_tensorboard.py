"""`train --tensorboard`: the epoch metrics as TensorBoard scalars (an optional extra)."""

import sys

import pytest

from pipetrace.shapes import ShapesConfig, render
from pipetrace.tensorboard import TensorBoardObserver
from pipetrace.train import TrainConfig, fit


def test_without_the_package_the_error_says_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails
    with pytest.raises(ValueError, match=r"pip install 'pipetrace\[tensorboard\]'"):
        TensorBoardObserver(tmp_path / "tb")


def test_each_epoch_is_written_as_scalars(tmp_path):
    pytest.importorskip("tensorboard", reason="optional extra: pip install 'pipetrace[tensorboard]'")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    data = render(ShapesConfig(train_per_class=4, val_per_class=2, image_size=64), tmp_path / "d")
    logdir = tmp_path / "run" / "tensorboard"
    cfg = TrainConfig(data=str(data), out=str(tmp_path / "run"), model="pipenet-tiny", epochs=2,
                      batch_size=8, image_size=64, crop_pct=1.0, amp="off")
    result = fit(cfg, observers=(TensorBoardObserver(logdir),))

    assert list(logdir.glob("events.out.tfevents.*"))
    events = EventAccumulator(str(logdir))
    events.Reload()
    assert {"train/loss", "train/acc", "val/loss", "val/acc", "lr", "images/per_s"} <= set(
        events.Tags()["scalars"])
    for tag, field in (("train/loss", "train_loss"), ("val/acc", "val_acc")):
        logged = [(e.step, e.value) for e in events.Scalars(tag)]
        assert logged == [(r.epoch, pytest.approx(getattr(r, field), rel=1e-6))
                          for r in result.records]
