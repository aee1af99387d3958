"""The operation trace: every tensor operation of one forward pass, in order, as a graph.

A :class:`torch.overrides.TorchFunctionMode` sees each call into PyTorch's Python API while
the model runs eagerly: ``F.conv2d`` inside ``nn.Conv2d``, and equally the ``out += identity``
of a residual block, ``torch.flatten``, ``torch.cat``, ``x * scale`` and attention, which no
module hook can see. Forward hooks on every module, inside the same ``with``, say which module
call each operation ran inside. Why this and not ``torch.fx`` or ``torch.export``:
docs/prediction.md, "How operations are recorded".

Each operation becomes a plain :class:`OpRecord` (stats, never the tensor, unless asked);
the grouping by module and every view live elsewhere (``layers.py``, ``report/``).
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
import weakref
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import keystr, tree_flatten, tree_flatten_with_path, tree_unflatten

KIND_BY_OP = {
    **dict.fromkeys(("conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d",
                     "conv_transpose3d"), "convolution"),
    "batch_norm": "batch norm", "layer_norm": "layer norm", "group_norm": "group norm",
    "instance_norm": "instance norm", "rms_norm": "RMS norm",
    **dict.fromkeys(("relu", "relu_", "relu6"), "ReLU"),
    **dict.fromkeys(("max_pool1d", "max_pool2d", "max_pool3d", "avg_pool1d", "avg_pool2d",
                     "avg_pool3d", "adaptive_avg_pool1d", "adaptive_avg_pool2d",
                     "adaptive_avg_pool3d", "adaptive_max_pool1d", "adaptive_max_pool2d",
                     "adaptive_max_pool3d"), "pooling"),
    "linear": "fully connected", "bilinear": "fully connected",
    **dict.fromkeys(("matmul", "mm", "bmm", "addmm", "baddbmm", "einsum"), "matrix multiply"),
    "flatten": "flatten",
    **dict.fromkeys(("softmax", "log_softmax"), "softmax"),
    **dict.fromkeys(("dropout", "dropout_", "dropout1d", "dropout2d", "dropout3d",
                     "alpha_dropout", "feature_alpha_dropout"), "dropout"),
    **dict.fromkeys(("cat", "concat", "concatenate", "stack", "hstack", "vstack"),
                    "concatenation"),
    **dict.fromkeys(("multi_head_attention_forward", "scaled_dot_product_attention"),
                    "attention"),
    **dict.fromkeys(("interpolate", "upsample", "upsample_nearest", "upsample_bilinear",
                     "pixel_shuffle"), "resize"),
    **dict.fromkeys(("add", "add_", "sub", "sub_", "rsub"), "add"),
    **dict.fromkeys(("mul", "mul_"), "multiply"),
    **dict.fromkeys(("view", "view_as", "reshape", "reshape_as", "permute", "transpose",
                     "transpose_", "expand", "expand_as", "contiguous", "squeeze", "unsqueeze",
                     "getitem", "narrow", "select", "split", "chunk", "unbind", "t", "T", "mT",
                     "movedim", "unflatten"), "reshape"),
    **dict.fromkeys(("gelu", "silu", "silu_", "hardswish", "hardswish_", "hardsigmoid",
                     "hardsigmoid_", "sigmoid", "sigmoid_", "tanh", "tanh_", "elu", "leaky_relu",
                     "mish", "softplus", "prelu", "selu"), "activation"),
}
JOIN_KIND = {"add": "residual add"}  # an add whose two inputs are two branches
TENSOR_PROPERTIES = ("T", "mT", "H", "mH", "real", "imag")  # attributes that compute a tensor
NOT_OPERATIONS = frozenset(("requires_grad_", "retain_grad", "register_hook", "deepcopy",
                            "setstate", "reduce_ex"))
_NUMPY_DTYPES = (torch.float32, torch.float64, torch.float16, torch.uint8, torch.int8,
                 torch.int16, torch.int32, torch.int64, torch.bool)
INPLACE_DUNDERS = frozenset(("iadd", "isub", "imul", "itruediv", "ifloordiv", "imod", "ipow",
                             "iand", "ior", "ixor", "ilshift", "irshift", "imatmul"))


def op_name(func) -> str:
    """PyTorch's name for ``func``: ``Tensor.__iadd__`` -> ``add_``, ``__getitem__`` ->
    ``getitem``, ``torch.flatten`` and ``Tensor.flatten`` -> ``flatten``."""
    name = getattr(func, "__name__", None) or type(func).__name__
    if name == "__get__":  # a property of Tensor (x.T, x.shape)
        return getattr(getattr(func, "__self__", None), "__name__", "attribute")
    if name.startswith("__") and name.endswith("__"):
        core = name[2:-2]
        if core in INPLACE_DUNDERS:
            core = core[1:] + "_"
        elif core in ("radd", "rmul"):
            core = core[1:]
        return {"truediv": "div", "truediv_": "div_", "rtruediv": "rdiv"}.get(core, core)
    return name.lstrip("_")


def op_kind(op: str, join: bool = False) -> str:
    kind = KIND_BY_OP.get(op, op)
    if kind == "activation":
        return f"activation ({op.rstrip('_')})"
    return JOIN_KIND.get(kind, kind) if join else kind


def describe(kind: str, mn: float, mx: float, mean: float, zeros: float) -> str:
    """The one-line statistic the views print: zeros for what ReLU does, else the range."""
    if kind == "ReLU" or kind.startswith("activation"):
        return f"{zeros:.0%} zeros, max {mx:.3g}, mean {mean:.3g}"
    return f"min {mn:.3g}, max {mx:.3g}, mean {mean:.3g}"


def tensor_stats(t: torch.Tensor) -> tuple[float, float, float, float]:
    """(min, max, mean, share of exact zeros) of a tensor's values; NaN where undefined."""
    if t.numel() == 0 or t.is_complex() or t.layout != torch.strided or t.is_meta:
        return (math.nan,) * 4
    with torch.no_grad():
        v = t.detach()
        if v.device.type == "cpu":
            # NumPy's single-threaded SIMD reductions, on a view of the same memory: on a busy
            # 2-core machine torch's OpenMP reductions took 8-15 ms each where these take
            # 0.04-0.3 ms (a 1 x 256 x 56 x 56 map); counting a bool mask is 10x faster than
            # count_nonzero on floats.
            a = (v if v.dtype in _NUMPY_DTYPES else v.float()).numpy()
            return (float(a.min()), float(a.max()), float(a.mean()),
                    np.count_nonzero(a == 0) / a.size)
        if not v.is_floating_point():
            v = v.float()
        mn, mx = torch.aminmax(v)
        mn, mx, mean, nz = torch.stack([mn.float(), mx.float(), v.mean().float(),
                                        torch.count_nonzero(v).float()]).tolist()
    return mn, mx, mean, 1.0 - nz / t.numel()


