"""`pipetrace demo` and `pipetrace train`: the commands that train and write a run folder."""

from __future__ import annotations

import argparse
import os
from dataclasses import fields, replace
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..config import TrainConfig


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
    t = sub.add_parser("train", help="train on an ImageFolder dataset and trace it")
    t.add_argument("data", nargs="?", help="dataset root (train/ + val/, or class folders)")
    t.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run (with "
                   "--epochs N: train it for N epochs in all, re-planning the LR schedule)")
    t.add_argument("--dist-timeout", type=float, default=300.0, metavar="SECONDS",
                   help="under torchrun: how long a process waits for the others before the "
                   "run fails (default: 300)")
    t.add_argument("--tensorboard", action="store_true", help="also log to RUN_DIR/tensorboard")
    add_config_flags(t)
    t.set_defaults(func=cmd_train)


def add_config_flags(p, skip: tuple[str, ...] = ()) -> None:
    """``--preset`` and one flag per TrainConfig field (but ``data`` and ``skip``), typed by
    its default; ``--lr`` also takes ``auto`` (a range test picks it)."""
    from ..config import PRESETS, TrainConfig

    p.add_argument("--preset", choices=sorted(PRESETS), help="a named recipe, e.g. cifar")
    defaults = TrainConfig()
    for f in fields(TrainConfig):
        if f.name == "data" or f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        default = getattr(defaults, f.name)
        if isinstance(default, bool):
            p.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None)
        elif f.name == "lr":
            p.add_argument(flag, dest=f.name, type=_rate, default=None,
                           help=f"(default: {default}; auto: a learning-rate range test picks it)")
        else:
            kind = type(default) if default is not None else next(
                (t for t in (int, float) if t.__name__ in str(f.type)), str)
            p.add_argument(flag, dest=f.name, type=kind, default=None,
                           help=f"(default: {default})")


def _rate(text: str) -> float | str:
    if text == "auto":
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number or 'auto': {text!r}") from None


def config_from_args(args) -> TrainConfig:
    """The preset, then the flags the user gave (they win); ``--lr auto`` sets lr_find."""
    from ..config import PRESETS, TrainConfig

    values = dict(PRESETS[args.preset]) if args.preset else {}
    for f in fields(TrainConfig):
        v = getattr(args, f.name, None)
        if v is not None:
            values[f.name] = v
    if values.get("lr") == "auto":
        del values["lr"]
        values["lr_find"] = True
    return TrainConfig(**values)


def cmd_train(args) -> int:
    from ..distributed import DistInfo, env_requests_distributed, init_distributed, shutdown
    from ..report import terminal as term
    from ..report.build import write_run_report
    from ..train import fit

    cfg = config_from_args(args)
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

    console.print(term.stage_table(result.stages, title="Data flow — 5 stages (first batch)"))
    console.print(term.contract_line(result.preprocess, result.weights), markup=False)
    if result.weights is not None:
        console.print(term.weights_line(result.weights), markup=False)
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
