"""pipetrace: trace an image classifier's pipeline, from OpenCV to softmax.

The command line parses flags into a config, calls the library, maps errors to exit codes.

Exit codes: 0 success, 1 findings/warnings (check, skew), 2 bad input (a file, a checkpoint,
a dataset), 3 a distributed run lost one of its processes, 130 interrupted.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import fields, replace
from pathlib import Path

from . import __version__


def default_cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "pipetrace")


# -- commands ------------------------------------------------------------------------------------

def cmd_demo(args) -> int:
    from .demo import DemoConfig, run_demo
    from .report import terminal as term

    console = term.make_console()
    cfg = DemoConfig(out=args.out, cache_dir=args.cache_dir or default_cache_dir(),
                     epochs=args.epochs, loader=args.loader, workers=args.workers, seed=args.seed)
    console.print(f"pipetrace demo: built-in shapes dataset in {term.clean(cfg.cache_dir)}")
    result, art = run_demo(cfg, observers=(term.TerminalObserver(console),))
    print_run(console, result, art)
    return 0


def print_run(console, result, art) -> None:
    from .report import terminal as term

    console.print(term.stage_table(result.stages, title="Data flow — 5 stages (first batch)"))
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


def cmd_train(args) -> int:
    from .distributed import DistInfo, env_requests_distributed, init_distributed, shutdown
    from .report import terminal as term
    from .report.build import write_run_report
    from .train import PRESETS, TrainConfig, fit

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
            from .tensorboard import TensorBoardObserver

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


def _wants_cuda(device: str) -> bool:
    import torch

    return device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())


def _first_val_image(result) -> tuple[str | None, str | None]:
    from .scan import find_splits

    splits = find_splits(result.config.data)
    scan = splits.val or splits.train
    if not scan.samples:
        return None, None
    path, label = scan.samples[0]
    return path, scan.classes[label]


def cmd_trace(args) -> int:
    import json

    from .checks import check_traced_image
    from .report import terminal as term
    from .trace import StageRecord, Summary, trace_image, trace_model_stage
    from .transforms import Preprocess

    lm = None
    pre = Preprocess(size=args.size, crop_pct=args.crop_pct)
    if args.model:
        from .predict import load_model

        lm = load_model(args.model)
        pre = lm.preprocess  # the model's own contract, not the flags
    records, out = trace_image(args.image, pre, plant=args.plant)
    try:
        records.append(trace_model_stage(out["batch"], lm.model if lm else None,
                                         lm.classes if lm else None))
    except RuntimeError as exc:  # e.g. an HWC batch: the model refuses it, and we say why
        reason = str(exc).splitlines()[0][:160]
        records.append(StageRecord(5, "Model", "PyTorch", "model(x)", records[-1].output,
                                   Summary("error", (), "-", "-", "?"), 0.0,
                                   f"the model refused this batch: {reason}"))
    findings = check_traced_image(out, pre, name=args.image)
    if args.save_stages:
        from .report.files import save_stage_pictures

        save_stage_pictures(out, pre, args.save_stages)
    if args.json:
        print(json.dumps({"image": args.image, "preprocess": pre.to_dict(),
                          "stages": [r.to_dict() for r in records],
                          "findings": [f.to_dict() for f in findings]}, indent=1))
    else:
        console = term.make_console()
        console.print(term.stage_table(records, title=f"Data flow — {term.clean(args.image)}"))
        for f in findings:
            console.print(f"[{'red' if f.severity == 'error' else 'yellow'}]{f.severity}[/] "
                          f"(stage {f.stage}) {term.clean(f.title)}: {term.clean(f.evidence)}\n"
                          f"  fix: {term.clean(f.fix)}")
        if not findings:
            console.print("Checks: no problems found.")
    return 1 if any(f.severity == "error" for f in findings) else 0


def cmd_predict(args) -> int:
    from .predict import list_images, load_model, predict_files, predictions_csv, trace_prediction
    from .report import terminal as term

    console = term.make_console()
    lm = load_model(args.model)
    files = list_images(args.images)
    if len(files) == 1 and not os.path.isdir(args.images[0]):
        lt = trace_prediction(lm, files[0], top_k=args.top_k, depth=args.depth)
        if args.json:
            import json

            print(json.dumps({"image": files[0], "layers": [r.to_dict() for r in lt.layers],
                              "top_k": lt.top_k, "probabilities": lt.probabilities}, indent=1))
        else:
            console.print(term.layer_table(lt, title=f"Prediction trace — {term.clean(files[0])}"))
            console.print("Top classes:\n" + term.top_k_lines(lt), markup=False)
        if args.save:
            from .report.build import prediction_block
            from .report.files import save_prediction_pictures

            block, _, _ = prediction_block(lm, files[0], top_k=args.top_k, depth=args.depth)
            save_prediction_pictures(block, args.save)
        return 0
    preds = predict_files(lm, files, top_k=args.top_k)
    text = predictions_csv(preds)
    if args.save:
        from .files import write_text_atomic

        Path(args.save).mkdir(parents=True, exist_ok=True)
        write_text_atomic(Path(args.save) / "predictions.csv", text)
        console.print(f"Wrote {len(preds)} predictions to {term.clean(args.save)}/predictions.csv")
    else:
        sys.stdout.write(text)
    return 0


def cmd_report(args) -> int:
    from .report.build import rerender

    target = rerender(str(Path(args.run) / "trace.json") if Path(args.run).is_dir() else args.run,
                      args.out)
    print(f"Wrote {target}")
    return 0


def cmd_quiz(args) -> int:
    from .report.document import load_document
    from .report.quizcli import run_quiz

    doc = load_document(Path(args.run) / "trace.json" if Path(args.run).is_dir() else args.run)
    return run_quiz(doc, answers=args.answers)


# -- parser: one add_<command>(sub) per command ----------------------------------------------------

def add_demo(sub) -> None:
    d = sub.add_parser("demo", help="the whole pipeline on the built-in shapes dataset")
    d.add_argument("--out", default="runs/demo", help="run folder (default: runs/demo)")
    d.add_argument("--cache-dir", default=None, help="where the dataset is rendered once")
    d.add_argument("--epochs", type=int, default=5)
    d.add_argument("--loader", choices=("fast", "classic"), default="fast")
    d.add_argument("--workers", type=int, default=0)
    d.add_argument("--seed", type=int, default=0)
    d.set_defaults(func=cmd_demo)


def add_train(sub) -> None:
    from .train import PRESETS, TrainConfig

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
            kind = type(default) if default is not None else str
            t.add_argument(flag, dest=f.name, type=kind, default=None,
                           help=f"(default: {default})")
    t.set_defaults(func=cmd_train)


def add_trace(sub) -> None:
    from .trace import PLANTS

    tr = sub.add_parser("trace", help="the five-stage data-flow table for one image")
    tr.add_argument("image")
    tr.add_argument("--size", type=int, default=224)
    tr.add_argument("--crop-pct", type=float, default=0.875)
    tr.add_argument("--json", action="store_true", help="print the records as JSON")
    tr.add_argument("--save-stages", metavar="DIR", help="save a PNG of each stage's output")
    tr.add_argument("--plant", choices=PLANTS,
                    help="plant a classic bug to see how it looks and how it is caught")
    tr.add_argument("--model", metavar="RUN_OR_CKPT", help="run stage 5 with this model")
    tr.set_defaults(func=cmd_trace)


def add_predict(sub) -> None:
    pr = sub.add_parser("predict", help="classify images and trace one through every layer")
    pr.add_argument("model", help="run folder or checkpoint file")
    pr.add_argument("images", nargs="+", help="image files or folders")
    pr.add_argument("--top-k", type=int, default=3)
    pr.add_argument("--depth", type=int, default=None, help="fold modules deeper than this")
    pr.add_argument("--json", action="store_true")
    pr.add_argument("--save", metavar="DIR", help="write pictures (one image) or predictions.csv")
    pr.set_defaults(func=cmd_predict)


def add_report(sub) -> None:
    r = sub.add_parser("report", help="render report.html again from trace.json")
    r.add_argument("run", help="run folder or trace.json")
    r.add_argument("--out", help="output HTML file (default: beside trace.json)")
    r.set_defaults(func=cmd_report)


def add_quiz(sub) -> None:
    q = sub.add_parser("quiz", help="the run's quiz in the terminal")
    q.add_argument("run", help="run folder or trace.json")
    q.add_argument("--answers", action="store_true", help="print questions with answers")
    q.set_defaults(func=cmd_quiz)


COMMANDS = (add_demo, add_train, add_trace, add_predict, add_report, add_quiz)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pipetrace", description=__doc__.splitlines()[0])
    p.add_argument("--version", action="version", version=f"pipetrace {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    for add in COMMANDS:
        add(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    from .checkpoint import CheckpointError
    from .images import ImageLoadError
    from .train import DatasetRefused, TrainingDiverged

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("pipetrace: interrupted", file=sys.stderr)
        return 130
    except (ImageLoadError, CheckpointError, DatasetRefused, FileNotFoundError, ValueError,
            TrainingDiverged) as exc:
        from .files import safe_text

        print(f"pipetrace: error: {_rank_prefix()}{safe_text(str(exc))}", file=sys.stderr)
        return 2
    except RuntimeError as exc:  # a collective that failed: say what it means
        from .distributed import is_collective_failure

        if not is_collective_failure(exc):
            raise
        from .files import safe_text

        reason = safe_text(str(exc)).strip().splitlines()[0][:300]
        print(f"pipetrace: error: {_rank_prefix()}lost contact with the other processes "
              f"({reason}). Another process failed, hung or was stopped: see its messages "
              f"above. (A step that truly takes longer needs a larger --dist-timeout, now "
              f"{getattr(args, 'dist_timeout', 300.0):g} s.)", file=sys.stderr)
        return 3


def _rank_prefix() -> str:
    """'rank 1 of 2: ' under torchrun (whose environment the CLI may read), else ''."""
    from .distributed import env_requests_distributed

    if not env_requests_distributed(os.environ):
        return ""
    return f"rank {os.environ['RANK']} of {os.environ['WORLD_SIZE']}: "


if __name__ == "__main__":
    sys.exit(main())
