"""Stage 4: batches of N x 3 x H x W, bad files skipped and listed, splits seeded."""

import cv2
import pytest
import torch

from pipetrace.data import (
    Batch,
    ImageDataset,
    LoaderConfig,
    collate,
    make_loader,
    split_samples,
    to_model_input,
)
from pipetrace.scan import find_splits
from pipetrace.transforms import Preprocess


def test_loader_yields_nchw_batches_for_both_paths(image_folder):
    samples = find_splits(image_folder).train.samples
    pre = Preprocess(size=32, crop_pct=1.0)
    shapes = {}
    for path in ("fast", "classic"):
        ds = ImageDataset(samples, pre, path=path)
        batch = next(iter(make_loader(ds, LoaderConfig(batch_size=5), shuffle=False)))
        x = to_model_input(batch.images, pre)
        shapes[path] = tuple(x.shape)
        assert x.dtype == torch.float32
        assert batch.images.dtype == (torch.uint8 if path == "fast" else torch.float32)
    assert shapes["fast"] == shapes["classic"] == (5, 3, 32, 32)


def test_bad_file_is_skipped_and_listed_with_workers(image_folder):
    bad = image_folder / "train" / "a" / "zz_broken.jpg"
    bad.write_bytes(b"<html>not found</html>")
    samples = find_splits(image_folder).train.samples
    ds = ImageDataset(samples, Preprocess(size=16, crop_pct=1.0))
    for workers in (0, 2):
        batches = list(make_loader(ds, LoaderConfig(batch_size=4, workers=workers), shuffle=False))
        assert sum(len(b) for b in batches) == len(samples) - 1
        listed = [reason for b in batches for _, reason in b.bad]
        assert len(listed) == 1 and "zz_broken.jpg" in listed[0] and "HTML" in listed[0]


def test_all_bad_batch_is_empty_not_an_error():
    batch = collate([(None, 0, 0, "cannot decode 'x': empty file")])
    assert len(batch) == 0 and batch.bad == [(0, "cannot decode 'x': empty file")]


def test_split_is_stratified_and_seeded():
    samples = [(f"{c}{i}", c) for c in range(3) for i in range(10)]
    tr1, va1 = split_samples(samples, 0.2, seed=1)
    tr2, va2 = split_samples(samples, 0.2, seed=1)
    assert (tr1, va1) == (tr2, va2)
    assert sorted(label for _, label in va1) == [0, 0, 1, 1, 2, 2]
    assert not set(tr1) & set(va1) and len(tr1) + len(va1) == 30
    assert split_samples(samples, 0.2, seed=2)[1] != va1


def test_fast_batches_equal_classic_batches(image_folder):
    """The fast loader's batched path (one NHWC buffer, batch normalize) gives the classic
    per-image chain's tensors: identical without resizing, within 2 grey levels with it."""
    from pipetrace.data import check_files

    samples, _, checked = check_files(find_splits(image_folder).train.samples)
    for pre, tol in ((Preprocess(size=40, crop_pct=1.0), 1e-5), (Preprocess(size=24), 2 / 255 / 0.224)):
        out = {}
        for path in ("fast", "classic"):
            ds = ImageDataset(samples, pre, path=path, checked=checked)
            batch = next(iter(make_loader(ds, LoaderConfig(batch_size=12), shuffle=False)))
            out[path] = to_model_input(batch.images, pre, channels_last=path == "fast")
        assert out["fast"].is_contiguous(memory_format=torch.channels_last)
        assert torch.allclose(out["fast"], out["classic"], atol=tol), pre


def test_a_file_changed_after_the_header_check_is_skipped(image_folder):
    from pipetrace.data import check_files

    samples, _, checked = check_files(find_splits(image_folder).train.samples)
    ds = ImageDataset(samples, Preprocess(size=16, crop_pct=1.0), checked=checked)
    victim = samples[3][0]
    with open(victim, "ab") as f:
        f.write(b"\0" * 100)  # same header, different file
    batch = ds.__getitems__(list(range(len(samples))))
    assert len(batch) == len(samples) - 1
    assert batch.bad[0][0] == 3 and "changed since the dataset was scanned" in batch.bad[0][1]


