"""Assemble a run's trace document and write the run folder's report files.

Computes once, renders many times (as coverage.py does): the prediction trace, pictures,
findings, quiz and key insight are gathered into ``trace.json``; ``report.html`` is then
rendered from that document alone.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..checks import Finding, run_checks
from ..explain import (
    feature_grid,
    grad_cam,
    gradcam_layer,
    heat_overlay,
    hottest_point,
    png_bytes,
    strongest_feature_maps,
)
from ..files import write_bytes_atomic, write_text_atomic
from ..layers import LayerTrace
from ..predict import LoadedModel, load_model, trace_prediction
from ..records import TrainResult
from ..trace import chw_picture
from .document import FORMAT, VERSION, data_uri, load_document, meta_block, save_document
from .html import render_html
from .insight import make_insight
from .plots import confusion_png, curves_png
from .quiz import make_quiz

STAGE_CAPTIONS = {
    1: "OpenCV's BGR array, shown as if it were RGB: red and blue trade places",
    2: "RGB, as PIL and torchvision expect",
    3: "after the transforms (de-normalized for display)",
    4: "first image of the batch the model received",
}


@dataclass
class RunArtifacts:
    trace_path: str
    report_path: str
    document: dict
    layer_trace: LayerTrace | None
    findings: list[Finding]


def prediction_block(lm: LoadedModel, image: str, *, top_k: int = 3, depth: int | None = None,
                     true_class: str | None = None) -> tuple[dict, LayerTrace, np.ndarray]:
    """The prediction trace of ``image`` with its pictures; returns (block, trace, heat map)."""
    lt = trace_prediction(lm, image, top_k=top_k, depth=depth)
    x = lm.input_for(image)
    layer = gradcam_layer(lm.model, x)
    cam = grad_cam(lm.model, x, lm.classes.index(lt.predicted), layer)
    picture = chw_picture(x[0], lm.preprocess)
    block = {
        "image": image, "true_class": true_class, "classes": lm.classes,
        "checkpoint": lm.source,
        "layers": [r.to_dict() for r in lt.layers],
        "top_k": [[c, p] for c, p in lt.top_k], "probabilities": lt.probabilities,
        "logits": lt.logits, "predicted": lt.predicted,
        "gradcam_layer": layer, "gradcam_hottest": list(hottest_point(cam)),
        "input_picture": data_uri(png_bytes(picture)),
        "gradcam": data_uri(png_bytes(heat_overlay(picture, cam))),
        "feature_maps": data_uri(png_bytes(feature_grid(strongest_feature_maps(lm.model, x)))),
    }
    return block, lt, cam


def training_block(result: TrainResult) -> dict:
    return {
        "epochs": [asdict(r) for r in result.records],
        "confusion": result.confusion,
        "per_class_accuracy": result.per_class_accuracy,
        "probes": result.probes,
        "bad_files": [list(b) for b in result.bad_files],
        "stopped": result.stopped,
        "timing": result.timing,
    }


def run_block(result: TrainResult) -> dict:
    return {
        "dir": result.run_dir, "config": result.config.to_dict(), "dataset": result.dataset,
        "classes": result.classes, "preprocess": result.preprocess.to_dict(),
        "model": {"name": result.model_config.name, "params": result.params,
                  "config": result.model_config.to_dict()},
        "distributed": distributed_block(result),
        "weights": result.weights.to_dict() if result.weights else None,
        "lr_find": result.lr_find.to_dict() if result.lr_find else None,
    }


def distributed_block(result: TrainResult) -> dict:
    """The data-parallel layout: processes, backend, batch per process and in all, and each
    process's throughput in the last epoch (one process: world_size 1, one rank)."""
    world = result.dist.world_size
    return {**result.dist.to_dict(), "per_rank_batch": result.config.batch_size,
            "global_batch": result.config.batch_size * world,
            "ranks": [r.to_dict() for r in result.ranks]}


def build_document(result: TrainResult, *, command: str, prediction: dict | None,
                   findings: list[Finding], device: str = "cpu") -> dict:
    doc = {
        "format": FORMAT, "version": VERSION,
        "meta": meta_block(command, device),
        "run": run_block(result),
        "stages": [s.to_dict() for s in result.stages],
        "stage_pictures": {str(k): data_uri(png_bytes(v)) for k, v in result.stage_pictures.items()},
        "stage_captions": {str(k): v for k, v in STAGE_CAPTIONS.items()},
        "findings": [f.to_dict() for f in findings],
        "training": training_block(result),
        "prediction": prediction,
    }
    doc["quiz"] = [q.to_dict() for q in make_quiz(doc)]
    doc["insight"] = make_insight(doc)
    return doc


def write_run_report(result: TrainResult, *, image: str | None, command: str,
                     true_class: str | None = None) -> RunArtifacts:
    """Write plots, ``trace.json`` and ``report.html`` into the run folder."""
    run = Path(result.run_dir)
    if result.records:
        write_bytes_atomic(run / "curves.png", curves_png([asdict(r) for r in result.records]))
    if result.confusion:
        write_bytes_atomic(run / "confusion.png", confusion_png(result.confusion, result.classes))
    prediction, lt = None, None
    if image is not None and (run / "last.pt").exists():
        lm = load_model(run)
        prediction, lt, _ = prediction_block(lm, image, true_class=true_class)
    findings = run_checks(result)
    save_document(build_document(result, command=command, prediction=prediction,
                                 findings=findings), run / "trace.json")
    # The page is rendered from the file, as `pipetrace report` does: the two are identical.
    doc = load_document(run / "trace.json")
    report = _write_html(doc, run / "report.html")
    return RunArtifacts(str(run / "trace.json"), report, doc, lt, findings)


def rerender(trace_path: str | os.PathLike, out: str | os.PathLike | None = None) -> str:
    """Render ``report.html`` from a ``trace.json`` alone; return the page's path."""
    target = Path(out) if out else Path(trace_path).with_name("report.html")
    return _write_html(load_document(trace_path), target)


def _write_html(doc: dict, target: Path) -> str:
    write_text_atomic(target, render_html(doc))
    return str(target)

