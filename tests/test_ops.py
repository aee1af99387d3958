"""The operation trace, checked by replay: every recorded operation re-run from the outputs of
the records the graph says fed it gives its recorded output; the last record is model(x);
the shapes are FX shape propagation's; and the edge cases (a raising module, tuple and dict
outputs, in-place operations) give a clear record or a one-line error, never a gap."""

import gc
import warnings
import weakref

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torch.fx import Tracer, symbolic_trace
from torch.fx.passes.shape_prop import ShapeProp, TensorMetadata

from pipetrace.layers import trace_layers
from pipetrace.model import ModelConfig, build_model
from pipetrace.ops import TraceError, _Recorder, _Ref, replay, trace_ops

pytestmark = pytest.mark.usefixtures("one_thread")

ARCHITECTURES = [  # (name, input side, extra builder arguments): random weights, eval()
    ("pipenet-s", 64, {}), ("cifarnet", 32, {}), ("resnet18", 32, {}),
    ("mobilenet_v3_small", 32, {}), ("efficientnet_b0", 32, {}), ("densenet121", 32, {}),
    ("convnext_tiny", 32, {}), ("vit_b_16", 32, {"image_size": 32}),
]


def build(name: str, extra: dict) -> nn.Module:
    torch.manual_seed(0)
    if not extra:
        return build_model(ModelConfig(name, 5)).eval()
    return torchvision.models.get_model(name, weights=None, num_classes=5, **extra).eval()


def fx_shapes(model: nn.Module, x: torch.Tensor) -> list[tuple[str, tuple]]:
    """Independent oracle: FX's graph with ShapeProp's shapes, one entry per leaf-module call
    (named) and per function or method on tensors ("op"), in order."""
    gm = symbolic_trace(model)
    ShapeProp(gm).propagate(x)
    out = []
    for n in gm.graph.nodes:
        meta = n.meta.get("tensor_meta")
        if n.op not in ("call_module", "call_function", "call_method") or meta is None:
            continue
        if getattr(n.target, "__module__", "").startswith("torchvision"):
            # torch.fx.wrap'ped Python functions (stochastic_depth): in eval they return their
            # input and run no operation, so there is nothing to record
            assert tuple(meta.shape) == tuple(n.args[0].meta["tensor_meta"].shape)
            continue
        if not isinstance(meta, TensorMetadata):  # a leaf module returning (out, weights)
            meta = meta[0]
        elif getattr(n.target, "__name__", "") == "getitem" and not isinstance(
                n.args[0].meta.get("tensor_meta"), TensorMetadata):
            continue  # indexing the module's tuple: Python, not an operation
        if isinstance(meta, TensorMetadata):
            out.append((n.target if n.op == "call_module" else "op", tuple(meta.shape)))
    return out


def recorded_shapes(trace, model: nn.Module) -> list[tuple[str, tuple]]:
    """The trace folded as FX folds a forward: calls of torch.nn leaf modules, operations."""
    modules = dict(model.named_modules())
    leafy = {c.index for c in trace.calls
             if Tracer().is_leaf_module(modules[c.name], c.name)}
    holder = {0: 0}
    for c in trace.calls:
        holder[c.index] = holder[c.parent] or (c.index if c.index in leafy else 0)
    items = [(r.index, "op", r.output_shape) for r in trace.records
             if not holder[r.call] and r.op != "input"]
    for c in trace.calls:
        if holder[c.index] == c.index:
            items.append((c.last_op, c.name, trace.records[c.output - 1].output_shape))
    return [(name, shape) for _, name, shape in sorted(items)]


@pytest.mark.parametrize("name, side, extra", ARCHITECTURES, ids=[a[0] for a in ARCHITECTURES])
def test_replay_reproduces_every_operation(name, side, extra):
    model = build(name, extra)
    x = torch.randn(1, 3, side, side)
    trace = trace_ops(model, x, keep=True)
    checks = replay(trace)
    assert len(checks) == len(trace.records) - 1  # every operation but the input
    assert [c for c in checks if not c.ok] == []
    with torch.no_grad():
        expected = model(x)
    assert trace.output == len(trace.records)  # the last record is the model's output ...
    torch.testing.assert_close(trace.steps[-1].outputs[0], expected, rtol=1e-5, atol=1e-5)
    for rec, step in zip(trace.records, trace.steps, strict=True):  # ... and each is its tensor
        assert all(0 <= i < rec.index for i in rec.inputs)  # a graph in execution order
        out = step.outputs[0]
        assert rec.output_shape == tuple(out.shape)
        if out.is_floating_point() and out.numel():
            assert rec.max == pytest.approx(float(out.max()), rel=1e-6, abs=1e-6)
            assert rec.zeros == pytest.approx(float((out == 0).double().mean()), abs=1e-12)
    assert recorded_shapes(trace, model) == fx_shapes(model, x)


