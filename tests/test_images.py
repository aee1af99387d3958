"""Stage 1 and 2: decoding policy, limits, errors, and colour conversion against oracles."""

import io
import os
import struct
import zlib

import cv2
import numpy as np
import pytest
from PIL import Image

from conftest import coloured_image, write_image
from pipetrace import images
from pipetrace.images import ImageLoadError, LoadLimits


def pil_bytes(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def test_png_decodes_to_bgr_exactly(tmp_path):
    bgr = coloured_image()
    path = write_image(tmp_path / "x.png", bgr)
    out = images.load_bgr(path)
    assert out.dtype == np.uint8 and out.shape == (48, 64, 3)
    np.testing.assert_array_equal(out, bgr)


def test_bgr_to_rgb_matches_opencv_and_pil_and_keeps_input(tmp_path):
    bgr = coloured_image()
    before = bgr.copy()
    rgb = images.bgr_to_rgb(bgr)
    np.testing.assert_array_equal(bgr, before)  # input untouched
    np.testing.assert_array_equal(rgb, bgr[..., ::-1])
    path = write_image(tmp_path / "x.png", bgr)
    np.testing.assert_array_equal(np.asarray(images.load_pil(path)),
                                  np.asarray(Image.open(path).convert("RGB")))


def test_non_utf8_file_name_loads(tmp_path):
    raw = os.fsencode(tmp_path) + b"/caf\xe9\xff.png"  # not valid UTF-8: cv2.imread segfaults
    with open(raw, "wb") as f:
        f.write(cv2.imencode(".png", coloured_image())[1].tobytes())
    assert images.load_bgr(os.fsdecode(raw)).shape == (48, 64, 3)


@pytest.mark.parametrize("mode", ["L", "LA", "RGBA", "P", "I;16", "CMYK"])
def test_every_mode_becomes_hwc3_uint8(mode):
    rgb = Image.fromarray(coloured_image()[..., ::-1].copy())
    if mode == "I;16":
        arr = (np.asarray(rgb.convert("L")).astype(np.uint16) * 257)
        data = cv2.imencode(".png", arr)[1].tobytes()
        expect = np.asarray(rgb.convert("L")).astype(np.int16)
    elif mode == "CMYK":
        data = pil_bytes(rgb.convert("CMYK"), "JPEG", quality=95)
        expect = np.asarray(rgb.convert("L")).astype(np.int16)
    else:
        data = pil_bytes(rgb.convert(mode), "PNG")
        expect = np.asarray(rgb.convert("L")).astype(np.int16)
    out = images.decode_bgr(data, f"x.{mode}")
    assert out.shape == (48, 64, 3) and out.dtype == np.uint8
    grey = cv2.cvtColor(out, cv2.COLOR_BGR2GRAY).astype(np.int16)
    # 16-bit is scaled (not clipped to white); CMYK is converted, not inverted
    assert np.abs(grey - expect).mean() < 12, mode


def test_exif_orientation_is_applied():
    im = Image.fromarray(np.zeros((20, 40, 3), np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise
    out = images.decode_bgr(pil_bytes(im, "JPEG", exif=exif.tobytes()), "rotated.jpg")
    assert out.shape[:2] == (40, 20)


@pytest.mark.parametrize("data, cause", [
    (b"", "empty file"),
    (b"<!DOCTYPE html><html><body>404</body></html>", "HTML"),
    (b"<svg onload=alert(1)>", "SVG"),
    (b"\x00\x01\x02\x03garbage", "not an image"),
])
def test_non_images_name_the_cause(data, cause):
    with pytest.raises(ImageLoadError, match=cause) as info:
        images.decode_bgr(data, "data/cat/003.jpg")
    assert "'data/cat/003.jpg'" in str(info.value)


def test_truncated_jpeg_is_refused_not_half_grey():
    data = cv2.imencode(".jpg", coloured_image(256, 256))[1].tobytes()
    with pytest.raises(ImageLoadError, match="truncated JPEG"):
        images.decode_bgr(data[: len(data) // 2], "half.jpg")


def png_header_only(w: int, h: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return (b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + chunk
            + struct.pack(">I", zlib.crc32(chunk)))


def test_pixel_bomb_refused_from_header():
    with pytest.raises(ImageLoadError, match="megapixels is over the limit"):
        images.decode_bgr(png_header_only(60000, 60000), "bomb.png")


def test_extreme_aspect_refused_before_resize():
    with pytest.raises(ImageLoadError, match="aspect ratio"):
        images.decode_bgr(png_header_only(60000, 1), "strip.png", limits=LoadLimits())


def test_jpeg_header_size_matches_pil():
    data = cv2.imencode(".jpg", coloured_image(37, 91))[1].tobytes()
    assert images.header_size(data, "jpeg") == Image.open(io.BytesIO(data)).size


def test_reduced_decode_keeps_twice_the_target():
    data = cv2.imencode(".jpg", coloured_image(1200, 1600))[1].tobytes()
    out = images.decode_bgr(data, "big.jpg", min_side=256)
    assert out.shape[:2] == (600, 800)  # 1/2: 600 >= 2 * 256, 1/4 would be 300 < 512


def test_missing_file_names_the_cause(tmp_path):
    with pytest.raises(ImageLoadError, match="no such file"):
        images.load_bgr(tmp_path / "gone.jpg")

