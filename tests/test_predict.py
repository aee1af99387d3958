"""`pipetrace predict`: the demo model through its real entry point, torchvision models, and
every unsafe or mismatched checkpoint refused with one line and exit code 2."""

import csv
import io
import json
import os
import shutil

import pytest
import torch
from torch import nn

from conftest import run_cli, write_image
from pipetrace import checkpoint as ckpt_io
from pipetrace.cli import main
from pipetrace.layers import SEED_KINDS, modules_at_depth, seed_kinds_in_order
from pipetrace.model import ModelConfig, build_model
from pipetrace.predict import load_model, predict_files
from pipetrace.transforms import Preprocess


def first_val_image(demo_data, cls="star"):
    return str(sorted((demo_data / "val" / cls).iterdir())[0])


def test_predict_prints_the_seed_layers_and_top3(demo_run, demo_data, tmp_path):
    image = first_val_image(demo_data)
    proc = run_cli("predict", str(demo_run), image, "--save", str(tmp_path / "pics"))
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    positions = [out.index(f" {kind} ") for kind in SEED_KINDS]  # each kind's first row
    assert positions == sorted(positions), "the seed's six layer kinds, in this order"
    assert "1 x 3 x 224 x 224" in out and "1 x 4 " in out  # input tensor and softmax shapes
    top = out.split("Top classes:")[1].strip().splitlines()
    assert len(top) == 3
    assert {line.split()[0] for line in top} <= {"circle", "square", "star", "triangle"}
    for name in ("input.png", "gradcam.png", "feature_maps.png"):
        assert (tmp_path / "pics" / name).stat().st_size > 100


