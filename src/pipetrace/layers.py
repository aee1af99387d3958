"""The prediction trace: one image through the model, every operation, shown by module.

:func:`pipetrace.ops.trace_ops` records each tensor operation of the forward pass as a graph;
this module folds those records into one row per module call at a chosen depth (the seed's
layer walk: input tensor, convolution, ReLU, pooling, fully connected, softmax), keeps the
operations that ran outside those modules (a residual block's ``out += identity``, the
``torch.flatten`` before ``fc``, a ``torch.cat``) as rows of their own, and adds the softmax
that turns the logits into probabilities. Rows are plain :class:`LayerRecord` data;
formatting happens elsewhere (torchinfo's split between ``LayerInfo`` and its printers).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass

import torch
from torch import nn

from .ops import OpRecord, OpTrace, describe, join_summary, trace_ops

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
    "Softmax": "softmax", "Identity": "identity", "MultiheadAttention": "attention",
}
SEED_KINDS = ("input tensor", "convolution", "ReLU", "pooling", "fully connected", "softmax")


@dataclass(frozen=True)
class LayerRecord:
    """One row of the prediction trace: a module call, or an operation outside the modules."""

    index: int  # 1-based, in execution order
    name: str  # module path ("features.block1.conv"), "module:op" for an operation
    # outside the chosen modules ("layer1.0:add_", "flatten" in the model's own forward),
    # or "input" / "softmax"
    kind: str  # "convolution", "ReLU", "pooling", "fully connected", "residual add", ...
    module_type: str  # "Conv2d", ...; the operation ("add_") for an operation's row
    output_shape: tuple[int, ...]
    params: int  # parameters of the module (children included), or those the operation read
    min: float
    max: float
    mean: float
    zeros: float  # share of exact zeros in the output (what ReLU does)
    micros: float  # wall time of the row's operations, microseconds
    stat: str = ""  # one-line human summary
    inputs: tuple[int, ...] = ()  # rows whose outputs this row read (0: a tensor no row made)
    join: str = ""  # branches meeting here: "residual add", "concatenation x 6" (folded rows)
    ops: tuple[int, ...] = ()  # (first, last) operation of the row in LayerTrace.ops; () none

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


def _op_row(r: OpRecord, index: int, inputs: tuple[int, ...]) -> LayerRecord:
    if r.op == "input":
        name, module_type = "input", "Tensor"
    else:
        name, module_type = (f"{r.module}:{r.op}" if r.module else r.op), r.op
    return LayerRecord(index, name, r.kind, module_type, r.output_shape, r.params, r.min,
                       r.max, r.mean, r.zeros, r.micros, r.stat, inputs,
                       r.kind if r.join else "", (r.index, r.index))


def group_by_module(trace: OpTrace, model: nn.Module, depth: int | None) -> list[LayerRecord]:
    """One row per call of a module chosen by :func:`modules_at_depth` (its operations and
    sub-calls folded in), and one per operation that ran outside every chosen call."""
    modules = dict(model.named_modules())
    chosen = {name for name, _ in modules_at_depth(model, depth)}
    holder: dict[int, int] = {0: 0}  # call -> the outermost chosen call it runs inside (0: none)
    for c in trace.calls:  # parents begin before their children
        holder[c.index] = holder[c.parent] or (c.index if c.name in chosen else 0)
    items = [(r.index, 0, r.index) for r in trace.records if not holder[r.call]]
    items += [(c.last_op if c.last_op >= c.first_op else c.first_op - 1, 1, c.index)
              for c in trace.calls if holder[c.index] == c.index]
    items.sort()
    row_of: dict[int, int] = {}  # operation -> its row
    for row, (_, is_call, i) in enumerate(items, start=1):
        c = trace.calls[i - 1] if is_call else None
        for op in range(c.first_op, c.last_op + 1) if c else (i,):
            row_of[op] = row

    def rows_of(ops: list[int]) -> tuple[int, ...]:
        return tuple(dict.fromkeys(row_of.get(i, 0) for i in ops))

    rows = []
    for row, (_, is_call, i) in enumerate(items, start=1):
        if not is_call:
            r = trace.records[i - 1]
            rows.append(_op_row(r, row, rows_of(list(r.inputs))))
            continue
        c = trace.calls[i - 1]
        inside = trace.records[c.first_op - 1:c.last_op]
        outside = [j for r in inside for j in r.inputs if j < c.first_op] or list(c.inputs)
        out = trace.records[c.output - 1] if c.output else None
        mn, mx, mean, zeros = (out.min, out.max, out.mean, out.zeros) if out else (math.nan,) * 4
        kind = layer_kind(modules[c.name]) if c.name in modules else c.module_type
        rows.append(LayerRecord(
            row, c.name, kind, c.module_type, out.output_shape if out else (), c.params, mn, mx,
            mean, zeros, sum(r.micros for r in inside), describe(kind, mn, mx, mean, zeros),
            rows_of(outside), join_summary([r.kind for r in inside if r.join]),
            (c.first_op, c.last_op) if inside else ()))
    return rows


def classifier_logits(result, classes: int | None = None, rows: int = 1) -> torch.Tensor:
    """The (rows, classes) logits in what a model returned: the tensor itself, the first item
    of a tuple or list, or a mapping's ``"logits"`` (Hugging Face's outputs are mappings)."""
    want = f"({rows}, classes)" if classes is None else f"({rows}, {classes})"
    if isinstance(result, torch.Tensor):
        logits = result
    elif isinstance(result, Mapping) and isinstance(result.get("logits"), torch.Tensor):
        logits = result["logits"]
    elif isinstance(result, tuple | list) and result and isinstance(result[0], torch.Tensor):
        logits = result[0]
    else:
        raise ValueError(f"the model returned {type(result).__name__}, not logits: return a "
                         f"{want} tensor, a tuple or list whose first item is one, or a dict "
                         "with 'logits'")
    if logits.ndim != 2 or logits.shape[0] != rows or (classes is not None
                                                    and logits.shape[1] != classes):
        raise ValueError(f"the model's logits have shape {tuple(logits.shape)}: expected {want}"
                         + ("" if classes is None else f" for {classes} class names"))
    return logits


@dataclass(frozen=True)
class LayerTrace:
    """The prediction trace of one image."""

    layers: list[LayerRecord]  # input tensor, the rows at `depth`, softmax
    logits: list[float]
    probabilities: list[float]
    top_k: list[tuple[str, float]]  # (class, probability), best first
    ops: OpTrace | None = None  # every operation of the forward pass: the graph the rows fold
    depth: int | None = None  # the module depth the rows were folded at (None: leaves)

    @property
    def predicted(self) -> str:
        return self.top_k[0][0]

    def _repr_html_(self) -> str:  # Jupyter: the report's prediction-trace table
        from .report.notebook import layers_html

        return layers_html(self)


def trace_layers(model: nn.Module, x: torch.Tensor, classes: list[str], *, top_k: int = 3,
                 depth: int | None = None, tap: Callable | None = None) -> LayerTrace:
    """Run one (1, 3, H, W) input through ``model`` in eval mode and record every operation,
    shown by module at ``depth`` (``tap``: see :func:`pipetrace.ops.trace_ops`)."""
    if x.ndim != 4 or x.shape[0] != 1:
        raise ValueError(f"trace_layers takes one image as (1, 3, H, W), got {tuple(x.shape)}")
    if depth is not None and depth < 1:
        raise ValueError(f"depth must be 1 or more (1 = the model's direct children), got {depth}")
    model.eval()
    ops = trace_ops(model, x, tap=tap)
    logits = classifier_logits(ops.result, len(classes)).detach().float()
    rows = group_by_module(ops, model, depth)
    t0 = time.perf_counter()
    probs = torch.softmax(logits, dim=1)
    soft_micros = (time.perf_counter() - t0) * 1e6
    k = min(top_k, len(classes))
    values, idx = probs[0].topk(k)
    top = [(classes[int(i)], float(v)) for v, i in zip(values, idx, strict=True)]
    mn, mx, mean, zeros = (float(v) for v in (probs.min(), probs.max(), probs.mean(),
                                              (probs == 0).float().mean()))
    fed = next((r.index for r in reversed(rows) if r.ops and r.ops[0] <= ops.output <= r.ops[1]),
               0)
    last = LayerRecord(
        len(rows) + 1, "softmax", "softmax", "Softmax", tuple(probs.shape), 0, mn, mx, mean,
        zeros, soft_micros, "top: " + ", ".join(f"{c} {p:.3f}" for c, p in top), (fed,))
    return LayerTrace([*rows, last], logits[0].tolist(), probs[0].tolist(), top, ops, depth)


def seed_kinds_in_order(layers: list[LayerRecord]) -> list[str]:
    """The seed's six layer kinds as they first appear in a trace (for checks and tests)."""
    seen: list[str] = []
    for rec in layers:
        if rec.kind in SEED_KINDS and rec.kind not in seen:
            seen.append(rec.kind)
    return seen
