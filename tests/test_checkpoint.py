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
