"""Error analysis: per-class metrics against scikit-learn, ECE by hand, the reliability
diagram's bins, the worst images against predictions.csv, and confident learning finding
planted label errors."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from pipetrace.errors import Predictions, analyse, calibration, label_issues


def predictions(labels, probs, classes=None) -> Predictions:
    labels, probs = np.asarray(labels, np.int64), np.asarray(probs, np.float32)
    classes = classes or [f"c{i}" for i in range(probs.shape[1])]
    losses = -np.log(probs[np.arange(len(labels)), labels] + 1e-12).astype(np.float32)
    return Predictions([f"img{i}.jpg" for i in range(len(labels))], labels, probs, losses,
                       classes)


def random_predictions(n=500, c=7, seed=0) -> Predictions:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, c, n)
    logits = rng.normal(size=(n, c)) + 2.5 * np.eye(c)[labels] * rng.random((n, 1))
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return predictions(labels, probs)


def test_per_class_metrics_match_scikit_learn():
    sklearn = pytest.importorskip("sklearn.metrics")
    pred = random_predictions()
    a = analyse(pred)
    report = sklearn.classification_report(pred.labels, pred.predicted, output_dict=True,
                                           zero_division=0, labels=range(7))
    for j, m in enumerate(a.per_class):
        r = report[str(j)]
        assert (m.precision, m.recall, m.f1, m.support) == pytest.approx(
            (r["precision"], r["recall"], r["f1-score"], r["support"]))
    assert a.macro_f1 == pytest.approx(report["macro avg"]["f1-score"])
    assert a.accuracy == pytest.approx(report["accuracy"])
    assert a.top5_accuracy == pytest.approx(sklearn.top_k_accuracy_score(
        pred.labels, pred.probs, k=5, labels=range(7)))


def test_ece_by_hand_and_the_bins_add_up():
    # four images: confidences 0.85 (right), 0.85 (wrong), 0.65 (right), 0.35 (right)
    probs = [[0.85, 0.15, 0, 0], [0.85, 0.15, 0, 0], [0.65, 0.35, 0, 0], [0.35, 0.25, 0.2, 0.2]]
    labels = [0, 1, 0, 0]
    ece, bins = calibration(np.asarray(probs, np.float32), np.asarray(labels), bins=10)
    # bin [0.8, 0.9): 2 images, conf 0.85, acc 0.5; [0.6, 0.7): 0.65, 1; [0.3, 0.4): 0.35, 1
    assert ece == pytest.approx(2 / 4 * 0.35 + 1 / 4 * 0.35 + 1 / 4 * 0.65)
    assert sum(b.count for b in bins) == 4 and len(bins) == 10
    full = [b for b in bins if b.count]
    assert [b.low for b in full] == pytest.approx([0.3, 0.6, 0.8])
    assert [b.count for b in full] == [1, 1, 2]
    assert [b.accuracy for b in full] == [1.0, 1.0, 0.5]
    assert [b.confidence for b in full] == pytest.approx([0.35, 0.65, 0.85])
    big = random_predictions(n=1000)
    assert sum(b.count for b in analyse(big).calibration) == 1000


def test_the_worst_images_are_the_highest_losses_in_the_csv(tmp_path):
    pred = random_predictions(n=200)
    text = pred.to_csv()
    back = Predictions.from_csv(text)
    assert back.paths == pred.paths and np.array_equal(back.labels, pred.labels)
    assert np.allclose(back.probs, pred.probs, atol=1e-6)
    worst = analyse(back, top=10).top_losses
    by_loss = sorted(range(200), key=lambda i: -float(back.losses[i]))[:10]
    assert [e.index for e in worst] == by_loss
    assert all(e.path == pred.paths[e.index] for e in worst)
    assert worst[0].loss == pytest.approx(float(back.losses.max()), abs=1e-6)


def test_most_confused_pairs_count_the_off_diagonal():
    labels = [0, 0, 0, 1, 1, 2]
    probs = np.eye(3)[[1, 1, 0, 0, 1, 1]] * 0.8 + 0.2 / 3
    a = analyse(predictions(labels, probs, ["cat", "dog", "fox"]))
    assert a.most_confused == [("cat", "dog", 2), ("dog", "cat", 1), ("fox", "dog", 1)]


def test_label_issues_find_planted_errors_and_not_the_models_own_mistakes():
    """A model right on 90% of 600 images of 4 classes, whose mistakes keep some probability
    on the true class (as a real model's do: a cat taken for a dog still looks a bit like a
    cat); 30 labels flipped. The flipped ones are found, the mistakes are not flagged."""
    rng = np.random.default_rng(1)
    n, c = 600, 4
    truth = rng.integers(0, c, n)
    right = rng.random(n) < 0.9
    guess = np.where(right, truth, (truth + rng.integers(1, c, n)) % c)
    conf = rng.uniform(0.6, 0.98, n)
    probs = np.full((n, c), 0.0)
    probs[np.arange(n), guess] = conf
    probs += (1 - conf)[:, None] / c
    share = rng.uniform(0.1, 0.35, n)  # a mistake's probability left on the true class
    probs[~right, truth[~right]] += share[~right]
    probs /= probs.sum(1, keepdims=True)
    flipped = rng.choice(np.flatnonzero(right), 30, replace=False)
    given = truth.copy()
    given[flipped] = (truth[flipped] + 1) % c
    issues, thresholds = label_issues(predictions(given, probs))
    found = {e.index for e in issues}
    assert len(found & set(flipped.tolist())) / len(flipped) >= 0.9
    assert len(found - set(flipped.tolist())) <= 3  # of the model's ~60 mistakes
    # each threshold is the class's mean probability on the images labelled otherwise
    for j in range(c):
        assert thresholds[f"c{j}"] == pytest.approx(probs[given != j, j].mean())
    clean, _ = label_issues(predictions(truth, probs))
    assert len(clean) <= 3 and (guess != truth).sum() > 40
    assert all(e.p_predicted > e.p_given for e in issues)
    margins = [e.p_predicted - e.p_given for e in issues]
    assert margins == sorted(margins, reverse=True)


def test_a_run_records_its_predictions_and_the_cli_reads_them(demo_run, tmp_path, capsys):
    from conftest import run_cli
    from pipetrace.cli import main

    csv_text = (demo_run / "predictions.csv").read_text()
    pred = Predictions.from_csv(csv_text)
    assert len(pred) == 400 and pred.classes == ["circle", "square", "star", "triangle"]
    assert np.allclose(pred.probs.sum(1), 1, atol=1e-4)
    history = (demo_run / "metrics.csv").read_text().splitlines()
    last_val_acc = float(history[-1].split(",")[4])
    assert float((pred.predicted == pred.labels).mean()) == pytest.approx(last_val_acc)
    capsys.readouterr()
    assert main(["errors", str(demo_run), "--json"]) == 0  # in this process: no torch import
    doc = __import__("json").loads(capsys.readouterr().out)
    assert doc["images"] == 400 and doc["top_losses"][0]["loss"] == pytest.approx(
        float(pred.losses.max()), abs=1e-5)
    # evaluating the checkpoint again gives the same images and the same answers
    again = run_cli("evaluate", str(demo_run), "--out", str(tmp_path / "ev"))
    assert again.returncode == 0, again.stderr
    assert "Per class" in again.stdout and "Likely label errors" in again.stdout
    redo = Predictions.from_csv((tmp_path / "ev" / "predictions.csv").read_text())
    assert redo.paths == pred.paths and np.array_equal(redo.labels, pred.labels)


def test_label_issues_skip_nan_rows_and_ties():
    probs = np.array([[0.9, 0.05, 0.05], [0.1, 0.85, 0.05], [0.05, 0.9, 0.05],
                      [0.05, 0.05, 0.9], [0.45, 0.45, 0.1], [np.nan, np.nan, np.nan]])
    labels = [1, 1, 0, 2, 1, 2]  # row 0 and row 2 look mislabelled; row 4 is a tie
    issues, thresholds = label_issues(predictions(labels, probs))
    assert sorted(e.index for e in issues) == [0, 2]
    assert all(np.isfinite(t) for t in thresholds.values()) and len(thresholds) == 3


@pytest.fixture(scope="module")
def held_out_run(tmp_path_factory):
    """A run on a folder without val/ that held out 30% of its 20 files (seed 3)."""
    from conftest import coloured_image, write_image
    from pipetrace.train import TrainConfig, fit

    base = tmp_path_factory.mktemp("held-out")
    root = base / "data"
    for c, cls in enumerate(("ant", "bee")):
        for i in range(10):
            img = coloured_image(24, 24, seed=10 * c + i)
            write_image(root / cls / f"{i}.jpg", 255 - img if c else img)
    result = fit(TrainConfig(data=str(root), out=str(base / "run"), model="pipenet-tiny",
                             image_size=64, epochs=1, batch_size=8, val_fraction=0.3, seed=3))
    return root, base / "run", result


def test_evaluating_val_of_a_folder_without_val_takes_the_images_the_run_held_out(
        held_out_run, tmp_path):
    """No val/ folder: the run held out 30% of the files; `evaluate --split val` scores those
    very files (not every file, training images included), `--split train` the rest."""
    from pipetrace.analysis import first_validation_image
    from pipetrace.evaluate import evaluate_run, read_predictions

    root, run, result = held_out_run
    held_out = set(Predictions.from_csv((run / "predictions.csv").read_text()).paths)
    assert len(held_out) == 6 and str(root / "ant" / "0.jpg") not in held_out
    # the report's prediction trace follows a validation image too
    assert first_validation_image(result) == (min(held_out), Path(min(held_out)).parent.name)
    val = evaluate_run(str(run), split="val")
    assert set(val.predictions.paths) == held_out
    train = evaluate_run(str(run), split="train")
    assert not set(train.predictions.paths) & held_out and len(train.predictions) == 14
    assert len(evaluate_run(str(run), split="all").predictions) == 20
    with pytest.raises(ValueError, match="does not exist"):
        read_predictions(tmp_path / "nowhere")
    # another folder without val/: every file is unseen, so "val" is all of them
    shutil.copytree(root, tmp_path / "other")
    assert len(evaluate_run(str(run), str(tmp_path / "other"), split="val").predictions) == 20
    # a file added since the run: the held-out files are still those the run validated on
    shutil.copy(root / "ant" / "0.jpg", root / "ant" / "00.jpg")
    assert set(evaluate_run(str(run), split="val").predictions.paths) == held_out


def test_an_evaluation_is_never_overwritten(held_out_run, capsys):
    from pipetrace.cli import main
    from pipetrace.evaluate import read_predictions

    _, run, _ = held_out_run
    assert main(["evaluate", str(run), "--split", "all"]) == 0
    first = (run / "eval-all" / "errors.json").read_bytes()
    assert main(["evaluate", str(run), "--split", "all"]) == 0  # the next free folder
    assert (run / "eval-all2" / "errors.json").is_file()
    assert (run / "eval-all" / "errors.json").read_bytes() == first
    capsys.readouterr()
    assert main(["errors", str(run / "eval-all")]) == 0  # the evaluation's split, in words
    assert " images (every split): accuracy" in capsys.readouterr().out
    assert read_predictions(run).split == "val"
    assert main(["evaluate", str(run), "--out", str(run / "eval-all")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "already holds predictions" in err
    assert (run / "eval-all" / "errors.json").read_bytes() == first
    capsys.readouterr()
    assert main(["evaluate", str(run), "--out", str(run / "eval-all")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "already holds predictions" in err
    assert (run / "eval-all" / "errors.json").read_bytes() == first


def test_class_folders_the_model_does_not_know_are_named_not_silently_dropped(
        held_out_run, tmp_path, capsys):
    """A folder `Ant` (renamed) and an extra class are not scored, and the evaluation says
    so, in the terminal and in errors.json (found in a new-user trial: 8 of 12 images were
    left out of an accuracy without a word)."""
    from pipetrace.cli import main

    root, run, _ = held_out_run
    other = tmp_path / "other"
    shutil.copytree(root / "bee", other / "bee")
    shutil.copytree(root / "ant", other / "Ant")  # not the checkpoint's "ant"
    shutil.copytree(root / "ant", other / "wasp")
    out = tmp_path / "ev"
    assert main(["evaluate", str(run), str(other), "--out", str(out)]) == 0
    said = capsys.readouterr().out
    assert "2 class folder(s) left out, not scored" in said and "'Ant', 'wasp'" in said
    doc = json.loads((out / "errors.json").read_text())
    assert doc["left_out_folders"] == [str(other / "Ant"), str(other / "wasp")]
    assert doc["errors"]["images"] == 10  # the bees only
    assert main(["evaluate", str(run), str(root), "--split", "all", "--out",
                 str(tmp_path / "ev2")]) == 0
    assert "left out" not in capsys.readouterr().out  # the run's own folder: nothing left out


def test_impossible_probabilities_are_refused_and_json_stays_json(tmp_path, capsys):
    """A predictions.csv with p = -3 or 1e308 is refused naming its row (it gave a numpy
    warning and an ECE of inf); a diverged model's NaN row leaves the JSON valid (it printed
    NaN, which JSON readers refuse) and the calibration finite."""
    from pipetrace.cli import main
    pred = random_predictions(n=40, c=3)
    text = pred.to_csv().splitlines()
    for bad in ("-3", "1e308"):
        cells = text[5].split(",")
        cells[7] = bad
        (tmp_path / "predictions.csv").write_text("\n".join([*text[:5], ",".join(cells),
                                                             *text[6:]]) + "\n")
        assert main(["errors", str(tmp_path / "predictions.csv")]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "row 6" in err and "not a probability in [0, 1]" in err
    cells = text[5].split(",")
    cells[6:] = ["nan"] * len(cells[6:])
    (tmp_path / "predictions.csv").write_text("\n".join([*text[:5], ",".join(cells),
                                                         *text[6:]]) + "\n")
    assert main(["errors", str(tmp_path / "predictions.csv"), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out, parse_constant=lambda c: pytest.fail(c))
    assert 0 <= doc["ece"] <= 1 and sum(b["count"] for b in doc["calibration"]) == 39


def test_skew_and_export_default_to_the_images_the_run_held_out(held_out_run):
    """Without val/, the images skew, export and predict take by default are the ones
    evaluate scores (they used to say the dataset had no validation images)."""
    from pipetrace.predict import load_model, validation_images

    _, run, _ = held_out_run
    held_out = set(Predictions.from_csv((run / "predictions.csv").read_text()).paths)
    lm = load_model(run)
    assert set(validation_images(lm, None)) == held_out
    assert set(validation_images(lm, 3)) <= held_out and len(validation_images(lm, 3)) == 3
