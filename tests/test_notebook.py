"""Records, traces, findings and a finished run display as HTML in Jupyter: a real notebook
is executed with nbclient on an ipykernel, and its outputs are read back."""

from __future__ import annotations

from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

SRC = str(Path(__file__).resolve().parents[1] / "src")
HOSTILE = "<b onmouseover=alert(1)>ant</b>"

CELLS = [
    f"import sys; sys.path.insert(0, {SRC!r})\n"
    "import cv2, numpy as np, pathlib\n"
    "import pipetrace as pt\n"
    "root = pathlib.Path('data')\n"
    f"for c, name in enumerate(({HOSTILE!r}, 'bee', 'empty')):\n"
    "    (root / name).mkdir(parents=True, exist_ok=True)\n"
    "    for i in range(0 if name == 'empty' else 8):\n"
    "        rng = np.random.default_rng(10 * c + i)\n"
    "        cv2.imwrite(str(root / name / f'{i}.png'), rng.integers(0, 255, (40, 40, 3), "
    "dtype=np.uint8) // (c + 1))",
    "result = pt.fit(pt.TrainConfig(data='data', out='run', model='pipenet-tiny', epochs=2, "
    "batch_size=4, image_size=64, crop_pct=1.0, device='cpu'))\nresult",
    "result.records[-1]",
    "result.flow.stages[0]",
    "result.findings[0]",
    "lm = pt.load_model('run')\npt.trace_prediction(lm, 'data/bee/0.png')",
]


def html_of(cell) -> str:
    for out in cell.get("outputs", []):
        if out.get("output_type") == "error":
            raise AssertionError("\n".join(out.get("traceback", []))[-3000:])
        if "text/html" in out.get("data", {}):
            return out["data"]["text/html"]
    return ""


def test_a_notebook_shows_the_run_its_records_and_traces_as_html(tmp_path):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in CELLS])
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    run, epoch, stage, finding, layers = (html_of(c) for c in nb.cells[1:])
    for text in ("pipetrace run", "Data flow", "Training trace", "Dataset checks",
                 "pipenet-tiny", "<td class=\"n\">2</td>"):
        assert text in run, text
    assert "&lt;b onmouseover=alert(1)&gt;" in run and HOSTILE not in run  # escaped
    assert epoch.count("<tr>") == 2 and "<td class=\"n\">2</td>" in epoch  # header + epoch 2
    assert "Read file" in stage and "stage 1" in stage and "Python" in stage
    assert "empty-class" not in finding and "class folder(s) without a usable training image" \
        in finding and "finding warning" in finding
    assert "input tensor" in layers and "softmax" in layers and "Top classes: " in layers
