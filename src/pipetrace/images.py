"""Stages 1 and 2: read an image file with OpenCV, convert BGR to RGB, hand it to PIL.

Stage 1 policy (every input ends as an (H, W, 3) uint8 BGR array):

* bytes are read with Python and decoded with ``cv2.imdecode`` (``cv2.imread`` crashes the
  process on a file name that is not valid UTF-8);
* the pixel count and aspect ratio are checked from the file's header *before* decoding,
  so a 60000 x 60000 "bomb" is refused in microseconds;
* grayscale is replicated to three channels, alpha is dropped (as PIL's ``convert('RGB')``
  does), palettes are expanded, 16-bit samples are scaled to 8 bits (not clipped to
  white), CMYK JPEGs are converted, animated or multi-page files give their first frame;
* EXIF orientation is applied (what the camera meant; ``cv2.imread`` does the same,
  PIL and torchvision's ``ImageFolder`` do not: see ``checks.check_exif_orientation``);
* a JPEG without its end-of-image marker is refused: OpenCV would return a half-grey
  picture and only print a line to stderr (corrupt data *inside* a complete JPEG still
  decodes here; ``pipetrace check`` is the strict pass that catches it, see ``doctor``);
* decoding one file is bounded in time: the pixel limit and a cap on progressive JPEG
  scans bound the work, and images over a megapixel decode under a watchdog
  (``LoadLimits.max_decode_seconds``).

Every failure raises :class:`ImageLoadError`, which names the file and the cause.
"""

from __future__ import annotations

import os
import stat
import struct
import threading
from dataclasses import dataclass
from typing import NamedTuple

import cv2
import numpy as np
from PIL import Image

MAX_IMAGE_PIXELS = 89_478_485  # same default as PIL.Image.MAX_IMAGE_PIXELS (~ 9459 x 9459)
MAX_ASPECT_RATIO = 50.0  # long side / short side; beyond this a resize is a memory bomb
MAX_JPEG_SCANS = 256  # progressive JPEGs have ~10; each scan is another pass over every pixel
MAX_DECODE_SECONDS = 10.0  # one file; a 89-megapixel JPEG decodes in about 1 s on one core
WATCHDOG_PIXELS = 1 << 20  # decode under the watchdog above 1 megapixel (a thread costs ~0.1 ms)


