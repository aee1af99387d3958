"""How much of this CPU's matrix peak a training step of the `cifar` preset's net uses.

    python bench/flops.py [BATCH]                                           (make bench-flops)

Same run, same threads (torch's default: one per core):

* the peak: ``torch.matmul`` of two 4096 x 4096 matrices in bfloat16 and in float32, the best
  of 5 after a warm-up (2 n^3 floating-point operations each);
* the training step: `cifarnet` (the `cifar` preset's model, channels_last) on a batch of
  BATCH (default 1024) random 32 x 32 images, forward + backward + SGD step under the
  preset's precision (bf16 autocast where ``--amp auto`` picks it, else float32) and under
  float32; its operations counted once with ``torch.utils.flop_counter.FlopCounterMode``
  (convolutions and matrix products, forward and backward), its time the median of 5 steps.

Utilisation = the step's FLOP rate / the matmul peak of the same precision.
"""

from __future__ import annotations

import contextlib
import statistics
import sys
import time

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from common import save
from pipetrace.model import ModelConfig, build_model
from pipetrace.train import resolve_amp


def matmul_peak(dtype: torch.dtype, n: int = 4096, repeats: int = 5) -> float:
    """FLOP/s of an n x n matmul in ``dtype``, the best of ``repeats``."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    a @ b  # warm-up (oneDNN picks and caches its kernel)
    best = 0.0
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        best = max(best, 2 * n ** 3 / (time.perf_counter() - t0))
    return best


def training_step(batch: int, amp: torch.dtype | None, repeats: int = 5) -> dict:
    """FLOPs of one training step of cifarnet and the median seconds it takes."""
    torch.manual_seed(0)
    model = build_model(ModelConfig("cifarnet", 10)).to(memory_format=torch.channels_last)
    x = torch.randn(batch, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.85, nesterov=True)

    def step():
        ctx = torch.autocast("cpu", dtype=amp) if amp else contextlib.nullcontext()
        with ctx:
            loss = nn.functional.cross_entropy(model(x).float(), y, label_smoothing=0.2)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    counter = FlopCounterMode(display=False)
    with counter:
        step()
    flops = counter.get_total_flops()
    step()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    seconds = statistics.median(times)
    return {"flops": flops, "seconds": seconds, "flops_per_s": flops / seconds,
            "images_per_s": batch / seconds, "flops_per_image": flops / batch}


def main(argv: list[str]) -> None:
    batch = int(argv[1]) if len(argv) > 1 else 1024
    auto = resolve_amp("auto", torch.device("cpu"))
    peaks = {"bfloat16": matmul_peak(torch.bfloat16), "float32": matmul_peak(torch.float32)}
    steps = {"float32": training_step(batch, None)}
    if auto is not None:
        steps["bfloat16"] = training_step(batch, torch.bfloat16)
    print(f"{torch.get_num_threads()} threads; --amp auto picks "
          f"{'bfloat16' if auto else 'float32'} here")
    for name, peak in peaks.items():
        print(f"matmul peak {name:9} {peak / 1e9:8.0f} GFLOP/s")
    for name, s in steps.items():
        print(f"cifarnet step {name:9} {s['flops_per_image'] / 1e6:6.0f} MFLOP/image, "
              f"{s['images_per_s']:7.0f} images/s, {s['flops_per_s'] / 1e9:6.0f} GFLOP/s = "
              f"{s['flops_per_s'] / peaks[name]:.0%} of the {name} matmul peak")
    print(f"wrote {save('flops', {'batch': batch, 'peaks': peaks, 'steps': steps, 'auto': str(auto)})}")


if __name__ == "__main__":
    main(sys.argv)
