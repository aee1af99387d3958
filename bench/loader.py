"""Loader throughput: pipetrace's fast and classic loaders against torchvision, same run.

    python bench/loader.py [DATA_DIR] [--only=cifar|photos]        (make bench-loader)

DATA_DIR holds cifar10/ and hymenoptera/ (default: ../shared/data unpacked into
~/.cache/pipetrace-data). Each row: images/s through a DataLoader (median and min-max of 5
repeats), for batch 32 and 256, with 0 and 2 workers; a timed run reads 25,000 CIFAR-10
files, or the 245 photos 4 times. Anchors, on the same files:

* torchvision's ImageFolder (PIL loader) + ToTensor + Normalize (+ Resize/CenterCrop for
  the photos) - what most tutorials run;
* torchvision's own fastest path: ``torchvision.io.decode_image`` + v2 transforms on
  uint8 tensors;
* the bare decode loop: read bytes + ``cv2.imdecode``, nothing else, through a DataLoader;
* two ceilings, in as many processes as the loader uses (the main one for 0 workers, 2
  forked processes for 2) that each take a share of the files and send nothing back: read +
  ``cv2.imdecode`` only, and read + decode + torchvision's antialiased uint8 resize and
  centre crop to the final size (the work the fast path cannot skip at its fidelity).

Every loader runs under the same settings: the main process uses 1 torch thread when
workers > 0, each worker one thread (`pipetrace.data.worker_init`), prefetch factor 4.
"""

from __future__ import annotations

import multiprocessing
import sys
import time

import cv2
import numpy as np
import torch
import torchvision
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as v1
from torchvision.transforms import v2

from common import data_dir, fmt, repeat, save, timed_rate
from pipetrace.data import (
    ImageDataset,
    LoaderConfig,
    check_files,
    make_loader,
    to_model_input,
    worker_init,
)
from pipetrace.scan import scan_image_folder
from pipetrace.transforms import IMAGENET_MEAN, IMAGENET_STD, Preprocess, hwc_to_chw, is_final_size


class DecodeImageDataset(Dataset):
    """torchvision's fastest path: decode_image to a uint8 tensor, then v2 on tensors."""

    def __init__(self, samples, pre: Preprocess):
        self.samples = samples
        steps = [] if pre.crop_pct == 1.0 else [v2.Resize(pre.resize_size, antialias=True),
                                                v2.CenterCrop(pre.size)]
        self.t = v2.Compose([*steps, v2.ToDtype(torch.float32, scale=True),
                             v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)])

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        path, label = self.samples[i]
        img = torchvision.io.decode_image(path, mode=torchvision.io.ImageReadMode.RGB)
        return self.t(img), label


class BareDecode(Dataset):
    """The ceiling: read the bytes and decode with OpenCV; no conversion, no transform."""

    def __init__(self, samples):
        self.samples = samples

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        with open(self.samples[i][0], "rb") as f:
            data = f.read()
        return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR).shape[0]


def ceiling_work(samples, pre: Preprocess, resize: bool) -> int:
    """Read + decode (+ resize/crop to the final size) each file; nothing kept or returned."""
    size = [pre.resize_size]
    for path, _ in samples:
        with open(path, "rb") as f:
            bgr = cv2.imdecode(np.frombuffer(f.read(), np.uint8), cv2.IMREAD_COLOR)
        if resize and not is_final_size(bgr.shape[0], bgr.shape[1], pre):
            chw = v2.functional.resize_image(hwc_to_chw(bgr), size, antialias=True)
            v2.functional.center_crop_image(chw, [pre.size, pre.size])
    return len(samples)


def _ceiling_process(samples, pre, resize) -> None:
    worker_init(0)  # one thread each, as a DataLoader worker
    ceiling_work(samples, pre, resize)


def ceiling_rate(samples, pre: Preprocess, workers: int, resize: bool) -> float:
    """Images/s of :func:`ceiling_work` in ``max(1, workers)`` processes (forked, as the
    DataLoader's workers are, each with its share of the files; process start included)."""
    t0 = time.perf_counter()
    if workers == 0:
        ceiling_work(samples, pre, resize)
    else:
        ctx = multiprocessing.get_context("fork")
        procs = [ctx.Process(target=_ceiling_process, args=(samples[i::workers], pre, resize))
                 for i in range(workers)]
        for p in procs:
            p.start()
        for p in procs:
            p.join()
    return len(samples) / (time.perf_counter() - t0)


CEILINGS = {"ceiling: read+decode": False, "ceiling: read+decode+resize/crop": True}


def image_folder(root, pre: Preprocess):
    steps = [] if pre.crop_pct == 1.0 else [v1.Resize(pre.resize_size), v1.CenterCrop(pre.size)]
    return torchvision.datasets.ImageFolder(
        root, transform=v1.Compose([*steps, v1.ToTensor(), v1.Normalize(IMAGENET_MEAN, IMAGENET_STD)]))


