"""Pictures of a prediction: the strongest feature maps per convolution stage, and Grad-CAM.

Grad-CAM (Selvaraju et al., 2017) is implemented over two hooks on one layer: the class
score's gradient, averaged over space, weighs that layer's activation maps; the positive
part of the weighted sum, upsampled to the input, is the heat map.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as nnf
from torch import nn

from .layers import layer_kind


def _activation_layers(model: nn.Module, x: torch.Tensor) -> list[tuple[str, tuple[int, ...]]]:
    """(name, output shape) of every leaf module with a 4-D output, in execution order."""
    found: list[tuple[str, tuple[int, ...]]] = []
    handles = []
    for name, m in model.named_modules():
        if name and not any(True for _ in m.children()):
            handles.append(m.register_forward_hook(
                lambda mod, i, o, name=name: found.append((name, tuple(o.shape)))
                if isinstance(o, torch.Tensor) and o.ndim == 4 else None))
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return found


def gradcam_layer(model: nn.Module, x: torch.Tensor, min_side: int = 7) -> str:
    """The last 4-D activation at least ``min_side`` pixels across (e.g. resnet18's layer4)."""
    acts = _activation_layers(model, x)
    if not acts:
        raise ValueError("the model has no layer with a 4-D (N, C, H, W) output for Grad-CAM")
    big = [name for name, s in acts if min(s[2], s[3]) >= min_side]
    return big[-1] if big else acts[-1][0]


def grad_cam(model: nn.Module, x: torch.Tensor, class_index: int, layer: str | None = None
             ) -> np.ndarray:
    """(1, 3, H, W) input -> (H, W) float32 heat map in 0-1 for ``class_index``."""
    model.eval()
    layer = layer or gradcam_layer(model, x)
    module = dict(model.named_modules())[layer]
    store: dict[str, torch.Tensor] = {}

    def keep(_m, _i, out):
        store["act"] = out
        out.register_hook(lambda g: store.__setitem__("grad", g))

    handle = module.register_forward_hook(keep)
    try:
        with torch.enable_grad():
            x = x.detach().clone().requires_grad_(True)  # gradients flow even through frozen weights
            score = model(x)[0, class_index]
            model.zero_grad(set_to_none=True)
            score.backward()
    finally:
        handle.remove()
    act, grad = store["act"].detach().float(), store["grad"].detach().float()
    weights = grad.mean(dim=(2, 3), keepdim=True)  # (1, C, 1, 1)
    cam = torch.relu((weights * act).sum(1, keepdim=True))  # (1, 1, h, w)
    cam = nnf.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[0, 0]
    cam = cam - cam.min()
    return (cam / cam.max().clamp_min(1e-12)).cpu().numpy().astype(np.float32)


def heat_overlay(rgb: np.ndarray, cam: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """Blend a 0-1 heat map (JET colours) over an (H, W, 3) uint8 RGB image of the same size."""
    heat = cv2.applyColorMap((cam * 255).astype(np.uint8), cv2.COLORMAP_JET)[..., ::-1]
    return (rgb.astype(np.float32) * (1 - alpha) + heat * alpha).astype(np.uint8)


@dataclass(frozen=True)
class FeatureStage:
    name: str  # layer whose output is shown
    maps: np.ndarray  # (K, h, w) float32, each scaled to 0-1
    channels: list[int]  # which channels, strongest first


@torch.no_grad()
def strongest_feature_maps(model: nn.Module, x: torch.Tensor, k: int = 8) -> list[FeatureStage]:
    """After each ReLU/activation that follows a convolution: the ``k`` strongest channels."""
    outputs: list[tuple[str, torch.Tensor]] = []
    handles = []
    for name, m in model.named_modules():
        kind = layer_kind(m)
        if kind == "ReLU" or kind.startswith("activation"):
            handles.append(m.register_forward_hook(
                lambda mod, i, o, name=name: outputs.append((name, o.detach().float()))
                if o.ndim == 4 else None))
    try:
        model.eval()
        model(x)
    finally:
        for h in handles:
            h.remove()
    stages = []
    for name, out in outputs:
        strength = out[0].mean(dim=(1, 2))
        top = strength.topk(min(k, out.shape[1])).indices.tolist()
        maps = out[0, top]
        lo = maps.amin(dim=(1, 2), keepdim=True)
        hi = maps.amax(dim=(1, 2), keepdim=True)
        stages.append(FeatureStage(name, ((maps - lo) / (hi - lo).clamp_min(1e-12)).cpu().numpy(), top))
    return stages


def feature_grid(stages: list[FeatureStage], cell: int = 56, pad: int = 2) -> np.ndarray:
    """One (H, W, 3) uint8 RGB picture: a row of maps per stage (viridis colours)."""
    if not stages:
        return np.zeros((cell, cell, 3), np.uint8)
    cols = max(len(s.channels) for s in stages)
    grid = np.full((len(stages) * (cell + pad) + pad, cols * (cell + pad) + pad, 3), 255, np.uint8)
    for r, s in enumerate(stages):
        for c, fmap in enumerate(s.maps):
            tile = cv2.resize((fmap * 255).astype(np.uint8), (cell, cell),
                              interpolation=cv2.INTER_NEAREST)
            tile = cv2.applyColorMap(tile, cv2.COLORMAP_VIRIDIS)[..., ::-1]
            y, x0 = pad + r * (cell + pad), pad + c * (cell + pad)
            grid[y:y + cell, x0:x0 + cell] = tile
    return grid


def png_bytes(rgb: np.ndarray) -> bytes:
    """(H, W, 3) uint8 RGB -> PNG file bytes."""
    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise RuntimeError("OpenCV could not encode a PNG")
    return buf.tobytes()


def hottest_point(cam: np.ndarray) -> tuple[int, int]:
    """(x, y) of the heat map's maximum."""
    y, x = np.unravel_index(int(np.argmax(cam)), cam.shape)
    return int(x), int(y)
