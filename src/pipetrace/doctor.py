"""The dataset doctor: read every file of an ImageFolder dataset once and say what is wrong.

``check_dataset(root, cfg)`` returns a :class:`DatasetReport` of plain records (nothing is
printed): per split and class the counts; per file its status, ``loaded``, ``skipped`` (with
the reason) or ``ignored`` (with the reason), so that loaded + skipped + ignored = entries
seen; and :class:`~pipetrace.findings.Finding` s, each with a severity. ``pipetrace check`` renders it
(``report/dataset.py``) and exits 0 (clean), 1 (warnings) or 2 (errors).

Strict decoding. The training loader decodes with OpenCV (``images.decode_bgr``), which
refuses empty, non-image, over-limit and truncated (no end marker) files, but returns a
partly grey picture for a JPEG whose scan data is corrupt, or that was cut and still ends
with an end marker: libjpeg only prints "Corrupt JPEG data: ..." on stderr. PIL (with
``ImageFile.LOAD_TRUNCATED_IMAGES`` at its default, False) and ``torchvision.io`` refuse a
file that simply stops, but (measured with Pillow 13 and torchvision 0.29) accept both of
those cases without a word. So each file is decoded:

1. with the training loader's own function, so the doctor sees what training will see,
   while libjpeg's messages on file descriptor 2 are collected: its corrupt-data warnings
   count as errors (the only signal there is for corrupt scan data);
2. a second time by PIL in full (``Image.load()``), which refuses damaged PNG, GIF, WebP
   and TIFF data (CRC, zlib, short frames) whichever way OpenCV leans.

Training does not pay for this second pass: ``check`` is the strict pass (see
``docs/reliability.md``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import io
import os
import re
import statistics
import sys
import tempfile
import time
import unicodedata
import warnings
from array import array
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from PIL import Image

from .files import sha256_file
from .findings import SEVERITIES, Finding
from .images import (
    CheckedFile,
    ImageLoadError,
    LoadLimits,
    check_header,
    decode_bgr,
    read_bytes,
    within_time,
)
from .index import DatasetIndex
from .likeness import HASH_BITS, colour_count, difference_hash, near_pairs
from .scan import (
    ALIASED_FILE,
    BROKEN_SYMLINK,
    NOT_A_TRAINING_CLASS,
    OUTSIDE_CLASS,
    OUTSIDE_ROOT,
    DatasetSplits,
    FolderScan,
    find_splits,
)
from .text import safe_text

FORMAT = "pipetrace-check"
VERSION = 2  # 1: first format (meta, summary, splits, findings, files); 2: findings have "stage"

@dataclass(frozen=True)
class CheckConfig:
    """What ``check_dataset`` reads and how picky it is."""

    limits: LoadLimits = LoadLimits()  # pixel, aspect, JPEG-scan and decode-time limits
    strict: bool = True  # second, full decode with PIL; libjpeg's corrupt-data warnings fail
    near_distance: int = 6  # differing hash bits (of 128) at or under which images look alike
    max_imbalance: float = 10.0  # largest / smallest class above which balance is a warning
    placeholder_repeats: int = 3  # the same small or flat image this often is a placeholder
    few_colours: int = 32  # distinct colours (32 x 32 thumbnail) at or under which it is flat
    small_side: int = 64  # pixels; a short side at or under this is "small"
    index: bool = True  # reuse (and update) the dataset index: unchanged files are not read


@dataclass(frozen=True)
class FileRecord:
    """One entry seen: a file or a folder, what became of it and why."""

    path: str  # as found on disk (lone surrogates stand for bytes that are not UTF-8)
    split: str  # "train", "val", ...; "" for entries beside the split folders
    label: str | None  # class folder; None for entries outside a class
    status: str  # "loaded", "skipped" (cannot be used) or "ignored" (not a sample)
    reason: str = ""  # why skipped or ignored
    strict: bool = False  # skipped only by the strict pass: training's decoder accepts it
    format: str = ""  # "jpeg", "png", "gif", "bmp", "webp" or "tiff", from the bytes
    width: int = 0  # pixels, from the header
    height: int = 0
    mode: str = ""  # PIL mode as stored: "RGB", "L", "P", "RGBA", "I;16", "CMYK", ...
    conversions: tuple[str, ...] = ()  # what decoding does to make it (H, W, 3) uint8
    orientation: int = 1  # EXIF orientation tag (1: upright)
    sha256: str = ""  # of the file's bytes
    phash: int = 0  # 128-bit difference hash of the decoded picture
    colours: int = 0  # distinct colours in a 32 x 32 nearest-neighbour thumbnail


def _finding(check: str, severity: str, title: str, evidence: str, fix: str,
             paths: tuple[str, ...] = ()) -> Finding:
    """A dataset finding (stage "dataset")."""
    return Finding(check, severity, "dataset", title, evidence, fix, tuple(paths))


@dataclass(frozen=True)
class SplitSummary:
    """Counts of one split folder, per class (empty classes included)."""

    name: str  # "train", "val", ... ("all" when the root holds the classes directly)
    root: str
    loaded: dict[str, int]  # class -> images that decode
    skipped: dict[str, int]  # class -> files that cannot be used
    ignored: int  # entries that are not samples (hidden, junk, other extensions, aliases)

    @property
    def seen(self) -> int:
        return sum(self.loaded.values()) + sum(self.skipped.values()) + self.ignored


@dataclass
class DatasetReport:
    """Everything ``check`` found; views render it, they compute nothing."""

    root: str
    layout: str  # "train+val", "train", "all", ...
    classes: list[str]  # index -> class, as training will number them
    splits: list[SplitSummary]
    files: list[FileRecord]
    findings: list[Finding]
    seconds: float = 0.0
    config: CheckConfig = field(default_factory=CheckConfig)
    index: dict = field(default_factory=dict)  # DatasetIndex.summary(): where, answers, reads

    def status_counts(self) -> dict[str, int]:
        n = Counter(f.status for f in self.files)
        return {s: n.get(s, 0) for s in ("loaded", "skipped", "ignored")}

    def severity_counts(self) -> dict[str, int]:
        n = Counter(f.severity for f in self.findings)
        return {s: n.get(s, 0) for s in SEVERITIES}

    def _repr_html_(self) -> str:  # Jupyter: counts per class, then the findings
        from .report.notebook import dataset_report_html

        return dataset_report_html(self)

    @property
    def exit_code(self) -> int:
        """0 clean (info only), 1 warnings, 2 errors."""
        n = self.severity_counts()
        return 2 if n["error"] else 1 if n["warning"] else 0

    def to_dict(self) -> dict:
        """JSON-ready: names that are not UTF-8 show U+FFFD, plus ``path_bytes`` to find them."""
        return {
            "format": FORMAT, "version": VERSION,
            "meta": {"seconds": round(self.seconds, 3), "config": asdict(self.config),
                     "index": self.index},
            "root": safe_text(self.root), "layout": self.layout,
            "classes": [safe_text(c) for c in self.classes],
            "exit_code": self.exit_code,
            "summary": {**self.status_counts(), "seen": len(self.files),
                        **self.severity_counts()},
            "splits": [{"name": s.name, "root": safe_text(s.root), "seen": s.seen,
                        "ignored": s.ignored,
                        "loaded": {safe_text(c): n for c, n in s.loaded.items()},
                        "skipped": {safe_text(c): n for c, n in s.skipped.items()}}
                       for s in self.splits],
            "findings": [{**{k: safe_text(v) for k, v in asdict(f).items() if k != "paths"},
                          "paths": [safe_text(p) for p in f.paths]} for f in self.findings],
            "files": [_file_dict(f) for f in self.files],
        }


def _file_dict(f: FileRecord) -> dict:
    d = asdict(f)
    d.update(path=safe_text(f.path), label=None if f.label is None else safe_text(f.label),
             reason=safe_text(f.reason), conversions=list(f.conversions),
             phash=f"{f.phash:032x}" if f.phash else "")
    if not is_utf8(f.path):
        d["path_bytes"] = os.fsencode(f.path).decode("utf-8", "backslashreplace")
    return d


def is_utf8(name: str) -> bool:
    """False for names holding bytes that are not UTF-8 (Python keeps them as surrogates)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


