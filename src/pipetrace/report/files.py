"""Pictures written to a folder (``trace --save-stages``, ``predict --save``)."""

from __future__ import annotations

import base64
from pathlib import Path

import numpy as np
import torch

from ..explain import png_bytes
from ..files import write_bytes_atomic
from ..trace import chw_picture
from ..transforms import Preprocess


def _as_picture(t: torch.Tensor, pre: Preprocess) -> np.ndarray | None:
    """Best-effort display of a stage-3/4 tensor, planted bugs included."""
    t = t.detach().cpu()
    if t.ndim == 4:
        t = t[0]
    if t.ndim == 3 and t.shape[0] != 3 and t.shape[-1] == 3:  # HWC
        t = t.permute(2, 0, 1)
    if t.ndim != 3 or t.shape[0] != 3:
        return None
    if t.dtype != torch.uint8 and float(t.max()) > 2.0 and float(t.min()) >= 0:  # 0-255 floats
        t = t.clamp(0, 255).round().to(torch.uint8)
    return chw_picture(t, pre)


def save_stage_pictures(outputs: dict, pre: Preprocess, folder: str) -> list[str]:
    """stage1_load.png ... stage4_batch.png: the image as it leaves each stage."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    pictures = {
        "stage1_load_bgr_as_rgb.png": outputs["bgr"],
        "stage2_convert_rgb.png": np.asarray(outputs["pil"]),
        "stage3_transform.png": _as_picture(outputs["tensor"], pre),
        "stage4_batch_first.png": _as_picture(outputs["batch"], pre),
    }
    written = []
    for name, pic in pictures.items():
        if pic is not None:
            write_bytes_atomic(out / name, png_bytes(np.ascontiguousarray(pic)))
            written.append(str(out / name))
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
