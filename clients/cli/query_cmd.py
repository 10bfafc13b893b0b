"""``recctl recommend | similar | info | record | reload``: ask a running server (see ``recctl serve``).

Any failed call becomes one line on stderr and exit status 1; an unreachable
server says so plainly instead of printing a gRPC status dump.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from movierec.clients.cli.output import print_json, print_table, readable_number
from movierec.errors import MovierecError

if TYPE_CHECKING:
    from movierec.clients.client import ItemFilter, Recommendations, RecommenderClient

DEFAULT_SERVER = "127.0.0.1:50051"
DEFAULT_BATCH_SIZE = 100

T = TypeVar("T")


def register(commands: Any) -> None:
    recommend = commands.add_parser(
        "recommend",
        help="top-k unseen movies for a user (or for a list of liked movies) from a running server",
        description="Top-k unseen movies for a user (or for a list of liked movies) from a running server.\n"
        "The table gives each movie's year and, under 'because you liked', the movie of theirs that\n"
        "contributes most to its score. The API answers with ids there, so the titles are looked up\n"
        "with SimilarItems calls (the whole catalogue when it fits the server's max_k; an id not found\n"
        "stays an id). --json prints the answer as sent, ids only.",
    )
    _add_connection_options(recommend)
    who = recommend.add_mutually_exclusive_group(required=True)
    who.add_argument("--user", type=int, metavar="ID", help="MovieLens user id")
    who.add_argument(
        "--liked", type=int, nargs="+", metavar="ID", help="cold start: movie ids someone liked (never recommended)"
    )
    who.add_argument(
        "--users-file",
        type=Path,
        metavar="FILE",
        help="many users: one user id per line; answered with RecommendBatch calls, one JSON line per user "
        "(in file order; a user the server refuses gets an 'error' line and the exit status is 1)",
    )
    recommend.add_argument(
        "--batch-size",
        type=_batch_size,
        default=DEFAULT_BATCH_SIZE,
        metavar="N",
        help=f"users per RecommendBatch call with --users-file, at most the server's max_batch_size "
        f"(default {DEFAULT_BATCH_SIZE})",
    )
    recommend.add_argument("-k", type=int, default=10, help="how many movies (default 10)")
    recommend.add_argument(
        "--exclude", type=int, nargs="+", default=[], metavar="ID", help="movie ids to leave out as well"
    )
    recommend.add_argument(
        "--diversity",
        type=_diversity,
        default=0.0,
        metavar="D",
        help="0..1: trade relevance for movies unlike each other (MMR re-ranking of the best max(4k, 50); "
        "default 0: the exact top-k); with --user or --users-file",
    )
    _add_filter_options(recommend)
    recommend.set_defaults(func=_recommend)

    similar = commands.add_parser("similar", help="movies nearest to a movie by the model's item vectors")
    _add_connection_options(similar)
    similar.add_argument("--item", type=int, required=True, metavar="ID", help="MovieLens movie id")
    similar.add_argument("-k", type=int, default=10, help="how many movies (default 10)")
    similar.add_argument("--user", type=int, metavar="ID", help="also leave out what this user has rated")
    _add_filter_options(similar)
    similar.set_defaults(func=_similar)

    record = commands.add_parser("record", help="store watched events for a user (durable when it answers)")
    _add_connection_options(record)
    record.add_argument("--user", type=int, required=True, metavar="ID", help="MovieLens user id (may be new)")
    record.add_argument("--items", type=int, nargs="+", required=True, metavar="ID", help="movie ids watched")
    record.add_argument(
        "--ratings", type=float, nargs="+", default=[], metavar="R", help="one rating per movie (default: none)"
    )
    record.set_defaults(func=_record)

    reload = commands.add_parser("reload", help="make a running server load its index store's CURRENT version now")
    _add_connection_options(reload)
    reload.set_defaults(func=_reload)

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
    parser.add_argument("--tls-ca", type=Path, metavar="PEM", help="connect over TLS, trusting this CA certificate")
    parser.add_argument("--token-file", type=Path, metavar="FILE", help="send the bearer token stored in FILE")
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def _add_filter_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--genre", nargs="+", default=[], metavar="NAME", help="only movies with any of these genres")
    parser.add_argument(
        "--exclude-genre", nargs="+", default=[], metavar="NAME", help="no movie with any of these genres"
    )
    parser.add_argument("--min-year", type=int, metavar="YEAR", help="only movies released in YEAR or later")
    parser.add_argument("--max-year", type=int, metavar="YEAR", help="only movies released in YEAR or earlier")


def _item_filter(args: argparse.Namespace) -> ItemFilter | None:
    from movierec.clients.client import ItemFilter

    if not (args.genre or args.exclude_genre) and args.min_year is None and args.max_year is None:
        return None
    return ItemFilter(tuple(args.genre), tuple(args.exclude_genre), args.min_year, args.max_year)


def _batch_size(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _diversity(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number between 0 and 1, got {text!r}") from None
    if not 0.0 <= value <= 1.0:  # NaN fails both comparisons
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value


def server_address(text: str) -> str:
    """``HOST:PORT`` with a port in 1..65535 (IPv6 as ``[::1]:PORT``); gRPC would silently default to 443."""
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT with a port in 1..65535, got {text!r}")
    return text


def _recommend(args: argparse.Namespace) -> int:
    if args.users_file is not None:
        return _recommend_users_file(args)
    if args.liked is not None and args.diversity:
        raise MovierecError("--diversity works with --user and --users-file, not with --liked")
    item_filter = _item_filter(args)

    def ask(client: RecommenderClient) -> tuple[Recommendations, dict[int, str]]:
        if args.liked is not None:
            result = client.recommend_for_items(args.liked, args.k, args.exclude, item_filter=item_filter, explain=True)
        else:
            result = client.recommend(
                args.user, args.k, args.exclude, item_filter=item_filter, explain=True, diversity=args.diversity
            )
        if args.json:
            return result, {}
        explained: dict[int, int] = {}  # "because" movie -> the first recommendation it explains
        for item in result.items:
            if item.because_item_id is not None:
                explained.setdefault(item.because_item_id, item.item_id)
        wanted = set(explained) | set(args.liked or ())
        anchors = list(explained.values()) or [item.item_id for item in result.items[:1]]
        return result, look_up_titles(client, wanted, anchors)

    result, titles = _ask(args, ask)
    if args.liked is not None:
        liked = ", ".join(_movie(item_id, titles) for item_id in args.liked)
        heading = f"Top {len(result.items)} for someone who liked {liked}"
    else:
        heading = f"Top {len(result.items)} for user {args.user}"
        if args.diversity:
            heading += f" (diversity {args.diversity:g})"
    _print_recommendations(result, args.json, heading, titles)
    return 0


def _recommend_users_file(args: argparse.Namespace) -> int:
    """One JSON line per user of ``--users-file``, in file order, asked ``--batch-size`` users per call."""
    from movierec.clients.client import RecommenderError, StreamQuery

    user_ids = read_user_ids(args.users_file)
    item_filter = _item_filter(args)

    def answer_all(client: RecommenderClient) -> int:
        """Print every user's line as its batch comes back; return how many users got an error."""
        failed = 0
        for start in range(0, len(user_ids), args.batch_size):
            batch = user_ids[start : start + args.batch_size]
            queries = [
                StreamQuery(str(user), user, args.k, tuple(args.exclude), item_filter, diversity=args.diversity)
                for user in batch
            ]
            for user_id, result in zip(batch, client.recommend_batch(queries), strict=True):
                line: dict[str, Any] = {"user_id": user_id}
                if isinstance(result, RecommenderError):
                    failed += 1
                    line["error"] = {"code": result.code.name, "message": result.message}
                else:
                    line["items"] = [dataclasses.asdict(item) for item in result.items]
                    line["model_version"] = result.model_version
                    line["index_version"] = result.index_version
                sys.stdout.write(json.dumps(line) + "\n")
            sys.stdout.flush()
        return failed

    failed = _ask(args, answer_all)
    if failed:
        raise MovierecError(f"{failed} of {len(user_ids)} users got an error instead of recommendations (see 'error')")
    return 0


