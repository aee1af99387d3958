"""Find the images of an ImageFolder dataset (``root/<class>/<file>``), without surprises.

Unlike torchvision's ``ImageFolder``: hidden folders, ``__MACOSX`` and ``.ipynb_checkpoints``
are not classes; an empty class folder keeps its index here (so nothing shifts; training
leaves it out with a warning, ``prepare.py``); symlinks are followed, but never in a loop,
never out of the root, never out of the class folder they sit in (``cat/up -> ..`` would
label every other class's images as ``cat``) and never twice to the same folder or file;
every file that is not used is counted with a reason. :func:`find_splits` is the one way to
find a dataset's splits (training, ``predict`` and ``check`` all use it).
"""

from __future__ import annotations

import contextlib
import gc
import operator
import os
from dataclasses import dataclass, field
from pathlib import Path

from .index import INDEX_NAME
from .text import safe_text

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif")
JUNK_FOLDERS = ("__MACOSX", ".ipynb_checkpoints", "__pycache__")
SPLIT_NAMES = {"train": ("train",), "val": ("val", "valid", "validation", "test")}


# Reasons for leaving an entry out that `pipetrace check` grades as warnings (doctor.py)
OUTSIDE_ROOT = "symlink points outside the dataset root"
OUTSIDE_CLASS = ("symlink leads out of its class folder (back to the root or into another "
                 "class): following it would label other images as this class")
BROKEN_SYMLINK = "broken symlink"
ALIASED_FILE = "file already listed through another path (symlink alias)"
NOT_A_TRAINING_CLASS = "class not in the training classes"


