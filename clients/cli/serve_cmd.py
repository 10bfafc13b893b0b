"""``recctl serve``: run the gRPC recommender over an index store until SIGTERM."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from movierec.errors import MovierecError
from movierec.server.limits import DEFAULT_MAX_EXCLUDE, DEFAULT_MAX_K, Limits


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "serve",
        help="serve recommendations over gRPC (health + reflection included)",
        description="Bind, report NOT_SERVING while the index loads and warms up, then SERVING. "
        "SIGTERM or Ctrl-C drains in-flight calls for up to --grace seconds and exits 0.",
    )
    parser.add_argument(
        "--index", type=Path, required=True, metavar="DIR", help="index store (follows CURRENT) or one version"
    )
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1: local only)")
    parser.add_argument("--port", type=_port, default=50051, help="TCP port; 0 picks a free one (default 50051)")
    parser.add_argument("--max-k", type=_positive, default=DEFAULT_MAX_K, help=f"largest k (default {DEFAULT_MAX_K})")
    parser.add_argument(
        "--max-exclude",
        type=_non_negative,
        default=DEFAULT_MAX_EXCLUDE,
        metavar="N",
        help=f"most exclude_item_ids per request (default {DEFAULT_MAX_EXCLUDE})",
    )
    parser.add_argument(
        "--grace", type=float, default=10.0, metavar="SECONDS", help="drain time on shutdown (default 10)"
    )
    parser.add_argument("--json", action="store_true", help="one JSON object per lifecycle event on stdout")
    parser.set_defaults(func=_serve)


def _serve(args: argparse.Namespace) -> int:
    import asyncio

    from movierec.server.app import ServerConfig, ServerEvent, serve

    def announce(event: ServerEvent) -> None:
        line = json.dumps({"event": event.kind, "message": event.message, **event.data}) if args.json else event.message
        print(line, flush=True)

    config = ServerConfig(
        index_path=args.index,
        host=args.host,
        port=args.port,
        limits=Limits(max_k=args.max_k, max_exclude_item_ids=args.max_exclude),
        grace_seconds=args.grace,
    )
    try:
        asyncio.run(serve(config, announce))
    except OSError as exc:
        raise MovierecError(str(exc)) from None
    return 0


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port must be in 0..65535, got {value}")
    return value


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value
