"""Prediction: rebuild the model and its evaluation pipeline from a checkpoint, classify images.

The evaluation pipeline comes from the checkpoint's preprocessing contract (size, crop,
colour order, mean, std, interpolation, loader path), never from command-line defaults, so
what the model sees at serving time is what it saw in validation.
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from . import checkpoint as ckpt_io
from .data import ImageDataset, LoaderConfig, make_loader, to_model_input
from .explain import Explanation, FeatureMaps, explain
from .images import LoadLimits
from .layers import LayerTrace, trace_layers
from .model import ModelConfig, build_model
from .scan import IMAGE_EXTENSIONS, is_hidden_or_junk
from .trace import chw_picture
from .transforms import Preprocess


@dataclass
class LoadedModel:
    """A model ready to serve, with the contract it was trained under."""

    model: nn.Module
    classes: list[str]
    preprocess: Preprocess
    model_config: ModelConfig
    loader_path: str  # the loader path validation used ("fast" or "classic")
    source: str  # the checkpoint file
    checkpoint: dict = field(repr=False, default_factory=dict)

    def dataset(self, paths: list[str], limits: LoadLimits = LoadLimits()) -> ImageDataset:
        """The checkpoint's evaluation pipeline over ``paths`` (labels unknown: -1)."""
        return ImageDataset([(p, -1) for p in paths], self.preprocess, train=False,
                            path=self.loader_path, limits=limits)

    def input_for(self, path: str) -> torch.Tensor:
        """One image file -> (1, 3, S, S) float32 model input, exactly as in validation."""
        item = self.dataset([path]).load(0)
        return to_model_input(item.unsqueeze(0), self.preprocess)


def resolve_checkpoint(source: str | os.PathLike) -> Path:
    """A run folder gives its ``best.pt`` (else ``last.pt``); a file is itself."""
    p = Path(source)
    if p.is_dir():
        for name in ("best.pt", "last.pt"):
            if (p / name).is_file():
                return p / name
        raise ckpt_io.CheckpointError(p, "run folder holds no best.pt or last.pt")
    return p


def load_model(source: str | os.PathLike) -> LoadedModel:
    """Read a checkpoint (safely) and rebuild its model in eval mode on the CPU."""
    path = resolve_checkpoint(source)
    ckpt = ckpt_io.load_checkpoint(path)  # validated against its schema
    try:
        model_cfg = ModelConfig(**ckpt["model_config"])
        with torch.device("meta"):  # the architecture's shapes, without allocating it
            skeleton = build_model(model_cfg).state_dict()
    except (TypeError, ValueError) as exc:
        raise ckpt_io.CheckpointError(path, f"model config cannot be built: {exc}") from None
    ckpt_io.check_state_fits(skeleton, ckpt["model_state"], path)
    model = build_model(model_cfg)  # now known to fit the weights: build it for real
    ckpt_io.load_state_into(model, ckpt["model_state"], path, strict=True)
    model.eval()
    try:
        pre = Preprocess.from_dict(ckpt["preprocess"])
    except (TypeError, ValueError) as exc:
        raise ckpt_io.CheckpointError(path, f"preprocessing contract unreadable: {exc}") from None
    loader_path = (ckpt.get("train_config") or {}).get("loader", "fast")
    return LoadedModel(model, list(ckpt["classes"]), pre, model_cfg, loader_path, str(path), ckpt)


def trace_prediction(lm: LoadedModel, image: str, *, top_k: int = 3,
                     depth: int | None = None) -> LayerTrace:
    """The prediction trace of one image file: every operation, shown by module at ``depth``."""
    return trace_layers(lm.model, lm.input_for(image), lm.classes, top_k=top_k, depth=depth)


@dataclass(frozen=True)
class PredictionRecord:
    """Everything the views show of one traced prediction, pictures included."""

    image: str
    checkpoint: str  # the checkpoint file the model came from
    classes: list[str]
    true_class: str | None  # its class folder, when known
    trace: LayerTrace  # the rows at `depth` and every operation under them
    pictures: Explanation | None  # Grad-CAM and feature maps (None: not asked for)

    def to_dict(self) -> dict:
        """Everything but the pictures' pixels, as trace.json's ``prediction`` holds it."""
        lt, ops = self.trace, self.trace.ops
        block = {
            "image": self.image, "true_class": self.true_class, "classes": self.classes,
            "checkpoint": self.checkpoint, "depth": lt.depth,
            "layers": [r.to_dict() for r in lt.layers],
            "ops": [r.to_dict() for r in ops.records], "calls": [c.to_dict() for c in ops.calls],
            "output": ops.output,
            "top_k": [[c, p] for c, p in lt.top_k], "probabilities": lt.probabilities,
            "logits": lt.logits, "predicted": lt.predicted,
        }
        if self.pictures is not None:
            p = self.pictures
            block |= {"gradcam_layer": p.gradcam_layer, "gradcam_op": p.gradcam_op,
                      "gradcam_hottest": list(p.hottest), "feature_stages": p.feature_stages}
        return block


