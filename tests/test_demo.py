"""`pipetrace demo` through its real entry point: what it prints and writes is true."""

import json

from pipetrace.predict import load_model


def test_demo_writes_the_run_folder(demo_run):
    for name in ("trace.json", "report.html", "metrics.jsonl", "metrics.csv", "curves.png",
                 "confusion.png", "last.pt", "best.pt", "config.json"):
        assert (demo_run / name).is_file(), name


def test_demo_reaches_the_seed_accuracy_and_prints_its_tables(demo_run):
    records = [json.loads(ln) for ln in (demo_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2, 3, 4, 5]
    assert records[-1]["val_acc"] >= 0.85  # the seed's last row
    assert records[0]["val_acc"] < 0.7  # one epoch is not enough on this dataset
    out = (demo_run / "stdout.txt").read_text()
    for text in ("Data flow", "Training trace", "Loss", "Prediction trace", "Top classes",
                 "OpenCV", "torchvision", "softmax"):
        assert text in out, text
    # the printed table's last row carries the recorded numbers
    assert f"{records[-1]['val_acc']:.3f}" in out


def test_demo_trace_is_true_to_the_model(demo_run):
    doc = json.loads((demo_run / "trace.json").read_text())
    steps = doc["data_flow"]["stages"]
    assert [s["name"] for s in steps] == ["Read file", "Decode", "Resize + crop",
                                          "BGR to RGB, into the batch", "To device",
                                          "Normalize batch", "Augment batch", "Training step"]
    assert steps[1]["output"]["channel_order"] == "BGR"  # measured against a PIL decode
    assert steps[3]["output"]["channel_order"] == "RGB"
    assert steps[6]["output"]["shape"] == [32, 3, 224, 224]
    assert doc["data_flow"]["seed_order_same"] is True
    lm = load_model(demo_run)
    assert doc["run"]["model"]["params"] == sum(p.numel() for p in lm.model.parameters())
    assert doc["run"]["classes"] == lm.classes == ["circle", "square", "star", "triangle"]
