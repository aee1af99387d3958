"""What the operation trace costs: one 224 x 224 image through resnet50 (random weights,
eval, no gradients), `trace_ops` against the untraced forward pass, in the same run.

    python bench/trace_ops.py          (make bench-ops)

Time: the two alternate, 2 warm-ups then 7 timed repeats each; the ratio of the medians,
with torch's default threads and with one (on a shared machine OpenMP's threads waiting for
each other slow the parallel run by several times, and not equally for both). Target <= 3x. Memory: each measurement runs in a fresh process (same model, same input,
one warm-up call of the same kind first), which reads its peak resident set size during
the call (Linux's VmHWM, reset just before through /proc/self/clear_refs) minus the
resident size before it. glibc is told to give large blocks back at once
(MALLOC_MMAP_THRESHOLD_=65536), so the peak is the live tensors', not the allocator's
cache. Target: the trace's peak < 2x the forward's. `keep=True` (every output kept, for
replay) is reported beside it, with no target.
"""

from __future__ import annotations

import gc
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torchvision

from common import save
from pipetrace.ops import trace_ops

KINDS = ("forward", "trace", "trace-keep")


def setup() -> tuple[torch.nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = torchvision.models.resnet50(weights=None).eval()
    return model, torch.randn(1, 3, 224, 224)


def run(kind: str, model: torch.nn.Module, x: torch.Tensor):
    if kind == "forward":
        with torch.no_grad():
            return model(x)
    return trace_ops(model, x, keep=kind == "trace-keep")


def status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def child(kind: str) -> None:
    """One memory measurement in this fresh process; prints JSON."""
    model, x = setup()
    run(kind, model, x)  # warm-up: oneDNN's kernels, thread pools
    gc.collect()
    before = status_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # peak RSS := current RSS
    out = run(kind, model, x)
    peak = status_kib("VmHWM")
    del out
    print(json.dumps({"kind": kind, "rss_before_mib": before / 1024,
                      "peak_extra_mib": (peak - before) / 1024}))


def memory() -> dict[str, dict]:
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}
    found = {}
    for kind in KINDS:
        proc = subprocess.run([sys.executable, __file__, "--child", kind], env=env,
                              capture_output=True, text=True, check=True)
        found[kind] = json.loads(proc.stdout.strip().splitlines()[-1])
    return found


def timing(threads: int, repeats: int = 7) -> dict[str, list[float]]:
    torch.set_num_threads(threads)
    model, x = setup()
    times: dict[str, list[float]] = {"forward": [], "trace": []}
    for i in range(2 + repeats):
        for kind in times:
            t0 = time.perf_counter()
            out = run(kind, model, x)
            if i >= 2:
                times[kind].append(time.perf_counter() - t0)
            del out
    return times


def main() -> None:
    model, x = setup()
    ops = len(trace_ops(model, x).records)
    del model
    results = {}
    for threads in sorted({torch.get_num_threads(), 1}, reverse=True):
        times = timing(threads)
        med = {k: statistics.median(v) for k, v in times.items()}
        ratio = med["trace"] / med["forward"]
        results[threads] = {"seconds": times, "median_s": med, "ratio": ratio}
        for k, v in times.items():
            print(f"{threads} thread(s), {k:<7}: {med[k] * 1e3:,.0f} ms (min {min(v) * 1e3:,.0f}, "
                  f"max {max(v) * 1e3:,.0f})")
        print(f"resnet50, 1 x 3 x 224 x 224, {ops} records, {threads} thread(s): "
              f"trace / forward time {ratio:.2f}x (target <= 3x)")
    mem = memory()
    base = mem["forward"]["peak_extra_mib"]
    for kind in KINDS:
        m = mem[kind]
        print(f"{kind:<10}: peak {m['peak_extra_mib']:,.1f} MiB above {m['rss_before_mib']:,.0f} "
              f"MiB resident ({m['peak_extra_mib'] / base:.2f}x the forward's)")
    mem_ratio = mem["trace"]["peak_extra_mib"] / base
    print(f"trace / forward peak memory {mem_ratio:.2f}x (target < 2x); keep=True "
          f"{mem['trace-keep']['peak_extra_mib'] / base:.1f}x")
    print(f"wrote {save('trace_ops', {'records': ops, 'time': results, 'memory': mem, 'memory_ratio': mem_ratio})}")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        child(sys.argv[2])
    else:
        main()
