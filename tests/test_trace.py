"""The stage trace observes what runs: its records are the loader's own calls, in their order,
byte for byte; change the declared pipeline and the trace changes with no edit to the tracer."""

import hashlib
from dataclasses import replace

import numpy as np
import pytest
import torch
from torchvision.transforms import v2

from conftest import coloured_image, write_image
from pipetrace import pipeline as pl
from pipetrace.data import ImageDataset, LoaderConfig, TraceRequest, make_loader, to_model_input
from pipetrace.dataset_trace import trace_image
from pipetrace.scan import find_splits
from pipetrace.trace import (
    StageTracer,
    batch_tracer,
    data_flow,
    detect_channel_order,
    summarize,
    trace_transforms,
)
from pipetrace.transforms import BatchAugment, Preprocess


def digest(a) -> str:
    if isinstance(a, torch.Tensor):
        a = a.contiguous().numpy()
    return hashlib.sha1(np.ascontiguousarray(a).tobytes()).hexdigest()[:16]


@pytest.fixture
def photo(tmp_path):
    """A 120 x 160 JPEG whose channels differ clearly (a swap is visible)."""
    return str(write_image(tmp_path / "x.jpg", coloured_image(120, 160)))


def first_traced_batch(ds, workers=0, batch_size=4):
    loader = make_loader(ds, LoaderConfig(batch_size=batch_size, workers=workers), shuffle=False)
    loader.batch_sampler.trace_next()
    return next(iter(loader))


def slot_bytes(batch, k=0) -> str:
    """The bytes of image k as it sits in the batch buffer (NHWC for the fast path)."""
    img = batch.images[k]
    return digest(img.permute(1, 2, 0) if batch.images.dtype == torch.uint8 else img)


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("path", ["fast", "classic"])
def test_each_recorded_output_is_what_the_loader_produced(image_folder, path, workers):
    pre = Preprocess(size=24, crop_pct=0.875)
    ds = ImageDataset(find_splits(image_folder).train.samples, pre, path=path)
    batch = first_traced_batch(ds, workers)
    records = batch.trace.records
    assert [r.name for r in records] == [s.name for s in ds.pipeline.stages]
    assert [r.operation for r in records] == [s.operation for s in ds.pipeline.stages]
    # the last image step wrote the image into its slot: the recorded bytes are the batch's
    assert records[-1].output.digest == slot_bytes(batch, 0)
    # every intermediate output equals the declared stages run by hand on the same file
    x = ds.refs[int(batch.indices[0])]
    for stage, rec in zip(ds.pipeline.per_image, records, strict=False):
        x = stage.fn(x)
        if not isinstance(x, pl.Encoded):
            assert rec.output.digest == digest(np.asarray(x) if not isinstance(x, torch.Tensor)
                                               else x.as_subclass(torch.Tensor)), rec.name
    assert records[1].output.channel_order == "BGR"  # the decode, measured against PIL
    assert records[-1].output.channel_order == "RGB"
    assert batch.trace.source == ds.samples[int(batch.indices[0])][0]


