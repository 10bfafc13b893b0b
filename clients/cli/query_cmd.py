"""``recctl recommend | similar | info``: ask a running server (see ``recctl serve``).

Any failed call becomes one line on stderr and exit status 1; an unreachable
server says so plainly instead of printing a gRPC status dump.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from movierec.clients.cli.output import print_json, print_table
from movierec.errors import MovierecError

if TYPE_CHECKING:
    from movierec.clients.client import Recommendations, RecommenderClient

DEFAULT_SERVER = "127.0.0.1:50051"

T = TypeVar("T")


def register(commands: Any) -> None:
    recommend = commands.add_parser("recommend", help="top-k unseen movies for a user from a running server")
    _add_connection_options(recommend)
    recommend.add_argument("--user", type=int, required=True, metavar="ID", help="MovieLens user id")
    recommend.add_argument("-k", type=int, default=10, help="how many movies (default 10)")
    recommend.add_argument(
        "--exclude", type=int, nargs="+", default=[], metavar="ID", help="movie ids to leave out as well"
    )
    recommend.set_defaults(func=_recommend)

    similar = commands.add_parser("similar", help="movies nearest to a movie by the model's item vectors")
    _add_connection_options(similar)
    similar.add_argument("--item", type=int, required=True, metavar="ID", help="MovieLens movie id")
    similar.add_argument("-k", type=int, default=10, help="how many movies (default 10)")
    similar.add_argument("--user", type=int, metavar="ID", help="also leave out what this user has rated")
    similar.set_defaults(func=_similar)

    info = commands.add_parser("info", help="what a running server serves: versions, counts, limits, metrics")
    _add_connection_options(info)
    info.set_defaults(func=_info)


def _add_connection_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--server",
        type=server_address,
        default=DEFAULT_SERVER,
        metavar="HOST:PORT",
        help=f"server address (default {DEFAULT_SERVER})",
    )
    parser.add_argument("--timeout", type=float, default=5.0, metavar="SECONDS", help="deadline (default 5)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def server_address(text: str) -> str:
    """``HOST:PORT`` with a port in 1..65535 (IPv6 as ``[::1]:PORT``); gRPC would silently default to 443."""
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT with a port in 1..65535, got {text!r}")
    return text


def _recommend(args: argparse.Namespace) -> int:
    result = _ask(args, lambda client: client.recommend(args.user, args.k, args.exclude))
    _print_recommendations(result, args.json, f"Top {len(result.items)} for user {args.user}")
    return 0


def _similar(args: argparse.Namespace) -> int:
    result = _ask(args, lambda client: client.similar_items(args.item, args.k, user_id=args.user))
    _print_recommendations(result, args.json, f"{len(result.items)} movies similar to {args.item}")
    return 0


def _info(args: argparse.Namespace) -> int:
    info = _ask(args, lambda client: client.info())
    if args.json:
        print_json(dataclasses.asdict(info))
        return 0
    rows: list[tuple[str, Any]] = [
        (name, value) for name, value in dataclasses.asdict(info).items() if name != "training_metrics"
    ]
    metrics = info.training_metrics
    rows += [(f"metric {name}", value) for name, value in sorted(metrics.items()) if not isinstance(value, dict | list)]
    nested = sorted(name for name, value in metrics.items() if isinstance(value, dict | list))
    if nested:  # training history, protocol: too long for a table
        rows.append(("more metrics", ", ".join(nested) + " (see --json)"))
    print_table(["field", "value"], [(name, str(value)) for name, value in rows])
    return 0


def _ask(args: argparse.Namespace, call: Callable[[RecommenderClient], T]) -> T:
    """Run one call; every RecommenderError becomes a one-line MovierecError (exit 1)."""
    from movierec.clients.client import RecommenderClient, RecommenderError, ServerUnavailableError

    with RecommenderClient(args.server, timeout=args.timeout) as client:
        try:
            return call(client)
        except ServerUnavailableError as exc:
            raise MovierecError(f"cannot reach server at {args.server} ({exc.message})") from None
        except RecommenderError as exc:
            raise MovierecError(f"server at {args.server} refused the request: {exc}") from None


def _print_recommendations(result: Recommendations, as_json: bool, heading: str) -> None:
    if as_json:
        print_json(dataclasses.asdict(result))
        return
    print(f"{heading} (index {result.index_version}, model {result.model_version})")
    rows = [(item.rank, item.title, "|".join(item.genres), item.item_id, round(item.score, 4)) for item in result.items]
    print_table(["rank", "title", "genres", "movie id", "score"], rows)
