"""`pipetrace lr-find`: a learning-rate range test with a run's settings, and its suggestion."""

from __future__ import annotations

import json
from dataclasses import replace

from .run import add_config_flags, config_from_args

LR_FIND_MARKERS = ("lr_find.json", "lr_find.png")  # what a range test writes
DEFAULT_OUT = "runs/lr-find"  # then lr-find2, ...: a range test is never overwritten


def add_lr_find(p) -> None:
    from ..lr_find import RangeTest

    d = RangeTest()
    p.add_argument("data", help="dataset root (train/ + val/, or class folders)")
    p.add_argument("--start-lr", type=float, default=d.start_lr,
                   help=f"first rate of the ramp (default: {d.start_lr:g})")
    p.add_argument("--end-lr", type=float, default=d.end_lr,
                   help=f"last rate, unless the loss diverges first (default: {d.end_lr:g})")
    p.add_argument("--steps", type=int, default=d.steps,
                   help=f"optimizer steps of the ramp (default: {d.steps})")
    add_config_flags(p, skip=("lr_find",))  # the run's settings: the rate found is for them
    p.set_defaults(func=cmd_lr_find)


def cmd_lr_find(args) -> int:
    from ..files import write_bytes_atomic, write_text_atomic
    from ..lr_find import RangeTest, find_lr
    from ..report import terminal as term
    from ..report.plots import lr_find_png
    from ..runfolder import claim_output, refuse_if_holds

    cfg = replace(config_from_args(args), data=args.data)
    if args.out is not None:  # before the test, too
        refuse_if_holds(args.out, LR_FIND_MARKERS, "a range test", DEFAULT_OUT)
    test = RangeTest(start_lr=args.start_lr, end_lr=args.end_lr, steps=args.steps)
    console = term.make_console()
    console.print(f"pipetrace lr-find: {term.clean(cfg.model)} on {term.clean(cfg.data)}, "
                  f"{test.steps} steps from {test.start_lr:g} to {test.end_lr:g}")
    result = find_lr(cfg, test)
    with claim_output(args.out, DEFAULT_OUT, LR_FIND_MARKERS, "a range test") as out:
        write_bytes_atomic(out / "lr_find.png", lr_find_png(result))
        write_text_atomic(out / "lr_find.json", json.dumps(result.to_dict(), indent=1))
    term.print_lr_find(console, result)
    console.print(f"Wrote {term.clean(out)}/: lr_find.png, lr_find.json. Train with it: "
                  f"--lr {result.lr:.2g} (or --lr auto, which runs this test first)", markup=False)
    return 0