def test_reordering_the_fast_path_changes_the_trace_not_the_bytes(photo):
    pre = Preprocess(size=32, crop_pct=0.875)
    fast = pl.fast_pipeline(pre)
    read, decode, resize = fast.per_image
    # the seed's order: convert BGR to RGB at full size, then resize; copy into the batch
    seed_order = replace(fast, per_image=(read, decode, replace(fast.place, name="BGR to RGB"),
                                          resize),
                         place=pl.Stage("Into the batch", 4, "PyTorch", pl.CopyInto(), "", ""))
    runs = {}
    for name, pipe in (("fast", fast), ("reordered", seed_order)):
        ds = ImageDataset([(photo, 0)], pre, pipeline=pipe)
        b = ds.__getitems__(TraceRequest([0]))
        runs[name] = (data_flow(pipe.path, b.trace), slot_bytes(b))
    (fast_flow, fast_bytes), (seed_flow, seed_bytes) = runs["fast"], runs["reordered"]
    assert [s.name for s in fast_flow.stages] == ["Read file", "Decode", "Resize + crop",
                                                  "BGR to RGB, into the batch"]
    assert [s.name for s in seed_flow.stages] == ["Read file", "Decode", "BGR to RGB",
                                                  "Resize + crop", "Into the batch"]
    # the order line is derived from the records: out of the seed's order, and checked
    assert "after Resize + crop (stage 3)" in fast_flow.order and "same bytes" in fast_flow.order
    assert fast_flow.seed_order_same is True
    assert seed_flow.order.startswith("Ran in the seed's order")
    # the conversion ran on the small image in one and on the full decode in the other
    conv = {f: next(s for s in flow.stages if s.name.startswith("BGR to RGB"))
            for f, flow in (("fast", fast_flow), ("seed", seed_flow))}
    assert conv["fast"].input.shape == (32, 32, 3) and conv["seed"].input.shape == (120, 160, 3)
    assert fast_bytes == seed_bytes  # resizing commutes with the channel swap


def test_changing_a_stage_changes_the_recorded_operation(photo):
    pre = Preprocess(size=32, crop_pct=0.875)
    fast = pl.fast_pipeline(pre)
    bicubic = replace(pre, interpolation="bicubic")
    changed = replace(fast, per_image=(*fast.per_image[:2], replace(
        fast.per_image[2], fn=pl.ResizeCrop(bicubic, pl.fast_transform(bicubic)))))
    ops = []
    for pipe in (fast, changed):
        b = ImageDataset([(photo, 0)], pre, pipeline=pipe).__getitems__(TraceRequest([0]))
        ops.append(b.trace.records[2].operation)
    assert "BILINEAR" in ops[0] and "BICUBIC" in ops[1]


def test_a_seed_order_check_that_fails_is_reported(photo):
    """A planted non-commuting step after the conversion: the trace says NOT the same bytes."""
    pre = Preprocess(size=32, crop_pct=1.0)
    fast = pl.fast_pipeline(pre)

    class RedOnly:  # keeps channel 0 only: not a per-channel operation, does not commute
        def __call__(self, a):
            out = np.zeros_like(a)
            out[..., 0] = a[..., 0]
            return out

    odd = replace(fast, per_image=(*fast.per_image, pl.Stage("Red only", 3, "NumPy", RedOnly(),
                                                             "", "")))
    b = ImageDataset([(photo, 0)], pre, pipeline=odd).__getitems__(TraceRequest([0]))
    flow = data_flow(odd.path, b.trace)
    assert flow.seed_order_same is False and "NOT the same bytes" in flow.order


def test_batch_stages_traced_equal_untraced(image_folder):
    pre = Preprocess(size=24, crop_pct=1.0)
    ds = ImageDataset(find_splits(image_folder).train.samples, pre, train=True, augment="crop-flip")
    batch = first_traced_batch(ds, batch_size=6)
    aug = BatchAugment.for_preset("crop-flip", 24)
    tracer = batch_tracer(batch.trace, pre)
    traced = to_model_input(batch.images, pre, augment=aug, observer=tracer,
                            generator=torch.Generator().manual_seed(3))
    plain = to_model_input(batch.images, pre, augment=aug,
                           generator=torch.Generator().manual_seed(3))
    assert torch.equal(traced, plain)  # observing changes nothing
    assert [r.name for r in tracer.records] == ["To device", "Normalize batch", "Augment batch"]
    assert tracer.records[-1].output == replace(summarize(plain, channel_order="RGB"), digest="")
    assert all(r.scope == "batch" for r in tracer.records)


