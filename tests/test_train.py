"""Stage 5: the run folder, reproducibility, resume, divergence and interruption."""

import json
import math
from dataclasses import replace

import pytest
import torch

from pipetrace import checkpoint as ckpt_io
from pipetrace.shapes import ShapesConfig, render
from pipetrace.train import EpochRecord, Observer, TrainConfig, TrainingDiverged, fit


@pytest.fixture(scope="module")
def tiny_shapes(tmp_path_factory):
    return render(ShapesConfig(train_per_class=16, val_per_class=4, image_size=64, seed=3),
                  tmp_path_factory.mktemp("shapes"))


def config(data, out, **kw) -> TrainConfig:
    base = dict(data=str(data), out=str(out), model="pipenet-tiny", epochs=2, batch_size=16,
                image_size=64, crop_pct=1.0, lr=3e-3, trace_every=2)
    return TrainConfig(**{**base, **kw})


def test_fit_writes_a_complete_run_folder(tiny_shapes, tmp_path):
    result = fit(config(tiny_shapes, tmp_path / "run"))
    run = tmp_path / "run"
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(ln)["epoch"] for ln in lines] == [1, 2]
    assert (run / "metrics.csv").read_text().startswith("epoch,train_loss,train_acc")
    for name in ("last.pt", "best.pt"):
        assert (run / name).is_file() and (run / f"{name}.sha256").is_file()
    assert json.loads((run / "config.json").read_text())["model"] == "pipenet-tiny"
    assert len(result.records) == 2 and all(math.isfinite(r.train_loss) for r in result.records)
    assert sum(map(sum, result.confusion)) == 16  # every validation image counted once
    assert [s.index for s in result.stages] == [1, 2, 3, 4, 5]
    assert result.stages[3].output.shape == (16, 3, 64, 64)
    assert result.probes and result.probes[0]["step"] == 0
    ckpt = ckpt_io.load_checkpoint(run / "last.pt")
    for key in ("model_state", "optimizer_state", "scheduler_state", "rng", "history",
                "classes", "preprocess", "model_config", "train_config"):
        assert key in ckpt
    assert ckpt["classes"] == ["circle", "square", "star", "triangle"] and ckpt["epoch"] == 2


def test_same_seed_same_metrics(tiny_shapes, tmp_path):
    a = fit(config(tiny_shapes, tmp_path / "a"))
    b = fit(config(tiny_shapes, tmp_path / "b"))
    strip = lambda rs: [(r.train_loss, r.train_acc, r.val_loss, r.val_acc) for r in rs]  # noqa: E731
    assert strip(a.records) == strip(b.records)
    c = fit(config(tiny_shapes, tmp_path / "c", seed=1))
    assert strip(c.records) != strip(a.records)


class StopAfter(Observer):
    """Press Ctrl-C after epoch ``n`` has been saved."""

    def __init__(self, n):
        self.n = n

    def on_epoch_end(self, record: EpochRecord) -> None:
        if record.epoch == self.n:
            raise KeyboardInterrupt


def test_resumed_run_matches_uninterrupted(tiny_shapes, tmp_path):
    full = fit(config(tiny_shapes, tmp_path / "full", epochs=3, augment="crop-flip"))
    cut = fit(config(tiny_shapes, tmp_path / "cut", epochs=3, augment="crop-flip"),
              observers=(StopAfter(1),))
    assert cut.stopped == "interrupted" and len(cut.records) == 1
    resumed = fit(config(tiny_shapes, tmp_path / "cut", epochs=3), resume=True)
    assert [r.epoch for r in resumed.records] == [1, 2, 3]
    for a, b in zip(full.records, resumed.records, strict=True):
        assert (a.train_loss, a.val_loss, a.val_acc) == (b.train_loss, b.val_loss, b.val_acc)


class PoisonAfter(Observer):
    """Plant NaN weights after epoch 1, as an overflow would."""

    def on_train_start(self, info):
        self.model = info["model"]

    def on_epoch_end(self, record):
        if record.epoch == 1:
            with torch.no_grad():
                next(self.model.parameters()).fill_(float("nan"))


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tiny_shapes, tmp_path):
    with pytest.raises(TrainingDiverged, match="diverged"):
        fit(config(tiny_shapes, tmp_path / "run", epochs=3), observers=(PoisonAfter(),))
    ckpt = ckpt_io.load_checkpoint(tmp_path / "run" / "last.pt")  # finite weights, epoch 1
    assert ckpt["epoch"] == 1
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert json.loads(lines[-1])["observation_kind"] == "diverging"


def test_workers_give_the_same_batches(tiny_shapes, tmp_path):
    a = fit(config(tiny_shapes, tmp_path / "a", epochs=1))
    b = fit(config(tiny_shapes, tmp_path / "b", epochs=1, workers=2))
    assert a.records[0].train_loss == pytest.approx(b.records[0].train_loss, rel=1e-6)


def test_val_fraction_split_when_no_val_folder(tiny_shapes, tmp_path):
    result = fit(config(tiny_shapes / "train", tmp_path / "run", epochs=1, val_fraction=0.25))
    assert result.dataset["val_images"] == 16 and result.dataset["train_images"] == 48
    assert "25% of train" in result.dataset["val_source"]


def test_bad_config_values_are_refused(tiny_shapes, tmp_path):
    with pytest.raises(ValueError, match=r"augment .* cannot be 'mixup'"):
        fit(replace(config(tiny_shapes, tmp_path), augment="mixup"))
    with pytest.raises(ValueError, match="at least 64 px"):
        fit(replace(config(tiny_shapes, tmp_path), image_size=32))


def test_resume_for_more_epochs_replans_the_schedule(tiny_shapes, tmp_path):
    """`fit(resume=True, epochs=N)`: a finished 1-epoch one-cycle run trained for 2 in all.

    The schedule is re-planned over 2 epochs and continues from the step reached, so it ends
    where a 2-epoch plan ends (its own one-cycle would have run out of steps)."""
    kw = dict(image_size=64, schedule="onecycle")  # pipenet-tiny needs 64 px (1 x 1 at the end)
    fresh = fit(config(tiny_shapes, tmp_path / "fresh", **kw))
    one = fit(config(tiny_shapes, tmp_path / "run", epochs=1, **kw))
    more = fit(config(tiny_shapes, tmp_path / "run"), resume=True, epochs=2)
    assert [r.epoch for r in more.records] == [1, 2] and more.records[0] == one.records[0]
    assert more.config.epochs == 2 and ckpt_io.load_checkpoint(tmp_path / "run" / "last.pt")[
        "train_config"]["epochs"] == 2
    assert more.records[1].lr == pytest.approx(fresh.records[1].lr)
    with pytest.raises(ValueError, match="already trained 2"):
        fit(config(tiny_shapes, tmp_path / "run"), resume=True, epochs=1)