# -- one file ------------------------------------------------------------------------------------

class _Stderr:
    """Collects what C libraries (libjpeg) write to file descriptor 2 during a ``with``.

    File descriptor 2 belongs to the whole process: use from one thread at a time.
    """

    def __init__(self, buffer):
        self.buffer = buffer  # a binary temporary file
        self.text = ""

    @contextlib.contextmanager
    def collect(self):
        sys.stderr.flush()
        saved = os.dup(2)
        self.buffer.seek(0)
        self.buffer.truncate()
        os.dup2(self.buffer.fileno(), 2)
        try:
            yield self
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            self.buffer.seek(0)
            self.text = self.buffer.read().decode("utf-8", "replace")


_LIBJPEG_CORRUPT = re.compile(r"(Corrupt JPEG data: (?!bad ICC marker).*|Premature end of JPEG "
                              r"file|Invalid SOS parameters.*|Inconsistent progression.*)")


def libjpeg_complaint(text: str) -> str | None:
    """libjpeg's first warning that the pixels are damaged, from its stderr text."""
    m = _LIBJPEG_CORRUPT.search(text)
    return m.group(0).strip() if m else None


def pil_facts(data: bytes, path, *, full: bool, seconds: float | None) -> dict:
    """Mode, animation, EXIF orientation and bit depth from PIL; ``full`` decodes every pixel
    (strict: a damaged file raises ImageLoadError)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # DecompressionBombWarning: our limit came first
            with Image.open(io.BytesIO(data)) as im:
                facts = {"mode": im.mode, "animated": bool(getattr(im, "is_animated", False)),
                         "orientation": int(im.getexif().get(0x0112, 1) or 1),
                         "transparency": "transparency" in im.info}
                if full:
                    within_time(im.load, seconds, path)
    except ImageLoadError:
        raise
    except Exception as exc:  # PIL raises many types for damaged data
        raise ImageLoadError(path, f"damaged image data: PIL's full decode says "
                             f"{type(exc).__name__}: {exc}") from None
    facts["bits"] = 16 if (data[:8] == b"\x89PNG\r\n\x1a\n" and data[24:25] == b"\x10") \
        or facts["mode"].startswith("I;16") else 8
    return facts


def conversions(fmt: str, facts: dict) -> tuple[str, ...]:
    """What ``images.decode_bgr`` does to make this file (H, W, 3) uint8, in words."""
    mode, notes = facts["mode"], []
    if mode in ("1", "L", "LA", "I", "F") or mode.startswith("I;16"):
        notes.append("grayscale: copied to 3 channels")
    if mode in ("LA", "RGBA", "PA", "La", "RGBa") or facts["transparency"]:
        notes.append("alpha: dropped (pixels keep their stored colour, as PIL's "
                     "convert('RGB') does)")
    if mode in ("P", "PA"):
        notes.append("palette: expanded to colours")
    if facts["bits"] == 16:
        notes.append("16-bit: scaled to 8 bits (value / 257), not clipped to white")
    if mode == "CMYK":
        notes.append("CMYK: converted to RGB")
    if facts["animated"]:
        what = "multi-page" if fmt == "tiff" else "animated"
        notes.append(f"{what}: only the first {'page' if fmt == 'tiff' else 'frame'} is used")
    return tuple(notes)


def inspect_file(path: str, *, split: str = "", label: str | None = None,
                 cfg: CheckConfig = CheckConfig(), stderr: _Stderr | None = None) -> FileRecord:
    """Read one file once, decode it as training will (and strictly), and describe it.

    ``stderr`` collects libjpeg's messages; ``check_dataset`` passes one for all files.
    """
    if cfg.strict and stderr is None:
        with tempfile.TemporaryFile() as buffer:
            return inspect_file(path, split=split, label=label, cfg=cfg, stderr=_Stderr(buffer))
    rec = FileRecord(path, split, label, "loaded")
    decoded = False
    try:
        data = read_bytes(path)
        rec = replace(rec, sha256=hashlib.sha256(data).hexdigest())
        fmt, w, h = check_header(data, path, cfg.limits)  # refuses bombs before decoding
        rec = replace(rec, format=fmt, width=w, height=h)
        with stderr.collect() if cfg.strict else contextlib.nullcontext():
            bgr = decode_bgr(data, path, limits=cfg.limits, header=(fmt, w, h))
        decoded = True
        if cfg.strict and (complaint := libjpeg_complaint(stderr.text)):
            raise ImageLoadError(path, f"corrupt JPEG data (libjpeg: {complaint!r}); "
                                 "OpenCV would return a partly grey picture")
        facts = pil_facts(data, path, full=cfg.strict, seconds=cfg.limits.max_decode_seconds)
    except ImageLoadError as exc:
        return replace(rec, status="skipped", reason=exc.reason, strict=decoded)
    return replace(rec, mode=facts["mode"], conversions=conversions(fmt, facts),
                   orientation=facts["orientation"], phash=difference_hash(bgr),
                   colours=colour_count(bgr))


# -- the whole dataset ---------------------------------------------------------------------------

def check_class_order(classes: Sequence[str]) -> list[Finding]:
    """ImageFolder sorts class folders as strings: 1, 10, 2, ... (pytorch/pytorch#22566)."""
    numeric = [c for c in classes if re.fullmatch(r"-?\d+", c)]
    if len(numeric) < 2:
        return []
    as_numbers = sorted(numeric, key=int)
    if list(numeric) == as_numbers:
        return [Finding("class-order", "info", "dataset", "Class names are numbers",
                        "their string order equals their numeric order here",
                        "use the saved class -> index map, never int(folder name)")]
    pairs = ", ".join(f"'{c}' -> {i}" for i, c in enumerate(classes) if c in numeric[:4])
    return [Finding("class-order", "warning", "dataset",
                    "Numeric class names are indexed in string order",
                    f"folders sort as text, so {pairs}, ...: index != int(name); code that "
                    "assumes otherwise reports wrong classes (pytorch/pytorch#22566)",
                    "map predictions with the class list saved in the checkpoint, or zero-pad "
                    "folder names (01, 02, ..., 10)")]


def _label_of(path: str, scan: FolderScan) -> str | None:
    parts = os.path.relpath(path, scan.root).split(os.sep)
    return parts[0] if len(parts) > 1 and parts[0] in scan.classes else None


def check_dataset(root: str | os.PathLike, cfg: CheckConfig = CheckConfig(), *,
                  on_file=None) -> DatasetReport:
    """Read every file under ``root`` once and report (``on_file(record)`` after each).

    With ``cfg.index`` a file whose size and time are those the dataset index kept its
    record under (for the same limits and strictness) is not read again."""
    t0 = time.perf_counter()
    root = os.fspath(root)
    found = find_splits(root)
    scans = found.named()
    files = [FileRecord(p, "", None, "ignored", reason) for p, reason in found.beside]
    index = DatasetIndex.open(root) if cfg.index else None
    with tempfile.TemporaryFile() as buffer:
        stderr = _Stderr(buffer) if cfg.strict else None
        for name, scan in scans:
            for path, label in scan.samples:
                rec = inspect_with_index(path, index, split=name, label=scan.classes[label],
                                         cfg=cfg, stderr=stderr)
                files.append(rec)
                if on_file is not None:
                    on_file(rec)
            files += [FileRecord(p, name, _label_of(p, scan), "ignored", reason)
                      for p, reason in scan.ignored]
    classes = scans[0][1].classes
    splits = [_summary(name, scan, files) for name, scan in scans]
    if index is not None:
        index.save()
    report = DatasetReport(root, split_layout(found), classes, splits, files, [], config=cfg,
                           index=index.summary() if index is not None else {})
    report.findings = find_problems(report, [scan for _, scan in scans])
    report.seconds = time.perf_counter() - t0
    return report


def inspect_with_index(path: str, index: DatasetIndex | None, *, split: str, label: str,
                       cfg: CheckConfig, stderr: _Stderr | None) -> FileRecord:
    """:func:`inspect_file`, answered by the index while the file is unchanged."""
    if index is None:
        return inspect_file(path, split=split, label=label, cfg=cfg, stderr=stderr)
    setting = f"strict={cfg.strict} limits={tuple(asdict(cfg.limits).values())}"
    kept = _revived(FileRecord, index.record(path, setting), path=path, split=split, label=label)
    if kept is not None:
        index.known += 1
        return kept
    stamp = index.stamp(path)
    rec = inspect_file(path, split=split, label=label, cfg=cfg, stderr=stderr)
    index.learnt += 1
    facts = {k: v for k, v in asdict(rec).items() if k not in ("path", "split", "label")}
    index.keep_record(path, setting, facts, stamp)
    return rec


def split_layout(found: DatasetSplits) -> str:
    """'all' (classes at the root), 'train', or every split present: 'train+val+test'."""
    return "all" if found.layout == "single" else "+".join(n for n, _ in found.named())


def _summary(name: str, scan: FolderScan, files: list[FileRecord]) -> SplitSummary:
    loaded = dict.fromkeys(scan.classes, 0)
    skipped = dict.fromkeys(scan.classes, 0)
    ignored = 0
    for f in files:
        if f.split != name:
            continue
        if f.status == "ignored":
            ignored += 1
        else:
            (loaded if f.status == "loaded" else skipped)[f.label] += 1
    return SplitSummary(name, scan.root, loaded, skipped, ignored)


# -- the quick checks train runs before its first epoch ------------------------------------------

def quick_check(splits: Sequence[tuple[str, Sequence[tuple[str, int]], Sequence[CheckedFile]]],
                classes: Sequence[str], ignored: Sequence[tuple[str, str]] = (),
                cfg: CheckConfig = CheckConfig(), *, index: DatasetIndex | None = None
                ) -> list[Finding]:
    """What ``train`` can find without decoding: exact duplicates within and across splits
    (leakage), placeholders (by name, or the same small image saved again and again), numeric
    class order, and the ignored entries that matter (symlinks that lead astray).

    ``splits``: (name, readable samples, their :class:`~pipetrace.images.CheckedFile`) per
    split, as training will use them. Only files whose byte size equals another file's are
    read and hashed, so a dataset of photos costs almost nothing.

    With the dataset ``index`` the hashes come from it, and so do the findings themselves
    when everything they are made from is what they were made from last time
    (:func:`quick_check_digest`); otherwise they are computed, and kept in it.
    """
    digest = quick_check_digest(splits, classes, ignored, cfg) if index is not None else ""
    kept = index.findings(digest) if index is not None else None
    if kept is not None:
        revived = [_revived(Finding, f) for f in kept]
        if all(f is not None and f.severity in SEVERITIES for f in revived):
            return revived
    digest_of = index.sha256 if index is not None else lambda path, stamp: sha256_file(path)
    found = _quick_check(splits, classes, ignored, cfg, digest_of)
    if index is not None:
        index.keep_findings(digest, [f.to_dict() for f in found])
    return found


def _revived(cls, kept, **given):
    """``cls(**given, **kept)`` when ``kept``, a record from the dataset index (a file anyone
    can edit), holds exactly the class's other fields, each of its field's type (that of its
    default; text where there is none; a tuple of text as a list); else None, and the caller
    computes the record afresh."""
    if not isinstance(kept, dict):
        return None
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name not in given}
    if set(kept) != set(fields):
        return None
    values = {}
    for name, value in kept.items():
        default = fields[name].default
        if isinstance(default, tuple):
            if not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
                return None
            value = tuple(value)
        elif type(value) is not (str if default is dataclasses.MISSING else type(default)):
            return None
        values[name] = value
    return cls(**given, **values)