def read_user_ids(path: Path) -> list[int]:
    """The user ids of a ``--users-file``: one integer per line, blank lines skipped; a bad line is named."""
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise MovierecError(f"cannot read the users file ({exc})", path=path) from None
    user_ids = []
    for number, line in enumerate(lines, 1):
        text = line.strip()
        if not text:
            continue
        try:
            user_ids.append(int(text))
        except ValueError:
            raise MovierecError(f"line {number}: {text[:40]!r} is not a user id", path=path) from None
    return user_ids


def _record(args: argparse.Namespace) -> int:
    recorded = _ask(args, lambda client: client.record_interactions(args.user, args.items, ratings=args.ratings))
    if args.json:
        print_json(dataclasses.asdict(recorded))
    else:
        print(f"recorded {recorded.recorded} event(s) for user {args.user} (log offset {recorded.offset})")
    return 0


def _reload(args: argparse.Namespace) -> int:
    result = _ask(args, lambda client: client.reload_index())
    if args.json:
        print_json(dataclasses.asdict(result))
    elif result.error:
        print(f"refused the store's CURRENT version: {result.error}; still serving {result.index_version}")
    else:
        verb = "swapped to" if result.swapped else "already serving"
        print(f"{verb} index {result.index_version} (model {result.model_version})")
    return 1 if result.error else 0


