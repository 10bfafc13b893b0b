"""``recctl index build | rebuild | prune | rollback | info | add-items | refresh-items``: versioned FAISS index
bundles, CURRENT."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from movierec.clients.cli.output import print_json, print_table
from movierec.errors import MovierecError

if TYPE_CHECKING:
    from movierec.index.events import SeenEvents

T = TypeVar("T")
# What `index info` shows of a model's metrics.json: the accuracy figures the README reports.
HEADLINE_METRICS = ("recall@20", "ndcg@20")


def register(commands: Any) -> None:
    parser = commands.add_parser("index", help="build and inspect FAISS index versions")
    actions = parser.add_subparsers(dest="index_command", metavar="ACTION")
    actions.required = True

    build = actions.add_parser("build", help="index one model bundle into a new version")
    build.add_argument("--model", type=Path, required=True, metavar="BUNDLE", help="model bundle directory")
    build.add_argument("--out", type=Path, required=True, metavar="ROOT", help="index store (created if missing)")
    _add_kind_options(build, default_kind="flat")
    build.add_argument("--no-switch", action="store_true", help="do not move CURRENT to the new version")
    build.add_argument("--json", action="store_true", help="machine-readable output")
    build.set_defaults(func=_build)

    rebuild = actions.add_parser("rebuild", help="index the newest model bundle under --models and switch CURRENT")
    rebuild.add_argument("--models", type=Path, required=True, metavar="ROOT", help="directory of model bundles")
    rebuild.add_argument("--out", type=Path, required=True, metavar="ROOT", help="index store")
    _add_kind_options(rebuild, default_kind=None)
    rebuild.add_argument(
        "--events",
        type=events_spec,
        metavar="LOG|URL",
        help="live events to compact into the new version: the server's SQLite file, or the redis://HOST:PORT/DB "
        "the replicas share",
    )
    rebuild.add_argument("--no-switch", action="store_true", help="do not move CURRENT to the new version")
    rebuild.add_argument("--json", action="store_true", help="machine-readable output")
    rebuild.set_defaults(func=_rebuild)

    prune = actions.add_parser("prune", help="delete old versions (never the current one)")
    prune.add_argument("--index", type=Path, required=True, metavar="ROOT", help="index store")
    prune.add_argument("--keep", type=int, default=3, metavar="N", help="newest versions to keep (default 3)")
    prune.add_argument(
        "--events",
        type=events_spec,
        metavar="LOG|URL",
        help="live events to truncate afterwards, through what every remaining version holds (never further)",
    )
    prune.add_argument("--json", action="store_true", help="machine-readable output")
    prune.set_defaults(func=_prune)

    rollback = actions.add_parser(
        "rollback", help="move CURRENT back to an older version (verified first; live events stay excluded)"
    )
    rollback.add_argument("--index", type=Path, required=True, metavar="ROOT", help="index store")
    rollback.add_argument("--to", metavar="vNNNN", help="version to serve (default: the one before CURRENT)")
    rollback.add_argument("--json", action="store_true", help="machine-readable output")
    rollback.set_defaults(func=_rollback)

    info = actions.add_parser("info", help="list versions, the current one and what each holds")
    info.add_argument("--index", type=Path, required=True, metavar="ROOT", help="index store")
    info.add_argument("--no-verify", action="store_true", help="skip re-checking file checksums (faster)")
    info.add_argument("--json", action="store_true", help="machine-readable output")
    info.set_defaults(func=_info)

    add_items = actions.add_parser(
        "add-items",
        help="add movies nobody has rated yet (vectors from their genres and year) as a new version, switch CURRENT",
    )
    add_items.add_argument("--index", type=Path, required=True, metavar="ROOT", help="index store")
    add_items.add_argument(
        "--movies", type=Path, required=True, metavar="FILE", help="MovieLens movies file (movies.dat or movies.csv)"
    )
    add_items.add_argument("--json", action="store_true", help="machine-readable output")
    add_items.set_defaults(func=_add_items)

    refresh = actions.add_parser(
        "refresh-items",
        help="move movies added by add-items toward the users who interacted with them (live events), compact the "
        "events into a new version, switch CURRENT",
    )
    refresh.add_argument("--index", type=Path, required=True, metavar="ROOT", help="index store")
    refresh.add_argument(
        "--events",
        type=events_spec,
        required=True,
        metavar="LOG|URL",
        help="live events: the server's SQLite file, or the redis://HOST:PORT/DB event store",
    )
    refresh.add_argument("--json", action="store_true", help="machine-readable output")
    refresh.set_defaults(func=_refresh_items)


def _add_kind_options(parser: argparse.ArgumentParser, default_kind: str | None) -> None:
    kind_help = "flat (exact, default) or hnsw (approximate, for large catalogs)"
    if default_kind is None:
        kind_help = "flat or hnsw (default: the kind of the current version, else flat)"
    parser.add_argument("--kind", choices=("flat", "hnsw"), default=default_kind, help=kind_help)
    parser.add_argument(
        "--ranked-depth",
        type=_non_negative,
        default=None,  # movierec.index.ranked.DEFAULT_DEPTH, read when used: importing it here loads faiss
        metavar="N",
        help="places of every user's ranking a flat version stores, memory-mapped by servers instead of computed "
        "at load (fewer under the memory cap); 0: none (default 256)",
    )
    parser.add_argument("--hnsw-m", type=int, metavar="M", help="HNSW graph degree (default 32)")
    parser.add_argument("--ef-search", type=int, metavar="N", help="HNSW query beam width (default 128)")
    parser.add_argument("--ef-construction", type=int, metavar="N", help="HNSW build beam width (default 200)")


def _hnsw_options(args: argparse.Namespace) -> dict[str, Any]:
    given = {"m": args.hnsw_m, "ef_search": args.ef_search, "ef_construction": args.ef_construction}
    options = {name: value for name, value in given.items() if value is not None}
    if options and args.kind == "flat":
        raise MovierecError("--hnsw-m/--ef-search/--ef-construction need --kind hnsw")
    return options


def _build(args: argparse.Namespace) -> int:
    from movierec.index import build_index

    path = _guarded(
        lambda: build_index(
            args.model,
            args.out,
            kind=args.kind,
            make_current=not args.no_switch,
            progress=not args.json,
            ranked_depth=_ranked_depth(args),
            **_hnsw_options(args),
        )
    )
    return _report_built(path, args)


def _rebuild(args: argparse.Namespace) -> int:
    from movierec.index import rebuild_index

    events = _read_events(args.events) if args.events is not None else None
    path = _guarded(
        lambda: rebuild_index(
            args.models,
            args.out,
            kind=args.kind,
            make_current=not args.no_switch,
            progress=not args.json,
            new_events=events,
            ranked_depth=_ranked_depth(args),
            **_hnsw_options(args),
        )
    )
    from movierec.index.add_items import carried_items

    status = _report_built(path, args, carried_items=len(carried_items(path)))
    if args.events is not None:
        _truncate_events(args.events, args.out, quiet=args.json)
    return status


def _truncate_events(spec: str | Path, index_root: Path, *, quiet: bool) -> int:
    """Truncate the live events through the no-loss rule's safe offset: what every retained version holds."""
    from movierec.server.live_events import truncate_logged_events, truncate_safely

    if isinstance(spec, Path):
        deleted = truncate_logged_events(spec, index_root)
    else:
        from movierec.server.event_stores import open_event_store

        store = open_event_store(spec, follow=False)
        try:
            deleted = truncate_safely(store, index_root)
        finally:
            store.close()
    if deleted and not quiet:
        print(f"live events: {deleted} held by every retained version, dropped from {spec}")
    return deleted


