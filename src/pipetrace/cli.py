"""pipetrace: trace an image classifier's pipeline, from OpenCV to softmax.

The command line parses flags into a config, calls the library, maps errors to exit codes.

Exit codes: 0 success, 1 findings/warnings (check, skew), 2 bad input (a file, a checkpoint,
a dataset) or errors found by check, or a file that cannot be written, 3 a distributed run
lost one of its processes, 130 interrupted.
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

            print(json.dumps({"image": files[0], "checkpoint": lm.source, "classes": lm.classes,
                              "layers": [r.to_dict() for r in lt.layers], "logits": lt.logits,
                              "probabilities": lt.probabilities, "top_k": lt.top_k,
                              "predicted": lt.predicted}, indent=1))
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
    if args.json:
        import json

        print(json.dumps({"checkpoint": lm.source, "classes": lm.classes,
                          "predictions": [p.to_dict() for p in preds]}, indent=1))
        return 0
    text = predictions_csv(preds)
    if args.save:
        from .files import write_text_atomic

        Path(args.save).mkdir(parents=True, exist_ok=True)
        write_text_atomic(Path(args.save) / "predictions.csv", text)
        console.print(f"Wrote {len(preds)} predictions to {term.clean(args.save)}/predictions.csv")
    else:
        sys.stdout.write(text)
    return 0


def _images_or_validation(lm, images: list[str], limit: int | None) -> list[str]:
    """The images given, or the checkpoint's own validation images when none are."""
    from .predict import list_images, validation_images

    if images:
        return list_images(images)
    files = validation_images(lm, limit)
    if not files:
        data = (lm.checkpoint.get("train_config") or {}).get("data") or "?"
        raise ValueError(f"no images given, and the checkpoint's dataset {data!r} has no "
                         "validation folder here: give image files or folders")
    return files


def cmd_skew(args) -> int:
    from .predict import load_model
    from .report import terminal as term
    from .skew import check_skew, load_user_function

    lm = load_model(args.model)
    fn = load_user_function(args.preprocess)
    report = check_skew(lm, fn, _images_or_validation(lm, args.images, args.limit),
                        name=args.preprocess)
    if args.json:
        import json

        print(json.dumps(report.to_dict(), indent=1))
    else:
        term.print_skew(term.make_console(), report)
    return 1 if report.skew else 0


def cmd_export(args) -> int:
    from .predict import load_model
    from .report import terminal as term

    try:
        from .export import check_onnx, export_onnx
    except ImportError as exc:
        raise ValueError(f"export needs onnx and onnxruntime ({exc}): pip install "
                         "'pipetrace[onnx]'") from None
    lm = load_model(args.model)
    files = _images_or_validation(lm, args.images, args.limit)  # before writing anything
    path = export_onnx(lm, args.onnx, opset=args.opset)
    check = check_onnx(lm, path, files)
    if args.json:
        import json

        print(json.dumps(check.to_dict(), indent=1))
    else:
        term.print_onnx_check(term.make_console(), check, opset=args.opset)
    return 0 if check.ok else 1


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


def cmd_check(args) -> int:
    import json

    from .doctor import CheckConfig, check_dataset
    from .images import LoadLimits
    from .report import terminal as term
    from .report.dataset import print_dataset_report

    cfg = CheckConfig(limits=LoadLimits(max_pixels=args.max_image_pixels), strict=not args.fast)
    report = check_dataset(args.data, cfg)
    try:
        if args.json:
            # ensure_ascii: the bytes on stdout are ASCII whatever the terminal's encoding
            print(json.dumps(report.to_dict(), indent=1))
        else:
            print_dataset_report(term.make_console(), report, max_paths=args.max_paths)
    except BrokenPipeError:  # `check --json | head`: keep the verdict as the exit code
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return report.exit_code


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


def add_skew(sub) -> None:
    sk = sub.add_parser("skew", help="compare your own inference preprocessing with the "
                        "checkpoint's evaluation pipeline")
    sk.add_argument("model", help="run folder or checkpoint file")
    sk.add_argument("images", nargs="*", help="image files or folders (default: validation "
                    "images of the checkpoint's dataset)")
    sk.add_argument("--preprocess", required=True, metavar="MODULE:FUNCTION",
                    help="your function: image file path -> the tensor/array you feed the "
                    "model (module name or path/to/file.py)")
    sk.add_argument("--limit", type=int, default=8,
                    help="validation images to use when none are given (default: 8)")
    sk.add_argument("--json", action="store_true")
    sk.set_defaults(func=cmd_skew)


def add_export(sub) -> None:
    from .export import OPSET

    ex = sub.add_parser("export", help="write the model as ONNX (contract in its metadata) and "
                        "check it with onnxruntime")
    ex.add_argument("model", help="run folder or checkpoint file")
    ex.add_argument("images", nargs="*", help="images to check on (default: validation "
                    "images of the checkpoint's dataset)")
    ex.add_argument("--onnx", required=True, metavar="FILE", help="the .onnx file to write")
    ex.add_argument("--opset", type=int, default=OPSET)
    ex.add_argument("--limit", type=int, default=100,
                    help="validation images to check on when none are given (default: 100)")
    ex.add_argument("--json", action="store_true", help="print the check as JSON")
    ex.set_defaults(func=cmd_export)


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


def add_check(sub) -> None:
    from .images import LoadLimits

    c = sub.add_parser("check", help="read every file of a dataset once and report problems "
                       "(exit 0 clean, 1 warnings, 2 errors)")
    c.add_argument("data", help="dataset root (train/ + val/, or class folders)")
    c.add_argument("--json", action="store_true", help="print the full report as JSON")
    c.add_argument("--fast", action="store_true",
                   help="decode once, as training does (skips the strict second decode)")
    c.add_argument("--max-paths", type=int, default=5, help="files listed per finding")
    c.add_argument("--max-image-pixels", type=int, default=LoadLimits().max_pixels,
                   help="refuse larger images from the header (default: %(default)s)")
    c.set_defaults(func=cmd_check)


COMMANDS = (add_demo, add_train, add_trace, add_predict, add_check, add_skew, add_export,
            add_report, add_quiz)


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
    except BrokenPipeError:  # `pipetrace check --json | head`: the reader left, not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (ImageLoadError, CheckpointError, DatasetRefused, OSError, ValueError,
            TrainingDiverged) as exc:  # OSError: a missing folder, a read-only one, a full disk
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