def test_resnet18_records_8_residual_adds_with_two_inputs_and_the_flatten_before_fc():
    model = build("resnet18", {})
    trace = trace_ops(model, torch.randn(1, 3, 32, 32))
    rec = {r.index: r for r in trace.records}
    calls = {c.name: c for c in trace.calls}
    adds = [r for r in trace.records if r.op.startswith("add")]
    assert len(adds) == 8 and all(r.join and r.kind == "residual add" and r.inplace for r in adds)
    for add in adds:
        block = calls[add.module]
        assert block.module_type == "BasicBlock" and len(set(add.inputs)) == 2
        main, identity = (rec[i] for i in add.inputs)
        assert main.module == f"{add.module}.bn2"
        if f"{add.module}.downsample" in calls:
            assert identity.module == f"{add.module}.downsample.1"
        else:
            assert identity.index == block.inputs[0]  # the block's own input
    (flatten,) = [r for r in trace.records if r.op == "flatten"]
    fc = rec[trace.output]
    assert (fc.module, fc.op, fc.inputs) == ("fc", "linear", (flatten.index,))
    assert flatten.module == "" and rec[flatten.inputs[0]].module == "avgpool"
    assert fc.weights == ("fc.weight", "fc.bias") and fc.params == 512 * 5 + 5


class Plain(nn.Module):
    """Residual block A, and the same block with its skip removed (a mutation)."""

    def __init__(self, skip: bool):
        super().__init__()
        self.skip = skip
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        y = self.conv(x)
        return self.relu(y + x if self.skip else y)


def test_a_mutation_of_the_model_changes_the_trace():
    x = torch.randn(1, 4, 8, 8)
    with_skip, without = trace_ops(Plain(True), x), trace_ops(Plain(False), x)
    assert [(r.op, r.inputs) for r in with_skip.records] == [
        ("input", ()), ("conv2d", (1,)), ("add", (2, 1)), ("relu", (3,))]
    assert [(r.op, r.inputs) for r in without.records] == [
        ("input", ()), ("conv2d", (1,)), ("relu", (2,))]
    assert with_skip.joins()[0].kind == "residual add" and without.joins() == []


def test_replay_catches_a_wrong_edge(monkeypatch):
    """Plant a bug in the recorder (each input pointed at the record before its producer):
    the trace still runs, replay says which operations it broke."""
    real = _Recorder.source

    def off_by_one(self, t):
        ref = real(self, t)
        return _Ref(ref.index - 1, 0) if ref.index > 1 else ref

    monkeypatch.setattr(_Recorder, "source", off_by_one)
    trace = trace_ops(Plain(True), torch.randn(1, 4, 8, 8), keep=True)
    assert [c.op for c in replay(trace) if not c.ok] == ["add", "relu"]


class Functional(nn.Module):
    """No module for any of these: only functions and tensor methods."""

    def forward(self, x):
        a = F.relu(x)
        b = torch.cat([a, x * 2], dim=1)  # (1, 6, 8, 8)
        c = F.interpolate(b, scale_factor=2.0)  # (1, 6, 16, 16)
        d = c.flatten(2).transpose(1, 2)  # (1, 256, 6)
        e = d @ d.transpose(1, 2)  # (1, 256, 256)
        return F.softmax(e.mean(dim=(1,)), dim=-1)


def test_functional_operations_are_recorded_with_their_kinds():
    trace = trace_ops(Functional(), torch.randn(1, 3, 8, 8), keep=True)
    assert [(r.op, r.kind) for r in trace.records] == [
        ("input", "input tensor"), ("relu", "ReLU"), ("mul", "multiply"),
        ("cat", "concatenation"), ("interpolate", "resize"), ("flatten", "flatten"),
        ("transpose", "reshape"), ("transpose", "reshape"), ("matmul", "matrix multiply"),
        ("mean", "mean"), ("softmax", "softmax")]
    cat = trace.records[3]
    assert cat.join and cat.inputs == (2, 3) and cat.output_shape == (1, 6, 8, 8)
    assert trace.records[8].inputs == (7, 8)  # d @ d.T: two records, one per operand
    assert all(c.ok for c in replay(trace))