def quick_check_digest(splits, classes, ignored, cfg: CheckConfig) -> str:
    """SHA-256 of what the quick checks read: each split's paths, labels and file stamps (a
    file's bytes, so its header and hash, are the index's for its stamp), the classes, the
    ignored entries, the settings and the code that makes the findings."""
    h = hashlib.sha256(_checks_code())
    h.update(repr((list(classes), list(ignored), cfg)).encode("utf-8", "surrogatepass"))
    for name, samples, checked in splits:
        h.update(repr((name, len(samples))).encode())
        h.update("\0".join(p for p, _ in samples).encode("utf-8", "surrogatepass"))
        h.update(array("q", [label for _, label in samples]).tobytes())
        h.update(array("q", [c.stamp[0] for c in checked]).tobytes())
        h.update(array("q", [c.stamp[1] for c in checked]).tobytes())
    return h.hexdigest()


@functools.cache
def _checks_code() -> bytes:
    """The source of the modules that make the quick checks' findings and their text, so
    findings kept by other code are not reused (pipetrace's version where the source cannot
    be read, e.g. from a zip)."""
    from . import __version__, findings, scan, text

    try:
        return b"".join(Path(m.__file__).read_bytes()
                        for m in (sys.modules[__name__], findings, scan, text))
    except (OSError, TypeError):
        return __version__.encode()


