"""What a run leaves in its folder: metrics files, checkpoints with everything to resume.

``metrics.jsonl`` and ``metrics.csv`` are rewritten atomically after every epoch (nothing is
lost if the run dies later); a checkpoint holds the weights, optimizer, scheduler and RNG
states, the history, the classes and the preprocessing contract.
"""

from __future__ import annotations

import csv
import io
import json
import random
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from . import checkpoint as ckpt_io
from .files import write_text_atomic
from .model import ModelConfig

if TYPE_CHECKING:
    from .config import TrainConfig
    from .records import EpochRecord, LRFinderResult, WeightsReport


def write_metrics(run: Path, records: list[EpochRecord]) -> None:
    rows = [asdict(r) for r in records]
    write_text_atomic(run / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    buf = io.StringIO()
    if rows:
        w = csv.DictWriter(buf, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    write_text_atomic(run / "metrics.csv", buf.getvalue())


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
