"""pipetrace: trace an image classifier's pipeline, from OpenCV to softmax.

The command line parses flags into a config, calls the library, maps errors to exit codes.

Exit codes: 0 success, 1 findings/warnings (check, skew), 2 bad input (a file, a checkpoint,
a dataset) or errors found by check, or a file that cannot be written, 3 a distributed run
lost one of its processes, 130 interrupted.
"""

from __future__ import annotations

import argparse
import os
import sys

from .. import __version__
from .examine import add_check, add_trace
from .lrfind import add_lr_find
from .run import add_demo, add_train
from .serve import add_export, add_predict, add_skew
from .views import add_quiz, add_report

COMMANDS = (add_demo, add_train, add_lr_find, add_trace, add_predict, add_check, add_skew,
            add_export, add_report, add_quiz)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pipetrace", description=__doc__.splitlines()[0])
    p.add_argument("--version", action="version", version=f"pipetrace {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    for add in COMMANDS:
        add(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    from ..checkpoint import CheckpointError
    from ..images import ImageLoadError
    from ..train import DatasetRefused, TrainingDiverged

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("pipetrace: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `pipetrace check --json | head`: the reader left, not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (ImageLoadError, CheckpointError, DatasetRefused, OSError, ValueError,
            TrainingDiverged) as exc:  # OSError: a missing folder, a read-only one, a full disk
        from ..files import safe_text

        print(f"pipetrace: error: {_rank_prefix()}{safe_text(str(exc))}", file=sys.stderr)
        return 2
    except RuntimeError as exc:  # a collective that failed: say what it means
        from ..distributed import is_collective_failure

        if not is_collective_failure(exc):
            raise
        from ..files import safe_text

        reason = safe_text(str(exc)).strip().splitlines()[0][:300]
        print(f"pipetrace: error: {_rank_prefix()}lost contact with the other processes "
              f"({reason}). Another process failed, hung or was stopped: see its messages "
              f"above. (A step that truly takes longer needs a larger --dist-timeout, now "
              f"{getattr(args, 'dist_timeout', 300.0):g} s.)", file=sys.stderr)
        return 3


def _rank_prefix() -> str:
    """'rank 1 of 2: ' under torchrun (whose environment the CLI may read), else ''."""
    from ..distributed import env_requests_distributed

    if not env_requests_distributed(os.environ):
        return ""
    return f"rank {os.environ['RANK']} of {os.environ['WORLD_SIZE']}: "


if __name__ == "__main__":
    sys.exit(main())