def _quick_check(splits, classes, ignored, cfg: CheckConfig, digest) -> list[Finding]:
    sizes = Counter(c.stamp[0] for _, _, checked in splits for c in checked)
    files = []
    for name, samples, checked in splits:
        for (path, label), c in zip(samples, checked, strict=True):
            sha = digest(path, c.stamp) if sizes[c.stamp[0]] > 1 else ""
            files.append(FileRecord(path, name, classes[label], "loaded", format=c.fmt,
                                    width=c.width, height=c.height, sha256=sha))
    files += [FileRecord(p, "", None, "ignored", reason) for p, reason in ignored
              if _IGNORED_SEVERITY.get(reason) == "warning"]
    found = (_duplicates(files) + _placeholders(files, cfg) + _ignored(files)
             + check_class_order(classes))
    return sorted(found, key=lambda f: SEVERITIES.index(f.severity))


# -- findings ------------------------------------------------------------------------------------

def find_problems(report: DatasetReport, scans: list[FolderScan]) -> list[Finding]:
    """Every finding, errors first; a pure function of the records."""
    files, cfg = report.files, report.config
    found = (_unreadable(files) + _no_images(report) + _class_collisions(scans)
             + _empty_classes(report) + _balance(report, cfg) + _duplicates(files)
             + _near_duplicates(files, cfg) + _placeholders(files, cfg)
             + _name_collisions(files) + _ignored(files) + _names(files, report.root)
             + _conversions(files) + _orientation(files) + check_class_order(report.classes))
    return sorted(found, key=lambda f: SEVERITIES.index(f.severity))