def record_prediction(lm: LoadedModel, image: str, *, top_k: int = 3, depth: int | None = None,
                      true_class: str | None = None, pictures: bool = True) -> PredictionRecord:
    """Trace one image file and, with ``pictures``, explain the predicted class: Grad-CAM at
    the last feature map on the graph's path to the logits, the feature maps of the trace."""
    x = lm.input_for(image)
    features = FeatureMaps()
    lt = trace_layers(lm.model, x, lm.classes, top_k=top_k, depth=depth,
                      tap=features if pictures else None)
    shown = None
    if pictures:
        shown = explain(lm.model, x, lt.ops, lm.classes.index(lt.predicted),
                        chw_picture(x[0], lm.preprocess), features.stages)
    return PredictionRecord(image, lm.source, lm.classes, true_class, lt, shown)


def list_images(paths: list[str]) -> list[str]:
    """Expand folders (recursively, sorted) into image files; files pass through."""
    out: list[str] = []
    for p in paths:
        if os.path.isdir(p):
            for dirpath, dirnames, filenames in os.walk(p):
                dirnames[:] = sorted(d for d in dirnames if not is_hidden_or_junk(d))
                out.extend(os.path.join(dirpath, f) for f in sorted(filenames)
                           if f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith("."))
        else:
            out.append(p)
    return out


def validation_images(lm: LoadedModel, limit: int | None = 8) -> list[str]:
    """Images from the validation split of the dataset the checkpoint was trained on: its
    val/ (or test/) folder, else the files the run held out of train/ (what ``evaluate``
    scores, :func:`pipetrace.evaluate.split_samples`).

    A fixed, evenly spaced selection of at most ``limit`` files (``None``: all), so every
    class of a sorted ImageFolder is represented. Empty when the dataset has moved or the
    run kept no record of its validation images: the caller then asks for images explicitly.
    """
    from .evaluate import held_out_files, split_samples

    data = (lm.checkpoint.get("train_config") or {}).get("data") or ""
    if not data or not os.path.isdir(data):
        return []
    try:
        samples, _ = split_samples(data, "val", lm.classes, held_out=held_out_files(lm, data))
    except (OSError, ValueError):
        return []
    files = [p for p, _ in samples]
    if limit is None or len(files) <= limit:
        return files
    return [files[i * len(files) // limit] for i in range(limit)]


@dataclass(frozen=True)
class Prediction:
    path: str
    top_k: list[tuple[str, float]]  # empty when the file could not be read
    error: str = ""

    def to_dict(self) -> dict:
        return {"path": self.path, "top_k": [[c, p] for c, p in self.top_k], "error": self.error}


@torch.no_grad()
def predict_files(lm: LoadedModel, paths: list[str], *, top_k: int = 3, batch_size: int = 64,
                  workers: int = 0) -> list[Prediction]:
    """Classify many files in batches; unreadable files get an error, not an exception."""
    ds = lm.dataset(paths)
    loader = make_loader(ds, LoaderConfig(batch_size=batch_size, workers=workers), shuffle=False)
    results: dict[int, Prediction] = {}
    k = min(top_k, len(lm.classes))
    for batch in loader:
        for i, reason in batch.bad:
            results[i] = Prediction(paths[i], [], reason)
        if len(batch) == 0:
            continue
        probs = torch.softmax(lm.model(to_model_input(batch.images, lm.preprocess)).float(), 1)
        values, idx = probs.topk(k, dim=1)
        for row, i in enumerate(batch.indices.tolist()):
            results[i] = Prediction(paths[i], [(lm.classes[int(j)], float(v)) for v, j in
                                               zip(values[row], idx[row], strict=True)])
    return [results[i] for i in range(len(paths))]


def predictions_csv(preds: list[Prediction]) -> str:
    """CSV text: path, top-1 class and probability, then the rest of the top k, then error."""
    buf = io.StringIO()
    k = max((len(p.top_k) for p in preds), default=1)
    w = csv.writer(buf)
    header = ["path"]
    for i in range(1, k + 1):
        header += [f"class_{i}", f"prob_{i}"]
    w.writerow([*header, "error"])
    for p in preds:
        row = [p.path]
        for c, prob in p.top_k:
            row += [c, f"{prob:.6f}"]
        row += [""] * (2 * (k - len(p.top_k)))
        w.writerow([*row, p.error])
    return buf.getvalue()
