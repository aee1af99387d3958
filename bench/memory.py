"""Memory: peak RSS of a training run, and that it stays flat from epoch 2 on (no leak).

    python bench/memory.py          (make bench-memory)

The demo's model and recipe on the built-in shapes at 224 x 224 (2,000 training images),
8 epochs, RSS read after every epoch. Target: growth from epoch 2 to the last < 5%.
"""

from __future__ import annotations

import resource
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

from common import rss_mb, save
from pipetrace.demo import DemoConfig, demo_train_config
from pipetrace.shapes import ShapesConfig, ensure_shapes
from pipetrace.train import Observer, fit


class RSS(Observer):
    def __init__(self):
        self.per_epoch: list[float] = []

    def on_epoch_end(self, record) -> None:
        self.per_epoch.append(rss_mb())
        print(f"epoch {record.epoch}: RSS {self.per_epoch[-1]:.0f} MiB", flush=True)


def main(argv):
    watch = RSS()
    with tempfile.TemporaryDirectory() as tmp:
        root = ensure_shapes(ShapesConfig(train_per_class=500, val_per_class=50), tmp)
        cfg = replace(demo_train_config(DemoConfig(), root), epochs=8, out=str(Path(tmp) / "run"))
        fit(cfg, observers=(watch,))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    growth = (watch.per_epoch[-1] - watch.per_epoch[1]) / watch.per_epoch[1]
    print(f"peak RSS {peak:.0f} MiB; RSS growth from epoch 2 to {len(watch.per_epoch)}: "
          f"{growth:+.1%} (target < 5%)")
    print(f"wrote {save('memory', {'rss_mb': watch.per_epoch, 'peak_mb': peak, 'growth': growth})}")


if __name__ == "__main__":
    main(sys.argv)