@dataclass(frozen=True)
class OpRecord:
    """One tensor operation as it ran (or one of the model's inputs, ``op == "input"``)."""

    index: int  # 1-based, in execution order; the model's inputs come first
    op: str  # PyTorch's name: "conv2d", "add_", "flatten", "cat", "multi_head_attention_forward"
    kind: str  # "convolution", "residual add", "concatenation", "attention", "reshape", ...
    module: str  # path of the innermost module call it ran inside ("" in the model's forward)
    call: int  # that call's index in OpTrace.calls (0: the model's own forward)
    inputs: tuple[int, ...]  # for each tensor argument, the record that produced it (0: none did)
    weights: tuple[str, ...]  # parameters and buffers it read ("layer1.0.conv1.weight")
    params: int  # elements of the parameters it read (buffers such as running_mean not counted)
    output_shape: tuple[int, ...]  # of its (first) tensor output
    dtype: str  # "float32", ...
    min: float
    max: float
    mean: float
    zeros: float  # share of exact zeros in the output (what ReLU does)
    micros: float  # wall time of the operation itself, microseconds
    inplace: bool = False  # it changed a tensor argument in place (ReLU(inplace=True), out += x)
    join: bool = False  # two or more records feed it: branches meet (residual add, concatenation)
    outputs: int = 1  # tensors it returned (2 for max(dim), chunk(n) gives n)
    stat: str = ""  # one-line human summary

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class ModuleCall:
    """One call of one module (a module called twice gives two calls)."""

    index: int  # 1-based, in the order the calls began
    name: str  # module path ("layer1.0.relu")
    module_type: str  # "ReLU", "BasicBlock", ...
    parent: int  # the call it ran inside (0: the model's own forward)
    first_op: int  # first record that ran inside it (and its sub-calls)
    last_op: int  # last one; last_op < first_op when none did (nn.Identity)
    inputs: tuple[int, ...]  # records that produced its tensor arguments (0: none did)
    output: int  # record that produced its (first) tensor output (0: none did)
    params: int  # parameters of the module, its children's included

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Step:
    """What :func:`replay` needs of one record (kept only with ``keep=True``)."""

    func: Callable | None  # None for the model's inputs
    spec: Any  # pytree spec of (args, kwargs)
    leaves: list  # the arguments' leaves, tensors replaced by _Ref
    outputs: list[torch.Tensor]  # copies of the tensors it returned (or changed in place)


