"""The built-in dataset: seeded pictures of shapes drawn with OpenCV, saved as JPEG and PNG.

Each picture has one filled shape (circle, square, triangle or star) of random colour,
size, position and rotation over a random gradient background with distractor strokes,
blur and noise. The generator records every shape's bounding box in ``boxes.json`` so a
Grad-CAM heat map can be checked against where the shape really is.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

from .files import write_text_atomic

CLASSES = ("circle", "square", "star", "triangle")  # sorted, as ImageFolder will index them
FORMAT_VERSION = 1  # bump when the drawing changes, so caches are rebuilt


@dataclass(frozen=True)
class ShapesConfig:
    """What the built-in dataset holds."""

    train_per_class: int = 1000  # training images per class
    val_per_class: int = 100  # validation images per class
    image_size: int = 64  # side of the square pictures, pixels
    seed: int = 0  # same seed, same pictures, byte for byte
    noise: float = 14.0  # std of the Gaussian pixel noise, grey levels

    def cache_name(self) -> str:
        return (f"shapes-v{FORMAT_VERSION}-{self.train_per_class}x{self.val_per_class}"
                f"-{self.image_size}px-seed{self.seed}")


def _random_colour(rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, 256, size=3).astype(np.float64)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """(S, S, 3) float64 linear gradient between two random colours, with distractor strokes."""
    c0, c1 = _random_colour(rng), _random_colour(rng)
    angle = rng.uniform(0, 2 * math.pi)
    yy, xx = np.mgrid[0:size, 0:size] / (size - 1)
    t = (np.cos(angle) * xx + np.sin(angle) * yy)
    t = (t - t.min()) / max(t.max() - t.min(), 1e-9)
    img = c0 + (c1 - c0) * t[..., None]
    for _ in range(rng.integers(1, 4)):  # thin lines and arcs: clutter, not a shape
        colour = tuple(float(v) for v in _random_colour(rng))
        p0 = tuple(int(v) for v in rng.integers(0, size, 2))
        if rng.random() < 0.5:
            p1 = tuple(int(v) for v in rng.integers(0, size, 2))
            cv2.line(img, p0, p1, colour, 1, cv2.LINE_AA)
        else:
            r = int(rng.integers(size // 8, size // 2))
            start = float(rng.uniform(0, 360))
            cv2.ellipse(img, p0, (r, r), 0, start, start + float(rng.uniform(30, 120)), colour, 1,
                        cv2.LINE_AA)
    return img


def _polygon(kind: str, cx: float, cy: float, r: float, theta: float) -> np.ndarray:
    """Vertices (K, 2) of a square, triangle or 5-point star centred at (cx, cy), radius r."""
    if kind == "square":
        angles = theta + np.pi / 4 + np.arange(4) * np.pi / 2
        radii = np.full(4, r)
    elif kind == "triangle":
        angles = theta + np.arange(3) * 2 * np.pi / 3
        radii = np.full(3, r)
    else:  # star
        angles = theta + np.arange(10) * np.pi / 5
        radii = np.where(np.arange(10) % 2 == 0, r, r * 0.45)
    return np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], axis=1)


def draw_shape(kind: str, rng: np.random.Generator, size: int, noise: float
               ) -> tuple[np.ndarray, list[int]]:
    """One picture: (S, S, 3) uint8 BGR and the shape's box [x0, y0, x1, y1] in pixels."""
    img = _background(rng, size)
    bg_mean = img.reshape(-1, 3).mean(0)
    colour = _random_colour(rng)
    while np.abs(colour - bg_mean).sum() < 120:  # keep the shape visible, not always obvious
        colour = _random_colour(rng)
    r = rng.uniform(0.16, 0.36) * size
    cx, cy = rng.uniform(r, size - r, 2)
    theta = rng.uniform(0, 2 * np.pi)
    col = tuple(float(v) for v in colour)
    shift = 4  # sub-pixel precision for smooth anti-aliased edges
    if kind == "circle":
        cv2.circle(img, (round(cx * 16), round(cy * 16)), round(r * 16), col, -1, cv2.LINE_AA, shift)
        box = [cx - r, cy - r, cx + r, cy + r]
    else:
        pts = _polygon(kind, cx, cy, r, theta)
        cv2.fillPoly(img, [np.round(pts * 16).astype(np.int32)], col, cv2.LINE_AA, shift)
        box = [*pts.min(0), *pts.max(0)]
    if rng.random() < 0.5:
        img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.3, 1.0))
    img = img + rng.normal(0, noise, img.shape)
    clipped = [int(np.clip(round(v), 0, size - 1)) for v in box]
    return np.clip(img, 0, 255).astype(np.uint8), clipped


def render(cfg: ShapesConfig, root: str | os.PathLike) -> Path:
    """Write ``root/train/<class>/*`` and ``root/val/<class>/*``; return root.

    Two in three pictures are JPEG (quality 90), one in three PNG. Deterministic for a seed.
    """
    root = Path(root)
    boxes: dict[str, list[int]] = {}
    rng = np.random.default_rng(cfg.seed)
    for split, per_class in (("train", cfg.train_per_class), ("val", cfg.val_per_class)):
        for kind in CLASSES:
            (root / split / kind).mkdir(parents=True, exist_ok=True)
        for i in range(per_class * len(CLASSES)):
            kind = CLASSES[i % len(CLASSES)]
            img, box = draw_shape(kind, rng, cfg.image_size, cfg.noise)
            ext = ".png" if i % 3 == 2 else ".jpg"
            rel = f"{split}/{kind}/{kind}_{i // len(CLASSES):04d}{ext}"
            params = [cv2.IMWRITE_JPEG_QUALITY, 90] if ext == ".jpg" else []
            ok, buf = cv2.imencode(ext, img, params)
            if not ok:
                raise RuntimeError(f"OpenCV could not encode {rel}")
            (root / rel).write_bytes(buf.tobytes())
            boxes[rel] = box
    write_text_atomic(root / "boxes.json", json.dumps(boxes, indent=0, sort_keys=True))
    # Written last: its presence means the folder is complete and can be reused.
    write_text_atomic(root / "shapes.json", json.dumps(asdict(cfg), indent=2))
    return root


def ensure_shapes(cfg: ShapesConfig, cache_dir: str | os.PathLike) -> Path:
    """Return the dataset folder under ``cache_dir``, rendering it only if missing or stale."""
    root = Path(cache_dir) / cfg.cache_name()
    marker = root / "shapes.json"
    if marker.exists():
        try:
            if json.loads(marker.read_text()) == asdict(cfg):
                return root
        except (OSError, ValueError):
            pass
    return render(cfg, root)


def load_boxes(root: str | os.PathLike) -> dict[str, list[int]]:
    """Bounding boxes [x0, y0, x1, y1] by path relative to the dataset root."""
    return json.loads((Path(root) / "boxes.json").read_text())
