"""Pictures of a prediction: the strongest feature maps per activation, and Grad-CAM.

Both read the operation trace (``ops.py``), not module names. Grad-CAM (Selvaraju et al.,
2017) weighs the activation maps of one recorded operation, the last spatial feature map on
the graph's path from the input to the logits, by the class score's gradient averaged over
space; the positive part of the weighted sum, upsampled to the input, is the heat map.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as nnf
from torch import nn

from .layers import classifier_logits
from .ops import OpRecord, OpTrace, trace_ops


def gradcam_target(trace: OpTrace, min_side: int = 7) -> OpRecord:
    """The last (1, C, H, W) feature map on the path from the input to the model's output,
    at least ``min_side`` pixels across if any is (resnet18's last block at 224 x 224 is
    7 x 7), found from the recorded graph: a branch that does not reach the output is no
    candidate, whatever its modules are called."""
    path = trace.ancestors(trace.output)
    maps = [r for r in trace.records if r.index in path and r.op != "input"
            and len(r.output_shape) == 4 and min(r.output_shape[2:]) > 1]
    if not maps:
        raise ValueError("Grad-CAM needs a spatial feature map (N, C, H, W) on the path to the "
                         "model's output, and this model has none")
    big = [r for r in maps if min(r.output_shape[2:]) >= min_side]
    return (big or maps)[-1]


def grad_cam(model: nn.Module, x: torch.Tensor, class_index: int,
             target: OpRecord | None = None) -> np.ndarray:
    """(1, 3, H, W) input -> (H, W) float32 heat map in 0-1 for ``class_index``, at the
    output of the recorded operation ``target`` (default: :func:`gradcam_target`)."""
    return grad_cams(model, x, [class_index], target)[0]


def grad_cams(model: nn.Module, x: torch.Tensor, class_indices, target: OpRecord | None = None
              ) -> np.ndarray:
    """(N, 3, H, W) inputs -> (N, H, W) heat maps, one per image for its own class, from one
    forward and one backward pass (in eval mode the images do not mix: each score's gradient
    reaches only its own image's activations)."""
    model.eval()
    target = target or gradcam_target(trace_ops(model, x[:1]))
    store: dict[str, torch.Tensor] = {}

    def tap(rec: OpRecord, out: torch.Tensor) -> None:
        if rec.index != target.index:
            return
        if (rec.op, rec.output_shape[1:]) != (target.op, target.output_shape[1:]):
            raise RuntimeError(f"the model ran differently with gradients on: operation "
                               f"{rec.index} is {rec.op} {rec.output_shape}, was {target.op} "
                               f"{target.output_shape}")
        store["act"] = out.detach().clone()  # its value now, before any in-place change
        out.register_hook(lambda g: store.__setitem__("grad", g))

    x = x.detach().clone().requires_grad_(True)  # gradients flow even through frozen weights
    trace = trace_ops(model, x, tap=tap, grad=True)
    if "act" not in store:
        raise RuntimeError(f"operation {target.index} ({target.op}) did not run again")
    logits = classifier_logits(trace.result, rows=x.shape[0])
    rows = torch.arange(logits.shape[0])
    score = logits[rows, torch.as_tensor(list(class_indices))].sum()
    model.zero_grad(set_to_none=True)
    score.backward()
    act, grad = store["act"].float(), store["grad"].detach().float()
    weights = grad.mean(dim=(2, 3), keepdim=True)  # (N, C, 1, 1)
    cam = torch.relu((weights * act).sum(1, keepdim=True))  # (N, 1, h, w)
    cam = nnf.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    cam = cam - cam.amin(dim=(1, 2), keepdim=True)
    cam = cam / cam.amax(dim=(1, 2), keepdim=True).clamp_min(1e-12)
    return cam.detach().cpu().numpy().astype(np.float32)


def heat_overlay(rgb: np.ndarray, cam: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """Blend a 0-1 heat map (JET colours) over an (H, W, 3) uint8 RGB image of the same size."""
    heat = cv2.applyColorMap((cam * 255).astype(np.uint8), cv2.COLORMAP_JET)[..., ::-1]
    return (rgb.astype(np.float32) * (1 - alpha) + heat * alpha).astype(np.uint8)


@dataclass(frozen=True)
class FeatureStage:
    name: str  # where the activation ran ("features.block1.relu"), with its operation index
    maps: np.ndarray  # (K, h, w) float32, each scaled to 0-1
    channels: list[int]  # which channels, strongest first


class FeatureMaps:
    """A tap for :func:`pipetrace.ops.trace_ops`: after each ReLU or other activation with a
    (1, C, H, W) output, its ``k`` strongest channels (by mean), kept as small arrays."""

    def __init__(self, k: int = 8):
        self.k = k
        self.stages: list[FeatureStage] = []

    def __call__(self, rec: OpRecord, out: torch.Tensor) -> None:
        if not (rec.kind == "ReLU" or rec.kind.startswith("activation")) or out.ndim != 4:
            return
        out = out.detach().float()
        top = out[0].mean(dim=(1, 2)).topk(min(self.k, out.shape[1])).indices.tolist()
        maps = out[0, top]
        lo = maps.amin(dim=(1, 2), keepdim=True)
        hi = maps.amax(dim=(1, 2), keepdim=True)
        name = f"{rec.module or rec.op} (operation {rec.index})"
        self.stages.append(FeatureStage(name, ((maps - lo) / (hi - lo).clamp_min(1e-12))
                                        .cpu().numpy(), top))


def strongest_feature_maps(model: nn.Module, x: torch.Tensor, k: int = 8) -> list[FeatureStage]:
    """One traced forward pass; the ``k`` strongest channels after each activation."""
    model.eval()
    features = FeatureMaps(k)
    trace_ops(model, x, tap=features)
    return features.stages


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


@dataclass(frozen=True)
class Explanation:
    """The pictures of one prediction, computed once for every view."""

    input: np.ndarray  # (H, W, 3) uint8 RGB: the model's input, de-normalized
    gradcam_op: int  # the operation record whose output Grad-CAM weighed
    gradcam_layer: str  # where that operation ran ("features.block3.relu"; the op if top level)
    cam: np.ndarray  # (H, W) float32 heat map in 0-1
    hottest: tuple[int, int]  # (x, y) of the heat map's maximum
    gradcam: np.ndarray  # (H, W, 3) uint8 RGB: the heat map over the input
    feature_maps: np.ndarray  # (H, W, 3) uint8 RGB: one row of maps per stage
    feature_stages: list[str]  # the grid's rows, top to bottom


def explain(model: nn.Module, x: torch.Tensor, trace: OpTrace, class_index: int,
            picture: np.ndarray, stages: list[FeatureStage]) -> Explanation:
    """Grad-CAM for ``class_index`` at the target the trace's graph gives, over ``picture``
    (the input as (H, W, 3) uint8 RGB), and the feature-map grid of ``stages``."""
    target = gradcam_target(trace)
    cam = grad_cam(model, x, class_index, target)
    return Explanation(picture, target.index, target.module or target.op, cam,
                       hottest_point(cam), heat_overlay(picture, cam), feature_grid(stages),
                       [s.name for s in stages])
