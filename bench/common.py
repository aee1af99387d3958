"""Shared helpers for the benchmarks: data location, repetition, tables, JSON results.

Every benchmark compares pipetrace with its anchor in the same run, on the same files, with
the same threads and workers, and reports ratios (median of >= 5 repeats, with min-max).
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import tarfile
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
CACHE = Path(os.path.expanduser("~")) / ".cache" / "pipetrace-data"
RESULTS = ROOT / "bench" / "results"


def data_dir(argv: list[str], name: str) -> Path:
    """The data folder given on the command line, else ../shared/data unpacked into a cache.

    ``name`` is "cifar10" or "hymenoptera".
    """
    if len(argv) > 1 and argv[1]:
        given = Path(argv[1])
        if (given / name).is_dir():
            return given / name
        return given
    target = CACHE / name
    if not target.is_dir():
        archive = {"cifar10": "cifar10-jpg.tar.gz", "hymenoptera": "hymenoptera-train.tar"}[name]
        src = SHARED_DATA / archive
        if not src.is_file():
            sys.exit(f"bench: no data folder given and {src} is missing")
        CACHE.mkdir(parents=True, exist_ok=True)
        with tarfile.open(src) as tf:
            tf.extractall(CACHE, filter="data")
    return target


def repeat(fn: Callable[[], float], n: int = 5, warmup: int = 1) -> dict:
    """Call ``fn`` (which returns a rate, e.g. images/s) ``warmup + n`` times."""
    for _ in range(warmup):
        fn()
    values = [fn() for _ in range(n)]
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "values": values}


def timed_rate(fn: Callable[[], int]) -> float:
    """Items per second of ``fn`` (which returns how many items it processed)."""
    t0 = time.perf_counter()
    n = fn()
    return n / (time.perf_counter() - t0)


def machine() -> dict:
    import cv2
    import PIL
    import torch
    import torchvision

    return {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "cpu_count": os.cpu_count(), "platform": platform.platform(),
            "processor": _cpu_name(), "python": platform.python_version(),
            "torch": torch.__version__, "torchvision": torchvision.__version__,
            "opencv": cv2.__version__, "pillow": PIL.__version__,
            "torch_threads": torch.get_num_threads()}


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def save(name: str, payload: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({"machine": machine(), **payload}, indent=1))
    return path


def fmt(r: dict, spec: str = ",.0f") -> str:
    return f"{r['median']:{spec}} ({r['min']:{spec}}-{r['max']:{spec}})"


def rss_mb() -> float:
    """Current resident set size of this process, MiB (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")
