"""Show the batch: training images as the model receives them (augmentation applied, then
de-normalized for display) beside the evaluation pipeline's view of the same files.

The pictures are made by the run's own datasets and batch stages (``ImageDataset`` and
``data.to_model_input`` with the run's augmentation and a seeded generator), so they are what
the loader produces for those indices with that seed; :class:`BatchView` records which files
and which seed, and the pictures, for the views to lay out.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from .data import ImageDataset, to_model_input
from .trace import display_picture
from .transforms import BatchAugment, Preprocess


@dataclass(frozen=True)
class BatchView:
    """A few training images per class as the model gets them, and as evaluation sees them."""

    indices: list[int]  # positions in the training dataset
    paths: list[str]
    labels: list[str]  # class names
    seed: int  # the generator seed of the augmentation shown
    augment: str  # the run's augmentation ("none", "flip", "crop-flip", "rrc")
    train_pictures: list[np.ndarray] = field(repr=False)  # (S, S, 3) uint8, as trained on
    eval_pictures: list[np.ndarray] = field(repr=False)  # (S, S, 3) uint8, as evaluated

    def to_dict(self) -> dict:
        return {"indices": self.indices, "paths": self.paths, "labels": self.labels,
                "seed": self.seed, "augment": self.augment}


def pick_per_class(samples: list[tuple[str, int]], per_class: int) -> list[int]:
    """The first ``per_class`` indices of each class, classes in index order."""
    chosen: dict[int, list[int]] = {}
    for i, (_, label) in enumerate(samples):
        if len(chosen.setdefault(label, [])) < per_class:
            chosen[label].append(i)
    return [i for label in sorted(chosen) for i in chosen[label]]


def model_pictures(dataset: ImageDataset, indices: list[int], pre: Preprocess, *,
                   augment: BatchAugment | None, seed: int) -> tuple[list[int], list[np.ndarray]]:
    """Images ``indices`` through ``dataset``'s pipeline and the batch stages, as the model
    receives them (the generator seeded with ``seed``), de-normalized: (kept indices, pictures)."""
    with torch.random.fork_rng(devices=[]):  # per-image random transforms (classic path)
        torch.manual_seed(seed)
        batch = dataset.__getitems__(list(indices))
        x = to_model_input(batch.images, pre, augment=augment,
                           generator=torch.Generator().manual_seed(seed))
    return batch.indices.tolist(), [display_picture(t, (pre.mean, pre.std)) for t in x]


def batch_view(train_set: ImageDataset, classes: list[str], *, augment: str,
               crop_pad: int | None = None, per_class: int = 4, seed: int = 0) -> BatchView:
    """The batch view of a run's training set (its augmentation, seed ``seed``)."""
    pre = train_set.pre
    indices = pick_per_class(train_set.samples, per_class)
    aug = (BatchAugment.for_preset(augment, pre.size, crop_pad) if train_set.path == "fast"
           else None)
    kept, train_pics = model_pictures(train_set, indices, pre, augment=aug, seed=seed)
    plain = ImageDataset([train_set.samples[i] for i in kept], pre, path=train_set.path,
                         limits=train_set.limits)
    _, eval_pics = model_pictures(plain, list(range(len(kept))), pre, augment=None, seed=seed)
    return BatchView(kept, [train_set.samples[i][0] for i in kept],
                     [classes[train_set.samples[i][1]] for i in kept], seed, augment,
                     train_pics, eval_pics)
