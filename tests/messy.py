"""A messy ImageFolder tree with every hostile case `pipetrace check` must report.

Written by the tests into a temp folder (never committed: it holds names that are illegal
on some systems). :func:`build_messy_tree` returns the root and, for every entry the scan
will see, the expected status and a piece of the reason.
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from conftest import coloured_image

HTML_CLASS = "<svg onload=alert(1)>"  # a class name that is markup
NEWLINE_CLASS = "new\nline"
NON_UTF8 = b"caf\xe9"  # Latin-1 bytes: not valid UTF-8


@dataclass
class Messy:
    root: Path
    expected: dict[str, tuple[str, str]] = field(default_factory=dict)  # path -> (status, why)
    strict_only: set[str] = field(default_factory=set)  # skipped by check, loaded by training
    checks: dict[str, set[str]] = field(default_factory=dict)  # finding check -> paths in it

    def expect(self, path, status: str, why: str = "", *checks: str) -> str:
        path = os.fsdecode(path)
        self.expected[path] = (status, why)
        for c in checks:
            self.checks.setdefault(c, set()).add(path)
        return path


def photo(seed: int, h: int = 48, w: int = 64) -> np.ndarray:
    """(H, W, 3) uint8 BGR with texture, different for every seed (photo-like colours)."""
    rng = np.random.default_rng(seed)
    img = coloured_image(h, w, seed=seed).astype(np.int16)
    blobs = cv2.resize(rng.integers(0, 255, (6, 8, 3), dtype=np.uint8), (w, h),
                       interpolation=cv2.INTER_CUBIC).astype(np.int16)
    return np.clip(img // 2 + blobs // 2 + rng.integers(-20, 20, img.shape), 0, 255
                   ).astype(np.uint8)


def encode(bgr: np.ndarray, ext: str, params=()) -> bytes:
    ok, buf = cv2.imencode(ext, bgr, list(params))
    assert ok
    return buf.tobytes()


def pil_bytes(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def png_header_only(w: int, h: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return (b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + chunk
            + struct.pack(">I", zlib.crc32(chunk)))


def corrupt_scan(jpeg: bytes) -> bytes:
    """Overwrite bytes inside the scan data; the end marker stays (OpenCV half-decodes it)."""
    sos = jpeg.find(b"\xff\xda")
    b = bytearray(jpeg)
    b[sos + 200: sos + 260] = b"\xa5" * 60
    return bytes(b)


def write(path: Path | bytes, data: bytes) -> Path | bytes:
    d = os.path.dirname(path)
    os.makedirs(d, exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    return path


def build_messy_tree(base: Path) -> Messy:
    """root/train/<classes> and root/val/<classes> holding every case of issue 7."""
    root = base / "messy"
    m = Messy(root)
    train, val = root / "train", root / "val"
    seed = iter(range(1000, 100000))

    def good(path: Path, ext: str = ".jpg", split_checks=()) -> str:
        write(path, encode(photo(next(seed)), ext))
        return m.expect(path, "loaded", "", *split_checks)

    # Plain good photos, enough of them for a training epoch.
    for cls in ("ants", "bees"):
        for i in range(8):
            good(train / cls / f"{cls}{i}{'.png' if i % 3 == 0 else '.jpg'}")
        for i in range(3):
            good(val / cls / f"v{cls}{i}.jpg")

    # -- files that cannot be used (skipped, with a specific reason) --------------------------
    ants = train / "ants"
    jpg = encode(photo(7, 256, 256), ".jpg")
    cases = {
        "zero.jpg": (b"", "empty file"),
        "page.jpg": (b"<!DOCTYPE html><html><body>404 Not Found</body></html>", "HTML"),
        "vector.png": (b"<svg xmlns='http://www.w3.org/2000/svg' onload='alert(1)'/>", "SVG"),
        "script.jpg": (b"<script>alert(1)</script>", "script"),
        "garbage.webp": (os.urandom(2000), "not an image"),
        "truncated.jpg": (jpg[: len(jpg) // 2], "truncated JPEG"),
        "broken.png": (_broken_png(), "PNG"),
        "bomb.png": (png_header_only(60000, 60000), "over the limit"),
        "strip.png": (encode(np.zeros((1, 3000, 3), np.uint8), ".png"), "aspect ratio"),
        "scans.jpg": (jpg[:-2] + b"\xff\xda\x00\x08\x01\x01\x00\x00\x3f\x00" * 300 + b"\xff\xd9",
                      "scans"),
    }
    for name, (data, why) in cases.items():
        m.expect(write(ants / name, data), "skipped", why, "unreadable")
    # Damaged inside a complete JPEG: OpenCV returns a partly grey picture (training loads
    # it); only check's strict pass refuses it.
    for name, data in (("corrupt.jpg", corrupt_scan(jpg)),
                       ("cut.jpg", jpg[: len(jpg) // 2] + b"\xff\xd9")):
        m.strict_only.add(m.expect(write(ants / name, data), "skipped", "corrupt JPEG data",
                                   "unreadable"))

    # -- images that need conversion, EXIF rotation --------------------------------------------
    rgb = Image.fromarray(photo(11)[..., ::-1].copy())
    conv = {
        "gray.png": (pil_bytes(rgb.convert("L"), "PNG"), "grayscale"),
        "alpha.png": (pil_bytes(rgb.convert("RGBA"), "PNG"), "alpha"),
        "palette.png": (pil_bytes(rgb.convert("P"), "PNG"), "palette"),
        "deep.png": (encode(photo(12).astype(np.uint16) * 257, ".png"), "16-bit"),
        "cmyk.jpg": (pil_bytes(rgb.convert("CMYK"), "JPEG", quality=95), "CMYK"),
        "anim.gif": (pil_bytes(rgb.convert("P"), "GIF", save_all=True,
                               append_images=[rgb.rotate(90).convert("P")]), "animated"),
        "pages.tiff": (pil_bytes(rgb, "TIFF", save_all=True, append_images=[rgb.rotate(90)]),
                       "multi-page"),
    }
    bees = train / "bees"
    for name, (data, why) in conv.items():
        m.expect(write(bees / name, data), "loaded", why, "conversion:" + why)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise
    m.expect(write(bees / "rotated.jpg", pil_bytes(rgb, "JPEG", exif=exif.tobytes())),
             "loaded", "", "exif")

    # -- duplicates, near-duplicates, leakage --------------------------------------------------
    twin = encode(photo(21), ".jpg")
    m.expect(write(ants / "twin_a.jpg", twin), "loaded", "", "duplicate")
    m.expect(write(ants / "twin_b.jpg", twin), "loaded", "", "duplicate")
    leaked = encode(photo(22), ".png")
    m.expect(write(ants / "leaked.png", leaked), "loaded", "", "leakage:exact")
    m.expect(write(val / "ants" / "leaked_copy.png", leaked), "loaded", "", "leakage:exact")
    near = photo(23, 96, 128)
    m.expect(write(bees / "near.jpg", encode(near, ".jpg", [cv2.IMWRITE_JPEG_QUALITY, 95])),
             "loaded", "", "leakage:near")
    m.expect(write(val / "bees" / "near_small.jpg",
                   encode(cv2.resize(near, (96, 72), interpolation=cv2.INTER_AREA), ".jpg",
                          [cv2.IMWRITE_JPEG_QUALITY, 70])), "loaded", "", "leakage:near")

    # -- placeholders ----------------------------------------------------------------------------
    notfound = np.full((120, 160, 3), 235, np.uint8)
    cv2.putText(notfound, "image not found", (8, 64), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (90, 90, 90))
    gif = pil_bytes(Image.fromarray(notfound).convert("P"), "GIF")
    m.expect(write(bees / "imageNotFound.gif", gif), "loaded", "", "placeholder",
             "conversion:palette")
    blank = encode(np.full((16, 16, 3), 200, np.uint8), ".png")
    for cls in ("ants", "bees", "wasps"):
        m.expect(write(train / cls / "blank.png", blank), "loaded", "", "placeholder",
                 "duplicate")

    # -- classes: empty, colliding, hostile names ------------------------------------------------
    (train / "empty").mkdir()
    (val / "empty").mkdir()
    for i in range(2):
        good(train / "wasps" / f"w{i}.jpg")
    good(train / "Wasps" / "W0.jpg", split_checks=("class-names",))
    good(train / "café" / "c0.jpg", split_checks=("class-names",))  # NFC
    good(train / "cafe\u0301" / "c0.jpg", split_checks=("class-names", "names:nfc"))  # NFD
    good(train / HTML_CLASS / "h0.jpg", split_checks=("names:html",))
    good(train / NEWLINE_CLASS / "n0.jpg", split_checks=("names:control",))
    raw = os.fsencode(train) + b"/" + NON_UTF8
    write(raw + b"/x0.png", encode(photo(next(seed)), ".png"))
    m.expect(raw + b"/x0.png", "loaded", "", "names:utf8")
    m.expect(write(os.fsencode(ants) + b"/photo \xff.jpg", encode(photo(next(seed)), ".jpg")),
             "loaded", "", "names:utf8")
    good(ants / "ant photo.jpg", split_checks=("names:spaces",))
    good(ants / "\x1b[31mred\x1b[0m\x1b]0;title\x07.jpg", split_checks=("names:control",))
    good(ants / "Twin.jpg", split_checks=("file-names",))
    good(ants / "twin.jpg", split_checks=("file-names",))

    # -- ignored: hidden, junk, other extensions, symlinks ---------------------------------------
    m.expect(write(ants / ".DS_Store", b"\x00\x00\x00\x01Bud1"), "ignored", "hidden")
    m.expect(write(ants / "notes.txt", b"labels: ants"), "ignored", "extension")
    write(train / "__MACOSX" / "ants" / "._ants0.jpg", b"\x00\x05\x16\x07")
    m.expect(train / "__MACOSX", "ignored", "hidden or system")
    write(ants / ".ipynb_checkpoints" / "ants0-checkpoint.jpg", encode(photo(1), ".jpg"))
    m.expect(ants / ".ipynb_checkpoints", "ignored", "hidden or system")
    os.symlink(ants, ants / "loop")
    m.expect(ants / "loop", "ignored", "already scanned")
    os.symlink(bees, train / "zz_alias")
    m.expect(train / "zz_alias", "ignored", "symlink to another class folder")
    outside = base / "outside" / "secret.jpg"
    write(outside, encode(photo(2), ".jpg"))
    os.symlink(outside, bees / "outside.jpg")
    m.expect(bees / "outside.jpg", "ignored", "outside the dataset root")
    os.symlink(base / "nowhere.jpg", bees / "dangling.jpg")
    m.expect(bees / "dangling.jpg", "ignored", "broken symlink")
    os.symlink(bees / "bees1.jpg", bees / "alias.jpg")
    m.expect(bees / "alias.jpg", "ignored", "already listed through another path")
    good(val / "hornets" / "h0.jpg")  # a validation class training does not have
    m.expected.pop(os.fsdecode(val / "hornets" / "h0.jpg"))
    m.expect(val / "hornets", "ignored", "class not in the training classes")
    return m


def _broken_png() -> bytes:
    data = bytearray(encode(photo(5), ".png"))
    data[60] ^= 0xFF  # inside the compressed pixels (IDAT)
    return bytes(data)
