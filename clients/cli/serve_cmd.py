"""``recctl serve``: run the gRPC recommender over an index store until SIGTERM."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from movierec.errors import MovierecError
from movierec.server.limits import (
    DEFAULT_MAX_CONCURRENT_RPCS,
    DEFAULT_MAX_EXCLUDE,
    DEFAULT_MAX_FILTER_GENRES,
    DEFAULT_MAX_K,
    DEFAULT_MAX_METADATA_BYTES,
    DEFAULT_MAX_REQUEST_ID,
    DEFAULT_MAX_STREAMS,
    DEFAULT_STREAM_BUFFER_BYTES,
    Limits,
)
from movierec.server.live_limits import DEFAULT_MAX_LIVE_ITEMS_PER_USER


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "serve",
        help="serve recommendations over gRPC (health + reflection included)",
        description="Bind, report NOT_SERVING while the index loads and warms up, then SERVING. "
        "SIGTERM or Ctrl-C drains in-flight calls for up to --grace seconds and exits 0. "
        "Serving a store root, the server follows its CURRENT pointer (every --poll seconds, on SIGHUP and on "
        "the ReloadIndex RPC) and swaps versions without dropping a call; a version that fails to load is "
        "refused (see recctl info) and the old one keeps serving.",
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
        "--max-batch",
        type=_positive,
        default=1000,
        metavar="N",
        help="most requests one RecommendBatch call may carry (default 1000)",
    )
    _add_admission_flags(parser)
    parser.add_argument(
        "--ranked-depth",
        type=_non_negative,
        default=None,
        metavar="N",
        help="places of every user's ranking precomputed at load, so most requests skip the scan; "
        "0: scan every request (default 256)",
    )
    parser.add_argument(
        "--grace", type=float, default=10.0, metavar="SECONDS", help="drain time on shutdown (default 10)"
    )
    parser.add_argument(
        "--events",
        type=_events_spec,
        metavar="FILE|URL",
        help="live events for RecordInteractions: a SQLite file (default: interactions.sqlite3 in the index "
        "store), or redis://HOST:PORT/DB shared by every replica (run Redis with appendonly yes, appendfsync always)",
    )
    parser.add_argument(
        "--max-live-events-per-user",
        type=_positive,
        default=DEFAULT_MAX_LIVE_ITEMS_PER_USER,
        metavar="N",
        help="distinct movies one user may have recorded and not yet compacted by a rebuild, in the SQLite log "
        f"or Redis; RESOURCE_EXHAUSTED beyond (default {DEFAULT_MAX_LIVE_ITEMS_PER_USER})",
    )
    parser.add_argument(
        "--workers",
        type=_workers,
        default=1,
        metavar="N|auto",
        help="server processes sharing the port (SO_REUSEPORT), each on its own core; auto: one per CPU "
        "(default 1: this process serves)",
    )
    parser.add_argument(
        "--poll",
        type=_non_negative_float,
        default=1.0,
        metavar="SECONDS",
        help="how often to check the store's CURRENT for a new version; 0: only on SIGHUP/ReloadIndex (default 1)",
    )
    parser.add_argument(
        "--metrics-port", type=_port, metavar="PORT", help="serve Prometheus metrics on 127.0.0.1:PORT (0: any free)"
    )
    parser.add_argument(
        "--http-port",
        type=_port,
        metavar="PORT",
        help="also serve the HTTP/JSON API on HOST:PORT (POST /recommend, /similar, GET /health, /info; "
        "OpenAPI docs at /docs; same token and TLS as gRPC; every --workers process answers on it; 0: any free port)",
    )
    parser.add_argument("--tls-cert", type=Path, metavar="PEM", help="serve TLS only, with this certificate chain")
    parser.add_argument("--tls-key", type=Path, metavar="PEM", help="private key of --tls-cert")
    parser.add_argument(
        "--token-file",
        type=Path,
        metavar="FILE",
        help="require 'authorization: Bearer <token>' with the token in FILE (health and reflection stay open)",
    )
    parser.add_argument("--json", action="store_true", help="one JSON object per lifecycle event on stdout")
    parser.set_defaults(func=_serve)


def _add_admission_flags(parser: argparse.ArgumentParser) -> None:
    """What the server refuses by size or count before it costs memory (README "Hardening")."""
    parser.add_argument(
        "--max-filter-genres",
        type=_non_negative,
        default=DEFAULT_MAX_FILTER_GENRES,
        metavar="N",
        help="most genre names in one filter list, never more than the catalog has "
        f"(default {DEFAULT_MAX_FILTER_GENRES})",
    )
    parser.add_argument(
        "--max-request-id",
        type=_non_negative,
        default=DEFAULT_MAX_REQUEST_ID,
        metavar="CHARS",
        help=f"longest request_id (default {DEFAULT_MAX_REQUEST_ID})",
    )
    parser.add_argument(
        "--max-receive",
        type=_positive,
        default=None,
        metavar="BYTES",
        help="largest message accepted, refused unparsed beyond (default: twice the largest valid request "
        "under the limits above, rounded up to 64 KiB: 512 KiB with every default)",
    )
    parser.add_argument(
        "--max-concurrent-rpcs",
        type=_positive,
        default=DEFAULT_MAX_CONCURRENT_RPCS,
        metavar="N",
        help="calls in progress at once, streams included; RESOURCE_EXHAUSTED beyond "
        f"(default {DEFAULT_MAX_CONCURRENT_RPCS})",
    )
    parser.add_argument(
        "--max-streams",
        type=_positive,
        default=DEFAULT_MAX_STREAMS,
        metavar="N",
        help=f"RecommendStream calls open at once; RESOURCE_EXHAUSTED beyond (default {DEFAULT_MAX_STREAMS})",
    )
    parser.add_argument(
        "--stream-buffer",
        type=_positive,
        default=DEFAULT_STREAM_BUFFER_BYTES,
        metavar="BYTES",
        help="bytes each stream holds per direction (requests not yet answered, answers not yet read) before it "
        f"stops reading (default {DEFAULT_STREAM_BUFFER_BYTES})",
    )
    parser.add_argument(
        "--max-metadata",
        type=_positive,
        default=DEFAULT_MAX_METADATA_BYTES,
        metavar="BYTES",
        help=f"request metadata (headers) a call may carry (default {DEFAULT_MAX_METADATA_BYTES})",
    )


def _serve(args: argparse.Namespace) -> int:
    import asyncio
    import logging

    from movierec.server.app import DEFAULT_RANKED_DEPTH, ServerConfig, ServerEvent, serve

    # Swaps, refused versions (with the reason) and log compaction go to stderr; stdout stays lifecycle events.
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("movierec").setLevel(logging.INFO)

    def announce(event: ServerEvent) -> None:
        line = json.dumps({"event": event.kind, "message": event.message, **event.data}) if args.json else event.message
        print(line, flush=True)

    config = ServerConfig(
        index_path=args.index,
        host=args.host,
        port=args.port,
        limits=Limits(
            max_k=args.max_k,
            max_exclude_item_ids=args.max_exclude,
            max_filter_genres=args.max_filter_genres,
            max_request_id_length=args.max_request_id,
        ),
        max_concurrent_rpcs=args.max_concurrent_rpcs,
        max_streams=args.max_streams,
        stream_buffer_bytes=args.stream_buffer,
        max_metadata_bytes=args.max_metadata,
        max_receive_bytes=args.max_receive,
        grace_seconds=args.grace,
        max_batch_size=args.max_batch,
        ranked_depth=DEFAULT_RANKED_DEPTH if args.ranked_depth is None else args.ranked_depth,
        events_path=args.events if isinstance(args.events, Path) else None,
        events_url=args.events if isinstance(args.events, str) else None,
        max_live_events_per_user=args.max_live_events_per_user,
        poll_seconds=args.poll,
        metrics_port=args.metrics_port,
        http_port=args.http_port,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        token_file=args.token_file,
    )
    if (args.tls_cert is None) != (args.tls_key is None):
        raise MovierecError("TLS needs both --tls-cert and --tls-key")
    check_index_path(args.index)
    try:
        if args.workers > 1:
            from movierec.server.workers import serve_workers

            serve_workers(config, args.workers, announce)
        else:
            asyncio.run(serve(config, announce))
    except OSError as exc:
        raise MovierecError(str(exc)) from None
    return 0


def check_index_path(path: Path) -> None:
    """Refuse a path that is neither an index version nor a store with a CURRENT version, before the port opens.

    The server loads (and verifies every checksum of) the index only after it
    listens, so that health checks answer NOT_SERVING meanwhile; a typo in
    ``--index`` would otherwise announce "listening" and then die. This reads
    the manifest only (milliseconds): a damaged file is still found by the load.
    """
    from movierec.bundle import read_manifest
    from movierec.index.layout import INDEX_KIND
    from movierec.index.serving import resolve_version_dir

    if not path.exists():
        raise MovierecError("no such index store or version (build one with 'recctl index build')", path=path)
    read_manifest(resolve_version_dir(path), INDEX_KIND, verify=False)


def _events_spec(text: str) -> str | Path:
    """A Redis URL (checked now, so a typo fails before the port opens) or a file path."""
    if not text.startswith(("redis://", "rediss://")):
        return Path(text)
    from movierec.server.redis_events import InvalidEventsUrl, parse_events_url

    try:
        parse_events_url(text)
    except InvalidEventsUrl as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _workers(text: str) -> int:
    if text == "auto":
        from movierec.server.workers import auto_workers

        return auto_workers()
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1 or auto, got {value}")
    return value


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


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:  # also refuses NaN
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value
