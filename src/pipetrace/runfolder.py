"""What a run leaves in its folder: metrics files, checkpoints with everything to resume.

``metrics.jsonl`` and ``metrics.csv`` are rewritten atomically after every epoch (nothing is
lost if the run dies later); a checkpoint holds the weights, optimizer, scheduler and RNG
states, the history, the classes and the preprocessing contract.

A folder holds one run. While a process writes it, it holds an exclusive lock on
``RUN/.lock`` (:func:`claim`), so a second writer fails at once instead of mixing two runs'
files; the kernel drops the lock when the process ends, however it ends, so a lock file left
behind by a SIGKILL is harmless. A new run never starts in a folder that already holds one
(:func:`holds_run`); :func:`claim_next_free` picks ``runs/train``, ``runs/train2``, ... as
Ultralytics picks ``exp``, ``exp2``.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import fcntl
import io
import json
import os
import random
import re
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from . import checkpoint as ckpt_io
from .files import write_text_atomic
from .model import ModelConfig

if TYPE_CHECKING:
    from .config import TrainConfig
    from .errors import Predictions
    from .records import EpochRecord, LRFinderResult, WeightsReport


RUN_MARKERS = ("config.json", "last.pt", "best.pt", "metrics.jsonl", "trace.json")
LOCK_NAME = ".lock"


class RunFolderError(ValueError):
    """A run folder that cannot be written now; ``str()`` is one line with what to do."""


EVAL_MARKERS = ("predictions.csv", "errors.json")  # what `pipetrace evaluate` writes


def holds_run(run: str | os.PathLike, markers: tuple[str, ...] = RUN_MARKERS) -> bool:
    """True when ``run`` holds (part of) a run: its config, a checkpoint, metrics or trace
    (``markers``: the files that say so; :data:`EVAL_MARKERS` for an evaluation)."""
    return any((Path(run) / name).exists() for name in markers)


_held: dict[str, int] = {}  # real path of a run folder -> the lock file this process holds


def _lock(run: Path) -> int | None:
    """The fd of ``run/.lock`` locked by this process, or None when another process has it."""
    fd = os.open(run / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return None
        raise
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def _holder(run: Path) -> str:
    try:
        pid = (run / LOCK_NAME).read_text().split()[0]
    except (OSError, IndexError):
        return "another process"
    return f"another process (pid {pid})"


@contextlib.contextmanager
def claim(run: str | os.PathLike) -> Iterator[Path]:
    """Hold ``run``'s lock for the ``with`` block (created if needed); re-entrant in a process.

    Raises :class:`RunFolderError` at once when another process holds it.
    """
    run = Path(run)
    created = not run.exists()
    run.mkdir(parents=True, exist_ok=True)
    key = os.path.realpath(run)
    if key in _held:
        yield run
        return
    fd = _lock(run)
    if fd is None:
        raise RunFolderError(f"run folder {str(run)!r} is being written by {_holder(run)}: "
                             "wait for it to finish, or choose another --out")
    _held[key] = fd
    try:
        yield run
    finally:
        del _held[key]
        if created and os.listdir(run) == [LOCK_NAME]:  # a refused run leaves nothing
            with contextlib.suppress(OSError):
                os.unlink(run / LOCK_NAME)
                os.rmdir(run)
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def refuse_if_taken(run: str | os.PathLike) -> None:
    """A new run must not write into a folder that holds another one."""
    if holds_run(run):
        if not (Path(run) / "last.pt").exists():  # it stopped before its first checkpoint
            held = ", ".join(m for m in RUN_MARKERS if (Path(run) / m).exists())
            raise RunFolderError(f"run folder {str(run)!r} already holds a run that stopped "
                                 f"before saving a checkpoint ({held}; no last.pt), so it "
                                 "cannot be resumed: delete the folder or choose another "
                                 "--out; nothing was overwritten")
        raise RunFolderError(f"run folder {str(run)!r} already holds a run: continue it with "
                             f"--resume {str(run)!r} (fit(resume=True)), or choose another "
                             "--out; nothing was overwritten")


def numbered(base: str | os.PathLike) -> Iterator[Path]:
    """``base``, ``base2``, ``base3``, ... (Ultralytics' ``exp``, ``exp2``)."""
    base = Path(base)
    yield base
    n = 2
    while True:
        yield base.with_name(f"{base.name}{n}")
        n += 1


@contextlib.contextmanager
def claim_next_free(base: str | os.PathLike, markers: tuple[str, ...] = RUN_MARKERS
                    ) -> Iterator[Path]:
    """Claim the first of ``base``, ``base2``, ... that holds no run (``markers``) and no
    other writer."""
    for run in numbered(base):
        if holds_run(run, markers):
            continue
        with contextlib.ExitStack() as stack:
            try:
                path = stack.enter_context(claim(run))
            except RunFolderError:
                continue  # another new run took it a moment ago
            if holds_run(path, markers):  # a run finished there between our look and lock
                continue
            yield path
            return


def refuse_if_holds(out: str | os.PathLike, markers: tuple[str, ...], what: str,
                    default: str | os.PathLike) -> None:
    """An output folder given with ``--out`` must not already hold ``what`` (one of
    ``markers``): evaluations and range tests are never overwritten."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise RunFolderError(f"--out {str(out)!r} is a file, not a folder")
    if holds_run(out, markers):
        raise RunFolderError(f"{str(out)!r} already holds {what}: choose another --out, or "
                             f"leave it out for the next free {default!s}; nothing was "
                             "overwritten")


@contextlib.contextmanager
def claim_output(out: str | os.PathLike | None, default: str | os.PathLike,
                 markers: tuple[str, ...], what: str) -> Iterator[Path]:
    """Claim ``out``, refused when it holds ``what`` (checked again once it is ours: another
    writer may have finished there meanwhile), or, without ``out``, the next free of
    ``default``, ``default2``, ... (:func:`claim_next_free`)."""
    if out is None:
        with claim_next_free(default, markers) as path:
            yield path
        return
    with claim(out) as path:
        refuse_if_holds(path, markers, what, default)
        yield path


_TEMP = re.compile(r"\..+\.[A-Za-z0-9_]+\.tmp")  # files.write_atomic's ".NAME.XXXXXX.tmp"


def remove_stale_temp_files(run: str | os.PathLike) -> list[str]:
    """Delete the temp files a killed writer left (call with the folder claimed)."""
    removed = []
    for entry in os.scandir(run):
        if entry.is_file(follow_symlinks=False) and _TEMP.fullmatch(entry.name):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.path)
                removed.append(entry.name)
    return removed


def write_metrics(run: Path, records: list[EpochRecord]) -> None:
    rows = [asdict(r) for r in records]
    write_text_atomic(run / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    buf = io.StringIO()
    if rows:
        w = csv.DictWriter(buf, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    write_text_atomic(run / "metrics.csv", buf.getvalue())


def write_predictions(run: Path, predictions: Predictions) -> None:
    """``predictions.csv``: one row per evaluated image (see ``errors.Predictions``)."""
    write_text_atomic(run / "predictions.csv", predictions.to_csv())


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": list(random.getstate()[1])}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate((3, tuple(state["python"]), None))
    if "cuda" in state and torch.cuda.is_available():
        # one state per GPU that was visible; a resume may see fewer (or more) GPUs
        for i, s in enumerate(state["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(s, i)


def make_checkpoint(*, model, opt, sched, scaler, epoch, records, best_acc, classes, pre,
                    model_cfg: ModelConfig, cfg: TrainConfig,
                    weights: WeightsReport | None = None, lr_find: LRFinderResult | None = None
                    ) -> dict:
    """Everything needed to resume or to serve, as plain tensors and data; with where the
    initial weights came from and the learning-rate range test, when there were any."""
    return {
        "format": ckpt_io.FORMAT, "version": ckpt_io.VERSION,
        "model_state": model.state_dict(), "optimizer_state": opt.state_dict(),
        "scheduler_state": sched.state_dict(),
        "scaler_state": scaler.state_dict() if scaler is not None else None,
        "rng": rng_state(), "epoch": epoch, "best_acc": best_acc,
        "history": [asdict(r) for r in records], "classes": list(classes),
        "preprocess": pre.to_dict(), "model_config": model_cfg.to_dict(),
        "train_config": cfg.to_dict(),
        "weights": weights.to_dict() if weights else None,
        "lr_find": lr_find.to_dict() if lr_find else None,
    }


def write_config(run: Path, cfg: TrainConfig) -> None:
    """``config.json``: every field of the run's configuration."""
    write_text_atomic(run / "config.json", json.dumps(cfg.to_dict(), indent=2))
