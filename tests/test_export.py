"""`pipetrace export`: ONNX with the contract in its metadata, same top-1 as PyTorch."""

import json

import onnxruntime as ort
import pytest

from conftest import run_cli
from pipetrace.cli import main
from pipetrace.export import read_metadata
from pipetrace.predict import load_model
from pipetrace.transforms import Preprocess


def test_exported_demo_model_agrees_with_pytorch_on_all_validation_images(demo_run, demo_data,
                                                                        tmp_path):
    onnx_file = tmp_path / "demo.onnx"
    proc = run_cli("export", str(demo_run), str(demo_data / "val"), "--onnx", str(onnx_file),
                   "--json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    check = json.loads(proc.stdout)
    assert check["images"] == 400 and check["top1_same"] == 400 and check["ok"]
    assert check["max_abs_diff"] < 1e-3  # float32 kernels differ only in rounding

    lm = load_model(demo_run)
    meta = read_metadata(onnx_file)
    assert meta["format"] == "pipetrace-onnx/1"
    assert meta["classes"] == lm.classes
    assert Preprocess.from_dict(meta["preprocess"]) == lm.preprocess
    assert meta["model_config"] == lm.model_config.to_dict()
    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    (inp,) = session.get_inputs()
    assert inp.name == "input" and inp.shape == ["batch", 3, 224, 224]  # dynamic batch axis
    assert json.loads(session.get_modelmeta().custom_metadata_map["pipetrace.classes"]) == \
        lm.classes


def test_export_prints_the_check(demo_run, demo_data, tmp_path):
    val = sorted((demo_data / "val" / "circle").iterdir())[:3]
    proc = run_cli("export", str(demo_run), *map(str, val), "--onnx", str(tmp_path / "m.onnx"))
    assert proc.returncode == 0, proc.stderr
    assert "same top-1 on 3 of 3" in proc.stdout and "max |logit difference|" in proc.stdout


def test_export_needs_images_before_writing(demo_run, tmp_path, capsys):
    import torch

    ckpt = torch.load(demo_run / "best.pt", map_location="cpu", weights_only=True)
    ckpt["train_config"]["data"] = str(tmp_path / "gone")  # the dataset has moved
    torch.save(ckpt, tmp_path / "moved.pt")
    assert main(["export", str(tmp_path / "moved.pt"), "--onnx", str(tmp_path / "m.onnx")]) == 2
    assert "no images given" in capsys.readouterr().err
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.parametrize("limit", [5])
def test_export_defaults_to_the_validation_images(demo_run, tmp_path, limit, capsys):
    assert main(["export", str(demo_run), "--onnx", str(tmp_path / "m.onnx"), "--limit",
                 str(limit), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["images"] == limit


@pytest.mark.parametrize("opset, says", [
    (999, "opset 999 (--opset): torch's exporter writes ONNX opsets 7 to 20"),
    (1, "opset 1 (--opset)"),
    (7, "as ONNX opset 7: ONNX export failed on"),  # in range, but the model needs more
])
@pytest.mark.filterwarnings("ignore:Setting 'keep_initializers_as_inputs")  # torch, at 7
def test_an_opset_the_exporter_cannot_write_is_one_line(demo_run, tmp_path, capsys, opset, says):
    assert main(["export", str(demo_run), "--onnx", str(tmp_path / "m.onnx"), "--opset",
                 str(opset)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and says in err, err
    assert not (tmp_path / "m.onnx").exists()
