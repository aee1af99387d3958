"""Fuzzing stage 1 (hypothesis, bounded; `make fuzz` runs the long atheris search).

Random bytes and mutations of valid JPEG, PNG, GIF, WebP, TIFF and BMP files never crash or
hang the decoder, and every failure is an ImageLoadError with a reason. The examples are
derandomized so `make test` is the same every run; the atheris target explores further.
"""

import importlib.util
import tempfile
import threading
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipetrace import images
from pipetrace.doctor import inspect_file
from pipetrace.images import ImageLoadError, LoadLimits

_spec = importlib.util.spec_from_file_location(
    "fuzz_load", Path(__file__).resolve().parents[1] / "fuzz" / "fuzz_load.py")
fuzz_load = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fuzz_load)

SEEDS = fuzz_load.seed_images()
HANG_SECONDS = 20  # far above any decode of a 4-megapixel image on a loaded core
FUZZ = settings(max_examples=150, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def without_hanging(work):
    """Run ``work()``; fail the test (instead of hanging the suite) if it never returns."""
    box = {}

    def target():
        try:
            box["value"] = work()
        except BaseException as exc:
            box["error"] = exc

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(HANG_SECONDS)
    if t.is_alive():
        pytest.fail(f"hung for {HANG_SECONDS} s")
    if "error" in box:
        raise box["error"]
    return box.get("value")


@st.composite
def mutated(draw) -> bytes:
    """A valid seed file after a few flips, cuts, insertions and splices."""
    data = bytearray(SEEDS[draw(st.sampled_from(sorted(SEEDS)))])
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["flip", "cut", "insert", "splice", "header"]))
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip":
            data[pos] ^= draw(st.integers(1, 255))
        elif op == "cut":
            del data[pos:]
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=64))
        elif op == "splice":
            other = SEEDS[draw(st.sampled_from(sorted(SEEDS)))]
            data[pos:] = other[draw(st.integers(0, len(other) - 1)):]
        else:  # header fields: sizes and counts live in the first bytes
            i = draw(st.integers(0, min(len(data), 64) - 1)) if data else 0
            if data:
                data[i] = draw(st.sampled_from([0x00, 0x7F, 0x80, 0xFF]))
        if not data:
            break
    return bytes(data)


def decodes_or_refuses(data: bytes) -> None:
    without_hanging(lambda: fuzz_load.check_one(data))


def test_seeds_are_valid_images():
    for name, data in SEEDS.items():
        out = images.decode_bgr(data, name)
        assert out.shape[2] == 3 and out.dtype == np.uint8, name


@FUZZ
@given(st.binary(max_size=4096))
def test_random_bytes_decode_or_raise_image_load_error(data):
    decodes_or_refuses(data)


@FUZZ
@given(mutated())
def test_mutated_images_decode_or_raise_image_load_error(data):
    decodes_or_refuses(data)


@FUZZ
@given(st.sampled_from(sorted(SEEDS)), st.data())
def test_magic_bytes_with_garbage_decode_or_raise(name, data):
    head = SEEDS[name][: data.draw(st.integers(2, 40))]
    decodes_or_refuses(head + data.draw(st.binary(max_size=512)))


@settings(FUZZ, max_examples=60)
@given(mutated())
def test_the_strict_doctor_never_raises_on_hostile_bytes(data):
    with tempfile.NamedTemporaryFile(suffix=".img") as f:
        f.write(data)
        f.flush()
        rec = without_hanging(lambda: inspect_file(f.name))
    assert rec.status in ("loaded", "skipped")
    assert rec.status == "loaded" or rec.reason


def test_a_failure_is_always_image_load_error_with_the_file_name():
    with pytest.raises(ImageLoadError) as info:
        images.decode_bgr(SEEDS["rgb.png"][:40], "data/cat/003.png", limits=LoadLimits())
    assert info.value.reason and "data/cat/003.png" in str(info.value)