class ImageLoadError(ValueError):
    """A file that cannot become an (H, W, 3) uint8 image; ``str()`` names the file and cause."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"cannot decode {display_path(path)!s}: {reason}")


@dataclass(frozen=True)
class LoadLimits:
    """Limits checked from the header before any pixel is decoded."""

    max_pixels: int = MAX_IMAGE_PIXELS  # width * height above which a file is refused
    max_aspect: float = MAX_ASPECT_RATIO  # long side / short side above which it is refused
    max_jpeg_scans: int = MAX_JPEG_SCANS  # JPEG scans (SOS markers) above which it is refused
    max_decode_seconds: float | None = MAX_DECODE_SECONDS  # wall clock for one decode; None: off


def display_path(path: str | os.PathLike) -> str:
    """Quote a path for messages; bytes that are not UTF-8 show as U+FFFD, never crash a print."""
    text = os.fsencode(path).decode("utf-8", errors="replace")
    return repr(text)


# -- header sniffing ----------------------------------------------------------------------------

_SIGNATURES = (
    (b"\xff\xd8\xff", "jpeg"),
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"GIF87a", "gif"),
    (b"GIF89a", "gif"),
    (b"BM", "bmp"),
    (b"II*\x00", "tiff"),
    (b"MM\x00*", "tiff"),
)


def sniff_format(data: bytes) -> str | None:
    """Name the image format from the first bytes, or None when they are not an image we read."""
    for magic, name in _SIGNATURES:
        if data.startswith(magic):
            return name
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return None


def describe_non_image(data: bytes) -> str:
    """Say what a file that is not an image seems to be, for the error message."""
    if not data:
        return "empty file (0 bytes)"
    head = data[:64].lstrip()
    lower = head.lower()
    for marker, what in ((b"<!doctype html", "HTML"), (b"<html", "HTML"), (b"<svg", "SVG"),
                         (b"<?xml", "XML"), (b"<script", "script"), (b"{", "JSON/text")):
        if lower.startswith(marker):
            return f"not an image: {what} (starts with {head[:12].decode('latin-1')!r})"
    return f"not an image (starts with {data[:8]!r})"


_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # start of frame, any coding


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    """Walk the JPEG markers to the first SOF segment; return (width, height)."""
    i, n = 2, len(data)
    while i + 9 < n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
        elif marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length field
            i += 2
        elif marker in _SOF_MARKERS:  # FF Cn, length, precision, height, width
            return data[i + 7] << 8 | data[i + 8], data[i + 5] << 8 | data[i + 6]
        else:
            i += 2 + (data[i + 2] << 8 | data[i + 3])
    return None


def header_size(data: bytes, fmt: str) -> tuple[int, int] | None:
    """Return (width, height) from the header alone, or None when it cannot be read cheaply."""
    try:
        if fmt == "png" and data[12:16] == b"IHDR":
            return struct.unpack_from(">II", data, 16)
        if fmt == "jpeg":
            return _jpeg_size(data)
        if fmt == "gif":
            return struct.unpack_from("<HH", data, 6)
        if fmt == "bmp":
            w, h = struct.unpack_from("<ii", data, 18)
            return abs(w), abs(h)
    except struct.error:
        return None
    return None


def _header_size_with_pil(data: bytes, path) -> tuple[int, int]:
    """Fallback for WebP, TIFF and odd headers: PIL reads only the header here, lazily."""
    import io
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # DecompressionBombWarning: we apply our own limit
            with Image.open(io.BytesIO(data)) as im:
                return im.size
    except Image.DecompressionBombError as exc:
        raise ImageLoadError(path, f"over the pixel limit ({exc})") from None
    except Exception as exc:  # PIL raises many types for broken headers
        raise ImageLoadError(path, f"unreadable {type(exc).__name__}: {exc}") from None


class HeaderFacts(NamedTuple):
    """What a file's header says, whatever the limits: what :func:`judge_header` judges."""

    fmt: str  # "jpeg", "png", "gif", "bmp", "webp" or "tiff"
    width: int
    height: int
    complete: bool  # a JPEG ends with its end-of-image marker (other formats: True)
    scans: int  # JPEG start-of-scan markers in the bytes read (other formats: 0)


def header_facts(data: bytes, path, *, tail: bytes | None = None) -> HeaderFacts:
    """The header's facts, or ImageLoadError when it is not an image we can size (no decoding).

    ``data`` holds at least the file's start; ``tail`` its last bytes when ``data`` is only
    the start of a large file (``check_file``).
    """
    fmt = sniff_format(data)
    if fmt is None:
        raise ImageLoadError(path, describe_non_image(data))
    w, h = header_size(data, fmt) or _header_size_with_pil(data, path)
    if w <= 0 or h <= 0:
        raise ImageLoadError(path, f"header says {w} x {h} pixels")
    if fmt != "jpeg":
        return HeaderFacts(fmt, w, h, True, 0)
    # Inside scan data every FF is stuffed (FF 00), so FF DA counts start-of-scan markers
    # (plus, rarely, a few bytes of metadata: far from the limit).
    return HeaderFacts(fmt, w, h, _jpeg_has_end(data if tail is None else tail),
                       data.count(b"\xff\xda"))


def check_header(data: bytes, path, limits: LoadLimits = LoadLimits(), *,
                 tail: bytes | None = None) -> tuple[str, int, int]:
    """Return (format, width, height) from the header, or raise ImageLoadError (no decoding)."""
    return judge_header(header_facts(data, path, tail=tail), path, limits)


