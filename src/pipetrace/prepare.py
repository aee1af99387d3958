"""The dataset folder -> the training and validation datasets of one run.

Scan the folder (``train/`` + ``val/``, or a seeded split), check every file's header before
training, refuse a dataset with too many unreadable files or fewer than two classes, leave out (with a warning) class folders without a usable training
image, run the quick dataset checks (``doctor.quick_check``), and build both
:class:`~pipetrace.data.ImageDataset` objects with the run's preprocessing contract.

Why leave an empty class out rather than refuse the dataset: a folder made for images not
collected yet is common, and training the other classes is what was wanted; the checkpoint
keeps the class list, so predictions map to the right names. Training it as a class (as
before) gave the model an output it could never learn and a per-class accuracy of nothing.
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import torch

from .config import MAX_RESIZE, ConfigError
from .data import (
    ImageDataset,
    LoaderConfig,
    check_files,
    make_loader,
    split_samples,
    to_model_input,
)
from .doctor import quick_check
from .findings import Finding
from .images import CheckedFile, LoadLimits
from .index import DatasetIndex
from .pipeline import device_decode_pipeline
from .scan import find_splits, gc_paused
from .text import safe_text
from .transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Preprocess,
    channel_stats,
    with_dataset_stats,
)

if TYPE_CHECKING:
    from .config import TrainConfig


class DatasetRefused(ValueError):
    """Too many unreadable files to train on (``max_bad_fraction``)."""


@dataclass
class DataSetup:
    classes: list[str]
    preprocess: Preprocess
    train_set: ImageDataset
    val_set: ImageDataset | None
    bad_files: list[tuple[str, str]]
    info: dict
    findings: list[Finding] = field(default_factory=list)  # the quick checks, before epoch 1


def run_contract(cfg: TrainConfig, expected: Preprocess | None = None) -> Preprocess:
    """The run's preprocessing: what the weights expect (else pipetrace's defaults: 224,
    0.875, bilinear, ImageNet statistics), with the fields the configuration sets.

    ``stats="dataset"`` is applied later, from the training images (:func:`prepare_data`).
    """
    pre = expected or Preprocess()
    pre = replace(pre, size=pre.size if cfg.image_size is None else cfg.image_size,
                  crop_pct=pre.crop_pct if cfg.crop_pct is None else cfg.crop_pct)
    if cfg.stats == "imagenet":
        pre = replace(pre, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    if pre.resize_size > MAX_RESIZE:  # the config checks this when it sets both itself
        raise ConfigError(f"image size / crop_pct ({pre.size} / {pre.crop_pct:g}) = "
                          f"{pre.resize_size} pixels: the evaluation resize must stay within "
                          f"{MAX_RESIZE} (set --crop-pct or --image-size)")
    return pre


@gc_paused()
def prepare_data(cfg: TrainConfig, preprocess: Preprocess | None = None, *,
                 expected: Preprocess | None = None) -> DataSetup:
    """Scan, split, pre-check the files' headers and build both datasets.

    ``preprocess``: the contract to use as it is (a resumed run's); otherwise it is made
    from ``cfg`` over ``expected``, the contract of the initial weights (:func:`run_contract`).
    """
    splits = find_splits(cfg.data)
    classes = splits.train.classes
    train_samples = splits.train.samples
    if splits.val is not None:
        val_samples = splits.val.samples
    elif cfg.val_fraction > 0:
        train_samples, val_samples = split_samples(train_samples, cfg.val_fraction, cfg.seed)
    else:
        val_samples = []
    limits = LoadLimits(max_pixels=cfg.max_image_pixels)
    index = DatasetIndex.open(cfg.data) if cfg.dataset_index else None
    train_samples, bad_train, train_checked = check_files(train_samples, limits, index=index)
    val_samples, bad_val, val_checked = check_files(val_samples, limits, index=index)
    bad = bad_train + bad_val
    total = len(train_samples) + len(val_samples) + len(bad)
    if total == 0:
        raise DatasetRefused(f"no image files found in {cfg.data!r}")
    if len(bad) / total > cfg.max_bad_fraction:
        raise DatasetRefused(bad_fraction_message(bad, total, cfg))
    classes, train_samples, val_samples, val_checked, findings = leave_out_empty_classes(
        classes, train_samples, val_samples, val_checked, splits.train.root)
    refuse_too_small(cfg.data, classes)
    val_name = splits.layout.split("+", 1)[1] if splits.val is not None else "val"
    ignored = splits.train.ignored + (splits.val.ignored if splits.val is not None else [])
    findings += quick_check([("train", train_samples, train_checked),
                             (val_name, val_samples, val_checked)], classes, ignored,
                            index=index)
    if index is not None:
        index.save()
    pre = preprocess or run_contract(cfg, expected)
    make = dict(path=cfg.loader, limits=limits, on_bad_image=cfg.on_bad_image)
    if preprocess is None and cfg.stats == "dataset":
        pre = with_dataset_stats(pre, *dataset_stats(train_samples, pre, limits))
    device_decode = device_decode_pipeline(pre, limits=limits) if cfg.decode_on_device else None
    train_set = ImageDataset(train_samples, pre, train=True, augment=cfg.augment,
                             crop_pad=cfg.crop_pad, checked=train_checked,
                             pipeline=device_decode, **make)
    val_set = (ImageDataset(val_samples, pre, train=False, checked=val_checked,
                            pipeline=device_decode, **make) if val_samples else None)
    info = {
        "root": str(cfg.data), "layout": splits.layout, "classes": len(classes),
        "train_images": len(train_samples), "val_images": len(val_samples),
        "val_source": splits.layout if splits.val is not None else
        (f"{cfg.val_fraction:.0%} of train (seed {cfg.seed})" if val_samples else "none"),
        "ignored_files": len(splits.train.ignored) + (len(splits.val.ignored) if splits.val else 0),
        "bad_files": len(bad),
        "train_counts": _counts(train_samples, classes),
        "index": index.summary() if index is not None else {"path": None, "off": True},
    }
    return DataSetup(classes, pre, train_set, val_set, bad, info, findings)


def bad_fraction_message(bad: list[tuple[str, str]], total: int, cfg: TrainConfig,
                         shown: int = 10) -> str:
    """One line: how many files cannot be read, up to ``shown`` of them, and what to do."""
    listed = "; ".join(reason for _, reason in bad[:shown])
    more = f"; ... and {len(bad) - shown} more" if len(bad) > shown else ""
    return (f"{len(bad)} of {total} files ({len(bad) / total:.0%}) cannot be read, over "
            f"max_bad_fraction={cfg.max_bad_fraction:g}: {listed}{more}. Run `pipetrace check "
            f"{cfg.data}` for the full list, or raise --max-bad-fraction (now "
            f"{cfg.max_bad_fraction:g}) to train on the rest")


def leave_out_empty_classes(classes: list[str], train: list[tuple[str, int]],
                            val: list[tuple[str, int]], val_checked: list[CheckedFile],
                            root: str = ""):
    """(classes, train, val, val_checked, findings) without the classes that have no usable
    training image; the others are numbered again in their order, their validation images
    of a left-out class are dropped too. A warning says which and why, naming the class
    folders under ``root`` (the training split's folder)."""
    counts = Counter(label for _, label in train)
    empty = [i for i in range(len(classes)) if not counts[i]]
    if not empty:
        return classes, train, val, val_checked, []
    new = {old: i for i, old in enumerate(i for i in range(len(classes)) if counts[i])}
    kept = [(s, c) for s, c in zip(val, val_checked, strict=True) if s[1] in new]
    dropped = len(val) - len(kept)
    names = [classes[i] for i in empty]
    finding = Finding(
        "empty-class", "warning", "dataset",
        f"{len(names)} class folder(s) without a usable training image left out: "
        + ", ".join(repr(safe_text(n)) for n in names),
        f"the model gets {len(new)} outputs, for the classes that have images"
        + (f"; {dropped} validation image(s) of those classes are left out too" if dropped
           else "") + "; a class with no image would be an output the model never learns",
        "add images to the folder, or remove it", tuple(os.path.join(root, n) for n in names))
    return ([classes[i] for i in sorted(new)], [(p, new[label]) for p, label in train],
            [(p, new[label]) for (p, label), _ in kept], [c for _, c in kept], [finding])


def refuse_too_small(root: str, classes: list[str]) -> None:
    """A classifier needs two classes (each with a training image, so two images at least:
    batch norm never sees a batch of one)."""
    if len(classes) < 2:
        which = f" ({safe_text(classes[0])!r})" if classes else ""
        raise DatasetRefused(f"{safe_text(str(root))!r} has {len(classes)} class with images"
                             f"{which}: a classifier needs at least 2 class folders "
                             "(root/<class>/<images>); a single class trains to a meaningless "
                             "accuracy of 1.0")


def _counts(samples, classes) -> dict[str, int]:
    n = dict.fromkeys(classes, 0)
    for _, label in samples:
        n[classes[label]] += 1
    return n


def _plain_batches(samples, pre: Preprocess, limits: LoadLimits, batch_size: int):
    """(N, 3, S, S) uint8 batches of ``samples`` as evaluation sees them: no augmentation."""
    ds = ImageDataset(samples, pre, path="fast", limits=limits)
    return (b.images for b in make_loader(ds, LoaderConfig(batch_size=batch_size), shuffle=False))


def dataset_stats(samples, pre: Preprocess, limits: LoadLimits, max_images: int = 2000):
    """Per-channel mean/std of (up to ``max_images``) training images at the model's size."""
    every = samples[:: max(1, len(samples) // max_images)]
    return channel_stats(x for x in _plain_batches(every, pre, limits, 256) if len(x))


def first_images(dataset: ImageDataset, pre: Preprocess, n: int = 5000) -> torch.Tensor:
    """Up to ``n`` training images spread evenly over the (class-sorted) samples, so every
    class is in them; un-augmented and normalized: (n, 3, S, S) float32."""
    every = dataset.samples[:: max(1, len(dataset.samples) // n)][:n]
    batches = list(_plain_batches(every, pre, dataset.limits, 500))
    return to_model_input(torch.cat(batches), pre)


def dataset_digest(setup: DataSetup, root: str) -> str:
    """SHA-256 of the readable files (relative to ``root``) and their labels, both splits."""
    h = hashlib.sha256()
    for ds in (setup.train_set, setup.val_set):
        for path, label in ds.samples if ds is not None else ():
            h.update(f"{os.path.relpath(path, root)}\t{label}\n".encode(errors="surrogateescape"))
    return h.hexdigest()


def name_bad(dataset: ImageDataset | None, bad: list[tuple[int, str]]) -> list[tuple[str, str]]:
    if dataset is None:
        return []
    return [(dataset.samples[i][0], reason) for i, reason in bad]