def events_spec(text: str) -> str | Path:
    """``--events``: a Redis URL stays a string, anything else is a file path."""
    return text if text.startswith(("redis://", "rediss://")) else Path(text)


def _read_events(spec: str | Path) -> SeenEvents:
    """A consistent snapshot of the live events: SQLite WAL lets this run beside the servers appending to the
    file; Redis answers one range read up to the newest offset at the call."""
    if isinstance(spec, Path):
        from movierec.server import read_logged_events

        return read_logged_events(spec)
    from movierec.server.event_stores import open_event_store

    store = open_event_store(spec, follow=False)
    try:
        return store.export()
    finally:
        store.close()


def _guarded(action: Callable[[], T]) -> T:
    """Turn parameter errors (ValueError from the index layer) into one-line CLI errors."""
    try:
        return action()
    except ValueError as exc:
        raise MovierecError(str(exc)) from None


def _report_built(path: Path, args: argparse.Namespace, *, carried_items: int | None = None) -> int:
    """``carried_items`` (rebuild only): movies added by add-items that the new bundle lacked, carried forward."""
    from movierec.index.info import describe_version

    info = describe_version(path, current=not args.no_switch, verify=False)
    if args.json:
        print_json(info.to_json() | ({} if carried_items is None else {"carried_items": carried_items}))
    else:
        switched = "CURRENT now points at it" if not args.no_switch else "CURRENT unchanged (--no-switch)"
        print(f"built {path} ({info.kind}, {info.n_items} items, dim {info.dim}); {switched}")
        if info.ranked_depth:
            print(f"ranked prefixes stored: {_ranked_summary(info.ranked_depth, info.ranked_bytes)}")
        if info.events:
            print(f"live events compacted: {info.events} (log offsets through {info.events_through})")
        if carried_items:
            print(f"movies added by add-items carried forward (not in the new bundle): {carried_items}")
    return 0