def judge_header(facts: HeaderFacts, path, limits: LoadLimits = LoadLimits()
                 ) -> tuple[str, int, int]:
    """(format, width, height) of a header within ``limits``, or ImageLoadError saying why not."""
    fmt, w, h = facts.fmt, facts.width, facts.height
    if w * h > limits.max_pixels:
        raise ImageLoadError(
            path, f"{w} x {h} = {w * h / 1e6:.1f} megapixels is over the limit of "
            f"{limits.max_pixels / 1e6:.1f} (refused before decoding)")
    aspect = max(w, h) / min(w, h)
    if aspect > limits.max_aspect:
        raise ImageLoadError(path, f"{w} x {h} has aspect ratio {aspect:.0f}:1, over the "
                             f"limit of {limits.max_aspect:.0f}:1 (refused before resizing)")
    if not facts.complete:
        raise ImageLoadError(path, "truncated JPEG (no end-of-image marker)")
    if facts.scans > limits.max_jpeg_scans:
        raise ImageLoadError(path, f"JPEG has {facts.scans} scans, over the limit of "
                             f"{limits.max_jpeg_scans} (each is a pass over every pixel)")
    return fmt, w, h


def _jpeg_has_end(data: bytes) -> bool:
    """A complete JPEG ends with FF D9, possibly followed by padding or trailing metadata."""
    return data.rfind(b"\xff\xd9", max(0, len(data) - 4096)) != -1


# -- stage 1: load --------------------------------------------------------------------------------

NO_SUCH_FILE = "no such file"  # the loader says "disappeared" when it had seen the file


def read_file(path: str | os.PathLike) -> tuple[bytes, tuple[int, int]]:
    """Read a whole file; return its bytes and (size, modification time in ns) from the
    open file itself. OSError becomes ImageLoadError naming the file."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        raise ImageLoadError(path, NO_SUCH_FILE) from None
    except IsADirectoryError:
        raise ImageLoadError(path, "is a directory") from None
    except OSError as exc:
        raise ImageLoadError(path, f"cannot read: {exc.strerror or exc}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ImageLoadError(path, "is a directory" if stat.S_ISDIR(st.st_mode)
                                 else "not a regular file")
        data = os.read(fd, st.st_size + 1)  # one call, unless the file grows meanwhile
        if len(data) > st.st_size:
            chunks = [data]
            while chunk := os.read(fd, 1 << 20):
                chunks.append(chunk)
            data = b"".join(chunks)
        return data, (st.st_size, st.st_mtime_ns)
    except OSError as exc:
        raise ImageLoadError(path, f"cannot read: {exc.strerror or exc}") from None
    finally:
        os.close(fd)


def read_bytes(path: str | os.PathLike) -> bytes:
    """Read a whole file; OSError becomes ImageLoadError naming the file."""
    return read_file(path)[0]


HEAD_BYTES = 256 * 1024  # enough for the header of every format we read, EXIF included


class CheckedFile(NamedTuple):
    """A file whose header passed :func:`check_header`, and its stamp at that moment."""

    fmt: str
    width: int
    height: int
    stamp: tuple[int, int]  # (size in bytes, modification time in ns)


def check_file(path: str | os.PathLike, limits: LoadLimits = LoadLimits()) -> CheckedFile:
    """Check a file's header and end without reading or decoding all of it."""
    facts, stamp = file_facts(path)
    return CheckedFile(*judge_header(facts, path, limits), stamp)


def file_facts(path: str | os.PathLike) -> tuple[HeaderFacts, tuple[int, int]]:
    """A file's header facts and its (size, mtime_ns), reading its start and its end only;
    ImageLoadError when it cannot be read or is not an image we can size."""
    try:
        with open(path, "rb") as f:
            head = f.read(HEAD_BYTES)
            st = os.fstat(f.fileno())
            tail = None
            if st.st_size > HEAD_BYTES:
                f.seek(max(HEAD_BYTES, st.st_size - 4096))
                tail = f.read()
    except FileNotFoundError:
        raise ImageLoadError(path, "file disappeared since the dataset was scanned") from None
    except OSError as exc:
        raise ImageLoadError(path, f"cannot read: {exc.strerror or exc}") from None
    return header_facts(head, path, tail=tail), (st.st_size, st.st_mtime_ns)


def reduction_for(width: int, height: int, target: int | None) -> int:
    """Largest JPEG DCT reduction (1, 2, 4, 8) keeping the short side >= 2 * target."""
    if not target:
        return 1
    short = min(width, height)
    for factor in (8, 4, 2):
        if short // factor >= 2 * target:
            return factor
    return 1


