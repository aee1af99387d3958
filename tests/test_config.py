"""TrainConfig validates itself from its field declarations, and `train --help` prints them."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import fields

import pytest

from pipetrace.cli import main
from pipetrace.config import (
    AUGMENT_CHOICES,
    LOADER_CHOICES,
    PRESETS,
    ConfigError,
    TrainConfig,
    field_allowed,
    field_doc,
    field_kind,
)


def bad_values(f) -> list:
    """Values just outside what the field allows, read from its own declaration."""
    allowed, kind = field_allowed(f), field_kind(f)
    if kind is bool:
        return ["yes"]
    if kind is str:
        return ["no-such-choice"] if allowed.choices else [3]
    out = ["7"]  # a string where a number belongs
    if allowed.low is not None:
        out.append(allowed.low if allowed.low_open else allowed.low - 1)
    if allowed.high is not None:
        out.append(allowed.high if allowed.high_open else allowed.high + 1)
    if kind is int:
        out.append(1.5)
    else:
        out.append(float("nan"))
    if not allowed.optional:
        out.append(None)
    return out


CASES = [(f.name, v) for f in fields(TrainConfig) for v in bad_values(f)]


@pytest.mark.parametrize("name, value", CASES, ids=[f"{n}={v!r}" for n, v in CASES])
def test_every_field_refuses_what_it_does_not_allow_in_one_line(name, value):
    with pytest.raises(ConfigError) as info:
        TrainConfig(**{name: value})
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{name} (--{name.replace('_', '-')})")
    assert repr(value) in message and "it must be" in message


def test_defaults_and_presets_are_allowed_and_choices_match_the_code():
    from pipetrace.data import LOADER_PATHS
    from pipetrace.transforms import AUGMENTS

    TrainConfig()
    for preset in PRESETS.values():
        TrainConfig(**preset)
    assert AUGMENT_CHOICES == AUGMENTS and LOADER_CHOICES == LOADER_PATHS
    assert TrainConfig(device="cuda:3").device == "cuda:3"  # cuda:N, by pattern


def help_text(*argv: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "pipetrace", *argv], capture_output=True,
                          text=True, timeout=120, env={**os.environ, "COLUMNS": "100"})
    assert proc.returncode == 0, proc.stderr
    return " ".join(proc.stdout.split())  # argparse wraps lines


def test_train_help_shows_each_fields_documentation_choices_and_default():
    text = help_text("train", "--help")
    defaults = TrainConfig()
    for f in fields(TrainConfig):
        if f.name == "data":
            continue
        flag = "--" + f.name.replace("_", "-")
        assert flag in text, flag
        assert " ".join(field_doc(f).split()) in text, f.name
        allowed = field_allowed(f)
        if allowed.choices:
            assert "{" + ",".join(allowed.choices) in text, f.name
        elif field_kind(f) in (int, float):
            assert allowed.describe(field_kind(f)) in text, f.name
        default = getattr(defaults, f.name)
        if isinstance(default, str) and f.name != "out":
            assert f"(default: {default})" in text, f.name


IMPORTS = """
import sys
from pipetrace.cli import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
print(sorted(m for m in ("torch", "torchvision", "cv2", "matplotlib") if m in sys.modules))
"""


@pytest.mark.parametrize("argv, allowed", [
    (["--help"], []),
    (["train", "--help"], ["cv2"]),  # the config's pixel limit comes from images.py
    (["check", "--help"], ["cv2"]),
    (["quiz", "--help"], []),
])
def test_help_imports_no_torch(argv, allowed):
    """`pipetrace --help` answers at once: nothing heavy is imported to build it (measured
    with bench/cli_start.py; docs/performance.md)."""
    proc = subprocess.run([sys.executable, "-c", IMPORTS, *argv], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    imported = eval(proc.stdout.strip().splitlines()[-1])
    assert set(imported) <= set(allowed), imported


def test_commands_that_only_read_and_print_start_without_torch(demo_run, tmp_path):
    """`pipetrace check` and `pipetrace quiz` run, and fail on a missing path, without
    importing torch (each used to wait ~3 s for it); what they print is tested elsewhere."""
    from conftest import coloured_image, write_image
    for c in ("cat", "dog"):
        for i in range(3):
            write_image(tmp_path / "d" / c / f"{i}.jpg", coloured_image(seed=i + 10 * len(c)))
    for argv, allowed in [(["check", str(tmp_path / "d")], ["cv2"]),
                          (["check", str(tmp_path / "missing")], ["cv2"]),
                          (["quiz", "--answers", str(demo_run)], []),
                          (["quiz", str(tmp_path / "missing")], [])]:
        proc = subprocess.run([sys.executable, "-c", IMPORTS, *argv], capture_output=True,
                              text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        imported = eval(proc.stdout.strip().splitlines()[-1])
        assert set(imported) <= set(allowed), (argv, imported)
        assert "Traceback" not in proc.stderr, proc.stderr


@pytest.mark.parametrize("flags, says", [
    (["--epochs", "0"], "epochs (--epochs) cannot be 0"),
    (["--epochs", "-1"], "epochs (--epochs) cannot be -1"),
    (["--image-size", "0"], "image_size (--image-size) cannot be 0"),
    (["--batch-size", "-1"], "batch_size (--batch-size) cannot be -1"),
    (["--crop-pct", "0"], "crop_pct (--crop-pct) cannot be 0.0"),
    (["--optimizer", "adam"], "it must be one of: sgd, adamw"),
    # each of these passed and then crashed or was killed for memory (a new-user trial)
    (["--image-size", "64", "--crop-pct", "0.001"], "= 64000 pixels: the evaluation resize "
     "must stay within 8192"),
    (["--lr", "1e308"], "lr (--lr) cannot be 1e+308: it must be a number in (0, 1e+06]"),
    (["--seed", "99999999999999999999"], "it must be an integer in [0, 9223372036854775807]"),
])
def test_bad_flags_are_one_line_before_the_dataset_is_looked_at(flags, says, tmp_path, capsys):
    """The dataset folder does not exist: the error is about the flag, so it came first."""
    assert main(["train", str(tmp_path / "no-such-dataset"), "--out", str(tmp_path / "r"),
                 *flags]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and says in err and "no-such-dataset" not in err, err


@pytest.mark.parametrize("flags, says", [
    (["--size", "100000"], "--size cannot be 100000: it must be an integer in [1, 4096]"),
    (["--crop-pct", "5"], "--crop-pct cannot be 5.0: it must be a number in (0, 1]"),
    (["--crop-pct", "nan"], "--crop-pct cannot be nan"),
    (["--crop-pct", "1e-9"], "the resize before the crop must stay within 8192"),
    (["--batch", "--per-class", "0"], "--per-class cannot be 0"),
])
def test_trace_checks_its_flags_as_train_does(flags, says, tmp_path, capsys):
    """`trace` took any size and crop (100000 was killed for memory, 5 was accepted)."""
    from conftest import coloured_image, write_image
    image = write_image(tmp_path / "a.png", coloured_image())
    assert main(["trace", str(image), *flags]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and says in err, err


def test_a_crop_too_small_for_the_default_size_is_refused_before_a_folder_is_made(
        tmp_path, capsys):
    """Without --image-size the size is known only from the weights (224 here): the
    contract is checked then, before the run folder exists."""
    from conftest import coloured_image, write_image
    for c in ("cat", "dog"):
        for i in range(2):
            write_image(tmp_path / "d" / c / f"{i}.png", coloured_image(seed=i + 3 * len(c)))
    assert main(["train", str(tmp_path / "d"), "--model", "pipenet-tiny", "--crop-pct",
                 "0.001", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "(224 / 0.001) = 224000 pixels" in err, err
    assert not (tmp_path / "r").exists()


def test_a_gpu_that_is_not_there_is_one_line(tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert main(["train", str(tmp_path / "no-such-dataset"), "--device", "cuda",
                 "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and re.search(r"'cuda'.*no CUDA GPU", err), err
    assert not (tmp_path / "r").exists()  # refused before the run folder was made


def test_argparse_errors_escape_what_was_typed(tmp_path, capsys):
    """`unrecognized arguments: NAME` quoted a hostile file name raw: an OSC sequence could
    retitle the terminal (found in a new-user trial)."""
    name = str(tmp_path / "\x1b]0;pwned\x07evil\u202egnp.png")
    for argv in (["export", str(tmp_path), "--onnx", "m.onnx", name],
                 ["train", name, "--epochs", "\x1b[31mx"]):
        with pytest.raises(SystemExit) as info:
            main(argv)
        assert info.value.code == 2
        err = capsys.readouterr().err
        assert "error:" in err and "\x1b" not in err and "\u202e" not in err and "\x07" not in err
        assert "\\x1b" in err