@contextlib.contextmanager
def gc_paused():
    """Pause Python's cyclic garbage collector while a dataset's per-file objects are
    built (the scan, the header checks and the datasets of ``prepare_data``).

    Every 700 new tuples start a collection of the young objects, and as the heap grows,
    full ones that walk every object built so far. On 200,000 files answered from the
    dataset index, ``prepare_data`` took 3.0-3.2 s with the collector and 2.3-2.4 s without
    (plus 0.1-0.25 s for the catch-up collection that follows). Little built here forms
    reference cycles; the collector resumes on leaving, as it was before.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


@dataclass
class FolderScan:
    """The result of scanning one split: what will be loaded and what was left out, and why."""

    root: str
    classes: list[str]  # index -> class name, sorted as ImageFolder sorts (str order)
    samples: list[tuple[str, int]] = field(default_factory=list)  # (path, class index)
    ignored: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)

    @property
    def class_to_idx(self) -> dict[str, int]:
        return {c: i for i, c in enumerate(self.classes)}

    def counts(self) -> dict[str, int]:
        """Images per class, including empty classes."""
        n = dict.fromkeys(self.classes, 0)
        for _, label in self.samples:
            n[self.classes[label]] += 1
        return n


def is_hidden_or_junk(name: str) -> bool:
    return name.startswith(".") or name in JUNK_FOLDERS


def _inside(path: str, root_real: str) -> bool:
    return path == root_real or path.startswith(root_real.rstrip(os.sep) + os.sep)


_NAME = operator.attrgetter("name")


def _walk_files(top: str, root_real: str, seen: set[str], ignored: list,
                class_real: str | None = None) -> list[str]:
    """Files under ``top``, sorted; follow symlinks once, stay inside the root and inside the
    class folder (``class_real``: the real path of the class folder being walked).

    ``seen`` holds the real paths of the folders and files already listed, so neither a
    folder nor a file reached twice (through a symlink) gives a second sample.
    """
    real = os.path.realpath(top)
    if real in seen:
        ignored.append((top, "folder already scanned through another path (symlink alias or loop)"))
        return []
    if not _inside(real, root_real):
        ignored.append((top, OUTSIDE_ROOT))
        return []
    if class_real is None:
        class_real = real
    elif not _inside(real, class_real):
        ignored.append((top, OUTSIDE_CLASS))
        return []
    seen.add(real)
    files: list[str] = []
    try:
        entries = sorted(os.scandir(top), key=_NAME)
    except OSError as exc:
        ignored.append((top, f"cannot list folder: {exc.strerror or exc}"))
        return []
    # Real entries before symlinks, so an alias never displaces the file it points to.
    entries.sort(key=os.DirEntry.is_symlink)  # stable: by name within each
    inside = real + os.sep
    for entry in entries:
        path, name = entry.path, entry.name
        if (name.lower().endswith(IMAGE_EXTENSIONS) and name[0] != "." and not entry.is_symlink()
                and entry.is_file(follow_symlinks=False)):  # the common case, kept short
            target = inside + name  # a plain file's real path: its folder's plus its name
        elif is_hidden_or_junk(name):
            ignored.append((path, "hidden or system file/folder"))
            continue
        else:
            try:
                is_dir = entry.is_dir(follow_symlinks=True)
            except OSError:
                is_dir = False
            if is_dir:
                files.extend(_walk_files(path, root_real, seen, ignored, class_real))
                continue
            if entry.is_symlink() and not os.path.exists(path):
                ignored.append((path, BROKEN_SYMLINK))
                continue
            if entry.is_symlink() and not _inside(os.path.realpath(path), root_real):
                ignored.append((path, OUTSIDE_ROOT))
                continue
            if entry.is_symlink() and not _inside(os.path.realpath(path), class_real):
                ignored.append((path, OUTSIDE_CLASS))
                continue
            if not name.lower().endswith(IMAGE_EXTENSIONS):
                ignored.append((path, "not an image file extension"))
                continue
            target = os.path.realpath(path) if entry.is_symlink() else inside + name
        if target in seen:
            ignored.append((path, ALIASED_FILE))
            continue
        seen.add(target)
        files.append(path)
    return files


def scan_image_folder(root: str | os.PathLike, classes: list[str] | None = None) -> FolderScan:
    """Scan ``root/<class>/**/<image>``; ``classes`` fixes the class list (e.g. from train/)."""
    root = os.fspath(root)
    if not os.path.isdir(root):
        raise FileNotFoundError(f"dataset folder {safe_text(root)!r} does not exist or is not "
                                "a folder")
    root_real = os.path.realpath(root)
    ignored: list[tuple[str, str]] = []
    folders = [e for e in os.scandir(root)
               if not is_hidden_or_junk(e.name) and e.is_dir(follow_symlinks=True)]
    plain = {os.path.realpath(e.path) for e in folders if not e.is_symlink()}
    # A symlink to another class folder is not a class (it would be an empty one).
    aliases = {e.name for e in folders if e.is_symlink() and os.path.realpath(e.path) in plain}
    found = sorted(e.name for e in folders if e.name not in aliases)
    for e in os.scandir(root):
        if e.name == INDEX_NAME:  # pipetrace's own dataset index (index.py): not a stray file
            continue
        if is_hidden_or_junk(e.name):
            ignored.append((e.path, "hidden or system file/folder"))
        elif e.name in aliases:
            ignored.append((e.path, "symlink to another class folder (not a class)"))
        elif not e.is_dir(follow_symlinks=True):
            ignored.append((e.path, "file at the top level (not in a class folder)"))
    if classes is None:
        classes = found
    if not classes:
        raise ValueError(f"no class folders in {safe_text(root)!r}: expected "
                         "root/<class>/<image files>")
    known = set(classes)
    scan = FolderScan(root=root, classes=list(classes), ignored=ignored)
    seen: set[str] = set()
    for name in found:
        folder = os.path.join(root, name)
        if name not in known:
            scan.ignored.append((folder, NOT_A_TRAINING_CLASS))
            continue
        label = scan.class_to_idx[name]
        for path in _walk_files(folder, root_real, seen, scan.ignored):
            scan.samples.append((path, label))
    return scan


@dataclass
class DatasetSplits:
    """The scanned splits of one dataset folder."""

    root: str
    train: FolderScan
    val: FolderScan | None  # None: no val/ or test/ folder; the trainer splits train
    layout: str  # "train+val", "train+test" ... (the folders used), "train" or "single"
    more: list[tuple[str, FolderScan]] = field(default_factory=list)  # further validation-like
    # folders (test/ beside val/): not trained or validated on, but checked for leakage
    beside: list[tuple[str, str]] = field(default_factory=list)  # (path, reason) of the
    # entries next to train/ that are not splits

    def named(self) -> list[tuple[str, FolderScan]]:
        """Every split scanned, with its name; the root's own classes are split "all"."""
        if self.layout == "single":
            return [("all", self.train)]
        val = [(self.layout.split("+", 1)[1], self.val)] if self.val is not None else []
        return [("train", self.train), *val, *self.more]


def find_splits(root: str | os.PathLike) -> DatasetSplits:
    """Use ``root/train`` + ``root/val`` (or test/valid) when present, else ``root`` itself.

    Every other present validation-like folder is scanned too (``more``), with the training
    classes, so ``check`` finds leakage into any of them.
    """
    root = Path(root)
    train_dir = root / "train"
    if not train_dir.is_dir():
        return DatasetSplits(str(root), scan_image_folder(root), None, "single")
    train = scan_image_folder(train_dir)
    present = [name for name in SPLIT_NAMES["val"] if (root / name).is_dir()]
    scans = [(name, scan_image_folder(root / name, classes=train.classes)) for name in present]
    used = {"train", *present}
    beside = [(e.path, "hidden or system file/folder" if is_hidden_or_junk(e.name)
               else "beside the split folders (train/, val/ or test/)")
              for e in sorted(os.scandir(root), key=lambda e: e.name)
              if e.name not in used and e.name != INDEX_NAME]
    if not scans:
        return DatasetSplits(str(root), train, None, "train", beside=beside)
    (name, val), *more = scans
    return DatasetSplits(str(root), train, val, f"train+{name}", more, beside)