def _prune(args: argparse.Namespace) -> int:
    from movierec.index import prune_versions

    removed = _guarded(lambda: prune_versions(args.index, args.keep))
    truncated = None if args.events is None else _truncate_events(args.events, args.index, quiet=True)
    if args.json:
        print_json({"removed": removed} | ({} if truncated is None else {"events_truncated": truncated}))
    else:
        print(f"removed {len(removed)} version(s){': ' + ', '.join(removed) if removed else ''}")
        if truncated is not None:
            print(f"live events: {truncated} held by every remaining version, dropped from {args.events}")
    return 0


def _rollback(args: argparse.Namespace) -> int:
    from movierec.index.rollback import rollback

    _require_store(args.index)
    moved = rollback(args.index, args.to)
    if args.json:
        print_json(moved.to_json())
    elif moved.previous == moved.current:
        print(f"CURRENT already points at {moved.current} (verified); nothing moved")
    else:
        print(
            f"CURRENT: {moved.previous or '(none)'} -> {moved.current} (every checksum verified); running servers"
            " swap to it on their next poll, and live events it lacks are still excluded"
        )
    return 0


def _info(args: argparse.Namespace) -> int:
    from movierec.index.info import describe_store

    _require_store(args.index)
    store = describe_store(args.index, verify=not args.no_verify)
    if not store.versions and store.current is None and store.current_problem is None:
        raise MovierecError("not an index store: no versions (v0001, ...) and no CURRENT pointer", path=args.index)
    if args.json:
        print_json(store.to_json())
        return 0
    print(f"index store {store.root}: current = {store.current or '(none)'}")
    if store.current_problem:
        print(f"CURRENT pointer problem: {store.current_problem}")
    rows = [
        [
            ("* " if v.current else "  ") + v.version,
            v.kind or "-",
            v.dim if v.dim is not None else "-",
            v.n_items if v.n_items is not None else "-",
            v.n_users if v.n_users is not None else "-",
            v.created_at or "-",
            v.source_model or "-",
            _ranked_summary(v.ranked_depth, v.ranked_bytes) if v.ranked_depth else "-",
            _metrics_summary(v.metrics) if v.ok else f"CORRUPT: {v.problem}",
        ]
        for v in store.versions
    ]
    print_table(
        ["version", "kind", "dim", "items", "users", "created", "source model", "ranked", "metrics / status"], rows
    )
    return 0


