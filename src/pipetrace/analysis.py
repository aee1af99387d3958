"""What a finished run is looked at with, computed once on the library side: the prediction
trace of one validation image and the pictures of the worst predictions.

The views (``report/``) only render what :func:`analyse_run` returns; nothing there loads a
model or runs a check.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .errors import ErrorAnalysis, ImageError
from .explain import grad_cams, gradcam_target, heat_overlay
from .images import load_pil
from .ops import trace_ops
from .predict import LoadedModel, PredictionRecord, load_model, record_prediction
from .records import TrainResult
from .trace import chw_picture, thumbnail


@dataclass(frozen=True)
class GalleryItem:
    """One of the worst predictions, with what the model saw and where it looked."""

    error: ImageError
    model_input: np.ndarray = field(repr=False)  # (S, S, 3) uint8: the input, de-normalized
    original: np.ndarray = field(repr=False)  # (h, w, 3) uint8: the file as decoded, small
    gradcam: np.ndarray = field(repr=False)  # (S, S, 3) uint8: Grad-CAM of the predicted class
    gradcam_layer: str  # where the heat map was taken


def error_gallery(lm: LoadedModel, errors: ErrorAnalysis, classes: list[str], n: int = 8
                  ) -> list[GalleryItem]:
    """The ``n`` highest-loss images: the model's input, the original file and Grad-CAM for
    the class the model predicted (at the last feature map on the graph's path to the logits).
    ``classes`` are the names the analysis used, in the model's output order."""
    worst = errors.top_losses[:n]
    if not worst:
        return []
    x = torch.cat([lm.input_for(e.path) for e in worst])  # (n, 3, S, S), as in validation
    target = gradcam_target(trace_ops(lm.model, x[:1]))  # one model, one graph, one target
    cams = grad_cams(lm.model, x, [classes.index(e.predicted) for e in worst], target)
    items = []
    for e, xi, cam in zip(worst, x, cams, strict=True):
        seen = chw_picture(xi, lm.preprocess)
        items.append(GalleryItem(e, seen, thumbnail(np.asarray(load_pil(e.path))),
                                 heat_overlay(seen, cam), target.module or target.op))
    return items


@dataclass(frozen=True)
class RunAnalysis:
    """What the report shows of a finished run beyond its records."""

    prediction: PredictionRecord | None = None  # one image traced through every operation
    gallery: list[GalleryItem] = field(default_factory=list)  # the worst predictions


def first_validation_image(result: TrainResult) -> tuple[str | None, str | None]:
    """(path, class) of the first image the run validated on (its predictions, whether from a
    val/ folder or held out of train/), else of its first training image."""
    pred = result.predictions
    if pred is not None and len(pred):
        return pred.paths[0], pred.classes[int(pred.labels[0])]
    from .scan import find_splits

    scan = find_splits(result.config.data).train
    if not scan.samples:
        return None, None
    path, label = scan.samples[0]
    return path, scan.classes[label]


def analyse_run(result: TrainResult, *, image: str | None = "first",
                true_class: str | None = None, gallery: int = 8) -> RunAnalysis:
    """Trace ``image`` through the run's model (``"first"``: the first validation image;
    None: none) and picture the ``gallery`` worst predictions. An interrupted run or one
    without a checkpoint gets neither."""
    run = Path(result.run_dir)
    if result.stopped == "interrupted" or not (run / "last.pt").exists():
        return RunAnalysis()
    if image == "first":
        image, true_class = first_validation_image(result)
    prediction = (record_prediction(load_model(run), image, true_class=true_class)
                  if image is not None else None)  # the model the run serves: best.pt
    items = []
    if result.errors is not None and gallery:  # the model that made predictions.csv: last.pt
        items = error_gallery(load_model(run / "last.pt"), result.errors, result.classes,
                              gallery)
    return RunAnalysis(prediction, items)
