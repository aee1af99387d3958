"""The stage trace tells the truth: recorded shapes, orders and ranges match the real objects."""

import numpy as np
import pytest
import torch
from torchvision.transforms import v2

from conftest import coloured_image, write_image
from pipetrace.data import ImageDataset, LoaderConfig, make_loader
from pipetrace.scan import find_splits
from pipetrace.trace import (
    detect_channel_order,
    summarize,
    trace_image,
    trace_sample,
    trace_transforms,
)
from pipetrace.transforms import BatchAugment, Preprocess


def test_trace_image_records_match_the_arrays(tmp_path):
    path = str(write_image(tmp_path / "x.png", coloured_image(48, 64)))
    pre = Preprocess(size=32, crop_pct=1.0)
    records, out = trace_image(path, pre, batch=4)
    s1, s2, s3, s4 = records
    assert s1.output.shape == out["bgr"].shape == (48, 64, 3)
    assert (s1.output.channel_order, s2.output.channel_order) == ("BGR", "RGB")
    assert s1.output.min == out["bgr"].min() and s1.output.max == out["bgr"].max()
    assert np.allclose(s1.output.mean, out["bgr"].reshape(-1, 3).mean(0))
    assert s3.output.shape == tuple(out["tensor"].shape) == (3, 32, 32)
    assert s3.output.layout == "CHW" and s3.output.dtype == "float32"
    assert s4.output.shape == tuple(out["batch"].shape) == (4, 3, 32, 32)
    assert s4.output.min == pytest.approx(float(out["batch"].min()))


def test_planted_bgr_is_recorded_as_bgr(tmp_path):
    path = str(write_image(tmp_path / "x.png", coloured_image()))
    records, _ = trace_image(path, Preprocess(size=32, crop_pct=1.0), plant="bgr")
    assert records[1].output.channel_order == "BGR"


@pytest.mark.parametrize("path_kind", ["fast", "classic"])
def test_training_trace_stage4_equals_the_real_batch(image_folder, path_kind):
    pre = Preprocess(size=24, crop_pct=1.0)
    ds = ImageDataset(find_splits(image_folder).train.samples, pre, path=path_kind, train=True,
                      augment="flip")
    batch = next(iter(make_loader(ds, LoaderConfig(batch_size=6), shuffle=False)))
    records, pictures = trace_sample(ds, batch, augment=BatchAugment.for_preset("flip", 24))
    assert [r.index for r in records] == [1, 2, 3, 4]
    assert records[3].output.shape == (len(batch), 3, 24, 24)
    assert records[0].output.channel_order == "BGR" and records[1].output.channel_order == "RGB"
    assert records[3].output.dtype == "float32"
    assert set(pictures) == {1, 2, 3, 4}
    # stage 3 re-ran the loader's own function: its output equals the batch's first image
    if path_kind == "fast":
        assert records[2].output.max == float(batch.images[0].max())


def test_detect_channel_order_needs_evidence():
    rgb = coloured_image()[..., ::-1].copy()
    assert detect_channel_order(rgb, rgb) == "RGB"
    assert detect_channel_order(rgb[..., ::-1], rgb) == "BGR"
    grey = np.full((8, 8, 3), 128, np.uint8)
    assert detect_channel_order(grey, grey) == "?"


def test_summarize_layouts():
    assert summarize(torch.zeros(3, 4, 5)).layout == "CHW"
    assert summarize(torch.zeros(2, 4, 5, 3)).layout == "NHWC"
    assert summarize(np.zeros((4, 5, 3), np.uint8)).layout == "HWC"
    s = summarize(torch.arange(6.0).view(1, 3, 1, 2))
    assert s.mean == (0.5, 2.5, 4.5) and (s.min, s.max) == (0.0, 5.0)


def test_trace_any_transform_chain(tmp_path):
    from PIL import Image

    img = Image.fromarray(coloured_image(40, 50))
    chain = v2.Compose([v2.Resize(20), v2.ToImage(), v2.ToDtype(torch.float32, scale=True)])
    recs = trace_transforms(chain, img)
    assert [r.name for r in recs] == ["Resize", "ToImage", "ToDtype"]
    assert recs[0].output.shape == (20, 25, 3) and recs[-1].output.shape == (3, 20, 25)
    assert recs[-1].output.max <= 1.0 and recs[1].output.dtype == "uint8"


def test_the_model_stage_shows_probabilities_and_the_top_classes():
    """`trace --model`: the stage-5 row is softmax(model(x)), not logits labelled softmax."""
    from torch import nn

    from pipetrace.trace import trace_model_stage

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 3))
    with torch.no_grad():
        model[1].weight.mul_(50)  # logits far outside [0, 1]
    x = torch.randn(2, 3, 8, 8)
    rec = trace_model_stage(x, model, ["ant", "bee", "wasp"])
    with torch.no_grad():
        probs = torch.softmax(model(x), 1)
    assert "softmax" in rec.operation and rec.output.shape == (2, 3)
    assert rec.output.min == pytest.approx(float(probs.min()), abs=1e-6)
    assert rec.output.max == pytest.approx(float(probs.max()), abs=1e-6) and rec.output.max <= 1
    best = ["ant", "bee", "wasp"][int(probs[0].argmax())]
    assert rec.note.startswith(f"top classes: {best} {float(probs[0].max()):.3f}")


def test_a_file_that_never_existed_is_no_such_file(tmp_path, capsys):
    from pipetrace.cli import main

    assert main(["trace", str(tmp_path / "never.jpg")]) == 2
    err = capsys.readouterr().err
    assert "never.jpg" in err and "no such file" in err and "disappeared" not in err
