"""How fast the command line answers: `pipetrace --help` and `pipetrace train --help`,
against a bare interpreter and an `import torch` in the same run (hyperfine-style: each
command started afresh N times, median with min-max).

    python bench/cli_start.py [REPEATS]

Target: `pipetrace --help` under 1 s (it used to import torch: ~4 s here under load).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time

from common import ROOT, save

COMMANDS = {
    "python -c pass (anchor)": [sys.executable, "-c", "pass"],
    "python -c 'import torch' (anchor)": [sys.executable, "-c", "import torch"],
    "pipetrace --help": [sys.executable, "-m", "pipetrace", "--help"],
    "pipetrace train --help": [sys.executable, "-m", "pipetrace", "train", "--help"],
}


def seconds(argv: list[str]) -> float:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    t0 = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, env=env)
    return time.perf_counter() - t0


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    results = {}
    for name, argv in COMMANDS.items():
        seconds(argv)  # warm the file cache
        times = [seconds(argv) for _ in range(n)]
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
