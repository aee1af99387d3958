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

It also keeps the findings of ``train``'s quick checks (``doctor.quick_check``) under a
digest of everything they read (the files' paths, labels and stamps, the classes, the
ignored entries, the settings and the code that makes them): a start whose digest is the
same has the same findings, and a start on a changed folder runs the checks again. Kept
findings and ``check``'s kept records are checked field by field before use (the file is
anyone's to edit); a damaged one is made afresh.

The file is columnar (one list per field, rows in the same order): on 200,000 files it
parses in a fifth of the time a list per file took, and rows are found through one
``path -> row`` dict: an answer costs one ``stat`` of the file and a few lookups.

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

from .files import sha256_file, write_bytes_atomic
from .images import CheckedFile, HeaderFacts, ImageLoadError, LoadLimits, file_facts, judge_header

INDEX_NAME = ".pipetrace-index.json"  # beside the dataset; the scan does not list it
FORMAT = "pipetrace-index"
VERSION = 2  # 2: columns (below) and the quick checks' findings; 1: a list per file
RACY_SECONDS = 2.0  # entries of files modified this recently are not stored
_UP = os.sep + ".."  # a relative path that climbs: not a key by slicing

# The columns of "files", and what each holds: the stamp (size, mtime), the header facts
# (fmt None: not read yet, or unreadable with "error" saying why), the hash ("": not
# computed) and check's records by setting (None: none).
FACTS = HeaderFacts._fields  # fmt, width, height, complete, scans
COLUMNS = ("path", "size", "mtime", *FACTS, "error", "sha256", "check")
_TYPES = {"path": {str}, "size": {int}, "mtime": {int}, "fmt": {str, type(None)},
          "width": {int, type(None)}, "height": {int, type(None)},
          "complete": {bool, type(None)}, "scans": {int, type(None)}, "error": {str},
          "sha256": {str}, "check": {dict, type(None)}}
