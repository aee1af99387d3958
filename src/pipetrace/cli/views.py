"""`pipetrace report` and `pipetrace quiz`: the commands that render a run's trace again."""

from __future__ import annotations

from pathlib import Path


def add_report(r) -> None:
    r.add_argument("run", help="run folder or trace.json")
    r.add_argument("--out", help="output HTML file (default: beside trace.json)")
    r.set_defaults(func=cmd_report)


def cmd_report(args) -> int:
    from ..report.build import rerender

    target = rerender(str(Path(args.run) / "trace.json") if Path(args.run).is_dir() else args.run,
                      args.out)
    from ..text import printable

    print(f"Wrote {printable(target)}")
    return 0


def add_quiz(q) -> None:
    q.add_argument("run", help="run folder or trace.json")
    q.add_argument("--answers", action="store_true", help="print questions with answers")
    q.set_defaults(func=cmd_quiz)


def cmd_quiz(args) -> int:
    from ..report.document import load_document, rendering
    from ..report.quizcli import run_quiz  # neither imports torch: the quiz starts at once

    path = Path(args.run) / "trace.json" if Path(args.run).is_dir() else Path(args.run)
    doc = load_document(path)
    with rendering(path):
        return run_quiz(doc, answers=args.answers)
