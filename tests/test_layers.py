"""The prediction trace by module: true shapes (checked by torch.fx shape propagation, module
calls and the operations between them), the seed's six kinds, depth, top-k."""

import pytest
import torch
from torch.fx import symbolic_trace
from torch.fx.passes.shape_prop import ShapeProp, TensorMetadata

from pipetrace.layers import (
    SEED_KINDS,
    classifier_logits,
    modules_at_depth,
    seed_kinds_in_order,
    trace_layers,
)
from pipetrace.model import ModelConfig, build_model
from pipetrace.ops import recording

pytestmark = pytest.mark.usefixtures("one_thread")


def fx_rows(model, x) -> list[tuple[str, tuple]]:
    """Independent oracle: each leaf-module call and each function or method call between
    them, in order, with its output shape, by FX shape propagation."""
    gm = symbolic_trace(model)
    ShapeProp(gm).propagate(x)
    return [(n.target if n.op == "call_module" else "op", tuple(n.meta["tensor_meta"].shape))
            for n in gm.graph.nodes if n.op in ("call_module", "call_function", "call_method")
            and isinstance(n.meta.get("tensor_meta"), TensorMetadata)]


@pytest.mark.parametrize("name, size", [("pipenet-s", 224), ("resnet18", 64), ("cifarnet", 32)])
def test_recorded_rows_agree_with_fx(name, size):
    torch.manual_seed(0)
    model = build_model(ModelConfig(name, 5)).eval()
    x = torch.randn(1, 3, size, size)
    trace = trace_layers(model, x, [f"c{i}" for i in range(5)])
    modules = dict(model.named_modules())
    recorded = [(r.name if r.name in modules else "op", r.output_shape)
                for r in trace.layers[1:-1]]  # without input and softmax
    assert recorded == fx_rows(model, x)  # same calls, same order, the adds and flatten too


def test_resnet_rows_show_the_add_between_bn2_and_the_relu_that_reads_it():
    """The hooks-only trace showed `bn2 -> relu`; the ReLU reads `bn2 + identity`."""
    model = build_model(ModelConfig("resnet18", 3)).eval()
    trace = trace_layers(model, torch.randn(1, 3, 64, 64), list("abc"))
    rows = {r.index: r for r in trace.layers}
    adds = [r for r in trace.layers if r.kind == "residual add"]
    assert len(adds) == 8 and all(r.join == "residual add" for r in adds)
    for add in adds:
        block = add.name.split(":")[0]  # "layer1.0:add_"
        assert rows[add.inputs[0]].name == f"{block}.bn2"
        identity = rows[add.inputs[1]].name
        assert identity.endswith(("downsample.1", ".relu", "maxpool")), identity
        after = rows[add.index + 1]
        assert after.name == f"{block}.relu" and after.inputs == (add.index,)
    flatten = next(r for r in trace.layers if r.kind == "flatten")
    assert rows[flatten.index + 1].name == "fc" and rows[flatten.index + 1].inputs == (flatten.index,)
    assert trace.layers[-1].inputs == (trace.layers[-2].index,)  # softmax reads fc


def test_builtin_cnn_shows_the_seed_six_kinds_in_order():
    model = build_model(ModelConfig("pipenet-s", 4))
    trace = trace_layers(model, torch.randn(1, 3, 224, 224), ["a", "b", "c", "d"])
    assert seed_kinds_in_order(trace.layers) == list(SEED_KINDS)
    assert trace.layers[0].output_shape == (1, 3, 224, 224)
    assert trace.layers[-1].kind == "softmax"
    assert [r.name for r in trace.layers[1:-1]] == [n for n, _ in modules_at_depth(model, None)]
    assert all(r.inputs == (r.index - 1,) for r in trace.layers[1:])  # one chain, no join


def test_probabilities_sum_to_one_and_top_is_argmax():
    torch.manual_seed(1)
    model = build_model(ModelConfig("pipenet-tiny", 6)).eval()
    x = torch.randn(1, 3, 224, 224)
    classes = list("abcdef")
    trace = trace_layers(model, x, classes, top_k=3)
    assert sum(trace.probabilities) == pytest.approx(1.0, abs=1e-5)
    with torch.no_grad():
        assert trace.predicted == classes[int(model(x).argmax())]
    assert [p for _, p in trace.top_k] == sorted((p for _, p in trace.top_k), reverse=True)


def test_relu_statistic_counts_zeros():
    model = build_model(ModelConfig("pipenet-tiny", 2))
    trace = trace_layers(model, torch.randn(1, 3, 224, 224), ["a", "b"])
    relu = next(r for r in trace.layers if r.kind == "ReLU")
    assert 0 < relu.zeros < 1 and "zeros" in relu.stat and relu.min >= 0


def test_hooks_and_mode_are_removed_even_after_an_error():
    model = build_model(ModelConfig("pipenet-tiny", 2))
    with pytest.raises(RuntimeError), recording(model):
        model(torch.randn(1, 5, 64, 64))  # wrong channel count
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    assert not torch._C._is_torch_function_mode_enabled()


def test_depth_folds_nested_blocks_and_keeps_the_flatten():
    model = build_model(ModelConfig("resnet18", 3))
    names = [n for n, _ in modules_at_depth(model, 1)]
    assert names == ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4",
                     "avgpool", "fc"]
    trace = trace_layers(model, torch.randn(1, 3, 64, 64), list("abc"), depth=1)
    assert [r.name for r in trace.layers][1:-1] == [*names[:-1], "flatten", names[-1]]
    layer1 = trace.layers[5]
    assert layer1.kind.startswith("block") and layer1.join == "residual add x 2"
    first, last = layer1.ops
    assert [r.op for r in trace.ops.records[first - 1:last]].count("add_") == 2


def test_one_image_and_a_positive_depth_only():
    model = build_model(ModelConfig("pipenet-tiny", 2))
    with pytest.raises(ValueError, match="one image"):
        trace_layers(model, torch.randn(2, 3, 64, 64), ["a", "b"])
    with pytest.raises(ValueError, match="depth must be 1 or more"):
        trace_layers(model, torch.randn(1, 3, 64, 64), ["a", "b"], depth=0)


def test_logits_are_found_in_tuples_and_dicts_and_refused_otherwise():
    logits = torch.randn(1, 3)
    assert classifier_logits(logits, 3) is logits
    assert classifier_logits((logits, torch.randn(1, 9)), 3) is logits
    assert classifier_logits({"logits": logits, "aux": 1}, 3) is logits
    with pytest.raises(ValueError, match="returned str, not logits"):
        classifier_logits("cat", 3)
    with pytest.raises(ValueError, match=r"shape \(1, 4\): expected \(1, 3\) for 3 class names"):
        classifier_logits(torch.randn(1, 4), 3)
