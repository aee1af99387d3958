"""Print the latest results in bench/results/ as the Markdown tables of docs/performance.md.

    python bench/tables.py

Reads the JSON each benchmark wrote; a benchmark not run yet is left out.
"""

from __future__ import annotations

import json

from common import RESULTS, fmt

TARGETS = {  # (anchor, minimum ratio) per (dataset prefix, batch, workers) of the loader table
    ("CIFAR", 256): [("torchvision ImageFolder", 4.0), ("bare read+cv2.imdecode", 0.8)],
    ("CIFAR", 32): [("bare read+cv2.imdecode", 0.8)],
    # issue 18: >= 1.5x torchvision's fastest path and >= 0.9x the decode+resize ceiling
    ("photos", 32): [("torchvision ImageFolder", 1.5), ("torchvision decode_image+v2", 1.5),
                     ("ceiling: read+decode+resize/crop", 0.9)],
    ("photos", 256): [("torchvision ImageFolder", 1.5), ("torchvision decode_image+v2", 1.5),
                      ("ceiling: read+decode+resize/crop", 0.9)],
}


def load(name: str) -> dict | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def loader_tables(d: dict) -> None:
    m = d["machine"]
    print(f"Measured {m['date']} on {m['processor']} ({m['cpu_count']} cores), torch "
          f"{m['torch']}, torchvision {m['torchvision']}, OpenCV {m['opencv']}, "
          f"Pillow {m['pillow']}.\n")
    rows = d["rows"]
    names = list(dict.fromkeys(r["loader"] for r in rows))
    print("| data | workers | batch | " + " | ".join(names) + " |")
    print("|---|---|---|" + "---|" * len(names))
    groups = dict.fromkeys((r["dataset"], r["workers"], r["batch"]) for r in rows)
    for ds, w, b in groups:
        cells = []
        for n in names:
            r = next(x["images_per_s"] for x in rows
                     if (x["dataset"], x["workers"], x["batch"], x["loader"]) == (ds, w, b, n))
            cells.append(fmt(r))
        print(f"| {ds} | {w} | {b} | " + " | ".join(cells) + " |")
    print("\nRatio of pipetrace fast to each anchor (medians), against the target:\n")
    print("| data | workers | batch | anchor | ratio | target |")
    print("|---|---|---|---|---|---|")
    for r in d["ratios"]:
        data = "CIFAR" if r["dataset"].startswith("CIFAR") else "photos"
        wanted = dict(TARGETS.get((data, r["batch"]), []))
        target = wanted.get(r["anchor"])
        mark = "" if target is None else (f">= {target}x " + ("met" if r["ratio"] >= target
                                                              else "**missed**"))
        print(f"| {r['dataset']} | {r['workers']} | {r['batch']} | {r['anchor']} | "
              f"{r['ratio']:.2f}x | {mark} |")


def main() -> None:
    d = load("loader")
    if d:
        print("## loader (python bench/loader.py)\n")
        loader_tables(d)
    d = load("profile_loader")
    if d:
        print("\n## where the time goes (python bench/profile_loader.py)\n")
        sets = list(d["us_per_image"])
        steps = list(dict.fromkeys(k for v in d["us_per_image"].values() for k in v))
        print("| step (us per image, one thread) | " + " | ".join(sets) + " |")
        print("|---|" + "---|" * len(sets))
        for step in steps:
            cells = [f"{d['us_per_image'][s][step]:,.1f}" if step in d["us_per_image"][s] else "-"
                     for s in sets]
            print(f"| {step} | " + " | ".join(cells) + " |")
    d = load("trace_overhead")
    if d:
        print("\n## trace overhead (python bench/trace_overhead.py)\n")
        print(f"epoch time, tracing on / off (median of {len(d['epoch_s']['on'])}): "
              f"{d['median_s']['on']:.3f} s / {d['median_s']['off']:.3f} s = "
              f"{d['ratio']:.3f}x; one-off first-batch trace {d['one_off_s']:.3f} s")
    d = load("train_step")
    if d:
        print("\n## training loop (python bench/train_step.py)\n")
        print(f"pipetrace / bare loop (median of {len(d['times_s']['bare'])}): "
              f"{d['median_s']['pipetrace']:.2f} s / {d['median_s']['bare']:.2f} s = "
              f"{d['ratio']:.3f}x")
    d = load("memory")
    if d:
        print("\n## memory (python bench/memory.py)\n")
        print("RSS after each epoch (MiB): " + ", ".join(f"{v:.0f}" for v in d["rss_mb"]))
        print(f"peak RSS {d['peak_mb']:.0f} MiB; growth from epoch 2 to the last "
              f"{d['growth']:+.1%}")
    d = load("time_to_accuracy")
    if d:
        print("\n## time to accuracy (python bench/time_to_accuracy.py)\n")
        print("| epoch | wall-clock s | train loss | test accuracy |")
        print("|---|---|---|---|")
        for c in d["curve"]:
            print(f"| {c['epoch']} | {c['seconds']:.0f} | {c['train_loss']:.3f} | "
                  f"{c['test_acc']:.2%} |")
        print("\nreached: " + ", ".join(f"{k} at {'-' if v is None else f'{v:.0f} s'}"
                                        for k, v in d["reached_s"].items()))
        if d.get("anchor"):
            a = d["anchor"]
            print(f"anchor, tutorial CNN 2 epochs: {a['test_acc']:.2%} in {a['seconds']:.0f} s")


if __name__ == "__main__":
    main()
