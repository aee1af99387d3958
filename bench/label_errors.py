"""Likely label errors on real data: how many planted ones confident learning finds.

    [EPOCHS=10] [FLIP_SEED=0] python bench/label_errors.py [DATA_DIR]   (make bench-errors)

Trains the `cifar` preset's model on CIFAR-10's 50,000 training JPEGs for EPOCHS epochs
(default 10, the preset's), then evaluates it (`pipetrace.evaluate.evaluate_run`) on two copies of the
10,000 test files made in a temporary folder: a clean copy, and one where the labels of
500 files (5%, drawn with FLIP_SEED) were flipped by moving each file into another
class's folder. Reports precision and recall of the label-issue list at its own threshold
on the flipped copy, and how many files it flags on the clean one (which are then either
the model's confident mistakes or true label errors in CIFAR-10's test set); the anchor in
the same run, on the same predictions, is confident learning's own rule. The predictions are
kept in bench/results/label_errors_{clean,flipped}.csv (KEEP=DIR keeps the trained run).
"""

from __future__ import annotations

import os
import random
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from common import RESULTS, data_dir, save
from pipetrace.config import PRESETS, TrainConfig
from pipetrace.evaluate import evaluate_run
from pipetrace.train import fit

FLIPS = 500


def copy_test_set(src: Path, dst: Path, flips: int, seed: int = 0) -> set[str]:
    """Copy src/<class>/<file> to dst; move ``flips`` files into another class folder.
    Returns the paths (under dst) whose label is now wrong."""
    files = sorted(src.rglob("*.jpg"))
    classes = sorted(p.name for p in src.iterdir() if p.is_dir())
    rng = random.Random(seed)
    wrong = set(rng.sample(range(len(files)), flips)) if flips else set()
    flipped = set()
    for i, f in enumerate(files):
        cls = f.parent.name
        if i in wrong:
            cls = rng.choice([c for c in classes if c != f.parent.name])
        target = dst / cls / f"{f.parent.name}_{f.name}"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(f, target)
        if i in wrong:
            flipped.add(str(target))
    return flipped


def confident_learning(pred) -> set[str]:
    """The anchor: confident learning's own rule (Northcutt et al. 2021; pipetrace's before
    it set the thresholds at the absent level): another class j reaches t_j, the mean p_j
    over the images labelled j, is the likeliest such class, and p_given stays under t_given."""
    probs, labels = pred.probs, pred.labels
    t = np.array([probs[labels == j, j].mean() if (labels == j).any() else np.inf
                  for j in range(probs.shape[1])])
    reached = probs >= t[None, :]
    suggested = np.where(reached, probs, -1.0).argmax(1)
    p_given = probs[np.arange(len(labels)), labels]
    issue = reached.any(1) & (suggested != labels) & (p_given < t[labels])
    return {pred.paths[i] for i in np.flatnonzero(issue)}


def scores(flagged: set[str], flipped: set[str]) -> dict:
    hits = len(flagged & flipped)
    return {"flagged": len(flagged), "planted": len(flipped), "found": hits,
            "precision": hits / len(flagged) if flagged else None,
            "recall": hits / len(flipped) if flipped else None}


def main(argv):
    cifar = data_dir(argv, "cifar10")
    epochs = int(os.environ.get("EPOCHS", "10"))  # the preset's
    seed = int(os.environ.get("FLIP_SEED", "0"))  # which files are flipped, and to what
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cfg = replace(TrainConfig(**PRESETS["cifar"]), data=str(cifar), out=str(tmp / "run"),
                      epochs=epochs)
        t0 = time.perf_counter()
        result = fit(cfg)
        train_s = time.perf_counter() - t0
        acc = result.records[-1].val_acc
        print(f"trained {epochs} epochs in {train_s:.0f} s: test accuracy {acc:.3f}")
        if os.environ.get("KEEP"):  # the trained run, to study the ranking without training
            shutil.copytree(tmp / "run", os.environ["KEEP"], dirs_exist_ok=True)
        out = {"epochs": epochs, "flip_seed": seed, "train_seconds": train_s, "test_accuracy": acc}
        for name, flips in (("clean", 0), ("flipped", FLIPS)):
            copy = tmp / name
            flipped = copy_test_set(cifar / "test", copy, flips, seed)
            ev = evaluate_run(str(tmp / "run"), str(copy), split="all")
            keep = RESULTS / f"label_errors_{name}"  # for studying the ranking without training
            keep.with_suffix(".csv").write_text(ev.predictions.to_csv(), encoding="utf-8")
            keep.with_suffix(".flipped.txt").write_text("".join(
                os.path.relpath(p, copy) + "\n" for p in sorted(flipped)), encoding="utf-8")
            for method, flagged in (("pipetrace", {e.path for e in ev.errors.label_issues}),
                                    ("confident learning (anchor)", confident_learning(
                                        ev.predictions))):
                row = {**scores(flagged, flipped), "accuracy": ev.errors.accuracy}
                out.setdefault(name, {})[method] = row
                print(f"{name:<8} {method:<28} flagged {row['flagged']:>4}, planted "
                      f"{row['planted']:>3}, found {row['found']:>3}" + (
                          f", precision {row['precision']:.2f}, recall {row['recall']:.2f}"
                          if flipped else ""), flush=True)
    print(f"wrote {save('label_errors', out)}")


if __name__ == "__main__":
    main(sys.argv)
