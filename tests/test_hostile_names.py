"""Every name that reaches a terminal is neutralised, on every command's output path.

Class folders and a file are named with what an attacker would put there: an OSC sequence
that sets the window title (ESC ] 0 ; ... BEL), one that plants a hyperlink (ESC ] 8), a
clear-screen (ESC [ 2 J), CR/LF that fake a line, Unicode bidi overrides that reorder what
is shown, and zero-width characters that hide text. One tiny run is trained through the real
entry point on a pseudo-terminal (the live progress path), then every other command runs on
it, and each one's stdout and stderr is swept.
"""

from __future__ import annotations

import os
import pty
import select
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest

from conftest import coloured_image, write_image
from pipetrace.cli import main
from pipetrace.text import BIDI_CONTROLS, ZERO_WIDTH

TITLE = "cat\x1b]0;pwned\x07\u202e"  # sets the window title, then reverses the line
CLEAR = "dog\x1b[2J\rFAKE\nFAKE LINE\u200b\u2066"  # clears the screen, fakes two lines
LINK = "img\x1b]8;;http://evil.example\x07click\x1b]8;;\x07\u200d"  # a planted hyperlink
EMPTY = "ghost\x1b[31m\u202d"  # an empty class folder: its name is in a finding
FORBIDDEN = ("\x1b", "\x07", "\r", *BIDI_CONTROLS, *ZERO_WIDTH)


def assert_neutralised(text: str, where: str) -> None:
    """No escape, BEL, CR, bidi or zero-width character; no line the dataset started."""
    for ch in FORBIDDEN:
        assert ch not in text, f"{where}: raw {ch!r} reached the terminal:\n{text[-2000:]}"
    for line in text.splitlines():
        assert not line.startswith("FAKE"), f"{where}: a name started a line: {line!r}"


@pytest.fixture(scope="module")
def hostile(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("hostile") / "data"
    for split, n in (("train", 6), ("val", 2)):
        for c, cls in enumerate((TITLE, CLEAR)):
            for i in range(n):
                img = coloured_image(40, 40, seed=50 * c + i + (100 if split == "val" else 0))
                write_image(root / split / cls / f"{i}.png", 255 - img if c else img)
    write_image(root / "val" / TITLE / f"{LINK}.png", coloured_image(40, 40, seed=7))
    (root / "train" / EMPTY).mkdir()
    return root


def run_on_a_terminal(*args: str, timeout: float = 600) -> tuple[int, str]:
    """`python -m pipetrace ARGS` with stdout and stderr on a pseudo-terminal (160 columns)."""
    master, slave = pty.openpty()
    import fcntl

    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 160, 0, 0))
    env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "160"}
    env.pop("NO_COLOR", None)
    proc = subprocess.Popen([sys.executable, "-m", "pipetrace", *args], stdin=subprocess.DEVNULL,
                            stdout=slave, stderr=slave, env=env, close_fds=True)
    os.close(slave)
    chunks = []
    while True:
        ready, _, _ = select.select([master], [], [], timeout)
        if not ready:
            proc.kill()
            raise AssertionError("the command hung")
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    return proc.wait(), b"".join(chunks).decode("utf-8", "replace")


@pytest.fixture(scope="module")
def trained(hostile, tmp_path_factory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("hostile-run") / "run"
    code, text = run_on_a_terminal(
        "train", str(hostile), "--out", str(out), "--epochs", "1", "--model", "pipenet-tiny",
        "--image-size", "64", "--crop-pct", "1.0", "--batch-size", "4", "--device", "cpu",
        "--trace-every", "1")
    assert code == 0, text[-3000:]
    return out, text


def test_train_on_a_terminal_shows_names_escaped(trained):
    _, text = trained
    # A terminal gets rich's own colour and cursor codes (CSI ... m, CR); never the
    # dataset's: no OSC (title, hyperlink), no BEL, no clear-screen, no bidi or zero-width.
    for bad in ("\x1b]", "\x07", "\x1b[2J", "\rFAKE", "\nFAKE", *BIDI_CONTROLS, *ZERO_WIDTH):
        assert bad not in text, f"{bad!r} reached the terminal"
    assert "ghost\\x1b[31m\\u202d" in text  # the empty class, named in a finding, visibly
    assert "Dataset checks before the first epoch" in text


@pytest.fixture(scope="module")
def image(hostile) -> str:
    return str(hostile / "val" / TITLE / f"{LINK}.png")


def sweep(capsys, *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    text = captured.out + captured.err
    assert_neutralised(text, " ".join(argv[:1]))
    return code, text


def test_predict_trace_table_and_csv(trained, image, hostile, capsys, tmp_path):
    run, _ = trained
    code, text = sweep(capsys, "predict", str(run), image)
    assert code == 0 and "Prediction trace" in text and "\\x1b]8;;http" in text
    code, text = sweep(capsys, "predict", str(run), image, str(hostile / "val" / CLEAR))
    assert code == 0 and text.startswith("path,class_1,prob_1")  # the CSV on stdout
    assert text.count("\n") == 4  # header + 3 rows: no name split a row
    assert "cat\\x1b]0;pwned\\x07\\u202e" in text
    code, text = sweep(capsys, "predict", str(run), image, image, "--save", str(tmp_path))
    saved = (tmp_path / "predictions.csv").read_text(encoding="utf-8")
    assert code == 0 and TITLE in saved  # the file keeps the names exactly


def test_predict_on_a_hostile_missing_file_is_one_clean_line(trained, capsys):
    run, _ = trained
    code, text = sweep(capsys, "predict", str(run), f"/nowhere/{CLEAR}.png")
    assert code == 2 and len(text.strip().splitlines()) == 1 and "no such file" in text


def test_trace_with_and_without_the_model(trained, image, capsys):
    run, _ = trained
    _, text = sweep(capsys, "trace", image)
    assert "Data flow" in text
    _, text = sweep(capsys, "trace", image, "--model", str(run))
    assert "Probabilities (softmax), probabilities of the first image: " in text


def test_check_skew_export_report_quiz(trained, hostile, image, capsys, tmp_path):
    run, _ = trained
    code, text = sweep(capsys, "check", str(hostile))
    assert code == 1 and "ghost\\x1b[31m" in text
    skew_app = str(Path(__file__).with_name("skew_apps.py")) + ":correct"
    sweep(capsys, "skew", str(run), image, "--preprocess", skew_app)
    if _has_onnx():
        code, _ = sweep(capsys, "export", str(run), image, "--onnx", str(tmp_path / "m.onnx"))
        assert code == 0
    code, text = sweep(capsys, "report", str(run))
    assert code == 0 and "Wrote" in text
    code, text = sweep(capsys, "quiz", str(run), "--answers")
    assert code == 0 and "Answer:" in text


def _has_onnx() -> bool:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def test_library_warnings_are_shown_escaped(capsys, monkeypatch):
    """A warning that quotes a name (as matplotlib's missing-glyph warning does) goes through
    the same helper as everything else on the terminal."""
    import warnings

    from pipetrace.cli import _show_warning_safely

    _show_warning_safely(UserWarning(f"Glyph 27 ({TITLE}) missing from font(s)"), UserWarning,
                         "x.py", 1)
    err = capsys.readouterr().err
    assert_neutralised(err, "warning")
    assert "\\x1b]0;pwned" in err
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        from pipetrace.report.plots import confusion_png

        confusion_png([[1, 0], [0, 1]], [TITLE, "犬"])  # no glyph warning escapes