_EMPTY = {"fmt": None, "width": None, "height": None, "complete": None, "scans": None,
          "error": "", "sha256": "", "check": None}


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
        self.cols: dict[str, list] = {c: [] for c in COLUMNS}
        self.rows: dict[str, int] = {}  # relative path -> row
        self.quick: dict | None = None  # {"digest": ..., "findings": [...]} of the quick checks
        self.known = 0  # answers from the index
        self.learnt = 0  # files read because the index had no valid entry
        self.changed = False
        self._read_as = None  # the index file's identity when it was read (see save)

    # -- reading and writing ---------------------------------------------------------------

    @classmethod
    def open(cls, root: str | os.PathLike) -> DatasetIndex:
        """The index of ``root`` from beside it or from the user's cache (empty if neither
        holds a readable one: a damaged or foreign file is ignored, and replaced on save)."""
        for path in locations(root):
            doc = _read(path)
            if doc is not None:
                index = cls(root, where=path)
                index.cols, index.quick, index._read_as = doc
                index.rows = {k: i for i, k in enumerate(index.cols["path"])}
                return index
        return cls(root)

    def save(self) -> Path | None:
        """Write the index if anything was learnt: beside the dataset, else in the user's
        cache. Returns where it went (None: nothing new, or nowhere writable)."""
        if not self.changed:
            return self.where
        beside, cached = locations(self.root)
        for path in dict.fromkeys([self.where or beside, beside, cached]):
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                with _folder_lock(path.parent):  # read, merge, replace: one writer at a time
                    if path != self.where or _identity(path) != self._read_as:
                        disk = _read(path)  # another writer was here since: keep its rows
                        if disk is not None:
                            self.cols = _merge(self.cols, disk[0], self.base)
                            self.rows = {k: i for i, k in enumerate(self.cols["path"])}
                            self.quick = self.quick or disk[1]
                    files = _settled(self.cols)
                    # findings made from a file too young to keep are not kept either
                    quick = self.quick if files is self.cols else None
                    write_bytes_atomic(path, json.dumps(
                        {"format": FORMAT, "version": VERSION, "root": self.root,
                         "files": files, "quick": quick},
                        separators=(",", ":")).encode("ascii"))
                    self._read_as = _identity(path)  # ours: the next save need not merge
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

    def _find(self, path: str, stamp: tuple[int, int] | None = None
              ) -> tuple[str, int | None, tuple[int, int] | None]:
        """(key, its row if the row's stamp is the file's, the file's stamp). ``stamp``: the
        file's stamp as just seen (no second ``stat``); otherwise the file is stat'ed."""
        key = self._key(path)
        if stamp is None:
            try:
                st = os.stat(path)
            except OSError:
                return key, None, None
            stamp = (st.st_size, st.st_mtime_ns)
        row = self.rows.get(key)
        if row is not None and (self.cols["size"][row], self.cols["mtime"][row]) == stamp:
            return key, row, stamp
        return key, None, stamp

    def _key(self, path: str) -> str:
        """The path relative to the dataset folder (the scan's paths start with it: a slice,
        as ``os.path.relpath`` costs ~30% of a start from the index on 200,000 files)."""
        if path.startswith(self._prefix) and _UP not in path:
            return path[len(self._prefix):]
        return os.path.relpath(os.path.abspath(path), self.base)

    def checked(self, path: str, limits: LoadLimits = LoadLimits()) -> CheckedFile:
        """``images.check_file(path, limits)``, from the index while the file is unchanged."""
        result = self.check_all([path], limits)[0]
        if isinstance(result, ImageLoadError):
            raise result
        return result

    def check_all(self, paths, limits: LoadLimits = LoadLimits()
                  ) -> list[CheckedFile | ImageLoadError]:
        """:meth:`checked` of each path, an unreadable file's error returned in its place,
        in one loop: an unchanged file is answered from its row (each kind of header judged
        under ``limits`` once), any other is read (:meth:`_learn`)."""
        cols = self.cols
        fmt, error = cols["fmt"], cols["error"]
        width, height, complete, scans = (cols[c] for c in FACTS[1:])
        judged: dict[tuple, tuple[str, int, int] | str] = {}  # facts -> header or reason
        out: list[CheckedFile | ImageLoadError] = []
        for path in paths:
            key, row, stamp = self._find(path)  # row: None if the file changed or went
            if row is None or (fmt[row] is None and not error[row]):
                out.append(self._learn(path, key, row, stamp, limits))
                continue
            self.known += 1
            if fmt[row] is None:  # its header cannot be read, and the index knows why
                out.append(ImageLoadError(path, error[row]))
                continue
            facts = (fmt[row], width[row], height[row], complete[row], scans[row])
            verdict = judged.get(facts)
            if verdict is None:
                try:
                    verdict = judge_header(HeaderFacts(*facts), path, limits)
                except ImageLoadError as exc:
                    verdict = exc.reason
                judged[facts] = verdict
            out.append(ImageLoadError(path, verdict) if isinstance(verdict, str)
                       else CheckedFile(*verdict, stamp))
        return out

    def _learn(self, path: str, key: str, row: int | None, stamp: tuple[int, int] | None,
               limits: LoadLimits) -> CheckedFile | ImageLoadError:
        """Read the file's header and keep its facts (or why there are none) in its row;
        ``row``: its row if valid for ``stamp`` (known only by its hash or check)."""
        self.learnt += 1
        try:
            facts, stamp = file_facts(path)
        except ImageLoadError as exc:
            if stamp is not None:
                self._set(key, row, stamp, error=exc.reason)
            return exc.with_traceback(None)  # its frames would keep the file's head alive
        self._set(key, row, stamp, **facts._asdict())
        try:
            return CheckedFile(*judge_header(facts, path, limits), stamp)
        except ImageLoadError as exc:
            return exc.with_traceback(None)

    def sha256(self, path: str, stamp: tuple[int, int] | None = None) -> str:
        """The file's SHA-256 (hex), from the index while the file is unchanged; ``stamp``:
        the file's stamp as just seen (e.g. ``CheckedFile.stamp``), saving a ``stat``."""
        key, row, stamp = self._find(path, stamp)
        if row is not None and self.cols["sha256"][row]:
            self.known += 1
            return self.cols["sha256"][row]
        digest = sha256_file(path)
        if stamp is not None:
            self._set(key, row, stamp, sha256=digest)
        return digest

    def record(self, path: str, setting: str) -> dict | None:
        """``check``'s record of the file under ``setting`` (the check's settings as text),
        while the file is unchanged; None when there is none."""
        _, row, _ = self._find(path)
        if row is None or not self.cols["check"][row]:
            return None
        return self.cols["check"][row].get(setting)

    def stamp(self, path: str) -> tuple[int, int] | None:
        """The file's (size, mtime_ns) now, or None when it cannot be seen."""
        return self._find(path)[2]

    def keep_record(self, path: str, setting: str, record: dict,
                    stamp: tuple[int, int] | None) -> None:
        """Keep ``check``'s record of the file, read when its stamp was ``stamp``; nothing is
        kept if the file changed meanwhile."""
        key, row, now = self._find(path)
        if stamp is None or now != stamp:
            return
        sha, kept = (self.cols["sha256"][row], self.cols["check"][row]) if row is not None \
            else ("", None)
        self._set(key, row, stamp, sha256=sha or record.get("sha256", ""),  # check hashed it
                  check={**(kept or {}), setting: record})

    def findings(self, digest: str) -> list[dict] | None:
        """The quick checks' findings kept under ``digest`` (None: other inputs, or none)."""
        if self.quick and self.quick.get("digest") == digest:
            return self.quick["findings"]
        return None

    def keep_findings(self, digest: str, findings: list[dict]) -> None:
        self.quick = {"digest": digest, "findings": findings}
        self.changed = True

    def _set(self, key: str, row: int | None, stamp: tuple[int, int], **cells) -> None:
        """Fill in ``cells`` of ``key``'s row: ``row`` when the file's stamp is the row's
        (what else it holds is kept), else the row emptied for the new stamp (or a new one)."""
        cols = self.cols
        if row is None or (cols["size"][row], cols["mtime"][row]) != stamp:
            row = self.rows.get(key)
            if row is None:
                row = self.rows[key] = len(cols["path"])
                for c in COLUMNS:
                    cols[c].append(_EMPTY.get(c))
                cols["path"][row] = key
            for c, v in _EMPTY.items():
                cols[c][row] = v
            cols["size"][row], cols["mtime"][row] = stamp
        for c, v in cells.items():
            cols[c][row] = v
        self.changed = True


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