def _q(name: str | None) -> str:
    """A name quoted for a message, bytes that are not UTF-8 shown as U+FFFD."""
    return repr(safe_text(str(name)))


def _unreadable(files) -> list[Finding]:
    return [_finding(
        "unreadable", "error", f.reason,
        f"in {f.split}/{safe_text(str(f.label))}: " + (
            "only this strict pass sees it; training's decoder would use the damaged "
            "picture" if f.strict else "training skips it and lists it"),
        "replace the file with a real image or delete it", (f.path,))
        for f in files if f.status == "skipped"]


def _no_images(report) -> list[Finding]:
    return [_finding("no-images", "error", f"split '{s.name}' has no usable image",
                        f"{s.seen} entries seen, none loads", "check the folder layout: "
                        "root/<split>/<class>/<image>") for s in report.splits
            if not sum(s.loaded.values())]


def _fold(name: str) -> str:
    return unicodedata.normalize("NFC", unicodedata.normalize("NFC", name).casefold())


def _class_collisions(scans) -> list[Finding]:
    folders = {}  # class name -> its folder in the first split that has it
    for scan in scans:
        for c in scan.classes:
            folders.setdefault(c, os.path.join(scan.root, c))
        for p, r in scan.ignored:
            if r == NOT_A_TRAINING_CLASS:
                folders.setdefault(os.path.basename(p), p)
    groups = defaultdict(list)
    for n in sorted(folders):
        groups[_fold(n)].append(n)
    return [_finding("class-names", "error", "class names differ only by case or Unicode "
                        "normalization: " + ", ".join(_q(n) for n in g),
                        "they are separate classes here but one folder on macOS and Windows "
                        "(and look the same to a person): probably one class split in two",
                        "merge the folders or rename one", tuple(folders[n] for n in g))
            for g in groups.values() if len(g) > 1]


