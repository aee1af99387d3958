"""Files we write: always atomically (temp file in the same folder, fsync, ``os.replace``).

A reader sees the old file or the new one, never half of one, even if the process is killed
with SIGKILL in the middle; a full disk or a read-only folder raises and leaves the old file.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from .text import safe_text


def write_atomic(path: str | os.PathLike, write: Callable[[BinaryIO], None], *,
                 before_replace: Callable[[str], None] | None = None) -> None:
    """Call ``write(f)`` on a temp file beside ``path``, fsync it, then rename it over ``path``.

    ``before_replace(tmp_path)`` runs once the new bytes are durable and before the rename
    (``save_checkpoint`` hashes them there). An OSError (read-only folder, full disk) is
    raised again naming ``path``, with the temp file removed and the old file untouched.
    """
    path = Path(path)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.fchmod(fd, _mode_for(path))  # mkstemp makes 0600; keep the usual permissions
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if before_replace is not None:
            before_replace(tmp)
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        cause = _os_error_in(exc)
        if cause is not None:
            # OSError(errno, text) builds the matching subclass (PermissionError, ...).
            raise OSError(cause.errno, f"{cause.strerror}: cannot write "
                          f"{safe_text(str(path))!r} (the previous file, if any, is "
                          "unchanged)") from exc
        raise
    with contextlib.suppress(OSError):  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def _mode_for(path: Path) -> int:
    """The replaced file's permissions, or what ``open()`` would give a new file (umask)."""
    try:
        return path.stat().st_mode & 0o7777
    except OSError:
        umask = os.umask(0o022)  # read it: the only portable way sets it too
        os.umask(umask)
        return 0o666 & ~umask


def _os_error_in(exc: BaseException) -> OSError | None:
    """The OSError behind ``exc``: torch.save turns a failed write into a RuntimeError."""
    seen = 0
    while exc is not None and seen < 8:
        if isinstance(exc, OSError) and exc.errno is not None:
            return exc
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return None


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    write_atomic(path, lambda f: f.write(data))


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """UTF-8 text; characters that cannot be encoded (lone surrogates from non-UTF-8 file
    names) are written as U+FFFD instead of failing the whole report."""
    write_bytes_atomic(path, safe_text(text).encode("utf-8"))


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
