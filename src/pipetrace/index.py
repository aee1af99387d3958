"""The dataset index: what was learnt about each file, kept so the next run need not learn it again.

Before its first epoch ``train`` checks every file's header (``images.file_facts``) and hashes
the files whose sizes collide (the quick duplicate check); ``pipetrace check`` decodes every
file, twice. On a folder of 200,000 images that is most of the time to the first batch, and
under torchrun every process did it again. The index keeps, per file and keyed by its path
relative to the dataset root:

* its stamp, (size in bytes, modification time in ns): an entry is used only while the
  file's stamp is the same, so a file that changed is read again, alone;
* its header facts (:class:`~pipetrace.images.HeaderFacts`) or the reason its header cannot
  be read; the verdict under the run's limits is judged from the facts each time, so a
  different ``--max-image-pixels`` needs no new index;
* its SHA-256 once something needed it (the duplicate checks), and ``check``'s record of it
  under the check's settings.

Where: ``DATA/.pipetrace-index.json`` beside the dataset when that folder is writable, else
``<user cache dir>/pipetrace/index/<hash of the dataset's real path>.json`` (platformdirs:
``~/.cache/pipetrace/index`` on Linux). ``train --dataset-index off`` runs without it.

Why one JSON file replaced atomically rather than SQLite: a reader sees the old index or the
new one, never half of one, with no lock to wait for or to leave behind, on any file system
(datasets live on NFS, where SQLite's WAL mode is unsafe and its locks unreliable); two
processes that build it at once (``train`` and ``check``, or torchrun's processes on a first
start) each write a complete file; writers take turns (an ``flock`` on the index's folder,
held only to read, merge and replace), and each first merges what the file on disk holds
that it lacks, so no writer's entries are lost. JSON, not pickle: an
index beside a shared dataset may come from someone else, and loading it must not run code.

A file changed within the same clock tick as its stamp could keep its stamp (git's "racy"
files); entries younger than :data:`RACY_SECONDS` at saving time are therefore not stored.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import time
from pathlib import Path

from .files import sha256_file, write_text_atomic
from .images import CheckedFile, HeaderFacts, ImageLoadError, LoadLimits, file_facts, judge_header

INDEX_NAME = ".pipetrace-index.json"  # beside the dataset; the scan does not list it
FORMAT = "pipetrace-index"
VERSION = 1  # 1: files -> [size, mtime_ns, facts or error, sha256, check records]
RACY_SECONDS = 2.0  # entries of files modified this recently are not stored


def cache_dir() -> Path:
    """Where indexes of read-only datasets go: the user's cache folder (platformdirs)."""
    import platformdirs

    return Path(platformdirs.user_cache_dir("pipetrace")) / "index"


def locations(root: str | os.PathLike) -> tuple[Path, Path]:
    """(beside the dataset, in the user's cache) for the dataset folder ``root``."""
    real = os.path.realpath(root)
    key = hashlib.sha256(os.fsencode(real)).hexdigest()[:24]
    return Path(real) / INDEX_NAME, cache_dir() / f"{key}.json"


