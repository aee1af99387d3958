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
    eval_pictures: list[np.ndarray] = field(repr=False)  # as evaluated ([]: no eval pipeline)

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


def dataset_batch_view(dataset, n: int = 16) -> BatchView:
    """The first batch of a user's DataLoader (or the first ``n`` items of a Dataset) as the
    model would get it, de-normalized with the chain's own Normalize (no evaluation view)."""
    from torch.utils.data import DataLoader

    from .dataset_trace import normalize_stats, source_files
    from .trace import image_part

    loader = dataset if isinstance(dataset, DataLoader) else None
    dataset = loader.dataset if loader is not None else dataset
    if loader is not None:
        indices = list(next(iter(loader.batch_sampler)))[:n]
    else:
        indices = list(range(min(n, len(dataset))))
    stats = normalize_stats(getattr(dataset, "transform", None))
    items = [dataset[i] for i in indices]
    pictures = [display_picture(image_part(item), stats) for item in items]
    files = source_files(dataset) or []
    labels = [str(item[1]) if isinstance(item, tuple | list) and len(item) > 1 else "?"
              for item in items]
    classes = getattr(dataset, "classes", None)
    if classes:
        labels = [classes[int(lb)] if lb.isdigit() and int(lb) < len(classes) else lb
                  for lb in labels]
    return BatchView(indices, [files[i] if i < len(files) else f"item {i}" for i in indices],
                     labels, 0, "the dataset's own", [p for p in pictures if p is not None], [])