_REDUCED_FLAGS = {2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4,
                  8: cv2.IMREAD_REDUCED_COLOR_8}


def decode_bgr(data: bytes, path="<bytes>", *, limits: LoadLimits = LoadLimits(),
               min_side: int | None = None, header: tuple[str, int, int] | None = None
               ) -> np.ndarray:
    """Decode image bytes to (H, W, 3) uint8 BGR; raise ImageLoadError with the cause.

    ``min_side`` lets a large JPEG decode at 1/2, 1/4 or 1/8 scale (DCT scaling) while its
    short side stays at least twice ``min_side``, which is both faster and a good low-pass.
    ``header`` is what :func:`check_file` found for these very bytes (same file stamp):
    then the header is not parsed again.
    """
    fmt, w, h = header or check_header(data, path, limits)  # checked once is enough
    flags = cv2.IMREAD_COLOR
    if fmt == "jpeg":
        flags = _REDUCED_FLAGS.get(reduction_for(w, h, min_side), flags)
        if data.find(b"Exif\x00\x00", 0, 65536) < 0:  # no EXIF, no orientation: skip
            flags |= cv2.IMREAD_IGNORE_ORIENTATION  # OpenCV's own search (10% of a small JPEG)
    buf = np.frombuffer(data, np.uint8)
    try:
        if w * h > WATCHDOG_PIXELS:
            bgr = within_time(lambda: cv2.imdecode(buf, flags), limits.max_decode_seconds, path)
        else:  # small images: a watchdog thread would cost more than the decode
            bgr = cv2.imdecode(buf, flags)
    except cv2.error as exc:
        raise ImageLoadError(path, f"OpenCV refused it: {str(exc).strip().splitlines()[-1]}") from None
    if bgr is None:
        raise ImageLoadError(path, f"corrupt or unsupported {fmt.upper()} data")
    if bgr.ndim != 3 or bgr.shape[2] != 3 or bgr.dtype != np.uint8:  # IMREAD_COLOR promises this
        raise ImageLoadError(path, f"decoded to {bgr.shape} {bgr.dtype}, expected H x W x 3 uint8")
    return bgr


def within_time(work, seconds: float | None, path):
    """Return ``work()``, or raise ImageLoadError if it runs longer than ``seconds``.

    C code cannot be interrupted, so ``work`` runs in a daemon thread that is abandoned
    (it finishes in the background) when the time is up: the run goes on without it.
    OpenCV and PIL release the GIL while decoding. ``seconds=None`` calls ``work`` directly.
    """
    if not seconds:
        return work()
    box: dict = {}

    def target():
        try:
            box["value"] = work()
        except BaseException as exc:  # re-raised in the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=target, name="pipetrace-decode", daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        raise ImageLoadError(path, f"decoding took longer than {seconds:g} s (abandoned)")
    if "error" in box:
        raise box["error"]
    return box["value"]


def load_bgr(path: str | os.PathLike, *, limits: LoadLimits = LoadLimits(),
             min_side: int | None = None) -> np.ndarray:
    """Stage 1: read a file and decode it with OpenCV to (H, W, 3) uint8, BGR order."""
    return decode_bgr(read_bytes(path), path, limits=limits, min_side=min_side)


# -- stage 2: convert -----------------------------------------------------------------------------

def bgr_to_rgb(bgr: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 BGR -> new (H, W, 3) uint8 RGB array, with OpenCV; input untouched."""
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def rgb_to_pil(rgb: np.ndarray) -> Image.Image:
    """(H, W, 3) uint8 RGB -> PIL image in mode 'RGB' (PIL copies 3-channel pixels)."""
    return Image.fromarray(rgb)


def load_pil(path: str | os.PathLike, *, limits: LoadLimits = LoadLimits()) -> Image.Image:
    """Stages 1 and 2 together: the seed's chain from a file to an RGB PIL image."""
    return rgb_to_pil(bgr_to_rgb(load_bgr(path, limits=limits)))