def _empty_classes(report) -> list[Finding]:
    out = []
    for s in report.splits:
        if not sum(s.loaded.values()):
            continue  # already an error
        empty = [c for c, n in s.loaded.items() if n == 0]
        if empty:
            out.append(_finding(
                "empty-class", "warning", f"{len(empty)} class(es) without a usable image in "
                f"{s.name}: " + ", ".join(_q(c) for c in empty),
                "each keeps its index (nothing shifts), but " + (
                    "the model never learns it" if s.name in ("train", "all")
                    else "its validation accuracy is undefined"),
                "add images or remove the folder", tuple(os.path.join(s.root, c) for c in empty)))
    return out


def _balance(report, cfg) -> list[Finding]:
    out = []
    for s in report.splits:
        counts = {c: n for c, n in s.loaded.items() if n}
        if len(counts) < 2:
            continue
        big, small = max(counts, key=counts.get), min(counts, key=counts.get)
        ratio = counts[big] / counts[small]
        if ratio > cfg.max_imbalance:
            out.append(_finding(
                "balance", "warning", f"{s.name} is imbalanced: {ratio:.0f}:1",
                f"{_q(big)} has {counts[big]} images, {_q(small)} {counts[small]}; accuracy "
                "will mostly reflect the large classes", "collect more of the small classes, "
                "or weight the loss / sample by class"))
    return out


