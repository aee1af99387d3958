"""The prediction trace: one image through the model's layers, recorded with forward hooks.

Hooks live only inside :func:`recording` (a context manager that always removes them, as
fastai's ``Hooks`` does); each layer becomes a plain :class:`LayerRecord`, and formatting
happens elsewhere (torchinfo's split between ``LayerInfo`` and its printers).
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import asdict, dataclass

import torch
from torch import nn

KIND_BY_TYPE = {
    "Conv1d": "convolution", "Conv2d": "convolution", "Conv3d": "convolution",
    "ConvTranspose2d": "convolution",
    "BatchNorm2d": "batch norm", "BatchNorm1d": "batch norm", "SyncBatchNorm": "batch norm",
    "LayerNorm": "layer norm", "LayerNorm2d": "layer norm", "GroupNorm": "group norm",
    "ReLU": "ReLU", "ReLU6": "ReLU",
    "GELU": "activation", "SiLU": "activation", "Hardswish": "activation",
    "Hardsigmoid": "activation", "Sigmoid": "activation", "Tanh": "activation",
    "MaxPool2d": "pooling", "AvgPool2d": "pooling", "AdaptiveAvgPool2d": "pooling",
    "AdaptiveMaxPool2d": "pooling",
    "Linear": "fully connected", "Flatten": "flatten", "Dropout": "dropout",
    "Softmax": "softmax", "Identity": "identity",
}
SEED_KINDS = ("input tensor", "convolution", "ReLU", "pooling", "fully connected", "softmax")


@dataclass(frozen=True)
class LayerRecord:
    """One layer as the image passed through it."""

    index: int  # 1-based, in execution order
    name: str  # module path ("features.block1.conv"), or "input" / "softmax"
    kind: str  # "convolution", "ReLU", "pooling", "fully connected", "softmax", ...
    module_type: str  # "Conv2d", ... ("Tensor" for the input)
    output_shape: tuple[int, ...]
    params: int  # parameters owned by this layer (and its children, when folded)
    min: float
    max: float
    mean: float
    zeros: float  # share of exact zeros in the output (what ReLU does)
    micros: float  # wall time of this layer's forward, microseconds
    stat: str = ""  # one-line human summary

    def to_dict(self) -> dict:
        return asdict(self)


def layer_kind(module: nn.Module) -> str:
    name = type(module).__name__
    if name in KIND_BY_TYPE:
        kind = KIND_BY_TYPE[name]
        return f"activation ({name})" if kind == "activation" else kind
    if any(True for _ in module.children()):
        return f"block ({name})"
    return name


def modules_at_depth(model: nn.Module, depth: int | None) -> list[tuple[str, nn.Module]]:
    """Leaves, or modules folded at ``depth`` (1 = the model's direct children)."""
    chosen = []
    for name, module in model.named_modules():
        if not name:
            continue
        level = name.count(".") + 1
        is_leaf = not any(True for _ in module.children())
        if (depth is not None and level == depth) or (is_leaf and (depth is None or level < depth)):
            chosen.append((name, module))
    return chosen


def _stats(t: torch.Tensor) -> tuple[float, float, float, float]:
    tf = t.detach().float()
    return float(tf.min()), float(tf.max()), float(tf.mean()), float((tf == 0).float().mean())


def _first_tensor(out):
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)):
        for o in out:
            if isinstance(o, torch.Tensor):
                return o
    return None


def describe(kind: str, mn: float, mx: float, mean: float, zeros: float) -> str:
    if kind == "ReLU" or kind.startswith("activation"):
        return f"{zeros:.0%} zeros, max {mx:.3g}, mean {mean:.3g}"
    return f"min {mn:.3g}, max {mx:.3g}, mean {mean:.3g}"


@contextlib.contextmanager
def recording(model: nn.Module, depth: int | None = None):
    """Record every chosen layer's output during forward passes inside the ``with`` block.

    Yields the list that fills with :class:`LayerRecord` objects (input and softmax are
    added by :func:`trace_layers`). Hooks are removed on exit, also after an exception.
    """
    records: list[LayerRecord] = []
    starts: dict[int, float] = {}
    handles = []

    def pre_hook(module, _inputs):
        starts[id(module)] = time.perf_counter()

    def make_hook(name: str):
        def hook(module, _inputs, output):
            micros = (time.perf_counter() - starts.pop(id(module), time.perf_counter())) * 1e6
            t = _first_tensor(output)
            if t is None:
                return
            kind = layer_kind(module)
            mn, mx, mean, zeros = _stats(t)
            records.append(LayerRecord(
                index=len(records) + 2, name=name, kind=kind, module_type=type(module).__name__,
                output_shape=tuple(t.shape), params=sum(p.numel() for p in module.parameters()),
                min=mn, max=mx, mean=mean, zeros=zeros, micros=micros,
                stat=describe(kind, mn, mx, mean, zeros)))
        return hook

    try:
        for name, module in modules_at_depth(model, depth):
            handles.append(module.register_forward_pre_hook(pre_hook))
            handles.append(module.register_forward_hook(make_hook(name)))
        yield records
    finally:
        for h in handles:
            h.remove()


@dataclass(frozen=True)
class LayerTrace:
    """The prediction trace of one image."""

    layers: list[LayerRecord]  # input tensor, the model's layers, softmax
    logits: list[float]
    probabilities: list[float]
    top_k: list[tuple[str, float]]  # (class, probability), best first

    @property
    def predicted(self) -> str:
        return self.top_k[0][0]

    def _repr_html_(self) -> str:  # Jupyter: the report's prediction-trace table
        from .report.notebook import layers_html

        return layers_html(self)


@torch.no_grad()
def trace_layers(model: nn.Module, x: torch.Tensor, classes: list[str], *, top_k: int = 3,
                 depth: int | None = None) -> LayerTrace:
    """Run one (1, 3, H, W) input through ``model`` in eval mode and record every layer."""
    if x.ndim != 4 or x.shape[0] != 1:
        raise ValueError(f"trace_layers takes one image as (1, 3, H, W), got {tuple(x.shape)}")
    model.eval()
    mn, mx, mean, zeros = _stats(x)
    first = LayerRecord(1, "input", "input tensor", "Tensor", tuple(x.shape), 0, mn, mx, mean,
                        zeros, 0.0, describe("input tensor", mn, mx, mean, zeros))
    with recording(model, depth) as recs:
        logits = model(x).float()
    t0 = time.perf_counter()
    probs = torch.softmax(logits, dim=1)
    soft_micros = (time.perf_counter() - t0) * 1e6
    k = min(top_k, len(classes))
    values, idx = probs[0].topk(k)
    top = [(classes[int(i)], float(v)) for v, i in zip(values, idx, strict=True)]
    mn, mx, mean, zeros = _stats(probs)
    last = LayerRecord(
        len(recs) + 2, "softmax", "softmax", "Softmax", tuple(probs.shape), 0, mn, mx, mean,
        zeros, soft_micros, "top: " + ", ".join(f"{c} {p:.3f}" for c, p in top))
    return LayerTrace([first, *recs, last], logits[0].tolist(), probs[0].tolist(), top)


def seed_kinds_in_order(layers: list[LayerRecord]) -> list[str]:
    """The seed's six layer kinds as they first appear in a trace (for checks and tests)."""
    seen: list[str] = []
    for rec in layers:
        if rec.kind in SEED_KINDS and rec.kind not in seen:
            seen.append(rec.kind)
    return seen
