"""What tracing costs during training: `fit` with stage tracing as configured for training
(the first batch traced once before epoch 1, then the model input sampled every 50 steps)
against tracing fully off (`trace_every=0`), same data, alternated, 5 repeats each.

    python bench/trace_overhead.py          (make bench-trace)

Data: the built-in shapes at 224 x 224 (2,000 training images), the demo's model and
recipe, 2 epochs. The target (<= 3% slower) is for the epochs' time, loader and steps;
the one-off first-batch trace before epoch 1 is reported separately, in seconds.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from common import save
from pipetrace.demo import DemoConfig, demo_train_config
from pipetrace.shapes import ShapesConfig, ensure_shapes
from pipetrace.train import fit


def main(argv):
    epochs = {"on": [], "off": []}
    totals = {"on": [], "off": []}
    with tempfile.TemporaryDirectory() as tmp:
        root = ensure_shapes(ShapesConfig(train_per_class=500, val_per_class=25), tmp)
        base = replace(demo_train_config(DemoConfig(), root), epochs=2, out=str(Path(tmp) / "run"))
        for i in range(6):  # first pair is warm-up
            for name, every in (("on", base.trace_every), ("off", 0)):
                t0 = time.perf_counter()
                result = fit(replace(base, trace_every=every))
                if i:
                    totals[name].append(time.perf_counter() - t0)
                    epochs[name].append(sum(r.seconds for r in result.records))
    med = {k: statistics.median(v) for k, v in epochs.items()}
    ratio = med["on"] / med["off"]
    one_off = statistics.median(totals["on"]) - statistics.median(totals["off"]) - (
        med["on"] - med["off"])
    for k, v in epochs.items():
        print(f"tracing {k:<3}: epochs {med[k]:.2f} s per run (min {min(v):.2f}, max {max(v):.2f})")
    print(f"tracing on / off, epochs (loader + steps + validation): {ratio:.3f} (target <= 1.03)")
    print(f"one-off first-batch stage trace before epoch 1: {one_off:.2f} s")
    print(f"wrote {save('trace_overhead', {'epoch_s': epochs, 'total_s': totals, 'median_s': med, 'ratio': ratio, 'one_off_s': one_off})}")


if __name__ == "__main__":
    main(sys.argv)
