"""`pipetrace skew`: each planted inference bug is named by testing hypotheses, and the
checkpoint's own pipeline written by hand agrees 100% with no skew."""

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

import skew_apps
from conftest import run_cli
from pipetrace.cli import main
from pipetrace.predict import load_model
from pipetrace.skew import SkewInputError, check_skew, load_user_function

APPS = str(Path(__file__).with_name("skew_apps.py"))


@pytest.fixture(scope="module")
def demo_model(demo_run):
    return load_model(demo_run)


@pytest.fixture(scope="module")
def photo_like(demo_data, tmp_path_factory) -> list[str]:
    """Eight validation shapes as larger, noisy, non-square PNGs (640 x 480).

    The 64 px originals are only enlarged to 224, and enlarging is the same with cv2.resize
    and torchvision; shrinking a detailed picture is where antialiasing (and so the resize
    bug) shows, as with real photos.
    """
    out = tmp_path_factory.mktemp("photo_like")
    rng = np.random.default_rng(0)
    paths = []
    for cls in ("circle", "square", "star", "triangle"):
        for src in sorted((demo_data / "val" / cls).iterdir())[:2]:
            big = cv2.resize(cv2.imread(str(src)), (640, 480), interpolation=cv2.INTER_CUBIC)
            big = np.clip(big + rng.normal(0, 8, big.shape), 0, 255).astype(np.uint8)
            path = out / f"{cls}_{src.stem}.png"
            cv2.imwrite(str(path), big)
            paths.append(str(path))
    return paths


def test_the_apps_are_written_for_the_demo_contract(demo_model):
    pre = demo_model.preprocess
    assert (pre.size, pre.resize_size, pre.mean, pre.std) == (
        skew_apps.SIZE, skew_apps.RESIZE, skew_apps.MEAN, skew_apps.STD)
    assert (pre.interpolation, pre.colour_order, pre.layout) == ("bilinear", "RGB", "NCHW")


@pytest.mark.parametrize("name", list(skew_apps.PLANTED))
def test_each_planted_bug_is_named(name, demo_model, photo_like):
    report = check_skew(demo_model, getattr(skew_apps, name), photo_like, name=name)
    assert report.skew and not any(i.matches for i in report.images)
    assert [i.bugs for i in report.images] == [(skew_apps.PLANTED[name],)] * len(photo_like)
    assert report.diagnoses() == [((skew_apps.PLANTED[name],), len(photo_like))]
    assert all(i.residual < 0.5 for i in report.images)  # planting it reproduces the tensor


def test_own_pipeline_has_no_skew(demo_model, photo_like):
    report = check_skew(demo_model, skew_apps.correct, photo_like, name="correct")
    assert not report.skew and report.agreement == 1.0 and report.diagnoses() == []
    assert all(i.bugs == () and i.max_abs < 0.1 for i in report.images)


def test_ignored_exif_orientation_is_named(demo_model, photo_like, tmp_path):
    """A phone photo stored sideways with EXIF orientation 6: OpenCV (the checkpoint's
    loader) turns it upright, PIL's Image.open in the app does not."""
    im = Image.open(photo_like[0])
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "sideways.jpg"
    im.save(path, quality=95, exif=exif.tobytes())
    report = check_skew(demo_model, skew_apps.correct, [str(path)], name="correct")
    assert [i.bugs for i in report.images] == [("exif",)]


def test_cli_reports_no_skew_on_the_validation_images(demo_run):
    proc = run_cli("skew", str(demo_run), "--preprocess", f"{APPS}:correct")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "agrees on 8 of 8 images (100%)" in proc.stdout and "No skew" in proc.stdout


def test_cli_names_bgr_and_exits_1(demo_run):
    proc = run_cli("skew", str(demo_run), "--preprocess", f"{APPS}:bgr", "--limit", "4",
                   "--json")
    assert proc.returncode == 1, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["skew"] is True and len(doc["images"]) == 4
    assert doc["diagnoses"][0]["bugs"] == ["bgr"] and doc["diagnoses"][0]["images"] == 4
    assert "COLOR_BGR2RGB" in doc["diagnoses"][0]["fixes"][0]


def _raises(path):
    raise RuntimeError("camera offline")


def _string(path):
    return "not a tensor"


def _nan(path):
    import numpy as np
    return np.full((3, 224, 224), np.nan, np.float32)


@pytest.mark.parametrize("spec, says", [
    ("no_such_module_xyz:fn", "cannot import 'no_such_module_xyz'"),
    (f"{APPS}:no_such_function", "has no function 'no_such_function'"),
    ("missing_colon", "expected MODULE:FUNCTION"),
    ("test_skew:_raises", "raised on"),
    ("test_skew:_string", "returned str"),
    ("test_skew:_nan", "returned 150,528 NaN or infinite value(s)"),  # was: min() of nothing
])
def test_bad_input_gives_one_line_and_exit_2(spec, says, demo_run, capsys):
    image = str(sorted((Path(demo_run).parent / "cache").glob("*/val/star/*"))[0])
    assert main(["skew", str(demo_run), image, "--preprocess", spec]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and says in err, err


def test_module_names_and_files_both_load():
    assert load_user_function("skew_apps:bgr") is skew_apps.bgr  # importable module
    assert load_user_function(f"{APPS}:bgr").__name__ == "bgr"  # a file path
    with pytest.raises(SkewInputError):
        load_user_function(f"{APPS}:SIZE")  # not callable
