"""`pipetrace demo` and `pipetrace train`: the commands that train and write a run folder."""

from __future__ import annotations

import argparse
import os
import shlex
from dataclasses import fields, replace
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..config import TrainConfig


def default_cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "pipetrace")


# -- commands ------------------------------------------------------------------------------------


def add_demo(d) -> None:
    d.add_argument("--out", default=None, help="run folder (default: runs/demo, or runs/demo2, "
                   "... when that holds a run)")
    d.add_argument("--cache-dir", default=None, help="where the dataset is rendered once")
    d.add_argument("--epochs", type=int, default=5)
    d.add_argument("--loader", choices=("fast", "classic"), default="fast")
    d.add_argument("--workers", type=int, default=0)
    d.add_argument("--seed", type=int, default=0)
    d.set_defaults(func=cmd_demo)


def cmd_demo(args) -> int:
    from ..demo import DemoConfig, run_demo
    from ..report import terminal as term
    from ..runfolder import claim, claim_next_free

    console = term.make_console()
    with claim(args.out) if args.out else claim_next_free(DemoConfig.out) as out:
        cfg = DemoConfig(out=str(out), cache_dir=args.cache_dir or default_cache_dir(),
                         epochs=args.epochs, loader=args.loader, workers=args.workers,
                         seed=args.seed)
        console.print(f"pipetrace demo: built-in shapes dataset in {term.clean(cfg.cache_dir)}")
        result, art = run_demo(cfg, observers=(term.TerminalObserver(console),))
        print_run(console, result, art)
    return 130 if result.stopped == "interrupted" else 0


def add_train(t) -> None:
    t.add_argument("data", nargs="?", help="dataset root (train/ + val/, or class folders); "
                   "required unless --resume")
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
    from ..config import PRESETS, TrainConfig, field_allowed, field_doc, field_kind

    p.add_argument("--preset", choices=sorted(PRESETS), help="a named recipe: " + "; ".join(
        f"{name} ({', '.join(f'{k}={v}' for k, v in list(q.items())[:4])}, ...)"
        for name, q in sorted(PRESETS.items())))
    defaults = TrainConfig()
    for f in fields(TrainConfig):  # one flag per config field; help from its declaration
        if f.name == "data" or f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        kind, allowed, default = field_kind(f), field_allowed(f), getattr(defaults, f.name)
        doc = field_doc(f).replace("%", "%%")
        if kind is bool:
            p.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction,
                           default=None, help=f"{doc} (default: {'on' if default else 'off'})")
            continue
        if f.name == "out":
            shown = f"{default}, or {default}2, ... when that holds a run"
        else:
            shown = "none" if default is None else f"{default:g}" if kind is float else default
        names = [*allowed.choices, *([allowed.pattern_text] if allowed.pattern_text else [])]
        metavar = "{" + ",".join(names) + "}" if names else {int: "N", float: "X"}.get(kind,
                                                                                       "TEXT")
        parse = kind
        if f.name == "lr":  # a number, or auto: the range test picks it
            parse, metavar = _rate, "{X,auto}"
        p.add_argument(flag, dest=f.name, type=parse, default=None, metavar=metavar,
                       help=f"{doc}{_range_text(allowed, kind)} (default: {shown})")


def _rate(text: str) -> float | str:
    if text == "auto":
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number or 'auto': {text!r}") from None


def config_from_args(args, **more) -> TrainConfig:
    """The preset, then the flags the user gave (they win), then ``more``; ``--lr auto``
    sets lr_find. Every field is checked here, before anything is scanned."""
    from ..config import PRESETS, TrainConfig

    values = dict(PRESETS[args.preset]) if args.preset else {}
    for f in fields(TrainConfig):
        v = getattr(args, f.name, None)
        if v is not None:
            values[f.name] = v
    values.update(more)
    if values.get("lr") == "auto":
        del values["lr"]
        values["lr_find"] = True
    return TrainConfig(**values)


