"""What tracing costs, in the same run, alternated, as ratios (target: <= 3% slower):

1. the loader alone: images/s of pipetrace's fast loader over real files with the first
   batch of every pass traced (the tracer observing the per-image stages in the worker that
   loads it, then the batch stages) against the same loader with tracing off; CIFAR-10
   (25,000 files, batch 256) and the photos (4 passes, batch 32), 0 and 2 workers;
2. training: `fit` with stage tracing as configured (the run's first batch traced as it
   loads, then the model input sampled every 50 steps) against tracing fully off
   (`trace_every=0`): the built-in shapes at 224 x 224 (2,000 images), the demo's recipe,
   2 epochs, 5 repeats each.

    python bench/trace_overhead.py [DATA_DIR]      (make bench-trace)
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from common import data_dir, fmt, save, timed_rate
from pipetrace.data import ImageDataset, LoaderConfig, check_files, make_loader, to_model_input
from pipetrace.demo import DemoConfig, demo_train_config
from pipetrace.scan import scan_image_folder
from pipetrace.shapes import ShapesConfig, ensure_shapes
from pipetrace.trace import batch_tracer
from pipetrace.train import fit
from pipetrace.transforms import Preprocess


def loader_pass(loader, pre: Preprocess, traced: bool) -> int:
    """One pass as the trainer makes it: model input for every batch; the traced batch's
    stages observed in the worker and, here, its batch stages."""
    if traced:
        loader.batch_sampler.trace_next()
    n = 0
    for batch in loader:
        tracer = batch_tracer(batch.trace, pre) if batch.trace is not None else None
        n += to_model_input(batch.images, pre, channels_last=True, observer=tracer).shape[0]
    return n


def loader_overhead(label: str, root, pre: Preprocess, *, limit=None, passes=1) -> list[dict]:
    samples = scan_image_folder(root).samples
    samples = (samples[:limit] if limit else samples) * passes
    good, _, checked = check_files(samples)
    ds = ImageDataset(good, pre, path="fast", checked=checked)
    rows = []
    for workers in (0, 2):
        torch.set_num_threads(1 if workers else 2)
        for batch in ((256,) if limit else (32,)):
            loader = make_loader(ds, LoaderConfig(batch_size=batch, workers=workers),
                                 shuffle=False)
            rates = {"on": [], "off": []}
            for i in range(6):  # alternated; the first pair is warm-up
                for name in ("on", "off"):
                    r = timed_rate(lambda name=name, ld=loader: loader_pass(ld, pre, name == "on"))
                    if i:
                        rates[name].append(r)
            med = {k: statistics.median(v) for k, v in rates.items()}
            row = {"dataset": label, "workers": workers, "batch": batch, "images_per_s": rates,
                   "ratio": med["off"] / med["on"]}  # time on / time off
            rows.append(row)
            print(f"loader {label:<20} w={workers} b={batch:<3} tracing on "
                  f"{fmt(repeat_stats(rates['on']))}, off {fmt(repeat_stats(rates['off']))} "
                  f"img/s: time on/off {row['ratio']:.3f} (target <= 1.03)", flush=True)
    return rows


def repeat_stats(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def main(argv):
    loader_rows = loader_overhead("CIFAR-10 (32px)", data_dir(argv, "cifar10") / "train",
                                  Preprocess(size=32, crop_pct=1.0), limit=25_000)
    loader_rows += loader_overhead("photos (224, crop)", data_dir(argv, "hymenoptera") / "train",
                                   Preprocess(size=224), passes=4)
    torch.set_num_threads(2)
    epochs = {"on": [], "off": []}
    totals = {"on": [], "off": []}
    with tempfile.TemporaryDirectory() as tmp:
        root = ensure_shapes(ShapesConfig(train_per_class=500, val_per_class=25), tmp)
        base = replace(demo_train_config(DemoConfig(), root), epochs=2, out=str(Path(tmp) / "run"))
        for i in range(6):  # first pair is warm-up
            for name, every in (("on", base.trace_every), ("off", 0)):
                t0 = time.perf_counter()
                result = fit(replace(base, trace_every=every,
                                     out=str(Path(tmp) / f"run-{i}-{name}")))  # a new run
                if i:
                    totals[name].append(time.perf_counter() - t0)
                    epochs[name].append(sum(r.seconds for r in result.records))
    med = {k: statistics.median(v) for k, v in epochs.items()}
    ratio = med["on"] / med["off"]
    one_off = statistics.median(totals["on"]) - statistics.median(totals["off"]) - (
        med["on"] - med["off"])  # outside the epochs: nothing is traced there any more
    for k, v in epochs.items():
        print(f"tracing {k:<3}: epochs {med[k]:.2f} s per run (min {min(v):.2f}, max {max(v):.2f})")
    print(f"tracing on / off, epochs (loader + steps + validation): {ratio:.3f} (target <= 1.03)")
    print(f"difference outside the epochs (expected ~0): {one_off:.2f} s")
    print(f"wrote {save('trace_overhead', {'loader': loader_rows, 'epoch_s': epochs, 'total_s': totals, 'median_s': med, 'ratio': ratio, 'one_off_s': one_off})}")


if __name__ == "__main__":
    main(sys.argv)
