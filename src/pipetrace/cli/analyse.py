"""`pipetrace evaluate` and `pipetrace errors`: what a trained model got wrong, image by image."""

from __future__ import annotations

import json
from pathlib import Path


def add_evaluate(ev) -> None:
    ev.add_argument("model", help="run folder or checkpoint file")
    ev.add_argument("data", nargs="?", help="dataset root (default: the one it was trained on)")
    ev.add_argument("--split", choices=("val", "train", "all"), default="val",
                    help="which images (default: val; 'train' ranks training images too, "
                    "but the model has learnt their labels)")
    ev.add_argument("--out", metavar="DIR", help="write predictions.csv and errors.json "
                    "(default: RUN_DIR/eval-SPLIT)")
    ev.add_argument("--workers", type=int, default=0)
    ev.add_argument("--json", action="store_true", help="print the analysis as JSON")
    ev.set_defaults(func=cmd_evaluate)


def cmd_evaluate(args) -> int:
    from ..evaluate import evaluate_run
    from ..files import write_text_atomic
    from ..predict import resolve_checkpoint
    from ..report import terminal as term
    from ..runfolder import write_predictions

    result = evaluate_run(args.model, args.data, split=args.split, workers=args.workers)
    out = Path(args.out) if args.out else resolve_checkpoint(args.model).parent / f"eval-{args.split}"
    out.mkdir(parents=True, exist_ok=True)
    write_predictions(out, result.predictions)
    doc = json.dumps(result.to_dict(), indent=1)
    write_text_atomic(out / "errors.json", doc)
    if args.json:
        print(doc)
    else:
        console = term.make_console()
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

    errors = analyse(read_predictions(args.run), top=args.top)
    if args.json:
        print(json.dumps(errors.to_dict(), indent=1))
    else:
        term.print_errors(term.make_console(), errors)
    return 0
