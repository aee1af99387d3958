"""`pipetrace trace` and `pipetrace check`: the commands that look at images and datasets."""

from __future__ import annotations

import os
import sys


def add_trace(tr) -> None:
    from ..trace import PLANTS

    tr.add_argument("image")
    tr.add_argument("--size", type=int, default=224)
    tr.add_argument("--crop-pct", type=float, default=0.875)
    tr.add_argument("--json", action="store_true", help="print the records as JSON")
    tr.add_argument("--save-stages", metavar="DIR", help="save a PNG of each stage's output")
    tr.add_argument("--plant", choices=PLANTS,
                    help="plant a classic bug to see how it looks and how it is caught")
    tr.add_argument("--model", metavar="RUN_OR_CKPT", help="run stage 5 with this model")
    tr.set_defaults(func=cmd_trace)


def cmd_trace(args) -> int:
    import json

    from ..checks import check_traced_image
    from ..report import terminal as term
    from ..trace import StageRecord, Summary, trace_image, trace_model_stage
    from ..transforms import Preprocess

    lm = None
    pre = Preprocess(size=args.size, crop_pct=args.crop_pct)
    if args.model:
        from ..predict import load_model

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
        from ..report.files import save_stage_pictures

        save_stage_pictures(out, pre, args.save_stages)
    if args.json:
        print(json.dumps({"image": args.image, "preprocess": pre.to_dict(),
                          "stages": [r.to_dict() for r in records],
                          "findings": [f.to_dict() for f in findings]}, indent=1))
    else:
        console = term.make_console()
        console.print(term.stage_table(records, title=f"Data flow — {term.clean(args.image)}"))
        if lm is not None and records[-1].note.startswith("top classes"):
            console.print(f"Probabilities (softmax), {term.clean(records[-1].note)}")
        for f in findings:
            console.print(f"[{'red' if f.severity == 'error' else 'yellow'}]{f.severity}[/] "
                          f"(stage {f.stage}) {term.clean(f.title)}: {term.clean(f.evidence)}\n"
                          f"  fix: {term.clean(f.fix)}")
        if not findings:
            console.print("Checks: no problems found.")
    return 1 if any(f.severity == "error" for f in findings) else 0


def add_check(c) -> None:
    from ..images import LoadLimits

    c.add_argument("data", help="dataset root (train/ + val/, or class folders)")
    c.add_argument("--json", action="store_true", help="print the full report as JSON")
    c.add_argument("--fast", action="store_true",
                   help="decode once, as training does (skips the strict second decode)")
    c.add_argument("--max-paths", type=int, default=5, help="files listed per finding")
    c.add_argument("--max-image-pixels", type=int, default=LoadLimits().max_pixels,
                   help="refuse larger images from the header (default: %(default)s)")
    c.set_defaults(func=cmd_check)


def cmd_check(args) -> int:
    import json

    from ..doctor import CheckConfig, check_dataset
    from ..images import LoadLimits
    from ..report import terminal as term
    from ..report.dataset import print_dataset_report

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
