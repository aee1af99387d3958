"""Evaluate a checkpoint on a labelled split of any ImageFolder dataset, image by image.

The model and its evaluation pipeline come from the checkpoint (``predict.load_model``); the
split's class folders are mapped onto the checkpoint's classes by name. The pass is the
trainer's own :func:`pipetrace.loop.evaluate`, so the per-image probabilities and losses
are those a validation epoch records; :func:`pipetrace.errors.analyse` makes the analysis.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, replace

import torch

from .data import ImageDataset, LoaderConfig, make_loader
from .errors import ErrorAnalysis, Predictions, analyse
from .predict import LoadedModel, load_model
from .scan import NOT_A_TRAINING_CLASS, find_splits, scan_image_folder


@dataclass(frozen=True)
class Evaluation:
    """A checkpoint evaluated on one split."""

    checkpoint: str
    data: str  # the dataset root
    split: str  # "val", "train", "all", ...
    predictions: Predictions
    errors: ErrorAnalysis
    unreadable: list[tuple[str, str]]  # (path, reason) skipped
    left_out: list[str] = field(default_factory=list)  # class folders the model does not know

    def to_dict(self) -> dict:
        return {"format": "pipetrace-evaluation", "version": 2,  # 2: left_out_folders
                "checkpoint": self.checkpoint, "data": self.data, "split": self.split,
                "errors": self.errors.to_dict(),
                "unreadable": [list(u) for u in self.unreadable],
                "left_out_folders": list(self.left_out)}


def split_samples(data: str | os.PathLike, split: str, classes: list[str], *,
                  held_out: set[str] | None = None
                  ) -> tuple[list[tuple[str, int]], list[str]]:
    """(samples, left out): the (path, class index) samples of ``split`` ("val", "train" or
    "all") of ``data``, numbered by the checkpoint's ``classes``, and the class folders left
    out because the checkpoint has no such class (a renamed ``01`` for ``1`` is one: the
    caller says so, as those images are not scored).

    ``held_out``: when ``data`` is the folder the run trained on, the files it validated on
    (real paths, from its ``predictions.csv``; :func:`held_out_files`). Without a val/ (or
    test/) folder, "val" is then those very files and "train" the rest; in another folder
    without val/, every file is unseen, and "val" is all of them.
    """
    root = os.fspath(data)
    if not os.path.isdir(root):
        raise ValueError(f"no dataset folder {root!r}")
    splits = find_splits(root)
    if split not in ("val", "train", "all"):
        raise ValueError(f"unknown split {split!r}: use val, train or all")
    if split == "all":  # every split folder (the root itself when it holds the classes)
        folder, folders = root, [scan.root for _, scan in splits.named()]
    elif split == "val" and splits.val is not None:
        folder = splits.val.root
        folders = [folder]
    elif split == "val" and held_out is None and splits.layout != "single":
        raise ValueError(f"{root!r} has no val/ or test/ folder: use --split train or all")
    elif split == "val" and held_out is not None and not held_out:
        raise ValueError(f"the run kept no record of validation images held out of {root!r} "
                         "(no predictions.csv beside its checkpoint): use --split all")
    else:
        folder = splits.train.root
        folders = [folder]
    scans = [scan_image_folder(f, classes=list(classes)) for f in folders]
    samples = [s for scan in scans for s in scan.samples]
    left_out = [p for scan in scans for p, why in scan.ignored if why == NOT_A_TRAINING_CLASS]
    if splits.val is None and held_out is not None and split != "all":  # the run's own split
        samples = [s for s in samples if (os.path.realpath(s[0]) in held_out) == (split == "val")]
    if not samples:
        raise ValueError(f"no images of the checkpoint's classes ({', '.join(classes[:5])}"
                         f"{', ...' if len(classes) > 5 else ''}) under {folder!r}"
                         + (f"; its class folders are {', '.join(map(repr, left_out[:5]))}"
                            if left_out else ""))
    return samples, left_out


def evaluate_run(lm: LoadedModel | str, data: str | None = None, *, split: str = "val",
                 batch_size: int = 64, workers: int = 0) -> Evaluation:
    """Evaluate ``lm`` (or a run folder / checkpoint) on ``split`` of ``data`` (default: the
    dataset it was trained on)."""
    from .loop import evaluate, predictions_of

    lm = load_model(lm) if not isinstance(lm, LoadedModel) else lm
    data = data or (lm.checkpoint.get("train_config") or {}).get("data") or ""
    samples, left_out = split_samples(data, split, lm.classes,
                                      held_out=held_out_files(lm, data))
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
    return Evaluation(lm.source, str(data), split, pred, analyse(pred), bad, left_out)


def held_out_files(lm: LoadedModel, data: str) -> set[str] | None:
    """The files the run validated on, as real paths, read from the ``predictions.csv``
    beside its checkpoint (empty when there is none), when ``data`` is the folder it trained
    on; None for another folder."""
    trained_on = (lm.checkpoint.get("train_config") or {}).get("data")
    if not trained_on or os.path.realpath(trained_on) != os.path.realpath(data):
        return None
    record = os.path.join(os.path.dirname(os.fspath(lm.source)), "predictions.csv")
    if not os.path.isfile(record):
        return set()
    return {os.path.realpath(p) for p in read_predictions(record).paths}


def read_predictions(source: str | os.PathLike) -> Predictions:
    """``predictions.csv`` of a run folder, an eval folder (or the file itself); the split
    they are of is the one the ``errors.json`` beside them names (an evaluation's), else
    "val" (a training run's)."""
    path = os.fspath(source)
    if not os.path.exists(path):
        raise ValueError(f"{path!r} does not exist: give a run folder, an eval folder or a "
                         "predictions.csv")
    if os.path.isdir(path):
        path = os.path.join(path, "predictions.csv")
    try:
        with open(path, encoding="utf-8") as f:
            pred = Predictions.from_csv(f.read())
    except FileNotFoundError:
        raise ValueError(f"no predictions at {path!r}: train with a validation split, or run "
                         "`pipetrace evaluate RUN_DIR`") from None
    try:
        with open(os.path.join(os.path.dirname(path), "errors.json"), encoding="utf-8") as f:
            split = json.load(f).get("split")
    except (OSError, ValueError, AttributeError):
        split = None
    return replace(pred, split=split) if isinstance(split, str) else pred