def test_batch_crosses_processes_whole():
    """A worker's batch is pickled (labels and indices by value, images through shared
    memory) and arrives equal, with the images' channels_last strides kept."""
    from multiprocessing.reduction import ForkingPickler

    images = torch.randint(0, 256, (3, 5, 5, 3), dtype=torch.uint8).permute(0, 3, 1, 2)
    batch = Batch(images, torch.tensor([2, 0, 1]), torch.tensor([7, 8, 9]), [(4, "bad.jpg: why")])
    got = ForkingPickler.loads(bytes(ForkingPickler.dumps(batch)))
    assert torch.equal(got.images, images) and got.images.stride() == images.stride()
    assert got.labels.tolist() == [2, 0, 1] and got.labels.dtype == torch.int64
    assert got.indices.tolist() == [7, 8, 9] and got.bad == [(4, "bad.jpg: why")]
    assert len(got) == 3


def test_decoding_where_the_model_is_gives_the_fast_batches(tmp_path):
    """--decode-on-device: workers send the JPEG bytes, the batch is decoded, resized and
    cropped by torchvision where the model is (the CPU here; nvJPEG on a GPU): the same
    model input as the fast loader's within 2 grey levels; a PNG is skipped with its reason."""
    from tests.conftest import coloured_image, write_image

    from pipetrace.data import check_files
    from pipetrace.pipeline import device_decode_pipeline

    for i in range(6):
        write_image(tmp_path / "a" / f"{i}.jpg", coloured_image(60 + 4 * i, 50, seed=i),
                    (cv2.IMWRITE_JPEG_QUALITY, 95))
    write_image(tmp_path / "a" / "z.png", coloured_image(40, 40))
    pre = Preprocess(size=32)
    samples, _, checked = check_files([(str(p), 0) for p in sorted((tmp_path / "a").iterdir())])
    out = {}
    for name, pipeline in (("fast", None), ("device", device_decode_pipeline(pre))):
        ds = ImageDataset(samples, pre, checked=checked, pipeline=pipeline)
        for workers in (0, 2):
            batch = next(iter(make_loader(ds, LoaderConfig(batch_size=7, workers=workers),
                                          shuffle=False)))
            out[name, workers] = (to_model_input(batch.images, pre), batch.bad)
    assert out["device", 0][0].shape == (6, 3, 32, 32)
    assert torch.equal(out["device", 0][0], out["device", 2][0])
    assert out["fast", 0][1] == [] and len(out["fast", 0][0]) == 7  # the fast path reads PNGs
    assert (out["device", 0][0] - out["fast", 0][0][:6]).abs().max() <= 2 / 255 / 0.224
    [(index, reason)] = out["device", 0][1]
    assert samples[index][0].endswith("z.png") and "JPEG files only" in reason
    # the trace of that path is read from its stage objects: bytes until the batch decode
    from pipetrace.data import TraceRequest

    traced = ImageDataset(samples, pre, checked=checked, pipeline=device_decode_pipeline(pre)
                          ).__getitems__(TraceRequest([0])).trace.records
    assert [(r.name, r.output.layout) for r in traced] == [
        ("Read file", "bytes"), ("Check JPEG header", "bytes"), ("Bytes into the batch", "bytes")]


def test_decoding_on_the_device_is_refused_where_it_cannot_run():
    from pipetrace.config import ConfigError, TrainConfig

    for bad in (dict(loader="classic"), dict(augment="rrc")):
        with pytest.raises(ConfigError, match="decode_on_device"):
            TrainConfig(decode_on_device=True, **bad)
    TrainConfig(decode_on_device=True, augment="crop-flip")  # a batch-level augmentation