def _range_text(allowed, kind) -> str:
    """'; an integer >= 1' for a numeric range (choices show in the flag's {a,b} already)."""
    return "" if allowed.choices or kind is str else f"; {allowed.describe(kind)}"


def cmd_train(args) -> int:
    from ..distributed import env_requests_distributed
    from ..runfolder import claim, claim_next_free
    from ..train import check_device_exists, resolve_device

    if not args.data and not args.resume:
        raise ValueError("train needs the dataset folder: pipetrace train DATA_DIR (or "
                         "--resume RUN_DIR to continue a run)")
    more = {"data": args.data or ""}
    if args.resume:
        more["out"] = args.resume
    cfg = config_from_args(args, **more)
    check_device_exists(resolve_device(cfg.device))  # ... or any folder is made
    if env_requests_distributed(os.environ) and os.environ.get("RANK") != "0":
        return _train(args, cfg)  # only rank 0 writes (and claims) the run folder
    if args.resume or args.out:
        with claim(cfg.out):
            return _train(args, cfg)
    with claim_next_free(cfg.out) as out:  # runs/train, runs/train2, ...: never over a run
        return _train(args, replace(cfg, out=str(out)))


def _train(args, cfg) -> int:
    from ..distributed import DistInfo, env_requests_distributed, init_distributed, shutdown
    from ..report import terminal as term
    from ..report.build import write_run_report
    from ..train import fit

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
            from ..analysis import analyse_run

            art = write_run_report(result, analyse_run(result), command="train")
            print_run(console, result, art)
    finally:
        shutdown(dist)
    return 130 if result.stopped == "interrupted" else 0


def print_run(console, result, art) -> None:
    from ..report import terminal as term

    if result.stopped == "interrupted":  # one line, then the short summary only
        console.print(interrupted_line(result), markup=False, soft_wrap=True)  # one line
        term.print_training(console, result)
        console.print(f"Wrote {term.clean(result.run_dir)}/: trace.json, report.html, "
                      "metrics.jsonl, metrics.csv")
        return
    if result.flow is not None:
        console.print(term.stage_table(result.flow, title="Data flow — the run's first batch, "
                                       f"{result.flow.path} path"))
    console.print(term.contract_line(result.preprocess, result.weights), markup=False)
    if result.weights is not None:
        console.print(term.weights_line(result.weights), markup=False)
    term.print_training(console, result)
    if art.layer_trace is not None:
        pred = art.document["prediction"]
        console.print(term.layer_table(art.layer_trace, title=f"Prediction trace — "
                                       f"{term.clean(pred['image'])}, by "
                                       f"{term.clean(os.path.basename(pred['checkpoint']))}"))
        console.print("Top classes:\n" + term.top_k_lines(art.layer_trace), markup=False)
    if result.errors is not None:
        term.print_error_summary(console, result.errors, result.run_dir,
                                 model=f"by last.pt, the model after epoch "
                                       f"{result.predictions_epoch}")
    for f in art.findings:
        console.print(term.finding_line(f))
    if not art.findings:
        console.print("Checks: no problems found.")
    console.print(f"Wrote {term.clean(result.run_dir)}/: trace.json, report.html, metrics.jsonl, "
                  "metrics.csv, predictions.csv, curves.png, confusion.png, batch.png, last.pt, "
                  "best.pt")


def interrupted_line(result) -> str:
    """'Interrupted in epoch 3 at step 40 of 96; last.pt holds epoch 2 of 5. Resume with: ...'"""
    from ..text import printable

    epoch, step, steps = result.interrupted_at or (len(result.records) + 1, 0, 0)
    where = f"in epoch {epoch} at step {step} of {steps}" if steps else f"in epoch {epoch}"
    if not result.records:
        return (f"Interrupted {where}, before the first epoch was saved: nothing to resume; "
                "run the same command again to start over.")
    run = printable(shlex.quote(result.run_dir))
    return (f"Interrupted {where}; last.pt holds epoch {result.records[-1].epoch} of "
            f"{result.config.epochs}. Resume with: pipetrace train --resume {run}")


def _wants_cuda(device: str) -> bool:
    import torch

    return device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
