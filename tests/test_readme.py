"""The README's Python examples run as written (the first block; the second trains)."""

import re
from pathlib import Path

from conftest import coloured_image, write_image

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def block_with(text: str) -> str:
    """The README's Python block that contains ``text`` (blocks move as the README grows)."""
    (block,) = [b for b in python_blocks() if text in b]
    return block


def test_readme_trace_example_runs(tmp_path, monkeypatch, capsys):
    write_image(tmp_path / "photo.jpg", coloured_image(300, 400))
    monkeypatch.chdir(tmp_path)
    exec(compile(block_with("pt.inspect_batch("), "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert "Resize" in out and "Normalize" in out and "3 x 224 x 224 float32" in out
    assert "error Tensor is NHWC" in out


def test_readme_train_example_runs(tmp_path, monkeypatch, capsys):
    from pipetrace.shapes import ShapesConfig, render

    render(ShapesConfig(train_per_class=8, val_per_class=2, image_size=64, seed=5),
           tmp_path / "my_dataset")
    write_image(tmp_path / "photo.jpg", coloured_image(64, 64))
    monkeypatch.chdir(tmp_path)
    code = block_with("pt.fit(").replace("epochs=3", "epochs=1")
    exec(compile("import pipetrace as pt\n" + code, "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert re.search(r"^1 0\.\d+ ", out, flags=re.M)  # epoch 1, its validation accuracy
    assert re.search(r"\[\('(circle|square|star|triangle)', 0\.\d+", out)  # the top-k


def test_readme_bring_your_own_model_example_runs(capsys):
    exec(compile(block_with("pt.replay("), "README.md", "exec"), {})
    out = capsys.readouterr().out.splitlines()
    joins = [line for line in out if "residual add" in line and "<-" in line]
    assert len(joins) == 8 and all(line.split()[2] == "add_" for line in joins)
    rows = out[8:-1]
    assert [line.split()[1] for line in rows] == [
        "input", "conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4",
        "avgpool", "flatten", "fc", "softmax"]
    assert rows[5] == "6 layer1 block (Sequential) (1, 64, 16, 16) residual add x 2"
    assert rows[10] == "11 flatten flatten (1, 512) "
    assert out[-1] == "69 of 69 operations replayed exactly"
