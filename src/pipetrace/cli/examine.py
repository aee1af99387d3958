"""`pipetrace trace` and `pipetrace check`: the commands that look at images and datasets."""

from __future__ import annotations

import os
import sys


def add_trace(tr) -> None:
    from ..pipeline import PLANTS

    tr.add_argument("image", nargs="?", help="an image file (or use --dataset)")
    tr.add_argument("--dataset", metavar="MODULE:FACTORY",
                    help="trace your own Dataset: FACTORY() returns a torch Dataset or a "
                    "DataLoader (module name or path/to/file.py)")
    tr.add_argument("--index", type=int, default=0, help="--dataset: which item (default: 0)")
    tr.add_argument("--loader", choices=("seed", "fast", "classic"), default="seed",
                    help="which of pipetrace's pipelines runs the image (default: seed, the "
                    "seed's chain)")
    tr.add_argument("--size", type=int, default=224)
    tr.add_argument("--crop-pct", type=float, default=0.875)
    tr.add_argument("--json", action="store_true", help="print the records as JSON")
    tr.add_argument("--save-stages", metavar="DIR", help="save a PNG of each step's output")
    tr.add_argument("--out", metavar="DIR", help="write trace.json and report.html there")
    tr.add_argument("--plant", choices=PLANTS,
                    help="plant a classic bug in the seed's chain to see how it looks and how "
                    "it is caught")
    tr.add_argument("--model", metavar="RUN_OR_CKPT", help="run stage 5 with this model")
    tr.add_argument("--batch", action="store_true",
                    help="show the batch instead: IMAGE is a dataset folder (or use --dataset); "
                    "a few training images per class as the model gets them, augmented, beside "
                    "the evaluation view; prints them and writes batch.png (to --out, or here)")
    tr.add_argument("--augment", choices=("none", "flip", "crop-flip", "rrc"), default="flip",
                    help="--batch: the training augmentation to show (default: flip)")
    tr.add_argument("--per-class", type=int, default=4, help="--batch: images per class")
    tr.add_argument("--seed", type=int, default=0, help="--batch: the augmentation's seed")
    tr.set_defaults(func=cmd_trace)


def cmd_trace(args) -> int:
    import json

    from ..config import MAX_RESIZE, ConfigError, check_setting
    from ..report import terminal as term

    check_setting("image_size", args.size, "--size")  # what train allows, under trace's flags
    check_setting("crop_pct", args.crop_pct, "--crop-pct")
    check_setting("seed", args.seed, "--seed")
    if round(args.size / args.crop_pct) > MAX_RESIZE:
        raise ConfigError(f"--size / --crop-pct = {args.size / args.crop_pct:.0f} pixels: the "
                          f"resize before the crop must stay within {MAX_RESIZE}")
    if args.per_class < 1:
        raise ConfigError(f"--per-class cannot be {args.per_class}: it must be an integer >= 1")
    if args.batch:
        return _show_batch(args)
    if args.dataset:
        return _trace_dataset(args)
    if not args.image:
        raise ValueError("trace needs an IMAGE file or --dataset MODULE:FACTORY")
    from ..checks import check_exif_orientation, check_flow
    from ..dataset_trace import trace_image
    from ..images import read_bytes
    from ..trace import model_stage
    from ..transforms import Preprocess

    lm = None
    pre = Preprocess(size=args.size, crop_pct=args.crop_pct)
    if args.model:
        from ..predict import load_model

        lm = load_model(args.model)
        pre = lm.preprocess  # the model's own contract, not the flags
    flow, x = trace_image(args.image, pre, plant=args.plant, loader=args.loader)
    note = ""
    if lm is not None:
        try:
            flow = flow.extended([model_stage(lm.model, x, lm.classes,
                                              order=flow.image_order())])
        except RuntimeError as exc:  # e.g. an HWC batch: the model refuses it, and we say why
            note = f"the model refused this batch: {str(exc).splitlines()[0][:160]}"
    findings = check_exif_orientation(read_bytes(args.image), args.image) + check_flow(flow, pre)
    if args.save_stages:
        from ..report.files import save_stage_pictures

        save_stage_pictures(flow, args.save_stages)
    if args.out:
        from ..report.build import write_flow_report

        write_flow_report(flow, findings, args.out, command="trace")
    if args.json:
        print(json.dumps({"image": args.image, "preprocess": pre.to_dict(),
                          "data_flow": flow.to_dict(), "model_error": note,
                          "findings": [f.to_dict() for f in findings]}, indent=1))
    else:
        console = term.make_console()
        console.print(term.stage_table(flow, title=f"Data flow — {term.clean(args.image)}"))
        if note:
            console.print(term.clean(note))
        elif lm is not None:
            console.print(f"Probabilities (softmax), {term.clean(flow.stages[-1].note)}")
        elif lm is None:
            console.print("No model given: stage 5 (the model) is not run; use --model RUN_DIR.")
        term.print_findings(console, findings)
    return 1 if any(f.severity == "error" for f in findings) else 0