def test_trace_image_seed_chain_and_its_planted_bgr(photo):
    pre = Preprocess(size=32, crop_pct=1.0)
    flow, x = trace_image(photo, pre, batch=3)
    names = [s.name for s in flow.stages]
    assert names[:4] == ["Read file", "Decode", "BGR to RGB", "To PIL image"]
    assert names[4:9] == ["Resize", "CenterCrop", "ToImage", "ToDtype", "Normalize"]
    assert flow.model_input().shape == tuple(x.shape) == (3, 3, 32, 32)
    assert [s.output.channel_order for s in flow.stages[1:4]] == ["BGR", "RGB", "RGB"]
    bad, _ = trace_image(photo, pre, plant="bgr")
    assert bad.stages[2].name == "BGR to RGB (skipped)" and bad.image_order() == "BGR"


def test_stage_tracer_times_and_keeps_pictures():
    tracer = StageTracer()
    img = coloured_image(20, 30)
    stage = pl.Stage("Flip", 3, "NumPy", lambda a: a[:, ::-1], "", "")
    out = tracer.call(stage, img)
    (rec,) = tracer.records
    assert np.array_equal(out, img[:, ::-1]) and rec.micros_per_item > 0
    assert rec.picture.shape == (20, 30, 3) and rec.output.digest == digest(out)


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


def test_trace_any_transform_chain():
    from PIL import Image

    img = Image.fromarray(coloured_image(40, 50))
    chain = v2.Compose([v2.Resize(20), v2.ToImage(), v2.ToDtype(torch.float32, scale=True)])
    recs = trace_transforms(chain, img)
    assert [r.name for r in recs] == ["Resize", "ToImage", "ToDtype"]
    assert recs[0].output.shape == (20, 25, 3) and recs[-1].output.shape == (3, 20, 25)
    assert recs[-1].output.max <= 1.0 and recs[1].output.dtype == "uint8"
    assert recs[0].operation == repr(chain.transforms[0])


def test_the_model_stage_shows_probabilities_and_the_top_classes():
    """`trace --model`: the stage-5 row is softmax(model(x)), not logits labelled softmax."""
    from torch import nn

    from pipetrace.trace import model_stage

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 3))
    with torch.no_grad():
        model[1].weight.mul_(50)  # logits far outside [0, 1]
    x = torch.randn(2, 3, 8, 8)
    rec = model_stage(model, x, ["ant", "bee", "wasp"])
    with torch.no_grad():
        probs = torch.softmax(model(x), 1)
    assert "softmax" in rec.operation and rec.output.shape == (2, 3)
    assert rec.output.min == pytest.approx(float(probs.min()), abs=1e-6)
    assert rec.output.max == pytest.approx(float(probs.max()), abs=1e-6) and rec.output.max <= 1
    best = ["ant", "bee", "wasp"][int(probs[0].argmax())]
    assert rec.note.startswith(f"probabilities of the first image: {best} "
                               f"{float(probs[0].max()):.3f}")


def test_a_file_that_never_existed_is_no_such_file(tmp_path, capsys):
    from pipetrace.cli import main

    assert main(["trace", str(tmp_path / "never.jpg")]) == 2
    err = capsys.readouterr().err
    assert "never.jpg" in err and "no such file" in err and "disappeared" not in err


def test_a_tensor_is_measured_again_after_an_in_place_change():
    """The tracer measures a tensor once per state: the output of a stage that hands its
    input on is the input's summary, one that changes it in place is measured again."""
    from pipetrace.trace import StageTracer

    same = pl.Stage("Hand on", 4, "PyTorch", lambda x, g: x, "batch", "the same batch")
    double = pl.Stage("Double in place", 4, "PyTorch", lambda x, g: x.mul_(2), "batch", "batch")
    tracer = StageTracer(scope="batch")
    x = torch.rand(2, 3, 8, 8)
    pl.run_batch((same, double), x, None, tracer)
    hand_on, doubled = tracer.records
    assert hand_on.output == hand_on.input
    assert doubled.output.mean == pytest.approx(tuple(2 * m for m in hand_on.output.mean))
    assert doubled.output.max == pytest.approx(2 * hand_on.output.max)
