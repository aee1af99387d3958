"""Text that came from a dataset or a checkpoint (class names, file names, paths), made safe
for where it goes.

* :func:`safe_text` for files we write (JSON, HTML, CSV): bytes of a file name that are not
  UTF-8 (lone surrogates in Python) become U+FFFD, so writing never fails;
* :func:`printable` for a terminal, the one helper every terminal output path uses (tables,
  progress, CSV on stdout, warnings from libraries, error lines): on top of ``safe_text``,
  every character that can move the cursor, change the terminal's state, reorder or hide
  text is shown as a visible escape - C0 and C1 controls (ESC, BEL, CR, LF, ...), Unicode bidi
  controls (U+202A-U+202E, U+2066-U+2069, U+200E, U+200F, U+061C) and zero-width characters
  (U+200B-U+200D, U+2060, U+FEFF) - and, for rich's console, markup is escaped.
"""

from __future__ import annotations

import re

# C0 controls (tab included: it moves the cursor), DEL and C1 controls: shown as \xNN.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
# Characters that reorder or hide text without being controls in the C0/C1 sense.
BIDI_CONTROLS = "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
ZERO_WIDTH = "\u200b\u200c\u200d\u2060\ufeff"
_INVISIBLE = re.compile(f"[{BIDI_CONTROLS}{ZERO_WIDTH}]")


def safe_text(s: str) -> str:
    """Show non-UTF-8 bytes of file names (lone surrogates in Python) as U+FFFD."""
    try:
        return s.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    except UnicodeEncodeError:  # a surrogate that did not come from a file name
        return s.encode("utf-8", "replace").decode("utf-8")


def printable(s: object, *, markup: bool = False) -> str:
    """Text that cannot act on a terminal: controls as ``\\xNN``, bidi and zero-width
    characters as ``\\uNNNN``, U+FFFD for bytes that are not UTF-8; ``markup=True`` also
    escapes rich markup (for text passed to a rich console with markup on)."""
    text = _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", safe_text(str(s)))
    text = _INVISIBLE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)
    if markup:
        from rich.markup import escape

        text = escape(text)
    return text


def printable_lines(s: object) -> str:
    """Like :func:`printable` for text of several lines: each line made safe, newlines kept."""
    return "\n".join(printable(line) for line in str(s).split("\n"))