def _show_batch(args) -> int:
    """`trace --batch`: the batch view of a dataset folder (or of --dataset), no training."""
    from pathlib import Path

    from ..batch_view import batch_view, dataset_batch_view
    from ..explain import png_bytes
    from ..files import write_bytes_atomic
    from ..report import terminal as term
    from ..report.plots import grid_picture

    if args.dataset:
        from ..dataset_trace import load_factory

        view = dataset_batch_view(load_factory(args.dataset), n=4 * args.per_class)
    else:
        if not args.image or not os.path.isdir(args.image):
            raise ValueError("trace --batch needs a dataset folder (root/<class>/<image>, or "
                             "train/ + val/) or --dataset MODULE:FACTORY")
        from ..data import ImageDataset
        from ..scan import find_splits
        from ..transforms import Preprocess

        scan = find_splits(args.image).train
        pre = Preprocess(size=args.size, crop_pct=args.crop_pct)
        ds = ImageDataset(scan.samples, pre, train=True, augment=args.augment)
        view = batch_view(ds, scan.classes, augment=args.augment, per_class=args.per_class,
                          seed=args.seed)
    out = Path(args.out or ".")
    out.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(out / "batch.png", png_bytes(grid_picture(view)))
    console = term.make_console()
    console.print(term.batch_table(view))
    console.print(f"Wrote {term.clean((out / 'batch.png').resolve())}: "
                  + ("each image as training gives it to the model, beside its evaluation view"
                     if view.eval_pictures else "the batch as the model gets it"))
    return 0


def _trace_dataset(args) -> int:
    import json

    from ..dataset_trace import load_factory, trace_dataset
    from ..report import terminal as term

    trace = trace_dataset(load_factory(args.dataset), index=args.index)
    if args.save_stages:
        from ..report.files import save_stage_pictures

        save_stage_pictures(trace.flow, args.save_stages)
    if args.out:
        from ..report.build import write_flow_report

        write_flow_report(trace.flow, trace.findings, args.out, command="trace --dataset",
                          dataset={"name": trace.dataset, "classes": trace.classes})
    if args.json:
        print(json.dumps(trace.to_dict(), indent=1))
    else:
        console = term.make_console()
        console.print(term.stage_table(trace.flow, title=f"Data flow — "
                                       f"{term.clean(args.dataset)} item {args.index}"))
        term.print_findings(console, trace.findings)
    return 1 if any(f.severity == "error" for f in trace.findings) else 0


def add_check(c) -> None:
    from ..images import LoadLimits

    c.add_argument("data", help="dataset root (train/ + val/, or class folders)")
    c.add_argument("--json", action="store_true", help="print the full report as JSON")
    c.add_argument("--fast", action="store_true",
                   help="decode once, as training does (skips the strict second decode)")
    c.add_argument("--max-paths", type=int, default=5, help="files listed per finding")
    c.add_argument("--no-index", action="store_true",
                   help="read every file again, without the dataset index (index.py)")
    c.add_argument("--max-image-pixels", type=int, default=LoadLimits().max_pixels,
                   help="refuse larger images from the header (default: %(default)s)")
    c.set_defaults(func=cmd_check)


def cmd_check(args) -> int:
    import json

    from ..doctor import CheckConfig, check_dataset
    from ..images import LoadLimits
    from ..report.console import make_console  # check needs neither torch nor torchvision
    from ..report.dataset import print_dataset_report

    cfg = CheckConfig(limits=LoadLimits(max_pixels=args.max_image_pixels), strict=not args.fast,
                      index=not args.no_index)
    report = check_dataset(args.data, cfg)
    try:
        if args.json:
            # ensure_ascii: the bytes on stdout are ASCII whatever the terminal's encoding
            print(json.dumps(report.to_dict(), indent=1))
        else:
            print_dataset_report(make_console(), report, max_paths=args.max_paths)
    except BrokenPipeError:  # `check --json | head`: keep the verdict as the exit code
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return report.exit_code
