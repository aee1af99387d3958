"""Show the batch: the pictures are what the loader gives the model for those indices with
that seed (flips and translations checked pixel by pixel against the plain view)."""

import numpy as np
import torch

from pipetrace.batch_view import batch_view, pick_per_class
from pipetrace.data import ImageDataset
from pipetrace.scan import find_splits
from pipetrace.transforms import Preprocess


def train_set(root, augment, path="fast"):
    scan = find_splits(root).train
    return ImageDataset(scan.samples, Preprocess(size=24, crop_pct=1.0), train=True,
                        augment=augment, path=path), scan.classes


def test_flips_are_the_ones_the_seeded_generator_draws(image_folder):
    ds, classes = train_set(image_folder, "flip")
    view = batch_view(ds, classes, augment="flip", per_class=3, seed=7)
    assert view.indices == pick_per_class(ds.samples, 3) and view.labels == ["a"] * 3 + ["b"] * 3
    flip = torch.rand(len(view.indices), generator=torch.Generator().manual_seed(7)) < 0.5
    assert 0 < int(flip.sum()) < len(flip)  # this seed flips some and not others
    for k, flipped in enumerate(flip.tolist()):
        expected = view.eval_pictures[k][:, ::-1] if flipped else view.eval_pictures[k]
        assert np.abs(view.train_pictures[k].astype(int) - expected).max() <= 1  # rounding
    other = batch_view(ds, classes, augment="flip", per_class=3, seed=8)
    assert any(not np.array_equal(a, b) for a, b in zip(view.train_pictures,
                                                        other.train_pictures, strict=True))


def test_translations_are_windows_of_the_reflect_padded_image(image_folder):
    ds, classes = train_set(image_folder, "crop-flip")
    view = batch_view(ds, classes, augment="crop-flip", per_class=2, seed=3)
    pad = 3  # crop-flip at 24 px: 24 / 8
    for train, plain in zip(view.train_pictures, view.eval_pictures, strict=True):
        padded = np.pad(plain.astype(int), ((pad, pad), (pad, pad), (0, 0)), mode="reflect")
        windows = [padded[dy:dy + 24, dx:dx + 24] for dy in range(2 * pad + 1)
                   for dx in range(2 * pad + 1)]
        assert any(np.abs(train - w[:, ::f]).max() <= 1 for w in windows for f in (1, -1))


def test_no_augmentation_shows_the_same_picture_twice(image_folder):
    ds, classes = train_set(image_folder, "none")
    view = batch_view(ds, classes, augment="none", per_class=2)
    for a, b in zip(view.train_pictures, view.eval_pictures, strict=True):
        assert np.array_equal(a, b)
