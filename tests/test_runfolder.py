"""Run folders: a dataset is required, a run never lands on another, one writer at a time,
and a resumed run starts from files that agree with its checkpoint."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from conftest import coloured_image, write_image
from pipetrace import checkpoint as ckpt_io
from pipetrace.cli import main
from pipetrace.runfolder import RunFolderError, claim, claim_next_free, holds_run
from pipetrace.train import TrainConfig, fit

SRC = str(Path(__file__).resolve().parents[1] / "src")


@pytest.fixture(scope="module")
def two_classes(tmp_path_factory) -> Path:
    """root/{a,b}/*.png: 10 images per class, 40 x 40 (the seeded split holds 1 out)."""
    root = tmp_path_factory.mktemp("twoclass") / "data"
    for c, cls in enumerate(("a", "b")):
        for i in range(10):
            img = coloured_image(40, 40, seed=30 * c + i)
            write_image(root / cls / f"{i}.png", 255 - img if c else img)
    return root


TINY = ["--model", "pipenet-tiny", "--image-size", "64", "--crop-pct", "1.0", "--batch-size",
        "4", "--device", "cpu", "--trace-every", "0", "--epochs", "1"]


def tiny_config(data, out, **kw) -> TrainConfig:
    base = dict(data=str(data), out=str(out), model="pipenet-tiny", image_size=64, crop_pct=1.0,
                batch_size=4, device="cpu", trace_every=0, epochs=1)
    return TrainConfig(**{**base, **kw})


def test_train_without_a_dataset_is_refused(tmp_path, monkeypatch, capsys):
    (tmp_path / "src").mkdir()  # a folder that would have become a "class"
    monkeypatch.chdir(tmp_path)
    assert main(["train", *TINY]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "needs the dataset folder" in err
    assert not (tmp_path / "runs").exists()
    with pytest.raises(ValueError, match="no dataset given"):
        fit(TrainConfig(out=str(tmp_path / "r")))


def test_default_runs_are_numbered_and_never_replace_each_other(two_classes, tmp_path,
                                                                monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["train", str(two_classes), *TINY, "--seed", "1"]) == 0
    first = (tmp_path / "runs" / "train" / "last.pt").read_bytes()
    assert main(["train", str(two_classes), *TINY, "--seed", "2"]) == 0
    out = capsys.readouterr().out
    assert "Wrote runs/train2/" in out
    assert (tmp_path / "runs" / "train" / "last.pt").read_bytes() == first
    seeds = [json.loads((tmp_path / "runs" / n / "config.json").read_text())["seed"]
             for n in ("train", "train2")]
    assert seeds == [1, 2]


def test_a_new_run_refuses_a_folder_that_holds_one(two_classes, tmp_path, capsys):
    run = tmp_path / "run"
    fit(tiny_config(two_classes, run))
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    assert main(["train", str(two_classes), *TINY, "--out", str(run)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "already holds a run" in err and "--resume" in err
    with pytest.raises(RunFolderError, match="already holds a run"):
        fit(tiny_config(two_classes, run, seed=5))
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before


def test_a_run_that_stopped_before_its_first_checkpoint_is_not_offered_a_resume(
        two_classes, tmp_path, capsys):
    """A run that failed before epoch 1 ended leaves config.json only: the refusal says it
    cannot be resumed (it used to offer --resume, which then found no last.pt)."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text("{}")
    assert main(["train", str(two_classes), *TINY, "--out", str(run)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "stopped before saving a checkpoint" in err
    assert "--resume" not in err and "config.json; no last.pt" in err
    assert (run / "config.json").read_text() == "{}" and not (run / "last.pt").exists()


HOLDER = """
    import os, signal, sys, time
    from pipetrace.runfolder import claim
    with claim(sys.argv[1]):
        print("held", flush=True)
        if sys.argv[2] == "kill":
            os.kill(os.getpid(), signal.SIGKILL)  # dies holding it: no clean-up runs
        time.sleep(60)
"""


@contextlib.contextmanager
def holder(run: Path, how: str):
    """Another process that claims ``run`` ("hold": until we are done; "kill": then dies)."""
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    with subprocess.Popen([sys.executable, "-c", textwrap.dedent(HOLDER), str(run), how],
                          stdout=subprocess.PIPE, text=True, env=env) as proc:
        if how != "kill":
            assert proc.stdout.readline().strip() == "held"
        try:
            yield proc
        finally:
            proc.kill()


def test_a_second_writer_fails_at_once_and_a_killed_ones_lock_is_harmless(tmp_path):
    run = tmp_path / "run"
    with holder(run, "hold") as proc:
        t0 = time.perf_counter()
        with pytest.raises(RunFolderError, match=rf"being written by another process \(pid "
                           rf"{proc.pid}\)"), claim(run):
            pass
        assert time.perf_counter() - t0 < 1.0  # at once, no waiting
    with holder(tmp_path / "run2", "kill") as killed:
        assert killed.wait() == -signal.SIGKILL
    assert (tmp_path / "run2" / ".lock").exists()  # left behind ...
    with claim(tmp_path / "run2"):  # ... and harmless: the kernel dropped the lock
        pass
    with claim(run), claim(run):  # re-entrant within one process
        pass


def test_claim_next_free_skips_runs_and_busy_folders(tmp_path):
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "config.json").write_text("{}")
    with holder(tmp_path / "train2", "hold"), claim_next_free(tmp_path / "train") as run:
        assert run == tmp_path / "train3"


def test_two_writers_started_together_one_refusal_one_intact_run(two_classes, tmp_path):
    out = tmp_path / "run"
    args = ["train", str(two_classes), *TINY, "--epochs", "2", "--out", str(out)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    procs = [subprocess.Popen([sys.executable, "-m", "pipetrace", *args, "--seed", str(seed)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for seed in (11, 22)]
    results = [(p.wait(timeout=600), *p.communicate()) for p in procs]
    codes = sorted(code for code, _, _ in results)
    assert codes == [0, 2], [r[2][-2000:] for r in results]
    winner = next(i for i, r in enumerate(results) if r[0] == 0)
    refusal = results[1 - winner][2].strip()
    assert len(refusal.splitlines()) == 1 and re.search(
        r"being written by another process|already holds a run", refusal), refusal
    seed = (11, 22)[winner]
    assert json.loads((out / "config.json").read_text())["seed"] == seed
    ckpt = ckpt_io.load_checkpoint(out / "last.pt")
    assert ckpt["train_config"]["seed"] == seed and ckpt["epoch"] == 2
    rows = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows == ckpt["history"]
    doc = json.loads((out / "trace.json").read_text())
    assert doc["run"]["config"]["seed"] == seed


def test_resume_removes_stale_temp_files_and_rewrites_metrics_from_last_pt(two_classes,
                                                                            tmp_path, capsys):
    run = tmp_path / "run"
    fit(tiny_config(two_classes, run, epochs=2), observers=(StopAfterEpoch(1),))
    stale = run / ".last.pt.k3j2h1x0.tmp"  # what a SIGKILL during a save leaves
    stale.write_bytes(b"\0" * 1024)
    rows = (run / "metrics.jsonl").read_text().splitlines()
    ahead = json.loads(rows[-1]) | {"epoch": 2}
    (run / "metrics.jsonl").write_text("\n".join([*rows, json.dumps(ahead)]) + "\n")
    seen = {}

    class Look(StopAfterEpoch):
        def on_train_start(self, info):  # what the folder holds as training restarts
            seen["metrics"] = (run / "metrics.jsonl").read_text().splitlines()
            seen["files"] = sorted(os.listdir(run))

    fit(tiny_config(two_classes, run, epochs=2), resume=True, observers=(Look(9),))
    assert not stale.exists() and stale.name not in seen["files"]
    history = ckpt_io.load_checkpoint(run / "last.pt")["history"]
    assert [json.loads(r) for r in seen["metrics"]] == history[:1]  # epoch 1 only, as last.pt
    assert main(["train", "--resume", str(run)]) == 0
    assert "Resuming" in capsys.readouterr().out and holds_run(run)


class StopAfterEpoch:
    """Ctrl-C after epoch ``n`` was saved."""

    def __init__(self, n):
        self.n = n

    def on_train_start(self, info): ...
    def on_batch_end(self, *a): ...
    def on_train_end(self, result): ...

    def on_epoch_end(self, record):
        if record.epoch == self.n:
            raise KeyboardInterrupt


def test_ctrl_c_ends_with_one_line_and_resume_says_where_it_continues(two_classes, tmp_path,
                                                                      monkeypatch, capsys):
    from pipetrace.report.terminal import TerminalObserver

    real = TerminalObserver.on_batch_end

    def press_ctrl_c(self, epoch, step, steps, loss, rate):
        if epoch == 2 and step >= 2:
            raise KeyboardInterrupt
        real(self, epoch, step, steps, loss, rate)

    monkeypatch.setattr("pipetrace.loop.PROGRESS_SECONDS", 0.0)  # every step reported
    monkeypatch.setattr(TerminalObserver, "on_batch_end", press_ctrl_c)
    run = tmp_path / "run dir"
    assert main(["train", str(two_classes), *TINY, "--epochs", "3", "--out", str(run)]) == 130
    out = capsys.readouterr().out
    lines = [ln for ln in out.splitlines() if ln.startswith("Interrupted")]
    assert lines == [f"Interrupted in epoch 2 at step 2 of 4; last.pt holds epoch 1 of 3. "
                     f"Resume with: pipetrace train --resume '{run}'"]
    for absent in ("Prediction trace", "Data flow", "Top classes", "Checks:"):
        assert absent not in out  # the short summary only
    assert "Training trace" in out
    monkeypatch.setattr(TerminalObserver, "on_batch_end", real)
    assert main(["train", "--resume", str(run)]) == 0
    out = capsys.readouterr().out
    assert f"Resuming {run} from last.pt after epoch 1: continuing with epoch 2 of 3" in out

