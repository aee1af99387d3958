"""The `cifar` recipe's tricks (airbench's): lookahead, translated test-time views, the stem
bias frozen after a few epochs, whitening from every class. Small models, tiny data."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pipetrace import checkpoint as ckpt_io
from pipetrace.loop import tta_logits
from pipetrace.optim import Lookahead
from pipetrace.train import TrainConfig, fit
from test_train import StopAfter, small_folder


def test_lookahead_pulls_the_model_back_to_the_average_every_few_steps():
    model = nn.Linear(3, 2)
    la = Lookahead(model, start_epoch=1, total_steps=20, decay=0.9, every=5)
    la.start(0)
    assert la.average is None  # not before its epoch
    la.start(1)
    start = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    la.step(7)  # not a multiple of 5: nothing happens
    assert torch.equal(model.weight, start + 1)
    la.step(10)
    rho = 0.9 ** 5 * (10 / 20) ** 3
    expected = start * rho + (start + 1) * (1 - rho)
    assert torch.allclose(model.weight, expected) and torch.allclose(la.average[0], expected)
    with torch.no_grad():
        model.weight.add_(1.0)
    la.end_epoch()  # the model is evaluated and saved as the average
    assert torch.allclose(model.weight, expected)


def test_tta_shift_averages_the_translated_views_at_half_weight():
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 6 * 6, 4))
    x = torch.randn(2, 3, 6, 6)
    assert torch.equal(tta_logits(model, x, flip=False, shift=0), model(x))
    mirror = tta_logits(model, x, flip=True, shift=0)
    assert torch.allclose(mirror, (model(x) + model(x.flip(-1))) / 2)
    padded = nn.functional.pad(x, (1, 1, 1, 1), mode="reflect")
    up, down = padded[..., :6, :6], padded[..., 2:, 2:]
    view = lambda v: (model(v) + model(v.flip(-1))) / 2  # noqa: E731
    expected = 0.5 * view(x) + 0.25 * (view(up) + view(down))
    assert torch.allclose(tta_logits(model, x, flip=True, shift=1), expected, atol=1e-6)


def cifar_config(data, out, **kw) -> TrainConfig:
    base = dict(data=str(data), out=str(out), model="cifarnet-s", image_size=32, crop_pct=1.0,
                epochs=3, batch_size=8, optimizer="sgd", lr=0.05, schedule="onecycle",
                augment="crop-flip", crop_pad=2, trace_every=0)
    return TrainConfig(**{**base, **kw})


def stem_bias(run) -> torch.Tensor:
    return ckpt_io.load_checkpoint(run / "last.pt")["model_state"]["stem.bias"]


def test_the_stem_bias_stops_learning_after_its_epochs(tmp_path):
    data = small_folder(tmp_path / "data", {"a": 12, "b": 12}, size=32)
    fit(cifar_config(data, tmp_path / "run", stem_bias_epochs=1), observers=(StopAfter(1),))
    after_1 = stem_bias(tmp_path / "run")
    fit(cifar_config(data, tmp_path / "run"), resume=True)
    assert torch.equal(stem_bias(tmp_path / "run"), after_1)  # frozen from epoch 2 on
    fit(cifar_config(data, tmp_path / "free"), observers=(StopAfter(1),))
    assert torch.equal(stem_bias(tmp_path / "free"), after_1)  # the same first epoch
    fit(cifar_config(data, tmp_path / "free"), resume=True)
    assert not torch.equal(stem_bias(tmp_path / "free"), after_1)  # it goes on learning


def test_a_resumed_lookahead_run_equals_an_uninterrupted_one(tmp_path):
    data = small_folder(tmp_path / "data", {"a": 12, "b": 12}, size=32)
    kw = dict(lookahead_from=1, tta_shift=1, tta=True)
    whole = fit(cifar_config(data, tmp_path / "whole", **kw))
    fit(cifar_config(data, tmp_path / "part", **kw), observers=(StopAfter(2),))
    resumed = fit(cifar_config(data, tmp_path / "part"), resume=True)
    strip = lambda rs: [(r.train_loss, r.val_loss, r.val_acc) for r in rs]  # noqa: E731
    assert strip(resumed.records) == strip(whole.records)
    plain = fit(cifar_config(data, tmp_path / "plain", tta_shift=1, tta=True))
    assert strip(plain.records)[1:] != strip(whole.records)[1:]  # the average changes them


def test_the_whitening_stem_sees_every_class(tmp_path):
    from pipetrace.prepare import first_images, prepare_data

    data = small_folder(tmp_path / "data", {"a": 10, "b": 10, "c": 10}, size=32)
    setup = prepare_data(cifar_config(data, tmp_path / "run", val_fraction=0.1))
    every = first_images(setup.train_set, setup.preprocess, n=len(setup.train_set))
    x = first_images(setup.train_set, setup.preprocess, n=6)
    used = [next(i for i, e in enumerate(every) if torch.equal(e, row)) for row in x]
    labels = {setup.train_set.samples[i][1] for i in used}
    assert x.shape[0] == 6 and labels == {0, 1, 2}  # not the first 6 files (all of class a)


@pytest.mark.parametrize("field,value", [("tta_shift", -1), ("lookahead_decay", 1.0),
                                         ("stem_bias_epochs", -2)])
def test_the_new_fields_are_validated(field, value):
    from pipetrace.config import ConfigError

    with pytest.raises(ConfigError, match=field):
        TrainConfig(**{field: value})