def test_predict_json_is_true_to_the_model(demo_run, demo_data):
    image = first_val_image(demo_data)
    proc = run_cli("predict", str(demo_run), image, "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    layers = doc["layers"]
    assert layers[0]["kind"] == "input tensor" and layers[-1]["kind"] == "softmax"

    class Rec:  # seed_kinds_in_order reads .kind
        def __init__(self, d):
            self.kind = d["kind"]

    assert seed_kinds_in_order([Rec(r) for r in layers]) == list(SEED_KINDS)
    assert sum(doc["probabilities"]) == pytest.approx(1.0, abs=1e-5)
    # Oracle: the checkpoint's model and pipeline, run here, not through the trace.
    lm = load_model(demo_run)
    x = lm.input_for(image)
    with torch.no_grad():
        logits = lm.model(x)
        shapes = {}
        for name, module in modules_at_depth(lm.model, None):
            def keep(m, i, o, name=name):
                shapes.setdefault(name, list(o.shape))  # returns None: output unchanged

            module.register_forward_hook(keep)
        lm.model(x)
    assert doc["predicted"] == lm.classes[int(logits.argmax())] == doc["top_k"][0][0]
    assert doc["logits"] == pytest.approx(logits[0].tolist(), abs=1e-4)
    assert [p for _, p in doc["top_k"]] == sorted(doc["probabilities"], reverse=True)[:3]
    assert {r["name"]: r["output_shape"] for r in layers[1:-1]} == shapes
    assert layers[0]["output_shape"] == [1, 3, 224, 224] and layers[-1]["output_shape"] == [1, 4]


def test_predict_folder_gives_csv_with_errors_per_file(demo_run, demo_data, tmp_path):
    folder = tmp_path / "imgs"
    for cls in ("circle", "square", "star", "triangle"):
        (folder / cls).mkdir(parents=True)
        for src in sorted((demo_data / "val" / cls).iterdir())[:10]:
            shutil.copy(src, folder / cls / src.name)
    (folder / "broken.jpg").write_bytes(b"<html>not an image</html>")
    proc = run_cli("predict", str(demo_run), str(folder))
    assert proc.returncode == 0, proc.stderr
    rows = list(csv.DictReader(io.StringIO(proc.stdout)))
    assert len(rows) == 41
    assert list(rows[0]) == ["path", "class_1", "prob_1", "class_2", "prob_2", "class_3",
                             "prob_3", "error"]
    broken = next(r for r in rows if r["path"].endswith("broken.jpg"))
    assert broken["class_1"] == "" and "not an image" in broken["error"]
    good = [r for r in rows if not r["error"]]
    assert all(abs(float(r["prob_1"]) + float(r["prob_2"]) + float(r["prob_3"])) <= 1 + 1e-5
               for r in good)
    # each row is the model's own answer for that file (the library call is the oracle)
    lm = load_model(demo_run)
    oracle = {p.path: p.top_k[0] for p in predict_files(lm, [r["path"] for r in good])}
    for r in good:
        assert r["class_1"] == oracle[r["path"]][0]
        assert float(r["prob_1"]) == pytest.approx(oracle[r["path"]][1], abs=1e-5)
    right = sum(r["class_1"] == os.path.basename(os.path.dirname(r["path"])) for r in good)
    assert right >= 30  # the demo's model is about 90% right; 40 images


# -- torchvision models -----------------------------------------------------------------------------

def random_checkpoint(path, name: str, classes=("ant", "bee", "wasp"), size: int = 96) -> str:
    """A pipetrace checkpoint of a randomly initialised model (what `fit` would write)."""
    torch.manual_seed(0)
    cfg = ModelConfig(name, len(classes))
    ckpt_io.save_checkpoint(path, {
        "format": ckpt_io.FORMAT, "version": ckpt_io.VERSION,
        "model_state": build_model(cfg).state_dict(), "classes": list(classes),
        "preprocess": Preprocess(size=size).to_dict(), "model_config": cfg.to_dict()})
    return str(path)


def children_one_by_one(model: nn.Module, x: torch.Tensor) -> list[tuple[str, list[int]]]:
    """Independent oracle for --depth 1: apply the direct children in order, with the flatten
    before the first fully connected one that resnet's and mobilenet's forward do (a row of
    its own: it runs in the model's forward, outside every child)."""
    shapes = []
    for name, child in model.named_children():
        first = child[0] if isinstance(child, nn.Sequential) else child
        if isinstance(first, nn.Linear) and x.ndim > 2:
            x = torch.flatten(x, 1)
            shapes.append(("flatten", list(x.shape)))
        x = child(x)
        shapes.append((name, list(x.shape)))
    return shapes


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_small"])
def test_torchvision_models_predict_with_depth(name, tmp_path, capsys):
    ckpt = random_checkpoint(tmp_path / f"{name}.pt", name)
    image = str(write_image(tmp_path / "x.jpg", torch.randint(0, 255, (120, 160, 3),
                                                               dtype=torch.uint8).numpy()))
    assert main(["predict", ckpt, image, "--depth", "1", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    lm = load_model(ckpt)
    x = lm.input_for(image)
    assert x.shape == (1, 3, 96, 96)
    with torch.no_grad():
        oracle = children_one_by_one(lm.model, x)
        logits = lm.model(x)
    assert [(r["name"], r["output_shape"]) for r in doc["layers"][1:-1]] == oracle
    assert sum(doc["probabilities"]) == pytest.approx(1.0, abs=1e-5)
    assert doc["predicted"] == lm.classes[int(logits.argmax())]
    assert main(["predict", ckpt, image, "--depth", "2"]) == 0  # the table, folded deeper
    out = capsys.readouterr().out
    assert "Top classes" in out and "block (" in out


def test_predict_ops_shows_every_operation_of_a_resnet(tmp_path, capsys):
    ckpt = random_checkpoint(tmp_path / "resnet18.pt", "resnet18", size=64)
    image = str(write_image(tmp_path / "x.jpg", torch.randint(0, 255, (80, 80, 3),
                                                               dtype=torch.uint8).numpy()))
    assert main(["predict", ckpt, image, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert main(["predict", ckpt, image, "--ops"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("│")]
    assert len(rows) == len(doc["ops"]) == 70  # one row per operation, input included
    adds = [line for line in rows if "residual add" in line]
    assert len(adds) == 8 and all("add_ (in place)" in line and "residual add ⊕" in line
                                  for line in adds)
    for op, line in zip(doc["ops"], rows, strict=True):  # the table is the JSON's records
        cells = [c.strip() for c in line.strip("│").split("│")]
        assert cells[0] == str(op["index"]) and cells[1] == op["module"]
        assert cells[2].split()[0] == op["op"] and cells[3].split(" ⊕")[0] == op["kind"]
        assert cells[4] == ", ".join(map(str, op["inputs"]))
        assert cells[5] == " x ".join(map(str, op["output_shape"]))
    lm = load_model(ckpt)
    with torch.no_grad():
        logits = lm.model(lm.input_for(image))
    assert doc["ops"][doc["output"] - 1]["op"] == "linear"
    assert doc["ops"][doc["output"] - 1]["output_shape"] == list(logits.shape)
    assert doc["logits"] == pytest.approx(logits[0].tolist(), abs=1e-5)


# -- unsafe or mismatched checkpoints: one line, exit code 2 -------------------------------------

def demo_checkpoint(demo_run) -> dict:
    return torch.load(demo_run / "best.pt", map_location="cpu", weights_only=True)


def _other_model(demo_run, path):
    ckpt = demo_checkpoint(demo_run)
    ckpt["model_config"] = {**ckpt["model_config"], "name": "pipenet-tiny"}  # pipenet-s weights
    torch.save(ckpt, path)


def _other_classes(demo_run, path):
    ckpt = demo_checkpoint(demo_run)
    ckpt["classes"] = ["cat", "dog"]  # 4 outputs, 2 names
    torch.save(ckpt, path)


def _truncated(demo_run, path):
    data = (demo_run / "best.pt").read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _not_a_checkpoint(demo_run, path):
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(2000))


def _bare_weights(demo_run, path):
    torch.save(demo_checkpoint(demo_run)["model_state"], path)


@pytest.mark.parametrize("make, says", [
    (_other_model, "weights do not fit this model"),
    (_other_classes, "4 outputs but the class list has 2"),
    (_truncated, "truncated or damaged"),
    (_not_a_checkpoint, "not a PyTorch checkpoint"),
    (_bare_weights, "not a pipetrace checkpoint"),
], ids=["other-model", "other-classes", "truncated", "not-a-checkpoint", "bare-weights"])
def test_bad_checkpoints_give_one_line_and_exit_2(make, says, demo_run, demo_data, tmp_path,
                                                  capsys):
    path = tmp_path / "model.pt"
    make(demo_run, path)
    assert main(["predict", str(path), first_val_image(demo_data)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("pipetrace: error: cannot use checkpoint")
    assert "model.pt" in err and says in err, err


class Boom:
    """Unpickling this runs code - unless the loader refuses it."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_hostile_pickle_is_refused_through_the_entry_point(demo_run, demo_data, tmp_path):
    ckpt = demo_checkpoint(demo_run)
    ckpt["payload"] = Boom(str(tmp_path / "pwned"))
    torch.save(ckpt, tmp_path / "evil.pt")
    proc = run_cli("predict", str(tmp_path / "evil.pt"), first_val_image(demo_data),
                   env={"TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"})
    assert proc.returncode == 2
    assert not (tmp_path / "pwned").exists(), "the pickle's code ran"
    assert proc.stdout == "" and proc.stderr.count("\n") == 1
    assert "refused" in proc.stderr and "evil.pt" in proc.stderr
