"""The JSON trace (``trace.json``): one versioned document that every view renders from.

Schema: ``docs/trace-format.md``. Format versions:

* 1 - first format: ``meta``, ``run``, ``stages``, ``findings``, ``training``,
  ``prediction``, ``quiz``, ``insight``; pictures inline as ``data:image/png`` URIs.
* 2 - ``run.distributed`` adds ``per_rank_batch``, ``global_batch`` and ``ranks`` (each
  process's images, images/s and loader images/s in the last epoch).
* 3 - ``data_flow`` replaces ``stages``, ``stage_pictures`` and ``stage_captions``: the steps
  observed as the loader ran them, in their order, each with its seed stage and picture; a
  flow-only trace (``pipetrace trace --out``) has ``run``/``training``/``prediction`` null.
  The prediction trace records every operation: ``prediction.ops`` (one record per tensor
  operation, with the records that fed it: a graph), ``prediction.calls`` (module calls),
  ``prediction.output`` and ``prediction.depth``; each ``prediction.layers[]`` row gains
  ``inputs``, ``join`` and ``ops``, and operations outside the shown modules (residual adds,
  flattens, concatenations) are rows of their own; ``gradcam_op`` and ``feature_stages``.
  ``findings`` start with the dataset checks ``train`` ran before its first epoch, and
  each finding has ``paths`` (the files or folders it is about); ``quiz`` entries have
  ``topic`` (the template that asked them).
  ``batch_view`` (the batch the model sees) and ``errors`` (the error analysis of the last
  validation pass, with the worst predictions' pictures) are new.
  ``run.weights`` (where the initial weights came from, the tensors loaded, new and
  skipped, the weights' own preprocessing), ``run.lr_find`` (the learning-rate range test of
  ``--lr auto``), ``training.epochs[].frozen`` (a head-only epoch of fine-tuning).
"""

from __future__ import annotations

import base64
import contextlib
import json
import math
import os
import platform
from datetime import datetime, timezone
from pathlib import Path

from ..files import write_text_atomic
from ..text import safe_text

FORMAT = "pipetrace-trace"
VERSION = 3


def data_uri(png: bytes | None) -> str | None:
    return None if png is None else "data:image/png;base64," + base64.b64encode(png).decode()


def clean_strings(obj):
    """Replace bytes that are not UTF-8 (lone surrogates from file names) with U+FFFD."""
    if isinstance(obj, str):
        return safe_text(obj)
    if isinstance(obj, dict):
        return {clean_strings(k): clean_strings(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [clean_strings(v) for v in obj]
    return json_safe(obj)


def json_safe(obj):
    """``obj`` with NaN and infinite numbers (not JSON: ``json.dumps`` writes ``NaN`` and
    ``Infinity``, which JSON readers refuse) as null; strings are left as they are."""
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def versions() -> dict[str, str]:
    import cv2
    import numpy
    import PIL
    import torch
    import torchvision

    from .. import __version__

    return {"pipetrace": __version__, "python": platform.python_version(),
            "torch": torch.__version__, "torchvision": torchvision.__version__,
            "opencv": cv2.__version__, "pillow": PIL.__version__, "numpy": numpy.__version__}


def meta_block(command: str, device: str) -> dict:
    return {"created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "command": command, "device": device, "platform": platform.platform(),
            "cpu_count": os.cpu_count(), "versions": versions()}


def save_document(doc: dict, path: str | os.PathLike) -> None:
    write_text_atomic(path, json.dumps(clean_strings(doc), indent=1, ensure_ascii=False,
                                       allow_nan=False))


def load_document(path: str | os.PathLike) -> dict:
    """Read a trace.json, refusing other formats and newer versions with a clear message."""
    p = Path(path)
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:  # RecursionError: [[[[... nested
        raise ValueError(f"cannot read trace {str(p)!r}: {exc or type(exc).__name__}") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ValueError(f"{str(p)!r} is not a pipetrace trace (no 'format': '{FORMAT}')")
    if int(doc.get("version", 0)) > VERSION:
        raise ValueError(f"{str(p)!r} has trace format {doc['version']}, newer than this "
                         f"pipetrace reads ({VERSION})")
    return doc


@contextlib.contextmanager
def rendering(path: str | os.PathLike):
    """Turn a failure while a view renders a trace.json (one edited by hand, or damaged:
    a section missing, a number that is text) into one line naming the file and the cause;
    the document is only what a run wrote, so its views do not check every field."""
    try:
        yield
    except Exception as exc:
        from jinja2 import TemplateError

        if not isinstance(exc, (KeyError, TypeError, AttributeError, IndexError, ValueError,
                                RecursionError, TemplateError)):
            raise
        cause = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        raise ValueError(f"{str(path)!r} does not hold what a run writes (trace format "
                         f"{VERSION}; was it edited?): {cause[:300]}") from None
