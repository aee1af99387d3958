"""Initial weights: pretrained by name (a stand-in for the download), from files, and refused.

No test touches the network: torchvision's download function is replaced by one that hands
back a state dict of the right architecture (seeded random values, so "loaded" can be told
from "initialised here"), or raises the URLError an offline machine gets.
"""

from __future__ import annotations

import json
import re
import urllib.error
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torchvision
from PIL import Image

from conftest import coloured_image, run_cli, write_image
from pipetrace import checkpoint as ckpt_io
from pipetrace.checks import run_checks
from pipetrace.cli import main
from pipetrace.model import ModelConfig, build_model, head_keys
from pipetrace.optim import build_optimizer
from pipetrace.records import Observer
from pipetrace.train import TrainConfig, fit
from pipetrace.transforms import classic_transform
from pipetrace.weights import WeightsError, fetch_weights, load_weights, torchvision_contract


def standin_state(name: str = "resnet18", seed: int = 123) -> dict[str, torch.Tensor]:
    """What the download would give: the architecture's 1000-class state dict, seeded values."""
    torch.manual_seed(seed)
    state = torchvision.models.get_model(name, weights=None).state_dict()
    for k, v in state.items():  # batch-norm statistics that are not the init's 0 and 1
        if "running" in k:
            v.uniform_(0.5, 1.5)
    return state


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """An empty torch hub cache and a download that returns a stand-in; records the URLs."""
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))
    wanted = []

    def download(url, *args, **kwargs):
        wanted.append(url)
        name = url.rsplit("/", 1)[-1].split("-")[0]
        return standin_state(name)

    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", download)
    return wanted