def _groups(files, key) -> list[list[FileRecord]]:
    """Groups of two or more records with the same key (an empty key is unknown: no group)."""
    by = defaultdict(list)
    for f in files:
        if key(f):
            by[key(f)].append(f)
    return [g for g in by.values() if len(g) > 1]


def _duplicates(files) -> list[Finding]:
    loaded = [f for f in files if f.status == "loaded"]
    out = []
    for g in _groups(loaded, lambda f: f.sha256):
        splits = sorted({f.split for f in g})
        labels = sorted({f.label for f in g})
        paths = tuple(f.path for f in g)
        if len(splits) > 1:
            out.append(_finding(
                "leakage", "error", f"the same file is in {' and '.join(splits)} "
                f"({len(g)} copies)", "validation scores are inflated by images the model "
                "trained on", "keep one copy, in one split", paths))
        else:
            conflict = len(labels) > 1
            out.append(_finding(
                "duplicate", "warning", f"{len(g)} identical files in {splits[0]}"
                + (f" under different classes ({', '.join(map(_q, labels))})" if conflict
                   else ""), "the same bytes (SHA-256)" + (": conflicting labels"
                                                            if conflict else ""),
                "keep one copy", paths))
    return out


def _near_duplicates(files, cfg) -> list[Finding]:
    """Groups of look-alike images that are not byte-identical (those are duplicates)."""
    # One representative per exact content; flat pictures (almost no gradient) hash alike.
    reps = {}
    for f in files:
        if f.status == "loaded" and 16 <= f.phash.bit_count() <= HASH_BITS - 16:
            reps.setdefault(f.sha256, f)
    items = list(reps.values())
    parent = list(range(len(items)))

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in near_pairs([f.phash for f in items], cfg.near_distance):
        parent[find(i)] = find(j)
    clusters = defaultdict(list)
    for i, f in enumerate(items):
        clusters[find(i)].append(f)
    out = []
    for g in clusters.values():
        if len(g) < 2:
            continue
        splits = sorted({f.split for f in g})
        paths = tuple(f.path for f in g)
        if len(splits) > 1:
            out.append(_finding(
                "leakage", "warning", f"{len(g)} near-identical images across "
                f"{' and '.join(splits)}", f"difference hashes within {cfg.near_distance} "
                f"of {HASH_BITS} bits (re-encoded, resized or lightly edited copies)",
                "keep look-alikes in one split", paths))
        else:
            out.append(_finding(
                "near-duplicate", "info", f"{len(g)} near-identical images in {splits[0]}",
                f"difference hashes within {cfg.near_distance} of {HASH_BITS} bits",
                "keep one unless the variation is wanted", paths))
    return out


_PLACEHOLDER_NAME = re.compile(r"notfound|placeholder|noimage|nophoto|notavailable|unavailable|"
                               r"imagemissing|missingimage|removed")


def _placeholders(files, cfg) -> list[Finding]:
    """Pictures that stand in for a missing one: a scraper's "image not found" GIF, the
    same tiny or flat image saved many times, a palette graphic among photos."""
    loaded = [f for f in files if f.status == "loaded"]
    copies = Counter(f.sha256 for f in loaded if f.sha256)  # "": not hashed (unique size)
    by_split = defaultdict(list)
    for f in loaded:
        by_split[f.split].append(f)
    out = []
    for group in by_split.values():
        palette_share = sum(f.mode in ("P", "PA") for f in group) / len(group)
        median_colours = statistics.median(f.colours for f in group)
        for f in group:
            why, hints = [], []  # a reason alone is enough; hints need company
            stem = re.sub(r"[^a-z0-9]", "", os.path.splitext(os.path.basename(
                safe_text(f.path)))[0].lower())
            if _PLACEHOLDER_NAME.search(stem):
                why.append("its name says so")
            small = min(f.width, f.height) <= cfg.small_side
            flat = 0 < f.colours <= cfg.few_colours  # 0: not decoded (quick_check)
            if copies[f.sha256] >= cfg.placeholder_repeats and (small or flat or
                                                                 f.mode in ("P", "PA")):
                why.append(f"the same {'small' if small else 'flat'} image is saved "
                           f"{copies[f.sha256]} times")
            if f.mode in ("P", "PA") and palette_share <= 0.1:
                hints.append(f"a palette {f.format.upper()} among {len(group)} mostly "
                           "full-colour images")
            if flat and median_colours > 8 * cfg.few_colours:
                hints.append(f"{f.colours} colours where the split's median is "
                           f"{median_colours:.0f}")
            if why or len(hints) > 1:
                why += hints
                out.append(_finding(
                    "placeholder", "warning", f"likely placeholder, not a photo of "
                    f"{_q(f.label)}", "; ".join(why), "delete it (and re-download the real "
                    "image if there is one)", (f.path,)))
    return out