@dataclass(frozen=True)
class _Ref:
    """A tensor argument: the output ``slot`` of record ``index``, or a weight, or a copy."""

    index: int = 0
    slot: int = 0
    weight: torch.Tensor | None = None
    const: torch.Tensor | None = None


@dataclass
class OpTrace:
    """Every operation of one forward pass; ``records[i - 1].index == i``."""

    records: list[OpRecord]
    calls: list[ModuleCall]
    output: int  # the record that produced the model's (first) tensor output (0: none did)
    outputs: list[tuple[str, int]]  # each tensor the model returned: (where, record); "" if bare
    result: Any = field(default=None, repr=False)  # what the model returned
    steps: list[Step] | None = field(default=None, repr=False)  # with keep=True: for replay

    def ancestors(self, index: int) -> set[int]:
        """Records that ``index`` depends on, itself included (the path from the inputs)."""
        seen, todo = set(), [index]
        while todo:
            i = todo.pop()
            if i and i not in seen:
                seen.add(i)
                todo.extend(self.records[i - 1].inputs)
        return seen

    def joins(self) -> list[OpRecord]:
        return [r for r in self.records if r.join]

    def to_dict(self) -> dict:
        return {"records": [r.to_dict() for r in self.records],
                "calls": [c.to_dict() for c in self.calls], "output": self.output,
                "outputs": [list(o) for o in self.outputs]}


class TraceError(ValueError):
    """The model raised inside a traced forward pass; ``records`` holds what ran before."""

    def __init__(self, message: str, records: list[OpRecord]):
        super().__init__(message)
        self.records = records


def _version(t: torch.Tensor) -> int | None:
    try:
        return t._version
    except RuntimeError:  # inference tensors keep no version counter
        return None


