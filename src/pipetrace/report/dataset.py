"""The terminal view of ``pipetrace check``: a summary first, then the findings in detail.

It formats a :class:`~pipetrace.doctor.DatasetReport` and computes nothing. Every name from
the dataset goes through :func:`~pipetrace.report.console.clean` (no markup, no terminal
escape sequences, U+FFFD for bytes that are not UTF-8).
"""

from __future__ import annotations

import os

from rich.console import Console
from rich.table import Table

from ..doctor import DatasetReport
from ..findings import SEVERITIES, Finding
from .console import clean

COLOURS = {"error": "red", "warning": "yellow", "info": "cyan"}
HEADINGS = {"error": "Errors", "warning": "Warnings", "info": "Notes"}


def summary_lines(report: DatasetReport) -> list[str]:
    """Three lines: what was checked, what became of each entry, what to do (exit code)."""
    n, sev = report.status_counts(), report.severity_counts()
    verdict = {0: "clean", 1: "warnings", 2: "errors"}[report.exit_code]
    return [
        f"pipetrace check {clean(report.root)}: layout {clean(report.layout)}, "
        f"{len(report.classes)} classes, {len(report.files)} entries seen in "
        f"{report.seconds:.1f} s",
        f"  {n['loaded']} loaded, {n['skipped']} skipped (cannot be used), "
        f"{n['ignored']} ignored (not samples)",
        f"  {sev['error']} error(s), {sev['warning']} warning(s), {sev['info']} note(s): "
        f"{verdict} (exit {report.exit_code})",
    ]


def counts_table(report: DatasetReport) -> Table:
    """Images per split and class: loaded, skipped, and each class's share of its split."""
    t = Table(title="Images per class", title_justify="left")
    for col in ("split", "class", "index", "loaded", "skipped", "share"):
        t.add_column(col, justify="right" if col in ("index", "loaded", "skipped", "share")
                     else "left", overflow="fold")
    for s in report.splits:
        total = sum(s.loaded.values()) or 1
        for i, (c, n) in enumerate(s.loaded.items()):
            t.add_row(s.name, clean(c), str(i), str(n), str(s.skipped[c]), f"{n / total:.0%}")
    return t


def finding_lines(f: Finding, root: str, *, max_paths: int = 5) -> list[str]:
    colour = COLOURS[f.severity]
    lines = [f"[{colour}]{f.severity}[/] [bold]{clean(f.check)}[/]: {clean(f.title)}",
             f"    {clean(f.evidence)}", f"    fix: {clean(f.fix)}"]
    for p in f.paths[:max_paths]:
        lines.append(f"    - {clean(os.path.relpath(p, root))}")
    if len(f.paths) > max_paths:
        lines.append(f"    ... and {len(f.paths) - max_paths} more (--json lists all)")
    return lines


def print_dataset_report(console: Console, report: DatasetReport, *, max_paths: int = 5) -> None:
    """Summary, per-class counts, then findings from errors to notes."""
    for line in summary_lines(report):
        console.print(line)
    console.print(counts_table(report))
    for severity in SEVERITIES:
        group = [f for f in report.findings if f.severity == severity]
        if not group:
            continue
        console.print(f"[bold]{HEADINGS[severity]} ({len(group)})[/]")
        for f in group:
            for line in finding_lines(f, report.root, max_paths=max_paths):
                console.print(line)
    if not report.findings:
        console.print("No problems found.")
