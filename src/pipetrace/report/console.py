"""The terminal console and the escaping of names for it, without the record types (so a
command that only prints, such as ``pipetrace quiz``, starts without importing torch)."""

from __future__ import annotations

import sys

from rich.console import Console

from ..text import printable


def clean(s: object) -> str:
    """A name for the rich console: :func:`pipetrace.text.printable` with markup escaped."""
    return printable(s, markup=True)


def make_console(file=None, *, width: int | None = None) -> Console:
    """A console for stdout (or ``file``); colours and live bars only on a terminal.

    Logs and pipes get 160 columns, so the tables stay readable instead of folding at 80.
    """
    file = file or sys.stdout
    if width is None and not (hasattr(file, "isatty") and file.isatty()):
        width = 160
    return Console(file=file, width=width, highlight=False, soft_wrap=False)