class _Recorder(TorchFunctionMode):
    """Fills records and calls while installed; see :func:`recording`."""

    def __init__(self, model: nn.Module, keep: bool, tap: Callable | None):
        super().__init__()
        self.keep, self.tap = keep, tap
        self.records: list[OpRecord] = []
        self.calls: list[ModuleCall] = []
        self.steps: list[Step] = []
        self.open: list[tuple[int, int]] = []  # (call index, id(module)) of calls under way
        self.made: dict[int, tuple[weakref.ref, int, int]] = {}  # id(tensor) -> (ref, rec, slot)
        self.weights = {id(t): (name, t) for name, t in
                        [*model.named_buffers(remove_duplicate=False),
                         *model.named_parameters(remove_duplicate=False)]}
        self.names = {id(m): name for name, m in model.named_modules()}
        self.sizes = {id(m): sum(p.numel() for p in m.parameters()) for m in model.modules()}
        self.failure: tuple[BaseException, str] | None = None  # (exception, where it happened)
        self.quiet = False  # True while the recorder itself computes

    # -- tensors and where they came from -------------------------------------------------------
    def source(self, t: torch.Tensor) -> _Ref:
        w = self.weights.get(id(t))
        if w is not None and w[1] is t:
            return _Ref(weight=t)
        made = self.made.get(id(t))
        if made is not None and made[0]() is t:
            return _Ref(made[1], made[2])
        return _Ref(const=t.detach().clone() if self.keep else None)

    def produced(self, t: torch.Tensor, index: int, slot: int) -> None:
        self.made[id(t)] = (weakref.ref(t), index, slot)

    def add_input(self, t: torch.Tensor) -> None:
        """Record one of the model's inputs (outside any operation: the mode must look away)."""
        self.quiet = True
        try:
            self.record("input", "input tensor", (), (), 0, [t], 0.0, False, False, None)
        finally:
            self.quiet = False

    def record(self, op: str, kind: str, inputs: tuple[int, ...], weights: tuple[str, ...],
               params: int, outs: list[torch.Tensor], micros: float, inplace: bool, join: bool,
               step: Step | None) -> OpRecord:
        index = len(self.records) + 1
        first = outs[0]
        mn, mx, mean, zeros = tensor_stats(first)
        call = self.open[-1][0] if self.open else 0
        rec = OpRecord(index, op, kind, self.calls[call - 1].name if call else "", call, inputs,
                       weights, params, tuple(first.shape), str(first.dtype).removeprefix("torch."),
                       mn, mx, mean, zeros, micros, inplace, join, len(outs),
                       describe(kind, mn, mx, mean, zeros))
        self.records.append(rec)
        for slot, o in enumerate(outs):
            self.produced(o, index, slot)
        if self.keep:
            step = step or Step(None, None, [], [])
            step.outputs = [o.detach().clone() for o in outs]
            self.steps.append(step)
        if self.tap is not None:
            self.tap(rec, first)
        return rec

    # -- the mode: every call into torch's Python API -------------------------------------------
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.quiet:
            return func(*args, **kwargs)
        name = op_name(func)
        if name in NOT_OPERATIONS or (getattr(func, "__name__", "") == "__get__"
                                      and name not in TENSOR_PROPERTIES):
            return func(*args, **kwargs)
        leaves, spec = tree_flatten((args, kwargs))
        tensors = [t for t in leaves if isinstance(t, torch.Tensor)]
        sources = [self.source(t) for t in tensors]  # before the call: += changes the answer
        versions = [_version(t) for t in tensors]
        t0 = time.perf_counter()
        try:
            out = func(*args, **kwargs)
        except Exception as exc:
            shapes = ", ".join(" x ".join(map(str, t.shape)) for t in tensors)
            self.failure = (exc, f"in operation {name} on ({shapes}){self._inside()}")
            raise
        micros = (time.perf_counter() - t0) * 1e6
        outs = [o for o in tree_flatten(out)[0] if isinstance(o, torch.Tensor)]
        changed = [t for t, v in zip(tensors, versions, strict=True)
                   if v is not None and _version(t) != v]
        if not outs and not changed:  # x.dim(), x.size(): no tensor, nothing changed
            return out
        outs = outs or changed  # x[i] = y returns None and changes x
        inputs = tuple(s.index for s in sources if s.weight is None)
        weight_ids = dict.fromkeys(id(s.weight) for s in sources if s.weight is not None)
        weights = tuple(self.weights[i][0] for i in weight_ids)
        params = sum(self.weights[i][1].numel() for i in weight_ids
                     if isinstance(self.weights[i][1], nn.Parameter))
        join = len({i for i in inputs if i}) >= 2
        step = None
        if self.keep:
            refs = iter(sources)
            step = Step(func, spec, [next(refs) if isinstance(v, torch.Tensor) else v
                                     for v in leaves], [])
        self.record(name, op_kind(name, join), inputs, weights, params, outs, micros,
                    bool(changed), join, step)
        for t in changed:  # the changed tensor now holds this record's result
            if all(t is not o for o in outs):
                self.produced(t, len(self.records), 0)
        return out

    # -- module calls ------------------------------------------------------------------------
    def _inside(self, index: int | None = None) -> str:
        index = index or (self.open[-1][0] if self.open else 0)
        if not index:
            return " in the model's forward"
        call = self.calls[index - 1]
        return f" inside {call.name!r} ({call.module_type})"

    def pre_hook(self, module: nn.Module, args, kwargs) -> None:
        sources = [self.source(t) for t in tree_flatten((args, kwargs))[0]
                   if isinstance(t, torch.Tensor)]
        index = len(self.calls) + 1
        self.calls.append(ModuleCall(
            index, self.names.get(id(module), type(module).__name__), type(module).__name__,
            self.open[-1][0] if self.open else 0, len(self.records) + 1, 0,
            tuple(s.index for s in sources if s.weight is None), 0,
            self.sizes.get(id(module), 0)))
        self.open.append((index, id(module)))

    def hook(self, module: nn.Module, _args, output) -> None:
        if not self.open or self.open[-1][1] != id(module):
            return
        index, _ = self.open.pop()
        raised = sys.exc_info()[1]  # always_call hooks run while the forward's exception is live
        if output is None and raised is not None and (self.failure is None
                                                      or self.failure[0] is not raised):
            self.failure = (raised, self._inside(index))
        first = next((t for t in tree_flatten(output)[0] if isinstance(t, torch.Tensor)), None)
        made = self.source(first).index if first is not None else 0
        self.calls[index - 1] = replace(self.calls[index - 1], last_op=len(self.records),
                                        output=made)

    def where_it_failed(self, exc: BaseException) -> str:
        if self.failure is not None and self.failure[0] is exc:
            return self.failure[1].lstrip()
        return "in the model's forward"


