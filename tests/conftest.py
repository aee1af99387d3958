"""Shared fixtures: tiny synthetic images written with cv2.imwrite, and the real data."""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from pathlib import Path

import cv2
import numpy as np
import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
DATA_CACHE = Path(os.path.expanduser("~")) / ".cache" / "pipetrace-data"


def write_image(path: Path, bgr: np.ndarray, params=()) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, buf = cv2.imencode(path.suffix, bgr, list(params))
    assert ok, path
    path.write_bytes(buf.tobytes())
    return path


def coloured_image(h: int = 48, w: int = 64, seed: int = 0) -> np.ndarray:
    """(H, W, 3) uint8 BGR with clearly different channels (so a swap is visible)."""
    rng = np.random.default_rng(seed)
    img = np.zeros((h, w, 3), np.uint8)
    img[..., 0] = np.linspace(0, 255, w, dtype=np.uint8)[None, :]  # blue ramps left-right
    img[..., 1] = 90
    img[..., 2] = np.linspace(255, 0, h, dtype=np.uint8)[:, None]  # red ramps top-down
    return np.clip(img.astype(int) + rng.integers(-10, 10, img.shape), 0, 255).astype(np.uint8)


@pytest.fixture
def image_folder(tmp_path) -> Path:
    """root/train/{a,b}/*.png|jpg and root/val/{a,b}/*: 6 + 2 images per class, 40 x 40."""
    root = tmp_path / "data"
    for split, n in (("train", 6), ("val", 2)):
        for c, cls in enumerate(("a", "b")):
            for i in range(n):
                img = coloured_image(40, 40, seed=100 * c + i)
                if cls == "b":
                    img = 255 - img
                ext = ".png" if i % 2 else ".jpg"
                write_image(root / split / cls / f"{cls}{i}{ext}", img)
    return root


@pytest.fixture
def one_thread():
    """One intra-op thread for small forward passes: on a shared 2-core machine OpenMP's
    waiting threads made them 10-30x slower (densenet121 at 32 x 32: 3.3 s -> 0.02 s)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _unpacked(name: str, archive: str) -> Path:
    target = DATA_CACHE / name
    if target.is_dir():
        return target
    src = SHARED_DATA / archive
    if not src.is_file():
        pytest.skip(f"real data not available: {src} is missing (CI has it)")
    DATA_CACHE.mkdir(parents=True, exist_ok=True)
    with tarfile.open(src) as tf:
        tf.extractall(DATA_CACHE, filter="data")
    return target


@pytest.fixture(scope="session")
def photos() -> Path:
    """The 245 ant and bee photos (hymenoptera/train/{ants,bees})."""
    return _unpacked("hymenoptera", "hymenoptera-train.tar") / "train"


@pytest.fixture(scope="session")
def cifar() -> Path:
    """CIFAR-10 as JPEG files: cifar10/{train,test}/<class>/*.jpg."""
    return _unpacked("cifar10", "cifar10-jpg.tar.gz")


def run_cli(*args: str, cwd=None, env=None, timeout=600, input=None
            ) -> subprocess.CompletedProcess:
    """Run the real entry point (`python -m pipetrace`) in a subprocess (stdin: ``input``)."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "pipetrace", *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout, input=input)


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory) -> Path:
    """One real `pipetrace demo` run through the entry point (about 40 s), shared by the
    tests of the report, predict, skew and export. Returns the run folder."""
    base = tmp_path_factory.mktemp("demo")
    proc = run_cli("demo", "--out", str(base / "run"), "--cache-dir", str(base / "cache"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (base / "run" / "stdout.txt").write_text(proc.stdout)
    return base / "run"


@pytest.fixture(scope="session")
def demo_data(demo_run) -> Path:
    """The built-in shapes dataset the demo rendered (train/, val/, boxes.json)."""
    (root,) = (demo_run.parent / "cache").iterdir()
    return root


IMG_CLASS = "<img src=x onerror=alert(1)>"  # a class folder name that is HTML
SCRIPT_CLASSES = [  # a checkpoint's class list: text, attribute and comment contexts
    "<script>window.__pwned=1</script>",
    '"><script>window.__pwned=2</script>',
    "'--><script>window.__pwned=3</script>",
    "</b></code><script>window.__pwned=4</script>",
]


@pytest.fixture(scope="session")
def markup_runs(tmp_path_factory) -> dict[str, tuple[Path, list[str]]]:
    """Two run folders whose strings are HTML, with the names they hold (about 10 s):

    ``folder``: one tiny epoch on shapes whose class folder (and a file in it) is named
    IMG_CLASS; ``checkpoint``: that model saved with SCRIPT_CLASSES as its class list, then
    reported through ``write_run_report`` (the prediction trace reads the checkpoint's classes).
    """
    from dataclasses import replace

    from pipetrace.analysis import analyse_run
    from pipetrace.checkpoint import load_checkpoint, save_checkpoint
    from pipetrace.report.build import write_run_report
    from pipetrace.shapes import ShapesConfig, render
    from pipetrace.train import TrainConfig, fit

    base = tmp_path_factory.mktemp("markup")
    data = render(ShapesConfig(train_per_class=4, val_per_class=2, image_size=64), base / "data")
    for split in ("train", "val"):
        (data / split / "star").rename(data / split / IMG_CLASS)
    first = sorted((data / "val" / IMG_CLASS).iterdir())[0]
    image = first.rename(first.with_name(IMG_CLASS + first.suffix))  # the file name too
    cfg = TrainConfig(data=str(data), out=str(base / "folder"), model="pipenet-tiny", epochs=1,
                      batch_size=8, image_size=64, crop_pct=1.0, amp="off")
    result = fit(cfg)
    assert IMG_CLASS in result.classes
    write_run_report(result, analyse_run(result, image=str(image), true_class=IMG_CLASS),
                     command="train")

    ckpt = load_checkpoint(base / "folder" / "last.pt")
    ckpt["classes"] = list(SCRIPT_CLASSES)
    (base / "checkpoint").mkdir()
    save_checkpoint(base / "checkpoint" / "last.pt", ckpt)
    other = replace(result, run_dir=str(base / "checkpoint"))
    write_run_report(other, analyse_run(other, image=str(image), true_class=SCRIPT_CLASSES[0]),
                     command="predict")
    return {"folder": (base / "folder", [IMG_CLASS]),
            "checkpoint": (base / "checkpoint", list(SCRIPT_CLASSES))}