def consume(loader, pipetrace_batches: bool, pre: Preprocess) -> int:
    n = 0
    for batch in loader:
        if pipetrace_batches:
            # the model's input as pipetrace's trainer makes it: normalized float32,
            # channels_last (TrainConfig's default, the faster layout for convolutions)
            x = to_model_input(batch.images, pre, channels_last=True)
            n += x.shape[0]
        else:
            n += len(batch[0]) if isinstance(batch, list | tuple) else len(batch)
    return n


def measure(name, ds, pre, batch, workers, pipetrace_batches):
    if pipetrace_batches:
        loader = make_loader(ds, LoaderConfig(batch_size=batch, workers=workers), shuffle=False)
    else:
        loader = DataLoader(ds, batch_size=batch, num_workers=workers, shuffle=False,
                            worker_init_fn=worker_init if workers else None,
                            prefetch_factor=4 if workers else None)  # as make_loader
    return repeat(lambda: timed_rate(lambda: consume(loader, pipetrace_batches, pre)))


def run_dataset(label: str, root, pre: Preprocess, limit: int | None, passes: int = 1
                ) -> list[dict]:
    """``passes`` > 1 lists every file that many times (as that many epochs would read them),
    so one timed run lasts long enough that starting the workers is not most of it."""
    scan = scan_image_folder(root)
    samples = scan.samples[:limit] if limit else scan.samples
    tv = image_folder(root, pre)
    keep = {p for p, _ in samples}
    tv.samples = tv.imgs = [s for s in tv.samples if s[0] in keep] * passes
    samples = samples * passes
    good, _, checked = check_files(samples)  # as the trainer builds its datasets
    loaders = {
        "pipetrace fast": (ImageDataset(good, pre, path="fast", checked=checked), True),
        "pipetrace classic": (ImageDataset(good, pre, path="classic", checked=checked), True),
        "torchvision ImageFolder": (tv, False),
        "torchvision decode_image+v2": (DecodeImageDataset(samples, pre), False),
        "bare read+cv2.imdecode": (BareDecode(samples), False),
    }
    rows = []
    for workers in (0, 2):
        torch.set_num_threads(1 if workers else 2)
        for batch in (32, 256):
            for name, (ds, ours) in loaders.items():
                r = measure(name, ds, pre, batch, workers, ours)
                rows.append({"dataset": label, "loader": name, "batch": batch,
                             "workers": workers, "images_per_s": r})
                print(f"{label:<22} w={workers} b={batch:<3} {name:<28} {fmt(r)} img/s",
                      flush=True)
            for name, resize in CEILINGS.items():
                r = repeat(lambda rz=resize, w=workers: ceiling_rate(samples, pre, w, rz))
                rows.append({"dataset": label, "loader": name, "batch": batch,
                             "workers": workers, "images_per_s": r})
                print(f"{label:<22} w={workers} b={batch:<3} {name:<28} {fmt(r)} img/s",
                      flush=True)
    return rows


def ratios(rows: list[dict]) -> list[dict]:
    out = []
    keyed = {(r["dataset"], r["batch"], r["workers"], r["loader"]): r["images_per_s"]["median"]
             for r in rows}
    for (ds, b, w, name), v in keyed.items():
        if name != "pipetrace fast":
            continue
        for anchor in ("torchvision ImageFolder", "torchvision decode_image+v2",
                       "bare read+cv2.imdecode", *CEILINGS):
            out.append({"dataset": ds, "batch": b, "workers": w, "anchor": anchor,
                        "ratio": v / keyed[(ds, b, w, anchor)]})
    return out


def main(argv: list[str]) -> None:
    only = next((a.split("=", 1)[1] for a in argv if a.startswith("--only=")), None)
    argv = [a for a in argv if not a.startswith("--only=")]
    rows = []
    if only in (None, "cifar"):
        # half of CIFAR-10's training set per timed run (1-4 s): starting the workers, which
        # every epoch does, is then a small part of it, as in an epoch of 50,000
        rows += run_dataset("CIFAR-10 train (32px)", data_dir(argv, "cifar10") / "train",
                            Preprocess(size=32, crop_pct=1.0), limit=25_000)
    if only in (None, "photos"):
        # 245 photos take ~0.4 s at 2 workers, of which starting the workers is a fixed
        # part: four passes over them, like four epochs, measure the steady rate (all
        # loaders alike)
        rows += run_dataset("photos (224, crop)", data_dir(argv, "hymenoptera") / "train",
                            Preprocess(size=224), limit=None, passes=4)
    rs = ratios(rows)
    print("\nratio of pipetrace fast to each anchor (median images/s):")
    for r in rs:
        print(f"  {r['dataset']:<22} w={r['workers']} b={r['batch']:<3} vs {r['anchor']:<28} "
              f"{r['ratio']:.2f}x")
    print(f"wrote {save('loader', {'rows': rows, 'ratios': rs})}")


if __name__ == "__main__":
    main(sys.argv)
