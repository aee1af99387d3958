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
    steps = result.flow.stages
    assert [s.index for s in steps] == list(range(1, len(steps) + 1))
    assert [s.seed for s in steps] == [1, 1, 3, 2, 4, 3, 3, 5]  # the fast path, as it ran
    assert steps[-1].name == "Training step" and steps[-1].input.shape == (16, 3, 64, 64)
    assert result.flow.model_input() == steps[-1].input
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


# -- what train refuses, leaves out and finds before its first epoch ------------------------------

def small_folder(root, classes: dict[str, int], size: int = 40, seed: int = 0):
    """root/<class>/<i>.png with ``classes[name]`` images each (0: an empty folder)."""
    from conftest import coloured_image, write_image

    for c, (name, n) in enumerate(classes.items()):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            img = coloured_image(size, size, seed=seed + 40 * c + i)
            write_image(root / name / f"{i}.png", 255 - img if c % 2 else img)
    return root


def test_an_empty_class_is_left_out_with_a_warning(tmp_path):
    data = small_folder(tmp_path / "data", {"a": 8, "b": 8, "empty": 0})
    result = fit(config(data, tmp_path / "run", epochs=1))
    assert result.classes == ["a", "b"] and result.model_config.num_classes == 2
    found = [f for f in result.findings if f.check == "empty-class"]
    assert len(found) == 1 and found[0].severity == "warning" and "'empty'" in found[0].title
    assert found[0].paths == (str(data / "empty"),)  # the folder, to open or remove
    assert ckpt_io.load_checkpoint(tmp_path / "run" / "last.pt")["classes"] == ["a", "b"]


@pytest.mark.parametrize("classes, says", [
    ({"cat": 8}, "has 1 class with images"),
    ({"cat": 8, "empty": 0}, "has 1 class with images"),
    ({"cat": 1}, "has 1 class with images"),
    ({"cat": 1, "dog": 0}, "has 1 class with images"),
], ids=["one-class", "one-class-and-an-empty-one", "one-image", "one-image-two-folders"])
def test_datasets_too_small_to_train_are_refused_in_one_line(classes, says, tmp_path):
    from pipetrace.train import DatasetRefused

    data = small_folder(tmp_path / "data", classes)
    with pytest.raises(DatasetRefused, match=says) as info:
        fit(config(data, tmp_path / "run", epochs=1))
    assert "\n" not in str(info.value)


def test_the_lr_column_shows_the_base_rate_not_cifarnets_64x_group(tmp_path):
    data = small_folder(tmp_path / "data", {"a": 8, "b": 8}, size=32)
    result = fit(config(data, tmp_path / "run", model="cifarnet-s", image_size=32, epochs=1,
                        optimizer="sgd", lr=0.05, schedule="constant"))
    assert result.records[0].lr == pytest.approx(0.05)  # group 0 (BN biases) runs at 3.2


class Steps(Observer):
    def __init__(self):
        self.calls = []

    def on_batch_end(self, epoch, step, steps, loss, images_per_s):
        self.calls.append((epoch, step, steps))


def test_progress_is_reported_by_time_not_every_ten_steps(tmp_path, monkeypatch):
    import pipetrace.loop as train_module  # the loop reports progress

    data = small_folder(tmp_path / "data", {"a": 8, "b": 8})  # 14 to train: 7 steps of 2
    monkeypatch.setattr(train_module, "PROGRESS_SECONDS", 0.0)  # any time passed: report
    every = Steps()
    fit(config(data, tmp_path / "a", epochs=1, batch_size=2), observers=(every,))
    assert [s for _, s, _ in every.calls] == list(range(1, 8)) and every.calls[0][2] == 7
    monkeypatch.setattr(train_module, "PROGRESS_SECONDS", 1e9)  # never due: first and last
    rare = Steps()
    fit(config(data, tmp_path / "b", epochs=1, batch_size=2), observers=(rare,))
    assert [s for _, s, _ in rare.calls] == [1, 7]


def test_the_terminal_progress_shows_the_time_left_in_the_run():
    import io

    from rich.console import Console

    from pipetrace.distributed import DistInfo
    from pipetrace.report.terminal import TerminalObserver

    buf = io.StringIO()
    obs = TerminalObserver(Console(file=buf, force_terminal=True, width=160))
    obs.on_train_start({"config": TrainConfig(epochs=3), "dataset": {
        "train_images": 64, "val_images": 8, "val_source": "val", "classes": 2},
        "device": "cpu", "amp": "off", "params": 10, "dist": DistInfo(), "start_epoch": 0,
        "steps_per_epoch": 8})
    obs.t0 -= 2.0  # two seconds for the first 4 steps: 20 steps to go at 0.5 s
    obs.on_batch_end(1, 4, 8, 0.7, 100.0)
    obs.progress.refresh()
    obs.on_train_end(None)
    assert "run 0:00:10 left" in buf.getvalue()


def test_train_runs_the_quick_dataset_checks_and_records_them(tmp_path, capsys):
    """An exact duplicate across train and val, a placeholder by name, numeric class names in
    string order: `train` says so before the first epoch and trace.json records it, instead
    of "Checks: no problems found" (`check` finds the same, class order included)."""
    import shutil

    from pipetrace.cli import main
    from pipetrace.doctor import check_dataset

    data = tmp_path / "data"
    small_folder(data / "train", {"1": 6, "2": 6, "10": 6})
    small_folder(data / "val", {"1": 2, "2": 2, "10": 2}, seed=1000)
    shutil.copy(data / "train" / "2" / "3.png", data / "val" / "2" / "leaked.png")
    shutil.copy(data / "train" / "1" / "0.png", data / "train" / "1" / "image_not_found.png")
    out = tmp_path / "run"
    assert main(["train", str(data), "--out", str(out), "--model", "pipenet-tiny",
                 "--epochs", "1", "--image-size", "64", "--batch-size", "8",
                 "--trace-every", "0"]) == 0
    text = capsys.readouterr().out
    before = text[:text.index("epoch   1")]
    for check in ("the same file is in train and val", "likely placeholder",
                  "Numeric class names are indexed in string order"):
        assert check in before, check
    assert "no problems found" not in text
    doc = json.loads((out / "trace.json").read_text())
    checks = {f["check"] for f in doc["findings"]}
    assert {"leakage", "placeholder", "class-order", "duplicate"} <= checks
    assert "class-order" in {f.check for f in check_dataset(data).findings}
