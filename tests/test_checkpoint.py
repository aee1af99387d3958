"""Checkpoints: atomic writes, and every unsafe or mismatched file refused with one line."""

import io
import os
import pickle
import subprocess
import sys

import pytest
import torch

from pipetrace import checkpoint as ckpt_io
from pipetrace.checkpoint import CheckpointError
from pipetrace.model import ModelConfig, build_model
from pipetrace.transforms import Preprocess


def good_checkpoint(num_classes=3) -> dict:
    model = build_model(ModelConfig("pipenet-tiny", num_classes))
    return {"format": ckpt_io.FORMAT, "version": ckpt_io.VERSION,
            "model_state": model.state_dict(), "classes": [f"c{i}" for i in range(num_classes)],
            "preprocess": Preprocess().to_dict(),
            "model_config": ModelConfig("pipenet-tiny", num_classes).to_dict()}


class Boom:
    """Unpickling this runs code (os.system) - unless the loader refuses it."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_round_trip_with_sha256(tmp_path):
    path = tmp_path / "m.pt"
    digest = ckpt_io.save_checkpoint(path, good_checkpoint())
    assert (tmp_path / "m.pt.sha256").read_text().split()[0] == digest
    assert ckpt_io.load_checkpoint(path)["classes"] == ["c0", "c1", "c2"]


@pytest.mark.parametrize("env", [{}, {"TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"}])
def test_hostile_pickle_is_refused_and_runs_nothing(tmp_path, env):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"format": ckpt_io.FORMAT, "payload": Boom(str(marker))}, path)
    code = ("import sys; from pipetrace.checkpoint import load_checkpoint, CheckpointError\n"
            "try:\n    load_checkpoint(sys.argv[1])\nexcept CheckpointError as e:\n"
            "    print(e); sys.exit(2)\n")
    # A fresh interpreter, so the environment override is read as torch starts.
    proc = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert not marker.exists(), "the pickle's code ran"
    line = proc.stdout.strip()
    assert "refused" in line and "evil.pt" in line and len(line.splitlines()) == 1
    assert "add_safe_globals" not in line and "weights_only=False" not in line


def test_truncated_random_and_empty_files(tmp_path):
    good = tmp_path / "good.pt"
    ckpt_io.save_checkpoint(good, good_checkpoint())
    data = good.read_bytes()
    cases = {"trunc.pt": data[: len(data) // 2], "random.pt": os.urandom(4096), "empty.pt": b"",
             "text.pt": b"hello world\n"}
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(CheckpointError) as info:
            ckpt_io.load_checkpoint(tmp_path / name)
        assert name in str(info.value) and "\n" not in str(info.value)


def test_checksum_mismatch_is_refused(tmp_path):
    path = tmp_path / "m.pt"
    ckpt_io.save_checkpoint(path, good_checkpoint())
    other = io.BytesIO()
    torch.save(good_checkpoint(4), other)
    path.write_bytes(other.getvalue())  # replaced behind the sidecar's back
    with pytest.raises(CheckpointError, match="SHA-256"):
        ckpt_io.load_checkpoint(path)


def test_nan_weights_are_refused(tmp_path):
    ckpt = good_checkpoint()
    next(iter(ckpt["model_state"].values())).fill_(float("nan"))
    ckpt_io.save_checkpoint(tmp_path / "nan.pt", ckpt)
    with pytest.raises(CheckpointError, match="NaN"):
        ckpt_io.load_checkpoint(tmp_path / "nan.pt")


def test_class_count_mismatch_is_refused(tmp_path):
    ckpt = good_checkpoint(3)
    ckpt["classes"] = ["a", "b"]
    ckpt_io.save_checkpoint(tmp_path / "m.pt", ckpt)
    with pytest.raises(CheckpointError, match="3 outputs but the class list has 2"):
        ckpt_io.load_checkpoint(tmp_path / "m.pt")


def test_weights_from_another_model_give_one_line(tmp_path):
    state = build_model(ModelConfig("pipenet-tiny", 5)).state_dict()
    model = build_model(ModelConfig("pipenet-tiny", 3))
    with pytest.raises(CheckpointError, match="do not fit this model") as info:
        ckpt_io.load_state_into(model, state, tmp_path / "x.pt")
    assert "\n" not in str(info.value)


def test_plain_pickle_is_not_a_checkpoint(tmp_path):
    (tmp_path / "p.pt").write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(CheckpointError):
        ckpt_io.load_checkpoint(tmp_path / "p.pt")


# -- the schema: every field checked before anything is built --------------------------------------

def _set(path: str, value):
    def change(ckpt):
        *parents, last = path.split(".")
        d = ckpt
        for p in parents:
            d = d[p]
        if value is DELETE:
            del d[last]
        else:
            d[last] = value
    return change


class _Delete:
    def __repr__(self) -> str:
        return "<deleted>"


DELETE = _Delete()
SCHEMA_CASES = [
    ("version", "1", "version is '1': it must be an integer in [1, 1]"),
    ("version", True, "version is True"),
    ("preprocess.crop_pct", 0, "preprocess.crop_pct is 0: it must be a number in (0, 1]"),
    ("preprocess.size", 40000, "preprocess.size is 40000: it must be an integer in [1, 4096]"),
    ("preprocess.size", "224", "preprocess.size is '224'"),
    ("preprocess.std", [0.2, 0.0, 0.2], "preprocess.std is a list"),
    ("preprocess.mean", [float("nan")] * 3, "preprocess.mean is a list"),
    ("preprocess.interpolation", "magic", "preprocess.interpolation is 'magic'"),
    ("preprocess", "RGB", "preprocess is 'RGB': it must be a dict"),
    ("model_config", ["pipenet-tiny"], "model_config is a list: it must be a dict"),
    ("model_config.name", DELETE, "model_config.name is missing"),
    ("model_config.name", "no_such_net", "model_config.name 'no_such_net' is not an "
     "architecture"),
    ("model_config.num_classes", "3", "model_config.num_classes is '3'"),
    ("classes", [], "class list is not a list of 1 to"),
    ("classes", ["a", "a", "b"], "class list names 'a' more than once"),
    ("train_config", "x", "train_config is 'x': it must be a dict"),
    ("train_config", {"loader": "turbo"}, "train_config.loader is 'turbo'"),
]


@pytest.mark.parametrize("where, value, says", SCHEMA_CASES,
                         ids=[f"{w}={v!r}"[:40] for w, v, _ in SCHEMA_CASES])
def test_malformed_but_safe_checkpoints_are_one_line_errors(where, value, says, tmp_path):
    from pipetrace.predict import load_model

    ckpt = good_checkpoint()
    _set(where, value)(ckpt)
    ckpt_io.save_checkpoint(tmp_path / "m.pt", ckpt)
    with pytest.raises(CheckpointError) as info:
        load_model(tmp_path / "m.pt")
    message = str(info.value)
    assert says in message and "\n" not in message and "m.pt" in message, message


def test_an_unrequested_architecture_is_never_built_before_the_weights_fit(tmp_path,
                                                                          monkeypatch):
    """A checkpoint that names vit_h_14 (632M weights) over a tiny state dict is refused
    from shapes alone: the architecture is only ever built on the meta device."""
    import pipetrace.predict as predict

    devices = []
    real = predict.build_model

    def recording(cfg):
        model = real(cfg)
        devices.append(next(model.parameters()).device.type)
        return model

    monkeypatch.setattr(predict, "build_model", recording)
    ckpt = good_checkpoint()
    ckpt["model_config"]["name"] = "vit_h_14"
    ckpt_io.save_checkpoint(tmp_path / "m.pt", ckpt)
    with pytest.raises(CheckpointError, match="weights do not fit this model") as info:
        predict.load_model(tmp_path / "m.pt")
    assert devices == ["meta"] and "\n" not in str(info.value)
    ckpt_io.save_checkpoint(tmp_path / "ok.pt", good_checkpoint())
    devices.clear()
    assert predict.load_model(tmp_path / "ok.pt").classes == ["c0", "c1", "c2"]
    assert devices == ["meta", "cpu"]  # the shapes first, then the real one
