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
from movierec.clients.cli.help import RecctlParser
from movierec.errors import MovierecError

COMMAND_MODULES = (
    "movierec.clients.cli.data_cmd",
    "movierec.clients.cli.train_cmd",
    "movierec.clients.cli.index_cmd",
    "movierec.clients.cli.serve_cmd",
    "movierec.clients.cli.query_cmd",
)


DESCRIPTION = """\
recctl trains LightGCN (or NGCF, GraphSAGE) movie recommenders on MovieLens ratings, indexes them
with FAISS and serves them over gRPC: from a ratings folder to a running
service and its answers, one command per step."""

EPILOG = """\
a first run, step by step:
  recctl data stats                                 what the ratings hold (--data: see its --help)
  recctl train --out models/ml1m                    train LightGCN into a model bundle
  recctl evaluate --model models/ml1m               its test metrics, recomputed from the bundle
  recctl index build --model models/ml1m --out idx  a new FAISS index version; CURRENT points at it
  recctl serve --index idx                          serve it on 127.0.0.1:50051 until Ctrl-C
then, from another terminal:
  recctl recommend --user 1                         user 1's top 10 unseen movies, and why
  recctl similar --item 2571                        movies near movie 2571
  recctl info                                       what the server serves

Every command has its own --help with its options and their defaults.
Errors are one line on stderr and exit status 1 (2 for a bad command line)."""


def build_parser() -> argparse.ArgumentParser:
    parser = RecctlParser(prog="recctl", description=DESCRIPTION, epilog=EPILOG)
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