@pytest.fixture
def offline(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))

    def download(url, *args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", download)


@pytest.fixture
def folder(tmp_path):
    """Two classes of small coloured pictures: root/train/{a,b} (8 each) and root/val (2)."""
    root = tmp_path / "data"
    for split, n in (("train", 8), ("val", 2)):
        for c, cls in enumerate(("a", "b")):
            for i in range(n):
                img = coloured_image(48, 64, seed=10 * c + i)
                write_image(root / split / cls / f"{i}.png", img if cls == "a" else 255 - img)
    return root


def finetune_config(data, out, **kw) -> TrainConfig:
    base = dict(data=str(data), out=str(out), model="resnet18", weights="DEFAULT", epochs=2,
                batch_size=16, freeze_epochs=1, backbone_lr_scale=0.1, lr=1e-3, amp="off",
                trace_every=0)
    return TrainConfig(**{**base, **kw})


class Snapshots(Observer):
    """The model's tensors at the end of each epoch."""

    def __init__(self):
        self.at = {}

    def on_train_start(self, info):
        self.model = info["model"]

    def on_epoch_end(self, record):
        self.at[record.epoch] = {k: v.detach().clone() for k, v in self.model.state_dict().items()}


# -- acceptance: --weights DEFAULT on resnet18 -----------------------------------------------------

def test_default_weights_load_the_backbone_replace_fc_and_freeze_it_bit_for_bit(hub, folder,
                                                                                tmp_path):
    snaps = Snapshots()
    result = fit(finetune_config(folder, tmp_path / "run"), observers=(snaps,))
    assert hub == [torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url]
    w = result.weights
    standin = standin_state()
    assert w.source == "torchvision ResNet18_Weights.IMAGENET1K_V1"
    assert w.total == 122 and len(w.loaded) == 120 and set(w.loaded) == set(standin) - {
        "fc.weight", "fc.bias"}
    assert w.head == w.new == w.skipped == ("fc.weight", "fc.bias")
    # the head is new (2 classes), every other tensor is the download's
    assert snaps.at[1]["fc.weight"].shape == (2, 512)
    for k in w.pretrained:  # epoch 1 trained the head only: the backbone is bit-identical,
        assert torch.equal(snaps.at[1][k], standin[k]), k  # batch-norm statistics included
    assert not torch.equal(snaps.at[1]["fc.weight"], snaps.at[2]["fc.weight"])
    params = {n for n, _ in build_model(ModelConfig("resnet18", 2)).named_parameters()}
    moved = {k for k in w.pretrained if not torch.equal(snaps.at[2][k], standin[k])}
    assert params - {"fc.weight", "fc.bias"} <= moved  # epoch 2 trained every layer
    assert [r.frozen for r in result.records] == [True, False]
    # the weights' preprocessing is the run's, and travels in the checkpoint
    expected = torchvision_contract(torchvision.models.ResNet18_Weights.IMAGENET1K_V1)
    assert result.preprocess == expected == w.preprocess
    ckpt = ckpt_io.load_checkpoint(tmp_path / "run" / "last.pt")
    assert ckpt["preprocess"] == expected.to_dict()
    assert ckpt["weights"]["source"] == w.source and len(ckpt["weights"]["loaded"]) == 120
    assert "pretrained-contract" not in {f.check for f in run_checks(result)}


def test_the_discriminative_rates_reach_the_optimizer(hub, folder, tmp_path):
    model = build_model(ModelConfig("resnet18", 2))
    report = load_weights(model, fetch_weights("resnet18", "DEFAULT"), head_keys(
        ModelConfig("resnet18", 2)), "resnet18")
    cfg = finetune_config(folder, tmp_path)  # one-cycle: each group peaks at its max_lr
    opt, _ = build_optimizer(cfg, model, 10, pretrained=report.pretrained)
    names = {id(p): n for n, p in model.named_parameters()}
    peak = {names[id(p)]: g["max_lr"] for g in opt.param_groups for p in g["params"]}
    assert sorted(peak) == sorted(names.values())  # every parameter, once
    head = {"fc.weight", "fc.bias"}
    assert {peak[n] for n in head} == {1e-3}
    assert {round(peak[n], 12) for n in peak if n not in head} == {1e-4}
    assert opt.param_groups[0]["max_lr"] == 1e-3  # the recorded lr is the head's
    same, _ = build_optimizer(replace(cfg, backbone_lr_scale=1.0), model, 10,
                              pretrained=report.pretrained)
    assert len(same.param_groups) == 2  # scale 1: the groups of a run without weights


def test_the_data_flow_table_shows_the_contract_of_the_weights(tmp_path, folder):
    """Through the real entry point: the download found in the torch hub cache (a file put
    there by hand, as the offline message says), its contract printed under the table."""
    torch_home = tmp_path / "torch"
    cached = torch_home / "hub" / "checkpoints" / "mobilenet_v3_large-5c1a4163.pth"
    cached.parent.mkdir(parents=True)
    torch.save(standin_state("mobilenet_v3_large"), cached)
    weights = torchvision.models.MobileNet_V3_Large_Weights.IMAGENET1K_V2
    assert weights.url.endswith(cached.name)
    proc = run_cli("train", str(folder), "--model", "mobilenet_v3_large", "--weights",
                   "IMAGENET1K_V2", "--epochs", "1", "--batch-size", "16", "--amp", "off",
                   "--out", str(tmp_path / "run"), env={"TORCH_HOME": str(torch_home)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = " ".join(proc.stdout.split())  # the console folds long lines
    assert ("Preprocessing: resize the short side to 232 (bilinear), centre-crop 224, RGB 0-1, "
            "mean (0.485, 0.456, 0.406), std (0.229, 0.224, 0.225) — the weights' own, "
            "torchvision MobileNet_V3_Large_Weights.IMAGENET1K_V2") in out
    assert (f"({cached}): loaded 310 of 312 tensors; new (initialised here): "
            "classifier.3.weight, classifier.3.bias") in out
    doc = json.loads((tmp_path / "run" / "trace.json").read_text())
    assert doc["run"]["preprocess"]["crop_pct"] == pytest.approx(224 / 232)
    assert set(doc["run"]["weights"]) == documented_keys("run.weights")
    assert doc["run"]["weights"]["preprocess"] == doc["run"]["preprocess"]
    assert doc["run"]["config"]["image_size"] is None  # the weights decided


def documented_keys(path: str) -> set[str]:
    """The keys of the '#### `path`' table of docs/trace-format.md (objects the demo lacks)."""
    keys, inside = set(), False
    for line in (Path(__file__).parents[1] / "docs" / "trace-format.md").read_text().splitlines():
        if line.startswith("#"):
            inside = line.startswith(f"#### `{path}`")
        elif inside and (m := re.match(r"\| `([^`]+)` \|", line)):
            keys.add(m.group(1))
    return keys


@pytest.mark.parametrize("name, weights", [
    ("resnet18", "IMAGENET1K_V1"), ("resnet50", "IMAGENET1K_V2"),
    ("efficientnet_b0", "IMAGENET1K_V1"), ("vit_b_16", "IMAGENET1K_SWAG_LINEAR_V1"),
])
def test_contract_from_weights_gives_torchvisions_own_tensors(name, weights):
    """Oracle: the eval chain built from the contract equals weights.transforms() on a photo."""
    w = torchvision.models.get_model_weights(name)[weights]
    pil = Image.fromarray(coloured_image(300, 420)[..., ::-1].copy())
    ours = classic_transform(torchvision_contract(w))(pil)
    theirs = w.transforms()(pil)
    assert ours.shape == theirs.shape
    assert (ours - theirs).abs().max() < 1e-5


def test_overriding_the_contract_is_allowed_and_found(hub, folder, tmp_path):
    result = fit(finetune_config(folder, tmp_path / "run", image_size=96, stats="dataset",
                                 epochs=1))
    assert result.preprocess.size == 96
    (f,) = [f for f in run_checks(result) if f.check == "pretrained-contract"]
    assert f.severity == "warning" and "ResNet18_Weights.IMAGENET1K_V1 was trained with" in f.evidence
    assert "resize 256 (bilinear), crop 224 where this run uses resize 110 (bilinear), crop 96" in f.evidence
    assert "mean (0.485, 0.456, 0.406), std (0.229, 0.224, 0.225) where this run uses" in f.evidence


# -- refusals, one line each ------------------------------------------------------------------------

def one_line_error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("flags", [["--model", "resnet18", "--weights", "DEFAULT"],
                                   ["--preset", "photos"]], ids=["DEFAULT", "photos-preset"])
def test_offline_download_says_which_file_and_where_to_put_it(offline, folder, tmp_path, capsys,
                                                              flags):
    err = one_line_error(capsys, ["train", str(folder), *flags, "--out", str(tmp_path / "run")])
    cache = tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    assert "cannot download ResNet18_Weights.IMAGENET1K_V1" in err
    assert "https://download.pytorch.org/models/resnet18-f37072fd.pth" in err
    assert "Temporary failure in name resolution" in err
    assert f"Put that file at {cache}" in err and "--weights FILE" in err
    assert not (tmp_path / "run" / "last.pt").exists()


def test_mismatched_weights_file_is_refused_naming_the_count(folder, tmp_path, capsys):
    other = tmp_path / "pipenet.pt"
    torch.save(build_model(ModelConfig("pipenet-s", 4)).state_dict(), other)
    err = one_line_error(capsys, ["train", str(folder), "--model", "resnet18", "--weights",
                                  str(other), "--out", str(tmp_path / "run")])
    assert f"cannot use checkpoint '{other}'" in err
    assert "matched 0 of the 100 tensors resnet18 needs outside its classifier head" in err
    resnet = tmp_path / "resnet.pt"
    torch.save(standin_state(), resnet)
    err = one_line_error(capsys, ["train", str(folder), "--model", "pipenet-s", "--weights",
                                  str(resnet), "--out", str(tmp_path / "run")])
    assert "matched 0 of the 20 tensors pipenet-s needs" in err and "(26 in all)" in err


@pytest.mark.parametrize("spec, message", [
    ("IMAGENET1K_V7", "unknown weights 'IMAGENET1K_V7' for resnet18: choose IMAGENET1K_V1, DEFAULT"),
    ("ResNet50_Weights.IMAGENET1K_V2", "is not for resnet18 (its weights are ResNet18_Weights)"),
    ("no/such/file.pt", "no such file"),
])
def test_bad_weights_names_are_refused_with_the_choices(folder, tmp_path, capsys, spec, message):
    err = one_line_error(capsys, ["train", str(folder), "--model", "resnet18", "--weights", spec,
                                  "--out", str(tmp_path / "run")])
    assert message in err


def test_a_timm_model_without_timm_says_how_to_get_it(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "timm", None)  # as if not installed
    with pytest.raises(ValueError, match=r"timm models need timm: pip install 'pipetrace\[timm\]'"):
        build_model(ModelConfig("timm/resnet18.a1_in1k", 2))


def test_a_builtin_model_has_no_weights_by_name():
    with pytest.raises(WeightsError, match="'pipenet-s' has no pretrained weights by name"):
        fetch_weights("pipenet-s", "DEFAULT")


# -- files: a torchvision state dict, a pipetrace checkpoint ---------------------------------------

def test_a_torchvision_file_is_recognised_by_its_name_and_prefixes_are_dropped(tmp_path):
    path = tmp_path / "resnet18-f37072fd.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in standin_state().items()}}, path)
    got = fetch_weights("resnet18", str(path))
    assert got.source == "torchvision ResNet18_Weights.IMAGENET1K_V1 (by its file name)"
    assert got.preprocess.resize_size == 256 and "conv1.weight" in got.state
    plain = tmp_path / "mine.pth"
    torch.save(standin_state(), plain)
    assert fetch_weights("resnet18", str(plain)).preprocess is None  # unknown contract


def test_a_pipetrace_checkpoint_starts_a_run_for_other_classes(folder, tmp_path):
    small = dict(model="pipenet-tiny", weights=None, image_size=64, crop_pct=1.0, epochs=1,
                 freeze_epochs=0)
    first = fit(finetune_config(folder, tmp_path / "first", **small))
    more = folder.parent / "three"
    for cls in ("a", "b", "c"):
        for i in range(3):
            write_image(more / cls / f"{i}.png", coloured_image(48, 64, seed=50 + i))
    second = fit(finetune_config(more, tmp_path / "second", **{
        **small, "weights": str(tmp_path / "first" / "last.pt"), "image_size": None,
        "crop_pct": None}, val_fraction=0.34))
    assert second.weights.source == "pipetrace checkpoint"
    assert second.weights.new == ("fc.weight", "fc.bias") and len(second.weights.loaded) == 24
    assert second.preprocess == first.preprocess  # the checkpoint's contract came with it


# -- timm (optional) ---------------------------------------------------------------------------------

def test_timm_weights_bring_their_contract(monkeypatch):
    timm = pytest.importorskip("timm")
    from timm.models import _builder

    def from_hub(*args, **kwargs):
        return timm.create_model("resnet18.a1_in1k", pretrained=False).state_dict()

    monkeypatch.setattr(_builder, "load_state_dict_from_hf", from_hub)
    got = fetch_weights("timm/resnet18.a1_in1k", "DEFAULT")
    assert got.source == "timm resnet18.a1_in1k" and got.file == "timm/resnet18.a1_in1k"
    assert (got.preprocess.size, got.preprocess.resize_size,
            got.preprocess.interpolation) == (224, 235, "bicubic")  # crop_pct 0.95
    cfg = ModelConfig("timm/resnet18.a1_in1k", 3)
    report = load_weights(build_model(cfg), got, head_keys(cfg), cfg.name)
    assert report.new == ("fc.weight", "fc.bias") and len(report.loaded) == report.total - 2


def test_timm_offline_is_one_line(monkeypatch):
    pytest.importorskip("timm")
    from huggingface_hub.errors import LocalEntryNotFoundError
    from timm.models import _builder

    def from_hub(*args, **kwargs):
        raise LocalEntryNotFoundError("cannot find the requested files in the local cache")

    monkeypatch.setattr(_builder, "load_state_dict_from_hf", from_hub)
    with pytest.raises(WeightsError) as info:
        fetch_weights("timm/resnet18.a1_in1k", "DEFAULT")
    assert "\n" not in str(info.value) and "--weights FILE" in str(info.value)
    assert "cannot download the timm weights of 'resnet18.a1_in1k'" in str(info.value)


def test_frozen_bn_train_lets_the_statistics_move_but_not_the_weights(folder, tmp_path):
    small = dict(model="pipenet-tiny", weights=None, image_size=64, crop_pct=1.0, epochs=1)
    fit(finetune_config(folder, tmp_path / "first", **small, freeze_epochs=0))
    start = ckpt_io.load_checkpoint(tmp_path / "first" / "last.pt")["model_state"]
    for mode in ("eval", "train"):
        snaps = Snapshots()
        fit(finetune_config(folder, tmp_path / mode, **{
            **small, "image_size": None, "crop_pct": None, "frozen_bn": mode,
            "weights": str(tmp_path / "first" / "last.pt")}), observers=(snaps,))
        after = snaps.at[1]
        changed = {k for k in start if not k.startswith("fc.") and not torch.equal(after[k],
                                                                                     start[k])}
        if mode == "eval":
            assert changed == set()
        else:  # running mean, variance and the step counters; no weight
            assert changed and all(k.split(".")[-1] in ("running_mean", "running_var",
                                                         "num_batches_tracked") for k in changed)
        assert not torch.equal(after["fc.weight"], start["fc.weight"])