def _add_items(args: argparse.Namespace) -> int:
    from movierec.index.add_items import NewMovies, add_items
    from movierec.trainer.data.metadata import read_csv_movies, read_dat_movies  # numpy only, never torch

    _require_store(args.index)
    readers = {".dat": read_dat_movies, ".csv": read_csv_movies}
    if args.movies.suffix not in readers:
        raise MovierecError("expected a MovieLens movies file ending in .dat or .csv", path=args.movies)
    movies = readers[args.movies.suffix](args.movies)
    added = add_items(
        args.index,
        NewMovies(movies.item_ids.tolist(), movies.titles, movies.years, movies.genres),
        progress=not args.json,
    )
    if args.json:
        print_json(added.to_json())
    else:
        print(
            f"added {added.added} movie(s) to {added.version} (vectors from the {added.vectors_from} item features); "
            "CURRENT now points at it, running servers swap to it on their next poll"
        )
    return 0


def _refresh_items(args: argparse.Namespace) -> int:
    from movierec.index.add_items import MAX_INTERACTIONS, SHRINKAGE, refresh_items

    _require_store(args.index)
    refreshed = refresh_items(args.index, _read_events(args.events), progress=not args.json)
    if args.json:
        print_json(refreshed.to_json())
    else:
        moved = {item: n for item, n in refreshed.users_blended.items() if n}
        print(
            f"built {refreshed.version}: {len(moved)} of {len(refreshed.users_blended)} added movie(s) moved toward "
            f"their first users (shrinkage {SHRINKAGE:g}); CURRENT now points at it"
        )
        if refreshed.past_cap:
            print(
                f"{len(refreshed.past_cap)} movie(s) have more than {MAX_INTERACTIONS} users, only the first "
                f"{MAX_INTERACTIONS} are blended: retrain (recctl train) to learn them from all their interactions"
            )
    _truncate_events(args.events, args.index, quiet=args.json)
    return 0


def _require_store(root: Path) -> None:
    """One bundle (an index version, a model) is not a store; say which folder to pass instead."""
    from movierec.bundle import MANIFEST_NAME

    if (root / MANIFEST_NAME).is_file():
        raise MovierecError(
            f"a single bundle, not an index store: pass the store that holds it ({root.parent})", path=root
        )


def _ranked_depth(args: argparse.Namespace) -> int:
    from movierec.index.ranked import DEFAULT_DEPTH

    return DEFAULT_DEPTH if args.ranked_depth is None else int(args.ranked_depth)


def _ranked_summary(depth: int, size: int) -> str:
    """Stored ranked prefixes as ``depth 256, 12.3 MiB``."""
    return f"depth {depth}, {size / 2**20:.1f} MiB"


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _metrics_summary(metrics: dict[str, Any]) -> str:
    """The model's headline test metrics (Recall@20, NDCG@20) when its metrics.json has them, else up to four
    of its numbers, nested keys joined by dots (e.g. test.recall@10)."""
    flat = _flatten(metrics)
    shown = [name for name in HEADLINE_METRICS if name in flat] or sorted(flat)[:4]
    return " ".join(f"{name}={_number(flat[name])}" for name in shown) or "-"


def _number(value: float) -> str:
    return str(value) if isinstance(value, int) else f"{value:.4f}"


def _flatten(metrics: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """Numeric leaves by dotted name; integers (counts, epochs) stay integers."""
    flat: dict[str, float] = {}
    for name, value in metrics.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{name}."))
        elif isinstance(value, int | float) and not isinstance(value, bool):
            flat[f"{prefix}{name}"] = value
    return flat
