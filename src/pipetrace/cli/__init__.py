"""pipetrace: trace an image classifier's pipeline, from OpenCV to softmax.

The command line parses flags into a config, calls the library, maps errors to exit codes.

Exit codes: 0 success, 1 findings/warnings (check, skew), 2 bad input (a file, a checkpoint,
a dataset, a config value) or errors found by check, or a file that cannot be written, 3 a
distributed run lost one of its processes, 130 interrupted.

Only the command being run has its flags built (and its module imported): ``pipetrace
--help`` imports neither torch nor OpenCV and answers at once.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys
import warnings

from .. import __version__

# name -> (module in this package, one-line help); the module's add_<name>(parser) adds the
# command's flags and sets its function.
COMMANDS = {
    "demo": ("run", "the whole pipeline on the built-in shapes dataset"),
    "train": ("run", "train on an ImageFolder dataset and trace it"),
    "lr-find": ("lrfind", "the learning-rate range test: which rate to train at, and why"),
    "trace": ("examine", "the data-flow trace of one image, or of one item of your own "
              "dataset (--dataset)"),
    "predict": ("serve", "classify images and trace one through every layer"),
    "check": ("examine", "read every file of a dataset once and report problems (exit 0 "
              "clean, 1 warnings, 2 errors)"),
    "skew": ("serve", "compare your own inference preprocessing with the checkpoint's "
             "evaluation pipeline"),
    "export": ("serve", "write the model as ONNX (contract in its metadata) and check it with "
               "onnxruntime"),
    "report": ("views", "render report.html again from trace.json"),
    "quiz": ("views", "the run's quiz in the terminal"),
    "evaluate": ("analyse", "evaluate a checkpoint on a labelled split, image by image, and "
                 "analyse its errors"),
    "errors": ("analyse", "the error analysis of a run's last evaluation"),
}


class HelpFormatter(argparse.HelpFormatter):
    """argparse's formatter, but a line never breaks inside a hyphenated word (crop-flip)."""

    def _split_lines(self, text, width):
        import textwrap

        return textwrap.wrap(" ".join(text.split()), width, break_on_hyphens=False)


class Parser(argparse.ArgumentParser):
    """argparse's parser, but its one-line errors quote what was typed with control, bidi
    and zero-width characters escaped: `unrecognized arguments: <a hostile file name>`
    reached the terminal raw (an ESC sequence could retitle or recolour it)."""

    def error(self, message: str):
        from ..text import printable

        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {printable(message)}\n")


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser; with ``argv``, only the command it names gets its flags (cheap help)."""
    p = Parser(prog="pipetrace", description=__doc__.splitlines()[0])
    p.add_argument("--version", action="version", version=f"pipetrace {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    wanted = None if argv is None else next((a for a in argv if a in COMMANDS), "")
    for name, (module, help_text) in COMMANDS.items():
        cp = sub.add_parser(name, help=help_text, description=help_text,
                            formatter_class=HelpFormatter)
        if wanted is None or name == wanted:
            mod = importlib.import_module(f".{module}", __name__)
            getattr(mod, f"add_{name.replace('-', '_')}")(cp)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(argv).parse_args(argv)
    from ..text import printable

    with warnings.catch_warnings():
        warnings.showwarning = _show_warning_safely  # restored on leaving the block
        try:
            return args.func(args)
        except KeyboardInterrupt:
            print("pipetrace: interrupted", file=sys.stderr)
            return 130
        except BrokenPipeError:  # `pipetrace check --json | head`: the reader left
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 0
        except (OSError, ValueError) as exc:  # bad input: an unreadable image, checkpoint or
            # dataset (ImageLoadError, CheckpointError, DatasetRefused are ValueErrors; naming
            # them here cost every command torch's import, ~3 s); OSError: a missing folder,
            # a read-only one, a full disk
            print(f"pipetrace: error: {_rank_prefix()}{printable(exc)}", file=sys.stderr)
            return 2
        except RuntimeError as exc:
            from ..train import TrainingDiverged

            if isinstance(exc, TrainingDiverged):
                print(f"pipetrace: error: {_rank_prefix()}{printable(exc)}", file=sys.stderr)
                return 2
            from ..distributed import is_collective_failure

            if not is_collective_failure(exc):  # a collective that failed: say what it means
                raise
            reason = printable(str(exc).strip().splitlines()[0][:300])
            print(f"pipetrace: error: {_rank_prefix()}lost contact with the other processes "
                  f"({reason}). Another process failed, hung or was stopped: see its messages "
                  f"above. (A step that truly takes longer needs a larger --dist-timeout, now "
                  f"{getattr(args, 'dist_timeout', 300.0):g} s.)", file=sys.stderr)
            return 3


def _show_warning_safely(message, category, filename, lineno, file=None, line=None) -> None:
    """Library warnings (matplotlib's missing-glyph warning quotes a class name) reach the
    terminal with every control, bidi and zero-width character shown as an escape."""
    from ..text import printable_lines

    text = warnings.formatwarning(message, category, filename, lineno, line)
    with contextlib.suppress(OSError):  # stderr gone: a warning is not worth a crash
        (file or sys.stderr).write(printable_lines(text.rstrip("\n")) + "\n")


def _rank_prefix() -> str:
    """'rank 1 of 2: ' under torchrun (whose environment the CLI may read), else ''."""
    if "RANK" not in os.environ:  # no launcher's process: answered without torch's import
        return ""
    from ..distributed import env_requests_distributed

    if not env_requests_distributed(os.environ):
        return ""
    return f"rank {os.environ['RANK']} of {os.environ['WORLD_SIZE']}: "


if __name__ == "__main__":
    sys.exit(main())
