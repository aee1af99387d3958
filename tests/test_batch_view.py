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


def test_trace_batch_prints_and_saves_the_view_without_training(image_folder, tmp_path):
    import cv2

    from conftest import run_cli

    proc = run_cli("trace", str(image_folder), "--batch", "--size", "24", "--crop-pct", "1",
                   "--per-class", "2", "--out", str(tmp_path / "b"))
    assert proc.returncode == 0, proc.stderr
    assert "The batch the model sees" in proc.stdout and proc.stdout.count(" a ") >= 1
    grid = cv2.imread(str(tmp_path / "b" / "batch.png"))
    assert grid is not None and grid.shape[0] > 96 and grid.shape[1] > 4 * 2 * 96
    assert not (tmp_path / "b" / "last.pt").exists()  # nothing trained


def test_a_users_dataloader_batch_is_shown_as_the_model_gets_it(image_folder):
    from torch.utils.data import DataLoader
    from torchvision import datasets
    from torchvision.transforms import v2

    from pipetrace.batch_view import dataset_batch_view

    mean, std = [0.5, 0.4, 0.3], [0.2, 0.2, 0.2]
    chain = v2.Compose([v2.Resize(20), v2.CenterCrop(20), v2.ToImage(),
                        v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)])
    ds = datasets.ImageFolder(image_folder / "train", transform=chain)
    view = dataset_batch_view(DataLoader(ds, batch_size=5, shuffle=False))
    assert view.indices == [0, 1, 2, 3, 4] and view.labels == ["a"] * 5
    assert view.eval_pictures == [] and len(view.train_pictures) == 5
    x = ds[0][0]
    back = (x * torch.tensor(std).view(3, 1, 1) + torch.tensor(mean).view(3, 1, 1)) * 255
    expected = back.round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
    assert np.abs(view.train_pictures[0].astype(int) - expected).max() <= 1  # de-normalized
