"""Argument parsing only: every command is a thin call into the modules.

Exit codes: 0 success, 1 verification failed, 2 usage or input error (one line, no traceback;
``--debug`` shows it), 3 a bug in lstminfer (with its traceback), 130 interrupted.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import traceback
import warnings

from lstminfer import __version__
from lstminfer.errors import UserError

INTERNAL_ERROR = 3


def command_modules() -> list[str]:
    """Every module in lstminfer.commands (those with a register(subparsers) add commands); core's first."""
    import pkgutil

    import lstminfer.commands as commands

    names = sorted(m.name for m in pkgutil.iter_modules(commands.__path__))
    names.sort(key=lambda n: n != "core")
    return [f"lstminfer.commands.{n}" for n in names]


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (no usage dump) and exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}; see `{self.prog} --help`\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="lstminfer",
        description="Export, verify and benchmark LSTM/GRU inference on PyTorch, ONNX Runtime, TensorRT "
                    "and a fused GPU kernel.")
    parser.add_argument("--version", action="version", version=f"lstminfer {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in command_modules():
        module = importlib.import_module(name)
        if hasattr(module, "register"):
            module.register(subparsers)
    for sub in subparsers.choices.values():
        # After the subcommand too; SUPPRESS keeps a --debug given before it when this one is absent.
        sub.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks for errors")
    return parser


def main(argv: list[str] | None = None) -> int:
    from lstminfer.commands.args import OutputArgs
    from lstminfer.commands.console import json_to_stdout

    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    try:
        with json_to_stdout(OutputArgs.parse(args).json == "-"):
            return int(args.func(args) or 0)
    except UserError as err:
        if args.debug:  # the traceback, and still the user error's exit code
            traceback.print_exc()
        print(f"lstminfer: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lstminfer: interrupted; files already written are complete", file=sys.stderr)
        return 130
    except Exception:
        # Our bug, not the user's: the traceback for the report, and an exit code that no CI job reads as
        # "verification failed" (1), which is what an uncaught exception would give.
        traceback.print_exc()
        print("lstminfer: internal error (a bug in lstminfer): please report it with the traceback above",
              file=sys.stderr)
        return INTERNAL_ERROR


if __name__ == "__main__":
    sys.exit(main())
