"""Coverage-guided fuzzing of stage 1 with atheris: ``make fuzz`` (5 minutes by default).

Feeds libFuzzer-mutated bytes, starting from valid JPEG, PNG, GIF, WebP, TIFF and BMP files
made here, to ``images.decode_bgr``: the process must never crash or hang, and every failure
must be an ``ImageLoadError`` with a reason. Our header parsing and PIL's Python image
plugins (used for WebP/TIFF headers) are instrumented for coverage.

    python fuzz/fuzz_load.py [libFuzzer flags, e.g. -max_total_time=60 -timeout=10]

``seed_images()`` is shared with ``tests/test_fuzz.py`` (the short hypothesis run).
"""

from __future__ import annotations

import io
import os
import sys
import tempfile

import cv2
import numpy as np
from PIL import Image

FUZZ_PIXELS = 1 << 22  # 4 megapixels: a mutated header may claim any size up to this


def seed_images() -> dict[str, bytes]:
    """Small valid files of every format stage 1 reads, in several flavours."""
    rng = np.random.default_rng(0)
    bgr = cv2.resize(rng.integers(0, 255, (6, 8, 3), dtype=np.uint8), (40, 30),
                     interpolation=cv2.INTER_CUBIC)  # (30, 40, 3) uint8
    rgb = Image.fromarray(bgr[..., ::-1].copy())

    def pil(im: Image.Image, fmt: str, **kw) -> bytes:
        buf = io.BytesIO()
        im.save(buf, fmt, **kw)
        return buf.getvalue()

    exif = Image.Exif()
    exif[0x0112] = 6
    return {
        "baseline.jpg": cv2.imencode(".jpg", bgr)[1].tobytes(),
        "progressive.jpg": pil(rgb, "JPEG", progressive=True, exif=exif.tobytes()),
        "cmyk.jpg": pil(rgb.convert("CMYK"), "JPEG"),
        "rgb.png": cv2.imencode(".png", bgr)[1].tobytes(),
        "deep.png": cv2.imencode(".png", bgr.astype(np.uint16) * 257)[1].tobytes(),
        "palette.png": pil(rgb.convert("P"), "PNG", transparency=0),
        "anim.gif": pil(rgb.convert("P"), "GIF", save_all=True,
                        append_images=[rgb.rotate(90).convert("P")]),
        "lossy.webp": pil(rgb, "WEBP", quality=50),
        "pages.tiff": pil(rgb, "TIFF", save_all=True, append_images=[rgb.convert("L")]),
        "rgb.bmp": cv2.imencode(".bmp", bgr)[1].tobytes(),
    }


def check_one(data: bytes) -> None:
    """The property: an (H, W, 3) uint8 picture, or ImageLoadError with a reason."""
    from pipetrace.images import ImageLoadError, LoadLimits, decode_bgr

    try:
        out = decode_bgr(data, "fuzz.bin", limits=LoadLimits(max_pixels=FUZZ_PIXELS))
    except ImageLoadError as exc:
        if not exc.reason or "fuzz.bin" not in str(exc):
            raise AssertionError(f"ImageLoadError without a reason: {exc!r}") from None
        return
    if out.dtype != np.uint8 or out.ndim != 3 or out.shape[2] != 3:
        raise AssertionError(f"decoded to {out.shape} {out.dtype}")


def main() -> None:
    import atheris

    with atheris.instrument_imports(include=["pipetrace", "PIL"]):
        import PIL.Image  # noqa: F401  (the plugins register on import)

        import pipetrace.images  # noqa: F401

    corpus = tempfile.mkdtemp(prefix="pipetrace-fuzz-")
    for name, data in seed_images().items():
        with open(os.path.join(corpus, name), "wb") as f:
            f.write(data)
    args = sys.argv + ([corpus] if not any(not a.startswith("-") for a in sys.argv[1:]) else [])
    atheris.Setup(args, lambda data: check_one(bytes(data)))
    atheris.Fuzz()


if __name__ == "__main__":
    main()
