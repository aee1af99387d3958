"""How fast the command line answers: `pipetrace --help`, `pipetrace train --help`, and two
commands that only read and print (`check` of the photos, answered from the dataset index;
`quiz` of a missing trace), against a bare interpreter and an `import torch` in the same run
(hyperfine-style: each command started afresh N times, median with min-max).

    python bench/cli_start.py [REPEATS]

Target: `pipetrace --help` under 1 s (it used to import torch: ~4 s here under load).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time

from common import CACHE, ROOT, SHARED_DATA, data_dir, save

HAVE_PHOTOS = (CACHE / "hymenoptera").is_dir() or (SHARED_DATA / "hymenoptera-train.tar").is_file()
PHOTOS = data_dir([], "hymenoptera") if HAVE_PHOTOS else None  # else the check row is left out

COMMANDS = {
    "python -c pass (anchor)": [sys.executable, "-c", "pass"],
    "python -c 'import torch' (anchor)": [sys.executable, "-c", "import torch"],
    "pipetrace --help": [sys.executable, "-m", "pipetrace", "--help"],
    "pipetrace train --help": [sys.executable, "-m", "pipetrace", "train", "--help"],
    **({"pipetrace check PHOTOS (index)": [sys.executable, "-m", "pipetrace", "check",
                                            str(PHOTOS)]} if PHOTOS else {}),
    "pipetrace quiz MISSING": [sys.executable, "-m", "pipetrace", "quiz", "/nonexistent/run"],
}
EXIT_CODES = {"pipetrace check PHOTOS (index)": (0, 1),  # 1: the photos have warnings
              "pipetrace quiz MISSING": (2,)}  # one error line


def seconds(argv: list[str], ok: tuple[int, ...] = (0,)) -> float:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    t0 = time.perf_counter()
    proc = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    if proc.returncode not in ok:
        sys.exit(f"bench: {' '.join(argv)} exited {proc.returncode}")
    return time.perf_counter() - t0


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    results = {}
    for name, argv in COMMANDS.items():
        ok = EXIT_CODES.get(name, (0,))
        seconds(argv, ok)  # warm the file cache (and, for check, the dataset index)
        times = [seconds(argv, ok) for _ in range(n)]
        results[name] = {"median": statistics.median(times), "min": min(times),
                         "max": max(times)}
    torch_s = results["python -c 'import torch' (anchor)"]["median"]
    print(f"{'command':36} {'median s':>9} {'min-max':>13} {'/ import torch':>15}")
    for name, r in results.items():
        print(f"{name:36} {r['median']:9.3f} {r['min']:6.3f}-{r['max']:.3f} "
              f"{r['median'] / torch_s:15.2f}")
    save("cli_start", {"repeats": n, "results": results})


if __name__ == "__main__":
    main()
