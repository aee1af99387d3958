"""The prediction trace: true shapes (checked by torch.fx shape propagation), seed kinds, top-k."""

import pytest
import torch
from torch.fx import symbolic_trace
from torch.fx.passes.shape_prop import ShapeProp

from pipetrace.layers import (
    SEED_KINDS,
    modules_at_depth,
    recording,
    seed_kinds_in_order,
    trace_layers,
)
from pipetrace.model import ModelConfig, build_model


def fx_shapes(model, x) -> list[tuple[str, tuple]]:
    """Independent oracle: each module call's output shape, in order, by FX shape propagation."""
    gm = symbolic_trace(model)
    ShapeProp(gm).propagate(x)
    return [(n.target, tuple(n.meta["tensor_meta"].shape)) for n in gm.graph.nodes
            if n.op == "call_module"]


@pytest.mark.parametrize("name, size", [("pipenet-s", 224), ("resnet18", 64), ("cifarnet", 32)])
def test_recorded_shapes_agree_with_fx(name, size):
    torch.manual_seed(0)
    model = build_model(ModelConfig(name, 5)).eval()
    x = torch.randn(1, 3, size, size)
    trace = trace_layers(model, x, [f"c{i}" for i in range(5)])
    oracle = fx_shapes(model, x)
    recorded = [(r.name, r.output_shape) for r in trace.layers[1:-1]]  # without input, softmax
    assert recorded == oracle  # same calls, same order (resnet's ReLU runs twice per block)


def test_builtin_cnn_shows_the_seed_six_kinds_in_order():
    model = build_model(ModelConfig("pipenet-s", 4))
    trace = trace_layers(model, torch.randn(1, 3, 224, 224), ["a", "b", "c", "d"])
    assert seed_kinds_in_order(trace.layers) == list(SEED_KINDS)
    assert trace.layers[0].output_shape == (1, 3, 224, 224)
    assert trace.layers[-1].kind == "softmax"


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


def test_hooks_are_removed_even_after_an_error():
    model = build_model(ModelConfig("pipenet-tiny", 2))
    with pytest.raises(RuntimeError), recording(model):
        model(torch.randn(1, 5, 64, 64))  # wrong channel count
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_depth_folds_nested_blocks():
    model = build_model(ModelConfig("resnet18", 3))
    names = [n for n, _ in modules_at_depth(model, 1)]
    assert names == ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4",
                     "avgpool", "fc"]
    trace = trace_layers(model, torch.randn(1, 3, 64, 64), list("abc"), depth=1)
    assert [r.name for r in trace.layers][1:-1] == names
    assert trace.layers[5].kind.startswith("block")


def test_one_image_only():
    model = build_model(ModelConfig("pipenet-tiny", 2))
    with pytest.raises(ValueError, match="one image"):
        trace_layers(model, torch.randn(2, 3, 64, 64), ["a", "b"])
