"""Pictures written to a folder (``trace --save-stages``, ``predict --save``)."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import numpy as np

from ..explain import png_bytes
from ..files import write_bytes_atomic
from ..trace import DataFlow


def save_stage_pictures(flow: DataFlow, folder: str) -> list[str]:
    """step01_read_file.png ...: the picture of each traced step's output, in run order."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for s in flow.stages:
        if s.picture is not None:
            slug = re.sub(r"[^a-z0-9]+", "_", s.name.lower()).strip("_")
            target = out / f"step{s.index:02d}_{slug}.png"
            write_bytes_atomic(target, png_bytes(np.ascontiguousarray(s.picture)))
            written.append(str(target))
    return written


def save_prediction_pictures(block: dict, folder: str) -> list[str]:
    """input.png, gradcam.png, feature_maps.png from a prediction block's data URIs."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for key in ("input_picture", "gradcam", "feature_maps"):
        uri = block.get(key)
        if uri:
            name = {"input_picture": "input.png"}.get(key, f"{key}.png")
            write_bytes_atomic(out / name, base64.b64decode(uri.split(",", 1)[1]))
            written.append(str(out / name))
    return written
