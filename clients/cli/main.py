"""Entry point of ``recctl``.

Each command group lives in its own module with a ``register(subparsers)``
function; modules import their heavy dependencies (torch, faiss, grpc) inside
the handlers, so ``recctl recommend`` never loads torch. A
:class:`~movierec.errors.MovierecError` becomes one line on stderr and exit
status 1; Ctrl-C exits 130; neither prints a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from movierec import __version__
from movierec.errors import MovierecError

COMMAND_MODULES = (
    "movierec.clients.cli.data_cmd",
    "movierec.clients.cli.train_cmd",
    "movierec.clients.cli.index_cmd",
    "movierec.clients.cli.serve_cmd",
    "movierec.clients.cli.query_cmd",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="recctl", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--version", action="version", version=f"recctl {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
    except MovierecError as exc:
        print(f"recctl: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("recctl: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # the reader went away (e.g. `recctl info --json | head`): not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    return code


if __name__ == "__main__":
    sys.exit(main())
