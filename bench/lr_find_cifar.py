"""The learning-rate range test on CIFAR-10 with the `cifar` preset: does it find the tuned rate?

    python bench/lr_find_cifar.py [DATA_DIR]     (make bench-lr-find)

Runs `pipetrace lr-find DATA/cifar10 --preset cifar` with its defaults (through `find_lr`):
cifarnet with its whitening stem, SGD with Nesterov momentum 0.85, weight decay 0.00133,
label smoothing 0.2, batch 1024, the BatchNorm biases' group at 64 x the rate, crop-flip,
bf16 where the CPU has it: a rate found with other settings would not be this recipe's.
The anchor is the preset's hand-tuned one-cycle peak, lr = 1.5; the target, a suggestion
within 3x of it (0.5 to 4.5).
"""

from __future__ import annotations

import sys
import time

from common import data_dir, save
from pipetrace.config import PRESETS, TrainConfig
from pipetrace.lr_find import RangeTest, find_lr

TUNED = PRESETS["cifar"]["lr"]


def main(argv: list[str]) -> None:
    root = data_dir(argv, "cifar10")
    cfg = TrainConfig(**PRESETS["cifar"], data=str(root), out="/tmp/pipetrace-lr-find")
    t0 = time.perf_counter()
    result = find_lr(cfg, RangeTest())
    seconds = time.perf_counter() - t0
    s = result.suggested
    ratio = s.lr / TUNED
    ok = 1 / 3 <= ratio <= 3
    print(f"range test: {len(result.lrs)} steps, stopped at {result.stopped}, {seconds:.0f} s")
    print(f"landmarks: steepest {s.steepest}, lowest {s.minimum:.3g}, divergence {s.divergence}")
    print(f"suggested {s.lr:.3g} ({s.rule}); the preset's tuned peak {TUNED}: ratio {ratio:.2f} "
          f"-> {'within' if ok else 'NOT within'} 3x")
    print(s.reason)
    path = save("lr_find_cifar", {"suggested": s.lr, "tuned": TUNED, "ratio": ratio,
                                  "within_3x": ok, "seconds": seconds, "result": result.to_dict()})
    print(f"wrote {path}")


if __name__ == "__main__":
    main(sys.argv)
