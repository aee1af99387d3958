"""What tracing costs during training: `fit` with stage tracing as configured for training
(the first batch traced, then the model input sampled every 50 steps) against tracing fully
off (`trace_every=0`), on the same data, alternated, 5 repeats each.

    python bench/trace_overhead.py          (make bench-trace)

Data: the built-in shapes at 224 x 224 (1,000 training images), the demo's model and
recipe, 2 epochs. Target: <= 3% slower.
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
    with tempfile.TemporaryDirectory() as tmp:
        root = ensure_shapes(ShapesConfig(train_per_class=250, val_per_class=25), tmp)
        base = replace(demo_train_config(DemoConfig(), root), epochs=2, out=str(Path(tmp) / "run"))
        times = {"on": [], "off": []}
        for i in range(6):  # first pair is warm-up
            for name, every in (("on", base.trace_every), ("off", 0)):
                t0 = time.perf_counter()
                fit(replace(base, trace_every=every))
                if i:
                    times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    ratio = med["on"] / med["off"]
    for k, v in times.items():
        print(f"tracing {k:<3}: {med[k]:.2f} s per run (min {min(v):.2f}, max {max(v):.2f})")
    print(f"tracing on / off: {ratio:.3f} (target <= 1.03)")
    print(f"wrote {save('trace_overhead', {'times_s': times, 'median_s': med, 'ratio': ratio})}")


if __name__ == "__main__":
    main(sys.argv)