def _identity(path: Path):
    """What tells one version of the index file from another: inode, size, time."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


def _read(path: Path) -> tuple[dict[str, list], dict | None, tuple] | None:
    """(columns, quick-check findings, file identity) of an index file, or None when it is
    missing, damaged or not ours (every column checked for its types and length)."""
    ident = _identity(path)
    try:
        doc = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    if not (isinstance(doc, dict) and doc.get("format") == FORMAT
            and doc.get("version") == VERSION and isinstance(doc.get("files"), dict)):
        return None
    cols, quick = doc["files"], doc.get("quick")
    if not all(isinstance(cols.get(c), list) and set(map(type, cols[c])) <= _TYPES[c]
               and len(cols[c]) == len(cols["path"]) for c in COLUMNS):
        return None
    if len(set(cols["path"])) != len(cols["path"]) or not all(
            type(w) is int and type(h) is int and w > 0 and h > 0 and type(c) is bool
            and type(n) is int for f, w, h, c, n in zip(
                cols["fmt"], cols["width"], cols["height"], cols["complete"], cols["scans"],
                strict=True)
            if f is not None):  # a header's facts are whole, or the row is not ours
        return None
    if not (quick is None or (isinstance(quick, dict) and isinstance(quick.get("digest"), str)
            and isinstance(quick.get("findings"), list))):
        quick = None
    return {c: cols[c] for c in COLUMNS}, quick, ident


def _settled(cols: dict[str, list]) -> dict[str, list]:
    """The columns without the rows of files modified in the last RACY_SECONDS."""
    young = time.time_ns() - int(RACY_SECONDS * 1e9)
    keep = [i for i, m in enumerate(cols["mtime"]) if m < young]
    if len(keep) == len(cols["mtime"]):
        return cols
    return {c: [v[i] for i in keep] for c, v in cols.items()}


def _merge(mine: dict[str, list], disk: dict[str, list], base: str) -> dict[str, list]:
    """``mine`` plus what the file on disk knows that ``mine`` lacks, for the same stamps;
    where the two rows of a file have different stamps, the one that is the file's stamp now
    (the files are under ``base``), mine if neither is."""
    out = {c: list(v) for c, v in mine.items()}
    rows = {k: i for i, k in enumerate(out["path"])}
    for j, key in enumerate(disk["path"]):
        i = rows.get(key)
        if i is None:
            for c in COLUMNS:
                out[c].append(disk[c][j])
            continue
        theirs = (disk["size"][j], disk["mtime"][j])
        if (out["size"][i], out["mtime"][i]) != theirs:
            try:
                st = os.stat(os.path.join(base, key))
            except OSError:
                continue
            if (st.st_size, st.st_mtime_ns) == theirs:  # mine is the older: theirs replaces it
                for c in COLUMNS:
                    out[c][i] = disk[c][j]
        else:
            if out["fmt"][i] is None and not out["error"][i]:
                for c in (*FACTS, "error"):
                    out[c][i] = disk[c][j]
            out["sha256"][i] = out["sha256"][i] or disk["sha256"][j]
            out["check"][i] = {**(disk["check"][j] or {}), **(out["check"][i] or {})} or None
    return out