def _similar(args: argparse.Namespace) -> int:
    item_filter = _item_filter(args)

    def ask(client: RecommenderClient) -> tuple[Recommendations, dict[int, str]]:
        result = client.similar_items(args.item, args.k, user_id=args.user, item_filter=item_filter)
        if args.json:
            return result, {}
        return result, look_up_titles(client, {args.item}, anchors=[item.item_id for item in result.items[:1]])

    result, titles = _ask(args, ask)
    heading = f"{len(result.items)} movies similar to {_movie(args.item, titles)}"
    _print_recommendations(result, args.json, heading, titles)
    return 0


def look_up_titles(client: RecommenderClient, wanted: set[int], anchors: Sequence[int]) -> dict[int, str]:
    """Titles of the ``wanted`` movie ids, as far as the server's answers show them (best effort).

    The API has no lookup by id, and no answer holds the ids a table needs
    named: SimilarItems leaves out its query movie, Recommend the user's seen
    movies (where every "because" movie comes from). So this asks for the
    neighbours of each anchor, a movie near the wanted ones (the recommendation
    a "because" movie explains, the nearest similar movie), with
    k = min(max_k, catalogue size - 1): the whole catalogue when it fits the
    server's max_k, else the anchor's max_k nearest. One GetInfo plus at most
    one SimilarItems per anchor, stopping once every title is found; ids not
    found, or a failed lookup, stay unnamed (shown as ids).
    """
    from movierec.clients.client import RecommenderError

    titles: dict[int, str] = {}
    if not wanted or not anchors:
        return titles
    try:
        info = client.info()
        k = min(info.max_k, info.item_count - 1)
        for anchor in anchors:
            if k < 1 or wanted <= titles.keys():
                break
            neighbours = client.similar_items(anchor, k)
            titles.update((item.item_id, item.title) for item in neighbours.items if item.item_id in wanted)
    except RecommenderError:
        pass  # titles only decorate the table, which stands without them
    return titles


def _movie(item_id: int, titles: dict[int, str]) -> str:
    """``Heat (movie 6)`` when the title is known, else ``movie 6``."""
    return f"{titles[item_id]} (movie {item_id})" if item_id in titles else f"movie {item_id}"


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
    print_table(["field", "value"], [(name, _cell(value)) for name, value in rows])
    return 0


def _cell(value: Any) -> str:
    """Lists (the genres) as comma-separated names rather than a Python tuple; numbers made readable."""
    if isinstance(value, tuple | list):
        return ", ".join(map(str, value))
    if isinstance(value, float):
        return readable_number(value)
    return str(value)


def _ask(args: argparse.Namespace, call: Callable[[RecommenderClient], T]) -> T:
    """Run one call; every RecommenderError becomes a one-line MovierecError (exit 1)."""
    from movierec.clients.client import RecommenderClient, RecommenderError, ServerUnavailableError
    from movierec.server.auth import read_token_file

    token = read_token_file(args.token_file) if args.token_file is not None else None
    with RecommenderClient(args.server, timeout=args.timeout, tls_ca=args.tls_ca, token=token) as client:
        try:
            return call(client)
        except ServerUnavailableError as exc:
            raise MovierecError(f"cannot reach server at {args.server} ({exc.message})") from None
        except RecommenderError as exc:
            raise MovierecError(f"server at {args.server} refused the request: {exc}") from None


def _print_recommendations(result: Recommendations, as_json: bool, heading: str, titles: dict[int, str]) -> None:
    if as_json:
        answer = dataclasses.asdict(result)
        if not answer["request_id"]:  # the CLI sends none; an empty string would only look like a missing value
            del answer["request_id"]
        print_json(answer)
        return
    print(f"{heading} (index {result.index_version}, model {result.model_version})")
    rows = [
        (
            item.rank,
            item.title,
            "" if item.year is None else item.year,
            "|".join(item.genres),
            item.item_id,
            round(item.score, 4),
            "" if item.because_item_id is None else _movie(item.because_item_id, titles),
        )
        for item in result.items
    ]
    headers = ["rank", "title", "year", "genres", "movie id", "score", "because you liked"]
    explained = any(item.because_item_id is not None for item in result.items)
    print_table(headers if explained else headers[:-1], [row if explained else row[:-1] for row in rows])
