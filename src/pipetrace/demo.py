"""`pipetrace demo`: the seed's whole pipeline, end to end, on the built-in shapes dataset.

Render (or reuse) the shapes, train the built-in CNN for 5 epochs at 224 x 224 with the
seed's stages, trace one validation image through every layer, and write the run folder:
``trace.json``, ``report.html``, metrics, plots and checkpoints.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from .analysis import analyse_run
from .config import PRESETS, TrainConfig
from .records import Observer, TrainResult
from .report.build import RunArtifacts, write_run_report
from .runfolder import claim
from .shapes import ShapesConfig, ensure_shapes
from .train import fit


@dataclass(frozen=True)
class DemoConfig:
    """What `pipetrace demo` runs."""

    out: str = "runs/demo"  # run folder (the CLI picks runs/demo2, ... when it holds a run)
    cache_dir: str = ".cache/pipetrace"  # where the built-in dataset is rendered once
    shapes: ShapesConfig = field(default_factory=ShapesConfig)  # the dataset's size and seed
    epochs: int = 5  # the seed's table has 5 epochs
    loader: str = "fast"  # "fast" or "classic" (the seed's chain, per image through PIL)
    workers: int = 0  # DataLoader workers; on 2 cores none is fastest here (docs/performance.md)
    seed: int = 0  # model initialisation, shuffling and augmentation


def demo_train_config(cfg: DemoConfig, data: str | os.PathLike) -> TrainConfig:
    return TrainConfig(**{**PRESETS["demo"], "epochs": cfg.epochs}, data=str(data), out=cfg.out,
                       loader=cfg.loader, workers=cfg.workers, seed=cfg.seed, val_fraction=0.0)


def run_demo(cfg: DemoConfig, observers: tuple[Observer, ...] = ()) -> tuple[TrainResult, RunArtifacts]:
    """Render the dataset if needed, train, trace a prediction, write the report."""
    root = ensure_shapes(cfg.shapes, cfg.cache_dir)
    with claim(cfg.out):  # the training and the report it writes, one writer at a time
        result = fit(demo_train_config(cfg, root), observers=observers)
        val_dir = Path(root) / "val"
        image = sorted(p for p in val_dir.rglob("*") if p.is_file())[0]
        analysis = analyse_run(result, image=str(image), true_class=image.parent.name)
        artifacts = write_run_report(result, analysis, command="demo")
    return result, artifacts
