"""`pipetrace demo` and `pipetrace train`: the commands that train and write a run folder."""

from __future__ import annotations

import argparse
import os
from dataclasses import fields, replace
from pathlib import Path


def default_cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "pipetrace")


# -- commands ------------------------------------------------------------------------------------


def add_demo(sub) -> None:
    d = sub.add_parser("demo", help="the whole pipeline on the built-in shapes dataset")
    d.add_argument("--out", default="runs/demo", help="run folder (default: runs/demo)")
    d.add_argument("--cache-dir", default=None, help="where the dataset is rendered once")
    d.add_argument("--epochs", type=int, default=5)
    d.add_argument("--loader", choices=("fast", "classic"), default="fast")
    d.add_argument("--workers", type=int, default=0)
    d.add_argument("--seed", type=int, default=0)
    d.set_defaults(func=cmd_demo)


def cmd_demo(args) -> int:
    from ..demo import DemoConfig, run_demo
    from ..report import terminal as term

    console = term.make_console()
    cfg = DemoConfig(out=args.out, cache_dir=args.cache_dir or default_cache_dir(),
                     epochs=args.epochs, loader=args.loader, workers=args.workers, seed=args.seed)
    console.print(f"pipetrace demo: built-in shapes dataset in {term.clean(cfg.cache_dir)}")
    result, art = run_demo(cfg, observers=(term.TerminalObserver(console),))
    print_run(console, result, art)
    return 0


def add_train(sub) -> None:
    from ..config import PRESETS, TrainConfig

    t = sub.add_parser("train", help="train on an ImageFolder dataset and trace it")
    t.add_argument("data", nargs="?", help="dataset root (train/ + val/, or class folders)")
    t.add_argument("--preset", choices=sorted(PRESETS), help="a named recipe, e.g. cifar")
    t.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run (with "
                   "--epochs N: train it for N epochs in all, re-planning the LR schedule)")
    t.add_argument("--dist-timeout", type=float, default=300.0, metavar="SECONDS",
                   help="under torchrun: how long a process waits for the others before the "
                   "run fails (default: 300)")
    t.add_argument("--tensorboard", action="store_true", help="also log to RUN_DIR/tensorboard")
    defaults = TrainConfig()
    for f in fields(TrainConfig):  # one flag per config field, typed by its default
        if f.name == "data":
            continue
        flag = "--" + f.name.replace("_", "-")
        default = getattr(defaults, f.name)
        if isinstance(default, bool):
            t.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None)
        else:
            kind = type(default) if default is not None else (int if "int" in str(f.type) else str)
            t.add_argument(flag, dest=f.name, type=kind, default=None,
                           help=f"(default: {default})")
    t.set_defaults(func=cmd_train)


def cmd_train(args) -> int:
    from ..config import PRESETS, TrainConfig
    from ..distributed import DistInfo, env_requests_distributed, init_distributed, shutdown
    from ..report import terminal as term
    from ..report.build import write_run_report
    from ..train import fit

    values = {}
    if args.preset:
        values.update(PRESETS[args.preset])
    for f in fields(TrainConfig):  # flags the user gave win over the preset
        v = getattr(args, f.name, None)
        if v is not None:
            values[f.name] = v
    cfg = TrainConfig(**values)
    if args.resume:
        cfg = replace(cfg, out=args.resume)
    dist = DistInfo()
    if env_requests_distributed(os.environ):  # started by torchrun
        dist = init_distributed(os.environ, use_cuda=_wants_cuda(cfg.device),
                                timeout_s=args.dist_timeout)
    console = term.make_console()
    try:
        observers = (term.TerminalObserver(console),) if dist.is_main else ()
        if args.tensorboard and dist.is_main:
            from ..tensorboard import TensorBoardObserver

            observers += (TensorBoardObserver(Path(cfg.out) / "tensorboard"),)
        result = fit(cfg, observers=observers, resume=bool(args.resume),
                     epochs=args.epochs if args.resume else None, dist=dist)
        if dist.is_main:
            image, truth = _first_val_image(result)
            art = write_run_report(result, image=image, command="train", true_class=truth)
            print_run(console, result, art)
    finally:
        shutdown(dist)
    return 130 if result.stopped == "interrupted" else 0


def print_run(console, result, art) -> None:
    from ..report import terminal as term

    if result.flow is not None:
        console.print(term.stage_table(result.flow, title="Data flow — the run's first batch, "
                                       f"{result.flow.path} path"))
    term.print_training(console, result)
    if art.layer_trace is not None:
        pred = art.document["prediction"]
        console.print(term.layer_table(art.layer_trace, title=f"Prediction trace — "
                                       f"{term.clean(pred['image'])}"))
        console.print("Top classes:\n" + term.top_k_lines(art.layer_trace), markup=False)
    for f in art.findings:
        console.print(f"[{'red' if f.severity == 'error' else 'yellow'}]{f.severity}[/]: "
                      f"{term.clean(f.title)} — {term.clean(f.fix)}")
    if not art.findings:
        console.print("Checks: no problems found.")
    console.print(f"Wrote {term.clean(result.run_dir)}/: trace.json, report.html, metrics.jsonl, "
                  "metrics.csv, curves.png, confusion.png, last.pt, best.pt")


def _wants_cuda(device: str) -> bool:
    import torch

    return device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())


def _first_val_image(result) -> tuple[str | None, str | None]:
    from ..scan import find_splits

    splits = find_splits(result.config.data)
    scan = splits.val or splits.train
    if not scan.samples:
        return None, None
    path, label = scan.samples[0]
    return path, scan.classes[label]
