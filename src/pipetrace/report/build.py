"""Assemble a run's trace document and write the run folder's report files.

Computes once, renders many times (as coverage.py does): the prediction trace, pictures,
findings, quiz and key insight are gathered into ``trace.json``; ``report.html`` is then
rendered from that document alone.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

from ..analysis import GalleryItem, RunAnalysis
from ..batch_view import BatchView
from ..errors import ErrorAnalysis
from ..explain import png_bytes
from ..files import write_bytes_atomic, write_text_atomic
from ..findings import Finding
from ..layers import LayerTrace
from ..predict import PredictionRecord
from ..records import TrainResult
from ..trace import DataFlow, StageRecord, thumbnail
from .document import (
    FORMAT,
    VERSION,
    data_uri,
    load_document,
    meta_block,
    rendering,
    save_document,
)
from .html import render_html
from .insight import make_insight
from .plots import confusion_png, curves_png, grid_picture
from .quiz import make_quiz


@dataclass
class RunArtifacts:
    trace_path: str
    report_path: str
    document: dict
    layer_trace: LayerTrace | None
    findings: list[Finding]


def prediction_block(record: PredictionRecord) -> dict:
    """trace.json's ``prediction``: the record, its pictures as PNG data URIs."""
    block = record.to_dict()
    if record.pictures is not None:
        p = record.pictures
        block |= {"input_picture": data_uri(png_bytes(p.input)),
                  "gradcam": data_uri(png_bytes(p.gradcam)),
                  "feature_maps": data_uri(png_bytes(p.feature_maps))}
    return block


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


def stage_dict(s: StageRecord) -> dict:
    """One step as trace.json holds it: its record, its picture as a PNG data URI."""
    return {**s.to_dict(), "picture": data_uri(png_bytes(s.picture))
            if s.picture is not None else None}


def flow_block(flow: DataFlow | None) -> dict | None:
    """The data flow with each stage's picture as a PNG data URI."""
    if flow is None:
        return None
    return {**flow.to_dict(), "stages": [stage_dict(s) for s in flow.stages]}


def build_document(result: TrainResult, *, command: str, prediction: dict | None,
                   findings: list[Finding], device: str = "cpu",
                   gallery: list[GalleryItem] = ()) -> dict:
    doc = {
        "format": FORMAT, "version": VERSION,
        "meta": meta_block(command, device),
        "run": run_block(result),
        "data_flow": flow_block(result.flow),
        "batch_view": batch_view_block(result.batch_view),
        "findings": [f.to_dict() for f in findings],
        "training": training_block(result),
        "errors": errors_block(result.errors, list(gallery), result.predictions_epoch),
        "prediction": prediction,
    }
    doc["quiz"] = [q.to_dict() for q in make_quiz(doc)]
    doc["insight"] = make_insight(doc)
    return doc


def write_run_report(result: TrainResult, analysis: RunAnalysis | None = None, *,
                     command: str) -> RunArtifacts:
    """Write plots, ``batch.png``, ``trace.json`` and ``report.html`` into the run folder,
    from the run's records and what :func:`pipetrace.analysis.analyse_run` computed."""
    run = Path(result.run_dir)
    analysis = analysis or RunAnalysis()
    if result.records:
        write_bytes_atomic(run / "curves.png", curves_png([asdict(r) for r in result.records]))
    if result.confusion:
        write_bytes_atomic(run / "confusion.png", confusion_png(result.confusion, result.classes))
    if result.batch_view is not None:
        write_bytes_atomic(run / "batch.png", png_bytes(grid_picture(result.batch_view)))
    record = analysis.prediction
    prediction = prediction_block(record) if record is not None else None
    save_document(build_document(result, command=command, prediction=prediction,
                                 findings=result.findings, gallery=analysis.gallery),
                  run / "trace.json")
    # The page is rendered from the file, as `pipetrace report` does: the two are identical.
    doc = load_document(run / "trace.json")
    report = _write_html(doc, run / "report.html")
    return RunArtifacts(str(run / "trace.json"), report, doc,
                        record.trace if record is not None else None, result.findings)


def batch_view_block(view: BatchView | None, cell: int = 96) -> dict | None:
    """The batch view with each picture pair as small PNG data URIs."""
    if view is None:
        return None
    def uri(pic):
        return data_uri(png_bytes(thumbnail(pic, cell)))
    return {**view.to_dict(), "pictures": [{"train": uri(a), "eval": uri(b)} for a, b in
                                            zip(view.train_pictures, view.eval_pictures,
                                                strict=True)]}


def errors_block(errors: ErrorAnalysis | None, gallery: list[GalleryItem],
                 epoch: int | None = None) -> dict | None:
    """The error analysis, the epoch whose model made its predictions, and the worst
    predictions' pictures as data URIs."""
    if errors is None:
        return None
    return {**errors.to_dict(), "epoch": epoch, "predictions_file": "predictions.csv",
            "gallery": [{**asdict(g.error), "gradcam_layer": g.gradcam_layer,
                         "model_input": data_uri(png_bytes(thumbnail(g.model_input, 128))),
                         "original": data_uri(png_bytes(thumbnail(g.original, 128))),
                         "gradcam": data_uri(png_bytes(thumbnail(g.gradcam, 128)))}
                        for g in gallery]}


def build_flow_document(flow: DataFlow, findings: list[Finding], *, command: str,
                        dataset: dict | None = None) -> dict:
    """The document of a traced data flow alone (``pipetrace trace``, a user's dataset):
    the same page as a run's, without the training and prediction sections."""
    doc = {
        "format": FORMAT, "version": VERSION, "meta": meta_block(command, "cpu"),
        "run": None, "dataset": dataset, "data_flow": flow_block(flow), "batch_view": None,
        "findings": [f.to_dict() for f in findings], "training": None, "errors": None,
        "prediction": None,
    }
    doc["quiz"] = [q.to_dict() for q in make_quiz(doc)]
    doc["insight"] = make_insight(doc)
    return doc


def write_flow_report(flow: DataFlow, findings: list[Finding], folder: str | os.PathLike, *,
                      command: str, dataset: dict | None = None) -> tuple[str, str]:
    """Write ``trace.json`` and ``report.html`` of a traced flow into ``folder``."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    save_document(build_flow_document(flow, findings, command=command, dataset=dataset),
                  out / "trace.json")
    return str(out / "trace.json"), _write_html(load_document(out / "trace.json"),
                                                 out / "report.html")


def rerender(trace_path: str | os.PathLike, out: str | os.PathLike | None = None) -> str:
    """Render ``report.html`` from a ``trace.json`` alone; return the page's path. A file
    that is not what a run wrote is refused in one line (:func:`document.rendering`)."""
    target = Path(out) if out else Path(trace_path).with_name("report.html")
    doc = load_document(trace_path)
    with rendering(trace_path):
        html = render_html(doc)
    write_text_atomic(target, html)
    return str(target)


def _write_html(doc: dict, target: Path) -> str:
    write_text_atomic(target, render_html(doc))
    return str(target)

