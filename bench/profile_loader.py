"""Where the loader's time goes: microseconds per image for each declared stage of the fast
path (the very stage objects the loader runs), one thread (as in a DataLoader worker), next
to torchvision's own steps.

    python bench/profile_loader.py [DATA_DIR]        (make bench-profile)

Same files as bench/loader.py: CIFAR-10 train (2,000 files, 32 x 32, no resize) and the
245 photos (resize of the short side to 256, centre crop to 224). The batch normalize is
timed per batch and divided by the batch size (32). Median of 5 passes over the files.
"""

from __future__ import annotations

import statistics
import sys
import time

import cv2
import numpy as np
import torch
from PIL import Image
from torchvision import transforms as v1

from common import data_dir, save
from pipetrace.images import check_file
from pipetrace.pipeline import FileRef, fast_pipeline
from pipetrace.scan import scan_image_folder
from pipetrace.transforms import Preprocess, normalize_batch


def per_image_us(files: list[str], pre: Preprocess) -> dict[str, float]:
    """The fast path's declared stages (``pipeline.fast_pipeline``), each timed on every
    file, then ImageFolder's steps; the batch normalize per image of a batch of 32."""
    pipe = fast_pipeline(pre)
    refs = [FileRef(f, None, check_file(f)[:3]) for f in files]
    to_tensor = v1.Compose([v1.ToTensor(), v1.Normalize(pre.mean, pre.std)])
    pil_resize = v1.Compose([v1.Resize(pre.resize_size), v1.CenterCrop(pre.size)])
    resize = pre.crop_pct != 1.0
    slot = np.empty((pre.size, pre.size, 3), np.uint8)
    steps: dict[str, list[float]] = {}

    def clock(name, fn, *args):
        t0 = time.perf_counter()
        out = fn(*args)
        steps.setdefault(name, []).append(time.perf_counter() - t0)
        return out

    for _ in range(5):  # the fast path's steps, image by image, then ImageFolder's
        for ref in refs:
            x = ref
            for stage in pipe.per_image:
                x = clock(f"fast: {stage.name} ({stage.library})", stage.fn, x)
            clock(f"fast: {pipe.place.name} ({pipe.place.library})", pipe.place.fn, x, slot)
        for path in files:
            img = clock("ImageFolder: PIL open + convert('RGB')",
                        lambda p=path: Image.open(p).convert("RGB"))
            if resize:
                img = clock("ImageFolder: PIL Resize + CenterCrop", lambda i=img: pil_resize(i))
            clock("ImageFolder: ToTensor + Normalize (per image)", lambda i=img: to_tensor(i))
    batch = torch.from_numpy(np.stack([slot] * 32)).permute(0, 3, 1, 2)
    for _ in range(50):
        clock("fast: normalize_batch (per image of 32)",
              lambda: normalize_batch(batch, pre.mean, pre.std, channels_last=True))
    out = {}
    for name, times in steps.items():
        if "per image of 32" in name:  # one time per batch of 32
            out[name] = statistics.median(times) * 1e6 / 32
            continue
        n = len(files)  # one time per image; the median pass
        out[name] = statistics.median(sum(times[i:i + n]) / n for i in range(0, len(times), n)) * 1e6
    return out


def main(argv: list[str]) -> None:
    torch.set_num_threads(1)
    cv2.setNumThreads(0)
    results = {}
    for label, root, pre, limit in [
        ("CIFAR-10 (32px)", data_dir(argv, "cifar10") / "train", Preprocess(size=32, crop_pct=1.0),
         2000),
        ("photos (224, crop)", data_dir(argv, "hymenoptera") / "train", Preprocess(size=224), None),
    ]:
        files = [p for p, _ in scan_image_folder(root).samples][:limit]
        results[label] = per_image_us(files, pre)
        print(f"\n{label}: microseconds per image, one thread")
        for name, us in results[label].items():
            print(f"  {name:<50} {us:9.1f}")
    print(f"wrote {save('profile_loader', {'us_per_image': results})}")


if __name__ == "__main__":
    main(sys.argv)
