"""Checkpoints: written atomically with a SHA-256 beside them, read with ``weights_only=True``.

A checkpoint holds everything needed to resume training and to serve the model without
train/serve skew: weights, optimizer, scheduler and RNG states, the epoch history, the class
list and the preprocessing contract.

Reading is defensive: ``torch.load`` is always called with an explicit
``weights_only=True`` (so ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` cannot turn it off), never
with ``mmap``; a pickle that would run code is refused without running; truncated, random,
mismatched and NaN-weight files each give one :class:`CheckpointError` line.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import zipfile
from pathlib import Path

import torch
from torch import nn

from .files import sha256_file, write_atomic, write_text_atomic
from .images import display_path, sniff_format

FORMAT = "pipetrace-checkpoint"
VERSION = 1  # 1: first format (model, optimizer, scheduler, rng, history, contract); later optional
#              keys, absent from older files: "weights" (WeightsReport), "lr_find" (the range test)
REQUIRED_KEYS = ("format", "version", "model_state", "classes", "preprocess", "model_config")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; ``str()`` names the file and the cause."""

    def __init__(self, path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"cannot use checkpoint {display_path(path)}: {reason}")


def save_checkpoint(path: str | os.PathLike, ckpt: dict) -> str:
    """Write ``ckpt`` atomically with its SHA-256 in ``path + '.sha256'``; return the hash.

    Two files cannot be replaced in one step, so a SIGKILL between them must not leave a
    checkpoint whose sidecar names the other version: while the new file is renamed into
    place the sidecar lists both the old and the new hash, and only then the new one alone.
    """
    path = Path(path)
    side = path.with_name(path.name + ".sha256")
    old = [sha256_file(path)] if path.is_file() else []
    digest = ""

    def publish_both(tmp: str) -> None:
        nonlocal digest
        digest = sha256_file(tmp)
        write_text_atomic(side, "".join(f"{d}  {path.name}\n" for d in [*old, digest]))

    write_atomic(path, lambda f: torch.save(ckpt, f), before_replace=publish_both)
    write_text_atomic(side, f"{digest}  {path.name}\n")
    return digest


def _read_sidecar(path: Path) -> set[str] | None:
    """The hashes the sidecar accepts: one, or two while a save was in progress."""
    side = path.with_name(path.name + ".sha256")
    try:
        digests = {line.split()[0] for line in side.read_text().splitlines() if line.strip()}
    except (OSError, UnicodeDecodeError):
        return None
    return digests or None


def _why_unloadable(exc: Exception, data: bytes) -> str:
    """Turn torch.load's exceptions into a cause a user can act on (no allow-list advice).

    torch's messages are a poor guide (a random file gives ``KeyError: 101``, a cut-off one
    ``negative seek value``), so the file's first bytes decide what it is.
    """
    msg = str(exc)
    if "GLOBAL" in msg or "unsupported global" in msg.lower():
        first = next((ln for ln in msg.splitlines() if "GLOBAL" in ln or "global" in ln), "")
        detail = f" ({first.strip()[:120]})" if first else ""
        return ("refused: the file holds pickled Python objects that could run code when "
                f"loaded{detail}; pipetrace only loads plain tensors and data")
    if data[:4] == b"PK\x03\x04":  # torch.save's format is a zip archive
        if not zipfile.is_zipfile(io.BytesIO(data)):
            return "truncated or damaged file (its zip archive cannot be read)"
        return f"damaged PyTorch checkpoint ({type(exc).__name__}: {msg.splitlines()[0][:120]})"
    if data[:1] == b"\x80":  # a pickle: torch's legacy format or pickle.dump
        return ("not a checkpoint pipetrace reads: a pickle that is not a torch.save file, or "
                "holds more than tensors and plain data")
    fmt = sniff_format(data)
    what = f"it is a {fmt.upper()} image" if fmt else f"starts with {data[:8]!r}"
    return f"not a PyTorch checkpoint ({what})"


def read_checkpoint_file(path: str | os.PathLike) -> object:
    """``torch.load`` with every protection; returns whatever plain data the file holds."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(path, "no such file")
    if path.stat().st_size == 0:
        raise CheckpointError(path, "empty file (0 bytes)")
    data = path.read_bytes()  # never mmap: a file we did not write may be truncated
    expected = _read_sidecar(path)
    if expected is not None and hashlib.sha256(data).hexdigest() not in expected:
        raise CheckpointError(path, "SHA-256 does not match its .sha256 file (changed or "
                              "partly written)")
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types; all mean "not usable"
        raise CheckpointError(path, _why_unloadable(exc, data)) from None


def check_finite(state: dict, path) -> None:
    bad = [k for k, v in state.items()
           if isinstance(v, torch.Tensor) and v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise CheckpointError(path, f"weights contain NaN or infinity in {len(bad)} tensor(s), "
                              f"first {bad[0]!r}")


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Read and validate a pipetrace checkpoint (structure, classes, finite weights)."""
    return validate_checkpoint(read_checkpoint_file(path), path)


def validate_checkpoint(ckpt: object, path) -> dict:
    """``ckpt`` (what ``path`` holds) as a pipetrace checkpoint, or one CheckpointError."""
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(path, "not a pipetrace checkpoint (no 'format' marker); for bare "
                              "weights use train --weights")
    missing = [k for k in REQUIRED_KEYS if k not in ckpt]
    if missing:
        raise CheckpointError(path, f"missing {', '.join(missing)}")
    if ckpt["version"] > VERSION:
        raise CheckpointError(path, f"format version {ckpt['version']} is newer than this "
                              f"pipetrace reads ({VERSION}); upgrade pipetrace")
    classes = ckpt["classes"]
    if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
        raise CheckpointError(path, "class list is not a list of names")
    n = ckpt["model_config"].get("num_classes")
    if n != len(classes):
        raise CheckpointError(path, f"model has {n} outputs but the class list has "
                              f"{len(classes)} names")
    check_finite(ckpt["model_state"], path)
    return ckpt


def load_state_into(model: nn.Module, state: dict, path, *, strict: bool = True
                    ) -> tuple[list[str], list[str]]:
    """Load weights, turning shape or key mismatches into one CheckpointError line.

    With ``strict=False`` (initial weights for fine-tuning), tensors whose name or shape
    does not fit (a classifier for another class count) are left out. Returns the names
    loaded and the names of ``state`` that were left out.
    """
    own = model.state_dict()
    skipped = []
    if not strict:
        state = dict(state)
        for k in list(state):
            if k not in own or own[k].shape != state[k].shape:
                skipped.append(k)
                del state[k]
    try:
        model.load_state_dict(state, strict=strict)
    except RuntimeError as exc:
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        detail = lines[1] if len(lines) > 1 else lines[0]
        raise CheckpointError(path, f"weights do not fit this model: {detail[:200]}") from None
    return [k for k in own if k in state], skipped


def is_finite_number(x: float) -> bool:
    return isinstance(x, int | float) and math.isfinite(x)