class DatasetIndex:
    """The index of one dataset folder: :meth:`checked` and :meth:`sha256` answer from it
    while a file's stamp is unchanged and learn (and keep) the answer otherwise; ``save``
    writes what was learnt. Counts of what it answered and what it had to read are kept for
    the run's record (:meth:`summary`)."""

    def __init__(self, root: str | os.PathLike, *, where: Path | None = None):
        self.root = os.path.realpath(root)
        self.base = os.path.abspath(root)  # keys are paths relative to this
        self._prefix = os.path.join(self.base, "")  # the base with its trailing separator
        self.where = where  # the file it was read from (None: new)
        self.entries: dict[str, list] = {}  # relative path -> [size, mtime_ns, facts, sha, check]
        self.known = 0  # answers from the index
        self.learnt = 0  # files read because the index had no valid entry
        self.changed = False

    # -- reading and writing ---------------------------------------------------------------

    @classmethod
    def open(cls, root: str | os.PathLike) -> DatasetIndex:
        """The index of ``root`` from beside it or from the user's cache (empty if neither
        holds a readable one: a damaged or foreign file is ignored, and replaced on save)."""
        for path in locations(root):
            entries = _read(path)
            if entries is not None:
                index = cls(root, where=path)
                index.entries = entries
                return index
        return cls(root)

    def save(self) -> Path | None:
        """Write the index if anything was learnt: beside the dataset, else in the user's
        cache. Returns where it went (None: nothing new, or nowhere writable)."""
        if not self.changed:
            return self.where
        young = time.time_ns() - int(RACY_SECONDS * 1e9)
        beside, cached = locations(self.root)
        for path in dict.fromkeys([self.where or beside, beside, cached]):
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                with _folder_lock(path.parent):  # read, merge, replace: one writer at a time
                    merged = _merge(self.entries, _read(path) or {})
                    files = {k: v for k, v in merged.items() if v[1] < young}
                    write_text_atomic(path, json.dumps(
                        {"format": FORMAT, "version": VERSION, "root": self.root,
                         "files": files}, separators=(",", ":")))
            except OSError:
                continue  # a read-only dataset: the cache folder next
            self.where, self.changed = path, False
            return path
        return None

    def summary(self) -> dict:
        """What the run records: where the index is, how many answers came from it."""
        return {"path": str(self.where) if self.where else None, "known": self.known,
                "checked": self.learnt}

    # -- answering -------------------------------------------------------------------------

    def _entry(self, path: str) -> tuple[str, list | None, tuple[int, int] | None]:
        """(key, the entry if its stamp is the file's, the file's stamp now or None)."""
        key = self._key(path)
        try:
            st = os.stat(path)
        except OSError:
            return key, None, None
        stamp = (st.st_size, st.st_mtime_ns)
        entry = self.entries.get(key)
        if entry is not None and (entry[0], entry[1]) == stamp:
            return key, entry, stamp
        return key, None, stamp

    def _key(self, path: str) -> str:
        """The path relative to the dataset folder (the scan's paths start with it: a slice,
        as ``os.path.relpath`` costs ~30% of a start from the index on 200,000 files)."""
        if path.startswith(self._prefix) and os.sep + ".." not in path:
            return path[len(self._prefix):]
        return os.path.relpath(os.path.abspath(path), self.base)

    def checked(self, path: str, limits: LoadLimits = LoadLimits()) -> CheckedFile:
        """``images.check_file(path, limits)``, from the index while the file is unchanged."""
        key, entry, stamp = self._entry(path)
        if entry is None or entry[2] is None:  # unknown, or known only by its hash or check
            self.learnt += 1
            try:
                facts, stamp = file_facts(path)
            except ImageLoadError as exc:
                if stamp is not None:
                    self._keep_facts(key, entry, stamp, exc.reason)
                raise
            self._keep_facts(key, entry, stamp, list(facts))
            return CheckedFile(*judge_header(facts, path, limits), stamp)
        self.known += 1
        if isinstance(entry[2], str):  # the header itself cannot be read
            raise ImageLoadError(path, entry[2])
        return CheckedFile(*judge_header(HeaderFacts(*entry[2]), path, limits), stamp)

    def sha256(self, path: str) -> str:
        """The file's SHA-256 (hex), from the index while the file is unchanged."""
        key, entry, stamp = self._entry(path)
        if entry is not None and entry[3]:
            self.known += 1
            return entry[3]
        digest = sha256_file(path)
        if stamp is not None:
            if entry is None:
                entry = self._store(key, stamp, None)
            entry[3] = digest
            self.changed = True
        return digest

    def record(self, path: str, setting: str) -> dict | None:
        """``check``'s record of the file under ``setting`` (the check's settings as text),
        while the file is unchanged; None when there is none."""
        _, entry, _ = self._entry(path)
        if entry is None or not entry[4]:
            return None
        return entry[4].get(setting)

    def stamp(self, path: str) -> tuple[int, int] | None:
        """The file's (size, mtime_ns) now, or None when it cannot be seen."""
        return self._entry(path)[2]

    def keep_record(self, path: str, setting: str, record: dict,
                    stamp: tuple[int, int] | None) -> None:
        """Keep ``check``'s record of the file, read when its stamp was ``stamp``; nothing is
        kept if the file changed meanwhile."""
        key, entry, now = self._entry(path)
        if stamp is None or now != stamp:
            return
        if entry is None:
            entry = self._store(key, stamp, None)
        entry[3] = entry[3] or record.get("sha256", "")  # the check hashed the file: keep it
        entry[4] = {**(entry[4] or {}), setting: record}
        self.changed = True

    def _keep_facts(self, key: str, entry: list | None, stamp: tuple[int, int], facts) -> None:
        """Header facts (or the reason there are none) into the file's entry: the entry the
        index already has for this stamp keeps its hash and check records."""
        if entry is not None and (entry[0], entry[1]) == stamp:
            entry[2] = facts
            self.changed = True
        else:
            self._store(key, stamp, facts)

    def _store(self, key: str, stamp: tuple[int, int], facts) -> list:
        entry = [stamp[0], stamp[1], facts, "", None]
        self.entries[key] = entry
        self.changed = True
        return entry


@contextlib.contextmanager
def _folder_lock(folder: Path):
    """Hold an exclusive ``flock`` on the index's folder (readers never need it: they see a
    whole file either way). Where the file system has no flock, writers go unserialised,
    which can lose one writer's new entries, never corrupt the index."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _read(path: Path) -> dict[str, list] | None:
    """The entries of an index file, or None when it is missing, damaged or not ours."""
    try:
        doc = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    if not (isinstance(doc, dict) and doc.get("format") == FORMAT
            and doc.get("version") == VERSION and isinstance(doc.get("files"), dict)):
        return None
    return {k: v for k, v in doc["files"].items() if _valid(v)}


def _valid(entry) -> bool:
    return (isinstance(entry, list) and len(entry) == 5 and all(
        isinstance(v, int) and not isinstance(v, bool) for v in entry[:2])
        and (entry[2] is None or isinstance(entry[2], str) or (
            isinstance(entry[2], list) and len(entry[2]) == len(HeaderFacts._fields)))
        and isinstance(entry[3], str) and (entry[4] is None or isinstance(entry[4], dict)))


def _merge(mine: dict[str, list], disk: dict[str, list]) -> dict[str, list]:
    """``mine`` plus what the file on disk knows that ``mine`` lacks, for the same stamps."""
    out = dict(disk)
    for key, entry in mine.items():
        theirs = disk.get(key)
        if theirs is not None and theirs[:2] == entry[:2]:
            entry = [*entry[:2], entry[2] if entry[2] is not None else theirs[2],
                     entry[3] or theirs[3], {**(theirs[4] or {}), **(entry[4] or {})} or None]
        out[key] = entry
    return out