def _name_collisions(files) -> list[Finding]:
    seen = [f for f in files if f.status != "ignored"]
    key = lambda f: (os.path.dirname(f.path), _fold(os.path.basename(f.path)))  # noqa: E731
    return [_finding("file-names", "warning", f"{len(g)} file names in one folder differ only "
                        "by case or Unicode normalization", "they become one file when copied "
                        "to macOS or Windows", "rename them", tuple(f.path for f in g))
            for g in _groups(seen, key)]


_IGNORED_SEVERITY = {OUTSIDE_ROOT: "warning", OUTSIDE_CLASS: "warning", BROKEN_SYMLINK: "warning",
                     NOT_A_TRAINING_CLASS: "warning", ALIASED_FILE: "warning"}


def _ignored(files) -> list[Finding]:
    by_reason = defaultdict(list)
    for f in files:
        if f.status == "ignored":
            by_reason[f.reason].append(f.path)
    return [_finding("ignored", _IGNORED_SEVERITY.get(reason, "info"),
                        f"{len(paths)} entr{'y' if len(paths) == 1 else 'ies'} ignored: {reason}",
                        "not samples; class indices do not shift because of them",
                        "nothing to do unless they were meant to be images", tuple(paths))
            for reason, paths in by_reason.items()]


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_NAME_CARE = (
    # (severity, test of one path component, title, why it matters)
    ("warning", lambda n: not is_utf8(n), "names that are not valid UTF-8",
     "shown with U+FFFD in reports; cv2.imread crashes on them (pipetrace reads bytes)"),
    ("warning", lambda n: bool(_CONTROL.search(n)), "names with newlines or control characters",
     "they break line-based tools and can hide text in a terminal (shown escaped)"),
    ("info", lambda n: bool(re.search(r"[<>&\"'`]", n)), "names with HTML characters",
     "escaped in the HTML report and the terminal"),
    ("info", lambda n: is_utf8(n) and unicodedata.normalize("NFC", n) != n,
     "names not in Unicode NFC form", "macOS may store them in another form; compare with care"),
    ("info", lambda n: is_utf8(n) and not n.isascii(), "names with non-ASCII characters",
     "fine for pipetrace; some tools and zip files mangle them"),
    ("info", lambda n: " " in n or n != n.strip(), "names with spaces",
     "quote them in shell commands"),
)


def _names(files, root: str) -> list[Finding]:
    out = []
    rels = {f.path: os.path.relpath(f.path, root) for f in files}
    for severity, test, title, why in _NAME_CARE:
        paths = tuple(p for p, rel in rels.items() if any(test(part) for part in
                                                          rel.split(os.sep)))
        if paths:
            out.append(_finding("names", severity, f"{len(paths)} path(s) with {title}",
                                   why, "rename if other tools will read the dataset", paths))
    return out


def _conversions(files) -> list[Finding]:
    by_note = defaultdict(list)
    for f in files:
        for note in f.conversions:
            by_note[note].append(f.path)
    return [_finding("conversion", "info", f"{len(paths)} image(s) need conversion, "
                        f"{note.split(':')[0]}", note, "nothing: pipetrace converts them this "
                        "way in training and prediction alike", tuple(paths))
            for note, paths in by_note.items()]


def _orientation(files) -> list[Finding]:
    rotated = tuple(f.path for f in files if f.status == "loaded" and f.orientation not in (0, 1))
    if not rotated:
        return []
    return [_finding("exif", "info", f"{len(rotated)} image(s) carry an EXIF rotation",
                        "pipetrace (like cv2.imread) turns them upright; PIL's Image.open, "
                        "torchvision's ImageFolder and torchvision.io do not",
                        "serve with the same loader, or bake the rotation into the pixels",
                        rotated)]
