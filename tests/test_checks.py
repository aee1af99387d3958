"""Every classic bug, planted, is found; the correct pipeline raises no false alarm."""

import io

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import coloured_image, write_image
from pipetrace import checks, doctor
from pipetrace.checks import inspect_batch
from pipetrace.dataset_trace import trace_image
from pipetrace.images import read_bytes
from pipetrace.pipeline import PLANTS
from pipetrace.transforms import Preprocess

PRE = Preprocess(size=32, crop_pct=1.0)


def traced_findings(flow, path, pre=PRE):
    """What `pipetrace trace` checks: the file's EXIF and the traced flow."""
    return checks.check_exif_orientation(read_bytes(path), path) + checks.check_flow(flow, pre)


def kinds(findings):
    return sorted({f.check for f in findings if f.severity in ("error", "warning")})


@pytest.fixture
def photo_like(tmp_path):
    return str(write_image(tmp_path / "x.jpg", coloured_image(40, 50)))


@pytest.mark.parametrize("plant, expected", [
    ("bgr", ["channel-order"]),
    ("no-normalize", ["normalization"]),
    ("double-normalize", ["normalization"]),
    ("hwc", ["layout"]),
    ("0-255", ["scale"]),
    ("uint8", ["scale"]),
])
def test_planted_bug_is_found(photo_like, plant, expected):
    assert set(PLANTS) >= {plant}
    flow, _ = trace_image(photo_like, PRE, plant=plant, batch=4)
    found = traced_findings(flow, photo_like)
    assert kinds(found) == expected, [f.title for f in found]
    assert all(f.fix and f.evidence for f in found)


def test_correct_pipeline_has_no_finding(photo_like):
    flow, _ = trace_image(photo_like, PRE, batch=4)
    assert traced_findings(flow, photo_like) == []


def test_normalize_twice_is_named_as_such():
    x = torch.rand(8, 3, 16, 16)
    once = (x - torch.tensor(PRE.mean).view(3, 1, 1)) / torch.tensor(PRE.std).view(3, 1, 1)
    twice = (once - torch.tensor(PRE.mean).view(3, 1, 1)) / torch.tensor(PRE.std).view(3, 1, 1)
    assert inspect_batch(once, PRE) == []
    (f,) = inspect_batch(twice, PRE)
    assert "twice" in f.title


def test_exif_rotation_is_reported():
    im = Image.fromarray(coloured_image(20, 40))
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    im.save(buf, "JPEG", exif=exif.tobytes())
    (f,) = checks.check_exif_orientation(buf.getvalue(), "rot.jpg")
    assert f.check == "exif" and "90°" in f.evidence


def test_train_eval_skew():
    assert checks.check_train_eval_skew(PRE, PRE) == []
    (f,) = checks.check_train_eval_skew(PRE, Preprocess(size=32, crop_pct=1.0, mean=(0.5,) * 3,
                                                        colour_order="BGR"))
    assert "mean" in f.evidence and "colour_order" in f.evidence


def test_numeric_class_names_sorted_as_strings():
    classes = sorted(str(i) for i in range(1, 11))  # what ImageFolder does
    (f,) = doctor.check_class_order(classes)
    assert f.severity == "warning" and "'10' -> 1" in f.evidence
    assert doctor.check_class_order(["cat", "dog"]) == []
    assert doctor.check_class_order(["01", "02", "10"])[0].severity == "info"


def no_alarm_on(files, pre):
    for f in files:
        flow, _ = trace_image(str(f), pre, batch=2)
        found = [x for x in traced_findings(flow, str(f), pre)
                 if x.check != "exif"]  # a real EXIF rotation is a fact, not an alarm
        assert found == [], (f, [x.title for x in found])


def test_no_false_alarm_on_real_photos(photos):
    files = sorted(p for p in photos.rglob("*.jpg"))
    no_alarm_on(files[::8], Preprocess())


def test_no_false_alarm_on_cifar(cifar):
    files = sorted((cifar / "test").rglob("*.jpg"))
    no_alarm_on(files[::400], Preprocess(size=32, crop_pct=1.0))


def test_batch_from_real_loader_passes(image_folder):
    from pipetrace.data import ImageDataset, LoaderConfig, make_loader, to_model_input
    from pipetrace.scan import find_splits

    ds = ImageDataset(find_splits(image_folder).train.samples, PRE)
    b = next(iter(make_loader(ds, LoaderConfig(batch_size=8), shuffle=False)))
    x = to_model_input(b.images, PRE)
    assert inspect_batch(x, PRE) == []
    assert kinds(inspect_batch(x.permute(0, 2, 3, 1), PRE)) == ["layout"]
    assert kinds(inspect_batch(b.images, PRE)) == ["scale"]
    assert np.isfinite(x.numpy()).all()
