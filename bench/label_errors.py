"""Likely label errors on real data: how many planted ones confident learning finds.

    EPOCHS=4 python bench/label_errors.py [DATA_DIR]      (make bench-errors)

Trains the `cifar` preset's model on CIFAR-10's 50,000 training JPEGs for EPOCHS epochs
(default 4), then evaluates it (`pipetrace.evaluate.evaluate_run`) on two copies of the
10,000 test files made in a temporary folder: a clean copy, and one where the labels of
500 files (5%, drawn with a fixed seed) were flipped by moving each file into another
class's folder. Reports precision and recall of the label-issue list at its own threshold
on the flipped copy, and how many files it flags on the clean one (which are then either
the model's confident mistakes or true label errors in CIFAR-10's test set).
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

from common import data_dir, save
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


def main(argv):
    cifar = data_dir(argv, "cifar10")
    epochs = int(os.environ.get("EPOCHS", "4"))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cfg = replace(TrainConfig(**PRESETS["cifar"]), data=str(cifar), out=str(tmp / "run"),
                      epochs=epochs)
        t0 = time.perf_counter()
        result = fit(cfg)
        train_s = time.perf_counter() - t0
        acc = result.records[-1].val_acc
        print(f"trained {epochs} epochs in {train_s:.0f} s: test accuracy {acc:.3f}")
        out = {"epochs": epochs, "train_seconds": train_s, "test_accuracy": acc}
        for name, flips in (("clean", 0), ("flipped", FLIPS)):
            copy = tmp / name
            flipped = copy_test_set(cifar / "test", copy, flips)
            ev = evaluate_run(str(tmp / "run"), str(copy), split="all")
            flagged = {e.path for e in ev.errors.label_issues}
            hits = len(flagged & flipped)
            row = {"flagged": len(flagged), "planted": len(flipped), "found": hits,
                   "precision": hits / len(flagged) if flagged else None,
                   "recall": hits / len(flipped) if flipped else None,
                   "accuracy": ev.errors.accuracy}
            out[name] = row
            print(f"{name:<8} flagged {len(flagged):>4}, planted {len(flipped):>3}, found {hits:>3}"
                  + (f", precision {row['precision']:.2f}, recall {row['recall']:.2f}"
                     if flipped else ""), flush=True)
    print(f"wrote {save('label_errors', out)}")


if __name__ == "__main__":
    main(sys.argv)
