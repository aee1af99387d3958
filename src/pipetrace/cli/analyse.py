"""`pipetrace evaluate` and `pipetrace errors`: what a trained model got wrong, image by image."""

from __future__ import annotations

import json


def add_evaluate(ev) -> None:
    ev.add_argument("model", help="run folder or checkpoint file")
    ev.add_argument("data", nargs="?", help="dataset root (default: the one it was trained on)")
    ev.add_argument("--split", choices=("val", "train", "all"), default="val",
                    help="which images (default: val; 'train' ranks training images too, "
                    "but the model has learnt their labels)")
    ev.add_argument("--out", metavar="DIR", help="write predictions.csv and errors.json "
                    "(default: RUN_DIR/eval-SPLIT, or eval-SPLIT2, ... when that holds one: "
                    "an evaluation is never overwritten)")
    ev.add_argument("--workers", type=int, default=0)
    ev.add_argument("--json", action="store_true", help="print the analysis as JSON")
    ev.set_defaults(func=cmd_evaluate)


def cmd_evaluate(args) -> int:
    from ..evaluate import evaluate_run
    from ..files import write_text_atomic
    from ..predict import resolve_checkpoint
    from ..report import terminal as term
    from ..report.document import json_safe
    from ..runfolder import EVAL_MARKERS, claim_output, refuse_if_holds, write_predictions

    default = resolve_checkpoint(args.model).parent / f"eval-{args.split}"
    what = "predictions (a run's or an evaluation's)"
    if args.out:
        refuse_if_holds(args.out, EVAL_MARKERS, what, default)  # before the pass, too
    result = evaluate_run(args.model, args.data, split=args.split, workers=args.workers)
    with claim_output(args.out or None, default, EVAL_MARKERS, what) as out:
        write_predictions(out, result.predictions)
        doc = json.dumps(json_safe(result.to_dict()), indent=1, allow_nan=False)
        write_text_atomic(out / "errors.json", doc)
    if args.json:
        print(doc)
    else:
        console = term.make_console()
        console.print(f"Evaluated {term.clean(result.checkpoint)} on {term.clean(result.data)} "
                      f"({term.clean(result.split)})")
        term.print_left_out(console, result.left_out, result.unreadable)
        term.print_errors(console, result.errors)
        console.print(f"Wrote {term.clean(out)}/: predictions.csv, errors.json")
    return 0


def add_errors(er) -> None:
    er.add_argument("run", help="run folder, eval folder or predictions.csv")
    er.add_argument("--top", type=int, default=12, help="worst images to list (default: 12)")
    er.add_argument("--json", action="store_true", help="print the analysis as JSON")
    er.set_defaults(func=cmd_errors)


def cmd_errors(args) -> int:
    from ..errors import analyse
    from ..evaluate import read_predictions
    from ..report import terminal as term
    from ..report.document import json_safe

    errors = analyse(read_predictions(args.run), top=args.top)
    if args.json:
        print(json.dumps(json_safe(errors.to_dict()), indent=1, allow_nan=False))
    else:
        term.print_errors(term.make_console(), errors)
    return 0
