"""Start-up of `train` on a large folder, with and without the dataset index (index.py).

    python bench/index_start.py [FILES] [--keep DIR]                     (make bench-index)

Generates FILES (default 200,000) small JPEG files in a temporary folder (10 classes; a few
hundred distinct 32 x 32 pictures encoded once, each file made unique by a numbered JPEG
comment segment, so no two files are the same bytes), then times three `train` starts, each
in a fresh process, from the call of `fit` to its first training batch:

1. first start: no index yet (scan, header check of every file, hashes of the files whose
   sizes collide, the quick checks, then the index is written beside the dataset);
2. second start: the same folder, the index answers;
3. after touching one file (its modification time changes): that file alone is read again.

Anchor in the same run: the same start with `--dataset-index off` (what every start cost
before the index). Target: the second start >= 10x faster than the first.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from common import save

CLASSES = 10
DISTINCT = 300


def generate(root: Path, files: int, seed: int = 0) -> float:
    """``files`` JPEGs under root/<class>/; returns the seconds it took."""
    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    bases = []
    for _ in range(DISTINCT):  # smooth random pictures (noise would make large files)
        small = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
        img = cv2.resize(small, (32, 32), interpolation=cv2.INTER_CUBIC)
        bases.append(cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes())
    for c in range(CLASSES):
        (root / f"class{c}").mkdir(parents=True)
    for i in range(files):
        base = bases[i % DISTINCT]
        tag = f"pipetrace bench file {i:08d}".encode()
        comment = b"\xff\xfe" + (len(tag) + 2).to_bytes(2, "big") + tag  # a COM segment
        (root / f"class{i % CLASSES}" / f"{i:07d}.jpg").write_bytes(base[:2] + comment + base[2:])
    return time.perf_counter() - t0


START = r"""
import json, sys, time
from pipetrace.config import TrainConfig
from pipetrace.train import Observer, fit

class FirstBatch(Exception):
    pass

class Stop(Observer):
    index = None

    def on_train_start(self, info):
        self.index = info["dataset"]["index"]

    def on_batch_end(self, epoch, step, steps, loss, rate):
        raise FirstBatch

cfg = TrainConfig(**json.loads(sys.argv[1]))
stop = Stop()
t0 = time.perf_counter()
try:
    fit(cfg, observers=(stop,))
except FirstBatch:
    pass
print(json.dumps({"seconds": time.perf_counter() - t0, "index": stop.index}))
"""


def start(data: Path, out: Path, **extra) -> dict:
    """Seconds from `fit` to the first batch, in a fresh process, and the index's summary."""
    cfg = dict(data=str(data), out=str(out), model="pipenet-tiny", image_size=64, crop_pct=1.0,
               batch_size=64, epochs=1, **extra)
    done = subprocess.run([sys.executable, "-c", START, json.dumps(cfg)],
                          capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"bench: the train start failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str]) -> None:
    files = int(argv[1]) if len(argv) > 1 and argv[1].isdigit() else 200_000
    with tempfile.TemporaryDirectory() as tmp:
        data, runs = Path(tmp) / "data", Path(tmp) / "runs"
        print(f"generating {files:,} JPEG files in {data} ...", flush=True)
        made = generate(data, files)
        print(f"  {made:.1f} s", flush=True)
        rows = {}
        rows["index off (anchor)"] = start(data, runs / "off", dataset_index=False)
        rows["first start (builds the index)"] = start(data, runs / "first")
        index = data / ".pipetrace-index.json"
        size = index.stat().st_size
        rows["second start (index)"] = start(data, runs / "second")
        touched = next((data / "class3").iterdir())
        os.utime(touched, ns=(time.time_ns(), time.time_ns()))
        rows["after touching one file"] = start(data, runs / "touched")
        for name, r in rows.items():
            ix = r["index"]
            how = (f"{ix['known']:,} answers from the index, {ix['checked']:,} files read"
                   if ix.get("path") else "no index")
            print(f"{name:32} {r['seconds']:7.2f} s   {how}")
        first = rows["first start (builds the index)"]["seconds"]
        second = rows["second start (index)"]["seconds"]
        print(f"first / second start: {first / second:.1f}x (target >= 10x); index file "
              f"{size / 1e6:.1f} MB; after the touch, files read again: "
              f"{rows['after touching one file']['index']['checked']} (target: 1)")
        print(f"wrote {save('index_start', {'files': files, 'generate_s': made, 'starts': rows, 'ratio': first / second, 'index_bytes': size})}")


if __name__ == "__main__":
    main(sys.argv)