class Raises(nn.Module):
    def __init__(self, where: str):
        super().__init__()
        self.where = where
        self.body = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())

    def forward(self, x):
        x = self.body(x)
        if self.where == "python":
            raise KeyError("no such head")
        return x.view(7, -1)  # 4 x 6 x 6 elements do not split into 7 rows


@pytest.mark.parametrize("where, says", [
    ("op", "the model raised RuntimeError in operation view on (1 x 4 x 6 x 6) in the model's "
           "forward: shape '[7, -1]' is invalid for input of size 144"),
    ("python", "the model raised KeyError in the model's forward: 'no such head'"),
])
def test_a_model_that_raises_gives_one_line_and_leaves_nothing_installed(where, says):
    model = Raises(where)
    with pytest.raises(TraceError) as info:
        trace_ops(model, torch.randn(1, 3, 8, 8))
    assert str(info.value) == says and "\n" not in str(info.value)
    assert [r.op for r in info.value.records] == ["input", "conv2d", "relu"]  # what ran
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    assert not torch._C._is_torch_function_mode_enabled()


def test_the_module_that_raised_is_named():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Sequential(nn.ReLU(), nn.Linear(5, 2)))
    with pytest.raises(TraceError, match=r"in operation linear on \(1 x 4 x 6 x 6, 2 x 5, 2\) "
                                         r"inside '1.1' \(Linear\): mat1 and mat2"):
        trace_ops(model, torch.randn(1, 3, 8, 8))


class TwoHeads(nn.Module):
    def __init__(self, as_dict: bool):
        super().__init__()
        self.as_dict = as_dict
        self.body = nn.Conv2d(3, 4, 3)
        self.head = nn.Linear(4, 3)
        self.aux = nn.Conv2d(4, 2, 1)

    def forward(self, x):
        f = self.body(x)
        logits = self.head(f.mean(dim=(2, 3)))
        aux = self.aux(f)
        return {"logits": logits, "aux": aux} if self.as_dict else (logits, aux)


@pytest.mark.parametrize("as_dict, paths", [(False, ["[0]", "[1]"]),
                                            (True, ["['logits']", "['aux']"])])
def test_tuple_and_dict_outputs_are_recorded_and_the_logits_found(as_dict, paths):
    model = TwoHeads(as_dict).eval()
    trace = trace_ops(model, torch.randn(1, 3, 8, 8))
    head = next(r.index for r in trace.records if r.module == "head")
    aux = next(r.index for r in trace.records if r.module == "aux")
    assert trace.outputs == list(zip(paths, (head, aux), strict=True)) and trace.output == head
    layers = trace_layers(model, torch.randn(1, 3, 8, 8), list("abc"))
    assert layers.layers[-1].inputs == (next(r.index for r in layers.layers if r.name == "head"),)


class InPlace(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        y = self.relu(self.conv(x))
        y[:, 0] = 0.0  # setitem returns nothing and changes y
        y.mul_(2)
        return y + 1


def test_in_place_operations_are_records_that_own_the_changed_tensor():
    trace = trace_ops(InPlace(), torch.randn(1, 3, 4, 4), keep=True)
    assert [(r.op, r.inputs, r.inplace) for r in trace.records] == [
        ("input", (), False), ("conv2d", (1,), False), ("relu", (2,), True),
        ("setitem", (3,), True), ("mul_", (4,), True), ("add", (5,), False)]
    conv, relu = trace.records[1], trace.records[2]
    assert conv.zeros < 0.1 < relu.zeros  # the conv's statistic was taken before ReLU changed it
    assert all(c.ok for c in replay(trace))


def test_without_keep_no_activation_outlives_the_trace():
    model, x = build("resnet18", {}), torch.randn(1, 3, 32, 32)
    alive = []
    trace = trace_ops(model, x, tap=lambda rec, out: alive.append(weakref.ref(out)))
    assert len(alive) == len(trace.records) == 70 and trace.steps is None
    del trace  # and with it the model's output
    gc.collect()
    assert [r() for r in alive if r() is not None] == [x]  # only the input the test holds


def test_torchscript_is_refused_in_one_line():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.script is deprecated
        scripted = torch.jit.script(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="cannot trace a TorchScript model"):
        trace_ops(scripted, torch.randn(1, 2))
