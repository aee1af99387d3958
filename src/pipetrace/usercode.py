"""The user's own code, named on the command line as ``MODULE:FUNCTION`` (``skew``'s
preprocessing function, ``trace --dataset``'s dataset factory)."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path


class UserCodeError(ValueError):
    """The user's code cannot be imported, fails, or returns something unusable."""


def load_user_function(spec: str) -> Callable[[str], object]:
    """``'my_module:my_function'`` or ``'path/to/file.py:my_function'`` -> the function.

    A module name is imported normally (installed, or on ``PYTHONPATH``); if that fails and
    ``my_module.py`` (dots as folders) exists under the current folder, that file is loaded.
    """
    target, sep, name = spec.rpartition(":")
    if not sep or not target or not name:
        raise UserCodeError(f"expected MODULE:FUNCTION or FILE.py:FUNCTION, "
                             f"got {spec!r}")
    file = Path(target) if target.endswith(".py") else Path(*target.split(".")).with_suffix(".py")
    try:
        if target.endswith(".py"):
            module = _module_from_file(file)
        else:
            try:
                module = importlib.import_module(target)
            except ModuleNotFoundError as exc:
                if exc.name != target.split(".")[0] or not file.is_file():
                    raise
                module = _module_from_file(file)
    except UserCodeError:
        raise
    except Exception as exc:  # the user's import can raise anything; one line, exit 2
        raise UserCodeError(f"cannot import {target!r}: {type(exc).__name__}: "
                             f"{str(exc).splitlines()[0] if str(exc) else ''}") from None
    fn = getattr(module, name, None)
    if not callable(fn):
        raise UserCodeError(f"{target!r} has no function {name!r}")
    return fn


def _module_from_file(file: Path):
    if not file.is_file():
        raise UserCodeError(f"no such file {str(file)!r}")
    name = f"pipetrace_user_{file.stem}"
    spec = importlib.util.spec_from_file_location(name, file)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling in the user's file need this
    spec.loader.exec_module(module)
    return module
