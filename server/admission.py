"""Admission: what the server refuses by size or by count before a request costs it memory or loop time.

Layers, outermost first:

* **gRPC core** refuses a message larger than :func:`receive_limit` (derived
  from the configured :class:`Limits`: the largest request any RPC could
  validly carry, times :data:`HEADROOM`) with RESOURCE_EXHAUSTED before a byte
  of it is parsed, and metadata beyond :data:`DEFAULT_MAX_METADATA_BYTES`;
  receive windows stay at HTTP/2's 64 KiB (no BDP probing), so what a client
  can push ahead of the server's reading is small.
* **grpc.aio** refuses calls beyond ``max_concurrent_rpcs`` (RESOURCE_EXHAUSTED).
* **The servicer** refuses streams beyond ``max_streams``, and each stream
  holds at most a :class:`ByteBudget` of requests read but not yet answered
  (and of answers not yet taken by the client); a full budget stops reading,
  so HTTP/2 flow control pushes back on the sender instead of the server's
  memory growing.
* :func:`size_error` refuses, in O(1), a request whose lists or request_id are
  longer than the limits allow: a stream reader drops such a message as soon
  as it is read, keeping only its error, and the engine refuses it before any
  work on its contents.

Also the operator-facing checks: :func:`exposure_warnings` (a public address
without TLS or a token) and :func:`check_token` (a minimum token length).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from collections.abc import Sequence
from typing import Protocol

from movierec.errors import MovierecError
from movierec.server.errors import RequestError, invalid_argument
from movierec.server.interaction_log import DEFAULT_MAX_ITEMS_PER_CALL
from movierec.server.limits import (
    DEFAULT_MAX_CONCURRENT_RPCS,
    DEFAULT_MAX_METADATA_BYTES,
    DEFAULT_MAX_STREAMS,
    DEFAULT_STREAM_BUFFER_BYTES,
    Limits,
)

__all__ = [
    "DEFAULT_MAX_CONCURRENT_RPCS",
    "DEFAULT_MAX_METADATA_BYTES",
    "DEFAULT_MAX_STREAMS",
    "DEFAULT_STREAM_BUFFER_BYTES",
    "ByteBudget",
    "StreamShare",
    "check_token",
    "count_error",
    "exposure_warnings",
    "is_loopback",
    "receive_limit",
    "server_options",
    "size_error",
]

# The receive limit is this many times the largest valid request, rounded up to RECEIVE_ROUNDING.
HEADROOM = 2
RECEIVE_ROUNDING = 64 * 1024
# Bytes budgeted per genre name when sizing requests (the longest MovieLens genre has 11 characters).
GENRE_NAME_BYTES = 64
# Shortest bearer token accepted by --token-file (12 random characters: ~72 bits as base64).
MIN_TOKEN_LENGTH = 12

# Wire bytes, at most: a varint (a negative int32/int64 takes 10), a one-byte tag plus a length prefix.
_VARINT = 10
_FIELD = 1 + 5


class SizedQuery(Protocol):
    """The list-bearing fields of every request that asks for items."""

    @property
    def request_id(self) -> str: ...
    @property
    def exclude_item_ids(self) -> Sequence[int]: ...


def receive_limit(
    limits: Limits, *, max_batch_size: int = 0, max_record_items: int = DEFAULT_MAX_ITEMS_PER_CALL
) -> int:
    """The largest message the server accepts, in bytes: :data:`HEADROOM` times the largest request that passes
    validation (Recommend*, SimilarItems, RecordInteractions, a RecommendBatch of ``max_batch_size``
    plain requests), rounded up to :data:`RECEIVE_ROUNDING`. With the defaults: 512 KiB.

    Anything larger cannot be a valid request, so gRPC refuses it (RESOURCE_EXHAUSTED) before parsing it.
    """
    request_id = _FIELD + limits.max_request_id_length  # budgeted as ASCII; the UTF-8 worst case is in HEADROOM
    exclusions = _FIELD + _VARINT * limits.max_exclude_item_ids
    genre_list = limits.max_filter_genres * (_FIELD + GENRE_NAME_BYTES)
    item_filter = _FIELD + 2 * genre_list + 2 * (1 + _VARINT)
    scalars = 3 * (1 + _VARINT)  # user_id, k, explain (or item_id)
    recommend = request_id + scalars + exclusions + item_filter
    for_items = recommend + exclusions  # item_ids, as many as exclusions
    record = request_id + (1 + _VARINT) + 3 * _FIELD + max_record_items * (_VARINT + 4 + _VARINT)
    batch = _FIELD + max_batch_size * (_FIELD + request_id + scalars)
    largest = max(recommend, for_items, record, batch)
    return -(-HEADROOM * largest // RECEIVE_ROUNDING) * RECEIVE_ROUNDING


def server_options(
    max_receive_bytes: int, max_metadata_bytes: int = DEFAULT_MAX_METADATA_BYTES
) -> list[tuple[str, int]]:
    """gRPC core channel arguments for the size limits (both metadata limits: gRPC has a soft and a hard one).

    No BDP probing: with it, gRPC grows each stream's receive window to megabytes on a fast link, and a
    client that keeps sending while the server has stopped reading parks that much in the server per
    stream (hundreds of MB for the "many streams" attack of ``benchmarks/abuse.py``). Requests are small,
    so the default 64 KiB window costs them nothing; answers flow by the client's window.
    """
    return [
        ("grpc.max_receive_message_length", max_receive_bytes),
        ("grpc.max_metadata_size", max_metadata_bytes),
        ("grpc.absolute_max_metadata_size", max_metadata_bytes),
        ("grpc.http2.bdp_probe", 0),
    ]


def count_error(field: str, count: int, limit: int, limit_name: str) -> RequestError | None:
    """INVALID_ARGUMENT naming ``field`` when ``count`` exceeds ``limit``; O(1)."""
    if count <= limit:
        return None
    return invalid_argument(field, f"at most {limit:,} {field} are allowed ({limit_name}), got {count:,}")


def request_id_error(request_id: str, limits: Limits) -> RequestError | None:
    """INVALID_ARGUMENT naming ``request_id`` when it is longer than ``limits`` allow (every call that carries
    one: it is echoed in the answer, and RecordInteractions stores it for a day); O(1)."""
    if len(request_id) <= limits.max_request_id_length:
        return None
    return invalid_argument(
        "request_id",
        f"request_id is {len(request_id):,} characters; at most {limits.max_request_id_length} "
        "are allowed (max_request_id_length)",
    )


def size_error(query: SizedQuery, limits: Limits) -> RequestError | None:
    """The first list or string of ``query`` longer than ``limits`` allow, as INVALID_ARGUMENT; O(1) whatever
    the sizes, so it can run on every message as it arrives."""
    error = request_id_error(query.request_id, limits)
    if error is not None:
        return error
    error = count_error(
        "exclude_item_ids", len(query.exclude_item_ids), limits.max_exclude_item_ids, "max_exclude_item_ids"
    )
    if error is not None:
        return error
    item_filter = getattr(query, "filter", None)
    if item_filter is not None:
        for name in ("include_genres", "exclude_genres"):
            count = len(getattr(item_filter, name))
            if count > limits.max_filter_genres:
                return invalid_argument(
                    "filter",
                    f"filter.{name} has {count:,} names; at most {limits.max_filter_genres} are allowed "
                    "(max_filter_genres)",
                )
    return None


class ByteBudget:
    """Bytes one direction of one stream may hold; waiting for room is the stream's backpressure.

    One waiter at a time (the stream's reader, or its answerer). An empty budget admits any single message,
    so one larger than the budget still flows, alone.
    """

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("a byte budget must be >= 1 byte")
        self.limit = limit
        self.used = 0
        self._released = asyncio.Event()

    async def acquire(self, nbytes: int) -> None:
        while self.used and self.used + nbytes > self.limit:
            self._released.clear()
            await self._released.wait()
        self.used += nbytes

    def release(self, nbytes: int) -> None:
        self.used -= nbytes
        self._released.set()


class StreamShare:
    """Keeps streams to ``share`` of the event loop while other calls are being answered.

    Every handler runs on the one event loop, first come first served, so a
    unary call that arrives while many streams have batches ready waits for
    all of them. While a unary call was answered in the last ``recent``
    seconds, the loop time of every stream's batches is counted per
    ``window``; once streams have had ``share`` of it, a stream waits for the
    next window before its next batch, leaving the loop to the other calls.
    With no other calls about, streams take all of it.
    """

    def __init__(self, share: float = 0.5, window: float = 0.02, recent: float = 0.25) -> None:
        if not 0 < share <= 1 or window <= 0 or recent < 0:
            raise ValueError("share must be in (0, 1], window > 0 and recent >= 0")
        self.share = share
        self.window = window
        self.recent = recent
        self._other_call_at = -float("inf")
        self._window_start = 0.0
        self._busy = 0.0

    def other_call(self) -> None:
        """A call that is not a stream's is being answered now."""
        self._other_call_at = time.monotonic()

    async def turn(self) -> None:
        """Wait, if streams have had their share of this window while other calls are about."""
        while True:
            now = time.monotonic()
            if now - self._other_call_at > self.recent:
                return
            if now - self._window_start >= self.window:
                self._window_start, self._busy = now, 0.0
            if self._busy < self.share * self.window:
                return
            await asyncio.sleep(self._window_start + self.window - now)

    def spent(self, seconds: float) -> None:
        """A stream's batch took ``seconds`` of the loop."""
        self._busy += seconds


def is_loopback(host: str) -> bool:
    """True when ``host`` names only loopback addresses (an unresolvable name counts as not loopback)."""
    name = host.strip("[]")
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        pass
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(name, None)}
    except OSError:
        return False
    return bool(addresses) and all(ipaddress.ip_address(str(a).split("%")[0]).is_loopback for a in addresses)


def exposure_warnings(host: str, *, tls: bool, token: bool) -> list[str]:
    """What an operator must hear when ``host`` is reachable from other machines without TLS or a token."""
    if is_loopback(host):
        return []
    warnings = []
    if not tls:
        warnings.append(
            f"serving {host} WITHOUT TLS: requests, answers and any token cross the network in cleartext "
            "(--tls-cert/--tls-key)"
        )
    if not token:
        warnings.append(
            f"serving {host} WITHOUT A TOKEN: anyone who reaches the port can record events and reload the "
            "index (--token-file)"
        )
    return warnings


def check_token(token: str) -> None:
    """Refuse a token too short to resist guessing (a clear error, before the server listens)."""
    if len(token) < MIN_TOKEN_LENGTH:
        raise MovierecError(
            f"the token is {len(token)} characters; at least {MIN_TOKEN_LENGTH} are required "
            "(e.g. 'openssl rand -hex 16' makes 32)"
        )