@contextlib.contextmanager
def recording(model: nn.Module, *, keep: bool = False, tap: Callable | None = None):
    """Record every operation of forward passes inside the ``with`` block.

    Yields the recorder; its ``records`` and ``calls`` fill as the model runs. The mode and
    the hooks are removed on exit, also after an exception.
    """
    if any(isinstance(m, torch.jit.ScriptModule) for m in model.modules()):
        raise ValueError("cannot trace a TorchScript model (its operations run outside "
                         "Python): trace the nn.Module it was scripted from")
    rec = _Recorder(model, keep, tap)
    handles = []
    try:
        for m in model.modules():
            if m is not model:
                handles.append(m.register_forward_pre_hook(rec.pre_hook, with_kwargs=True))
                handles.append(m.register_forward_hook(rec.hook, always_call=True))
        with rec:
            yield rec
    finally:
        for h in handles:
            h.remove()


def trace_ops(model: nn.Module, *inputs, keep: bool = False, tap: Callable | None = None,
              grad: bool = False) -> OpTrace:
    """Run ``model(*inputs)`` once and record every tensor operation, in order.

    The model runs as it is (call ``model.eval()`` first for an inference trace) and without
    gradients unless ``grad``. ``keep`` keeps a copy of every output for :func:`replay`
    (memory: all activations at once). ``tap(record, tensor)`` sees each record with its live
    output tensor as it is made (Grad-CAM and the feature maps use it). A model that raises
    gives a :class:`TraceError` naming the operation and module call where it happened.
    """
    with torch.set_grad_enabled(grad), recording(model, keep=keep, tap=tap) as rec:
        for t in tree_flatten(inputs)[0]:
            if isinstance(t, torch.Tensor):
                rec.add_input(t)
        try:
            result = model(*inputs)
        except Exception as exc:
            message = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
            where = rec.where_it_failed(exc)
            raise TraceError(f"the model raised {type(exc).__name__} {where}"
                             + (f": {message}" if message else ""), rec.records) from exc
        outputs = [(keystr(p), rec.source(t).index) for p, t in
                   tree_flatten_with_path(result)[0] if isinstance(t, torch.Tensor)]
    return OpTrace(rec.records, rec.calls, outputs[0][1] if outputs else 0, outputs, result,
                   rec.steps if keep else None)


@dataclass(frozen=True)
class ReplayCheck:
    index: int  # the record re-run
    op: str
    module: str
    max_abs_diff: float  # largest |replayed - recorded| over its outputs (inf: shapes differ)
    ok: bool


def replay(trace: OpTrace, *, rtol: float = 1e-5, atol: float = 1e-6) -> list[ReplayCheck]:
    """Re-run every recorded operation from its recorded inputs (the outputs of the records
    the graph says produced them, the model's weights, the recorded constants) and compare
    with its recorded output. Needs ``trace_ops(..., keep=True)``."""
    if trace.steps is None:
        raise ValueError("replay needs the tensors: trace with trace_ops(..., keep=True)")
    checks = []
    for rec, step in zip(trace.records, trace.steps, strict=True):
        if step.func is None:
            continue
        leaves = []
        for v in step.leaves:
            if not isinstance(v, _Ref):
                leaves.append(v)
            elif v.weight is not None:
                leaves.append(v.weight)
            elif v.const is not None:
                leaves.append(v.const.clone())
            else:
                leaves.append(trace.steps[v.index - 1].outputs[v.slot].clone())
        args, kwargs = tree_unflatten(leaves, step.spec)
        tensors = [t for t in leaves if isinstance(t, torch.Tensor)]
        versions = [_version(t) for t in tensors]
        with torch.no_grad():
            out = step.func(*args, **kwargs)
        outs = [o for o in tree_flatten(out)[0] if isinstance(o, torch.Tensor)]
        outs = outs or [t for t, v in zip(tensors, versions, strict=True) if _version(t) != v]
        diff = 0.0
        ok = len(outs) == len(step.outputs)
        for got, want in zip(outs, step.outputs, strict=False):
            if got.shape != want.shape or got.dtype != want.dtype:
                diff, ok = math.inf, False
                continue
            if want.numel():
                d = (got.detach().double() - want.double()).abs()
                diff = max(diff, float(d.max()))
                ok = ok and bool((d <= atol + rtol * want.double().abs()).all())
        checks.append(ReplayCheck(rec.index, rec.op, rec.module, diff, ok))
    return checks


def join_summary(kinds: list[str]) -> str:
    """'residual add', 'residual add x 2, concatenation': the joins folded into one row."""
    return ", ".join(k if n == 1 else f"{k} x {n}" for k, n in Counter(kinds).items())
