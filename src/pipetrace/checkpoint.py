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

from .config import LOADER_CHOICES, MAX_IMAGE_SIZE, MAX_RESIZE, Allowed
from .files import sha256_file, write_atomic, write_text_atomic
from .images import display_path, sniff_format
from .text import safe_text
from .transforms import Preprocess

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
    """Read a pipetrace checkpoint and validate it against :data:`SCHEMA` (types and ranges
    of every field, classes against the model's outputs, finite weights) before anything
    is built or allocated from it."""
    return checkpoint_from(read_checkpoint_file(path), path)


def checkpoint_from(ckpt: object, path) -> dict:
    """``ckpt`` (what ``path`` holds) as a validated pipetrace checkpoint, or one
    CheckpointError (a ``--weights`` file is checked the same way)."""
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(path, "not a pipetrace checkpoint (no 'format' marker); for bare "
                              "weights use train --weights")
    missing = [k for k in REQUIRED_KEYS if k not in ckpt]
    if missing:
        raise CheckpointError(path, f"missing {', '.join(missing)}")
    validate_checkpoint(ckpt, path)
    check_finite(ckpt["model_state"], path)
    return ckpt


# -- the schema ------------------------------------------------------------------------------------

MAX_CLASSES = 100_000
INTERPOLATIONS = ("nearest", "nearest_exact", "bilinear", "bicubic", "box", "hamming", "lanczos")

# field -> (type, what it allows); a missing preprocessing field takes Preprocess's default
SCHEMA = {
    "version": (int, Allowed(low=1, high=VERSION)),
    "epoch": (int, Allowed(low=0)),
    "best_acc": (float, Allowed()),
}
PREPROCESS_SCHEMA = {
    "size": (int, Allowed(low=1, high=MAX_IMAGE_SIZE)),
    "crop_pct": (float, Allowed(low=0, high=1, low_open=True)),
    "interpolation": (str, Allowed(choices=INTERPOLATIONS)),
    "colour_order": (str, Allowed(choices=("RGB", "BGR"))),
    "value_scale": (str, Allowed(choices=("0-1", "0-255"))),
    "layout": (str, Allowed(choices=("NCHW", "NHWC"))),
}
MODEL_SCHEMA = {
    "name": (str, Allowed()),
    "num_classes": (int, Allowed(low=1, high=MAX_CLASSES)),
}


def _check(path, where: str, value, kind: type, allowed: Allowed) -> None:
    if not allowed.admits(value, kind):
        raise CheckpointError(path, f"{where} is {_shown(value)}: it must be "
                              f"{allowed.describe(kind)}")


def _shown(value) -> str:
    text = repr(value) if isinstance(value, str | int | float | bool) or value is None \
        else f"a {type(value).__name__}"
    return text if len(text) <= 60 else text[:57] + "..."


def _check_fields(path, where: str, d, schema: dict, *, required: bool) -> None:
    if not isinstance(d, dict):
        raise CheckpointError(path, f"{where} is {_shown(d)}: it must be a dict")
    for key, (kind, allowed) in schema.items():
        if key in d:
            _check(path, f"{where}.{key}" if where else key, d[key], kind, allowed)
        elif required:
            raise CheckpointError(path, f"{where}.{key} is missing")


def supported_architectures() -> tuple[str, ...]:
    """The built-in nets and torchvision's classification models."""
    import torchvision

    from .model import builtin_names

    return (*builtin_names(), *torchvision.models.list_models(module=torchvision.models))


def validate_checkpoint(ckpt: dict, path) -> None:
    """Types and ranges of every field pipetrace uses; one CheckpointError line for the
    first that is wrong. Nothing is built, allocated or resized before this has passed."""
    _check_fields(path, "", ckpt, SCHEMA, required=False)
    classes = ckpt["classes"]
    if (not isinstance(classes, list) or not all(isinstance(c, str) for c in classes)
            or not 1 <= len(classes) <= MAX_CLASSES):
        raise CheckpointError(path, f"class list is not a list of 1 to {MAX_CLASSES:,} names")
    if len(set(classes)) != len(classes):  # two outputs, one name: a prediction is ambiguous
        twice = next(c for i, c in enumerate(classes) if c in classes[:i])
        raise CheckpointError(path, f"class list names {safe_text(twice)!r} more than once")
    pre = ckpt["preprocess"]
    _check_fields(path, "preprocess", pre, PREPROCESS_SCHEMA, required=False)
    for key in ("mean", "std"):
        v = pre.get(key, (0.5,))
        if (not isinstance(v, list | tuple) or not 1 <= len(v) <= 4 or not all(
                is_finite_number(x) and not isinstance(x, bool) for x in v)
                or (key == "std" and min(v) <= 0)):
            raise CheckpointError(path, f"preprocess.{key} is {_shown(v)}: it must be a list of "
                                  "1 to 4 finite numbers" + (" above 0" if key == "std" else ""))
    defaults = Preprocess()
    size, crop = pre.get("size", defaults.size), pre.get("crop_pct", defaults.crop_pct)
    if round(size / crop) > MAX_RESIZE:
        raise CheckpointError(path, f"preprocess.size / crop_pct = {size / crop:.0f} pixels: the "
                              f"evaluation resize must stay within {MAX_RESIZE}")
    cfg = ckpt["model_config"]
    _check_fields(path, "model_config", cfg, MODEL_SCHEMA, required=True)
    if cfg["num_classes"] != len(classes):
        raise CheckpointError(path, f"model has {cfg['num_classes']} outputs but the class list "
                              f"has {len(classes)} names")
    if cfg["name"] not in supported_architectures():
        raise CheckpointError(path, f"model_config.name {_shown(cfg['name'])} is not an "
                              "architecture pipetrace builds (built-in or torchvision "
                              "classification)")
    state = ckpt["model_state"]
    if not isinstance(state, dict) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise CheckpointError(path, "model_state is not a dict of tensor names to tensors")
    for key in ("train_config", "history"):
        kind = dict if key == "train_config" else list
        if key in ckpt and not isinstance(ckpt[key], kind):
            raise CheckpointError(path, f"{key} is {_shown(ckpt[key])}: it must be a "
                                  f"{kind.__name__}")
    loader = (ckpt.get("train_config") or {}).get("loader", "fast")
    _check(path, "train_config.loader", loader, str, Allowed(choices=LOADER_CHOICES))


def check_state_fits(expected: dict, state: dict, path) -> None:
    """The tensors of ``state`` have exactly the names and shapes of ``expected`` (a model's
    state dict, e.g. built on the meta device: no memory); else one CheckpointError line."""
    missing = [k for k in expected if k not in state]
    extra = [k for k in state if k not in expected]
    wrong = [k for k in expected if k in state and tuple(state[k].shape) != tuple(
        expected[k].shape)]
    if not (missing or extra or wrong):
        return
    parts = []
    if wrong:
        k = wrong[0]
        parts.append(f"{len(wrong)} tensor(s) of another shape, first {k!r}: "
                     f"{tuple(state[k].shape)} where the model has {tuple(expected[k].shape)}")
    if missing:
        parts.append(f"{len(missing)} missing, first {missing[0]!r}")
    if extra:
        parts.append(f"{len(extra)} unexpected, first {extra[0]!r}")
    raise CheckpointError(path, "weights do not fit this model: " + "; ".join(parts))


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
