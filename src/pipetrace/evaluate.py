"""Evaluate a checkpoint on a labelled split of any ImageFolder dataset, image by image.

The model and its evaluation pipeline come from the checkpoint (``predict.load_model``); the
split's class folders are mapped onto the checkpoint's classes by name. The pass is the
trainer's own :func:`pipetrace.loop.evaluate`, so the per-image probabilities and losses
are those a validation epoch records; :func:`pipetrace.errors.analyse` makes the analysis.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from .data import ImageDataset, LoaderConfig, make_loader
from .data import split_samples as split_by_seed
from .errors import ErrorAnalysis, Predictions, analyse
from .predict import LoadedModel, load_model
from .scan import find_splits, scan_image_folder


@dataclass(frozen=True)
class Evaluation:
    """A checkpoint evaluated on one split."""

    checkpoint: str
    data: str  # the dataset root
    split: str  # "val", "train", "all", ...
    predictions: Predictions
    errors: ErrorAnalysis
    unreadable: list[tuple[str, str]]  # (path, reason) skipped

    def to_dict(self) -> dict:
        return {"format": "pipetrace-evaluation", "version": 1,  # 1: first format
                "checkpoint": self.checkpoint, "data": self.data, "split": self.split,
                "errors": self.errors.to_dict(),
                "unreadable": [list(u) for u in self.unreadable]}


def split_samples(data: str | os.PathLike, split: str, classes: list[str], *,
                  held_out: tuple[float, int] | None = None) -> list[tuple[str, int]]:
    """The (path, class index) samples of ``split`` ("val", "train" or "all") of ``data``,
    numbered by the checkpoint's ``classes``; other class folders are left out.

    Without a val/ (or test/) folder, "val" is what the run held out of its training images:
    ``held_out`` = (the run's ``val_fraction``, its ``seed``), drawn by the trainer's own
    :func:`pipetrace.data.split_samples`, and "train" is the rest; a run that held out
    nothing has no "val" there.
    """
    root = os.fspath(data)
    if not os.path.isdir(root):
        raise ValueError(f"no dataset folder {root!r}")
    splits = find_splits(root)
    if split not in ("val", "train", "all"):
        raise ValueError(f"unknown split {split!r}: use val, train or all")
    if split == "all":  # every split folder (the root itself when it holds the classes)
        folder = root
        samples = [s for _, scan in splits.named()
                   for s in scan_image_folder(scan.root, classes=list(classes)).samples]
    elif split == "val" and splits.val is not None:
        folder = splits.val.root
        samples = scan_image_folder(folder, classes=list(classes)).samples
    elif splits.val is None and held_out is not None and held_out[0] > 0:
        folder = splits.train.root  # the run's split of these very folders, then its classes
        train, val = split_by_seed(splits.train.samples, *held_out)
        index = {c: i for i, c in enumerate(classes)}
        samples = [(p, index[splits.train.classes[label]])
                   for p, label in (val if split == "val" else train)
                   if splits.train.classes[label] in index]
    elif split == "val":
        raise ValueError(f"{root!r} has no val/ or test/ folder and the run held out no "
                         "validation images from it: use --split train or all")
    else:
        folder = splits.train.root
        samples = scan_image_folder(folder, classes=list(classes)).samples
    if not samples:
        raise ValueError(f"no images of the checkpoint's classes ({', '.join(classes[:5])}"
                         f"{', ...' if len(classes) > 5 else ''}) under {folder!r}")
    return samples


def evaluate_run(lm: LoadedModel | str, data: str | None = None, *, split: str = "val",
                 batch_size: int = 64, workers: int = 0) -> Evaluation:
    """Evaluate ``lm`` (or a run folder / checkpoint) on ``split`` of ``data`` (default: the
    dataset it was trained on)."""
    from .loop import evaluate, predictions_of

    lm = load_model(lm) if not isinstance(lm, LoadedModel) else lm
    data = data or (lm.checkpoint.get("train_config") or {}).get("data") or ""
    train_cfg = lm.checkpoint.get("train_config") or {}
    samples = split_samples(data, split, lm.classes, held_out=(
        float(train_cfg.get("val_fraction") or 0.0), int(train_cfg.get("seed") or 0)))
    ds = ImageDataset(samples, lm.preprocess, path=lm.loader_path)  # the contract's pipeline
    loader = make_loader(ds, LoaderConfig(batch_size=batch_size, workers=workers),
                         shuffle=False)
    tta = bool((lm.checkpoint.get("train_config") or {}).get("tta", False))
    ev = evaluate(lm.model, loader, lm.preprocess, device=torch.device("cpu"),
                  channels_last=False, tta=tta, num_classes=len(lm.classes))
    idx = ev["per_image"][0]
    if len(idx) == 0:
        raise ValueError(f"none of the {len(samples)} images of {data!r} ({split}) could be read")
    pred = predictions_of(ds, lm.classes, ev["per_image"])
    pred = Predictions(pred.paths, pred.labels, pred.probs, pred.losses, pred.classes, split)
    bad = [(samples[i][0], reason) for i, reason in ev["bad"]]
    return Evaluation(lm.source, str(data), split, pred, analyse(pred), bad)


def read_predictions(source: str | os.PathLike) -> Predictions:
    """``predictions.csv`` of a run folder (or the file itself)."""
    path = os.fspath(source)
    if not os.path.exists(path):
        raise ValueError(f"{path!r} does not exist: give a run folder, an eval folder or a "
                         "predictions.csv")
    if os.path.isdir(path):
        path = os.path.join(path, "predictions.csv")
    try:
        with open(path, encoding="utf-8") as f:
            return Predictions.from_csv(f.read())
    except FileNotFoundError:
        raise ValueError(f"no predictions at {path!r}: train with a validation split, or run "
                         "`pipetrace evaluate RUN_DIR`") from None

