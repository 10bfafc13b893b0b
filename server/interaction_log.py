"""Live "watched" events: durable before they are acknowledged, excluded from the very next answer.

Storage is SQLite in WAL mode (stdlib ``sqlite3``) rather than a hand-framed
append-only file, because:

* ``recctl index rebuild`` runs in another process while the server keeps
  appending; WAL gives that reader a consistent snapshot and lets it delete the
  compacted prefix (:meth:`InteractionLog.truncate_through`) without any file
  locking protocol of our own;
* with ``synchronous=FULL`` every commit fsyncs the WAL before returning, and
  recovery after a crash or a torn write is SQLite's (checksummed WAL frames; a
  frame that fails its checksum ends the log), which is far better tested than
  a CRC framing we would write;
* a recorded call is one transaction, so a call's items are stored all or none.

The durable log is the source of truth; in memory each user has an immutable
snapshot (sorted ``int64`` arrays) that writers replace whole, so the hot path
(:meth:`InteractionLog.extra_seen`) is one dict lookup with no lock.

Offsets are SQLite ``AUTOINCREMENT`` row ids: strictly increasing and never
reused, even after the prefix is deleted, so "everything through offset N" is
stable across compactions. A bundle built from :meth:`export` records the last
offset it merged; the server then opens the log with ``replay_after`` set to it.
"""

from __future__ import annotations

import math
import sqlite3
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import numpy as np
import numpy.typing as npt

from movierec.errors import MovierecError
from movierec.index.events import SeenEvents

LOG_FILE_NAME = "interactions.sqlite3"
"""The log's file name beside the index root (plus SQLite's ``-wal``/``-shm`` companions)."""

SCHEMA_VERSION = 1
DEFAULT_MAX_ITEMS_PER_CALL = 10_000
DEFAULT_LIKE_THRESHOLD = 4.0
"""Ratings at or above this count as liked (the evaluation's positives are ratings >= 4)."""

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_BUSY_TIMEOUT_S = 30.0
_EMPTY = np.zeros(0, dtype=np.int64)
_EMPTY.setflags(write=False)

_SCHEMA = """
CREATE TABLE interactions (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,  -- the offset: increasing, never reused
    user_id INTEGER NOT NULL,
    item_id INTEGER NOT NULL,
    rating REAL,                            -- NULL: an interaction without a rating (e.g. "watched")
    event_time INTEGER NOT NULL,            -- unix seconds; the server's clock when the client sent none
    recorded_at REAL NOT NULL               -- unix seconds when the server stored it
)
"""


class InvalidInteractions(MovierecError):
    """A record call the client must fix (the server answers INVALID_ARGUMENT).

    ``field`` names the request field at fault, so the server can blame it in
    ``google.rpc.BadRequest`` without parsing the message.
    """

    def __init__(self, message: str, *, field: str) -> None:
        super().__init__(message)
        self.field = field


class InteractionLogError(MovierecError):
    """The log file cannot be opened, read or written (the server answers UNAVAILABLE or refuses to start)."""


@dataclass(frozen=True)
class _UserView:
    """One user's live interactions; replaced whole on every write, never mutated."""

    seen: npt.NDArray[np.int64]
    liked: npt.NDArray[np.int64]


class InteractionLog:
    """A durable, replayed log of per-user interactions with a lock-free read path.

    ``replay_after`` skips events already merged into the bundle being served.
    Users and items are dataset ids; whether they are known to the model is the
    server's concern (new users are folded in from :meth:`liked`).
    """

    def __init__(
        self,
        path: Path,
        *,
        replay_after: int = 0,
        like_threshold: float = DEFAULT_LIKE_THRESHOLD,
        max_items_per_call: int = DEFAULT_MAX_ITEMS_PER_CALL,
    ) -> None:
        if replay_after < 0:
            raise ValueError("replay_after must be >= 0")
        if max_items_per_call < 1:
            raise ValueError("max_items_per_call must be >= 1")
        self.path = Path(path)
        self.like_threshold = like_threshold
        self.max_items_per_call = max_items_per_call
        self._write_lock = threading.Lock()
        self._conn = _connect(self.path)
        self._ratings: dict[int, dict[int, float]] = {}
        self._views: dict[int, _UserView] = {}
        self._last_offset = 0
        try:
            self._replay(replay_after)
        except BaseException:
            self._conn.close()
            raise

    # -- hot path ---------------------------------------------------------------------------------

    def extra_seen(self, user_id: int) -> npt.NDArray[np.int64]:
        """Sorted item ids ``user_id`` interacted with live (read-only; empty when none)."""
        view = self._views.get(user_id)
        return _EMPTY if view is None else view.seen

    def liked(self, user_id: int) -> npt.NDArray[np.int64]:
        """Sorted item ids whose latest event has no rating or one >= ``like_threshold``: fold-in input."""
        view = self._views.get(user_id)
        return _EMPTY if view is None else view.liked

    @property
    def last_offset(self) -> int:
        """Offset of the newest event this instance has stored or replayed (0 when none)."""
        return self._last_offset

    # -- writes -----------------------------------------------------------------------------------

    def record(
        self,
        user_id: int,
        item_ids: Sequence[int] | npt.NDArray[np.integer],
        ratings: Sequence[float | None] | None = None,
        times: Sequence[int] | npt.NDArray[np.integer] | None = None,
    ) -> int:
        """Store one call's events durably (one fsync'd transaction), then publish them; return the last offset.

        When this returns, the events survive kill -9 and power loss and the
        next :meth:`extra_seen` includes them. Raises :class:`InvalidInteractions`
        for bad input (nothing stored) and :class:`InteractionLogError` when the
        disk refuses the write (nothing stored, nothing published).
        """
        rows = _validated_rows(user_id, item_ids, ratings, times, self.max_items_per_call)
        with self._write_lock:
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                try:
                    self._conn.executemany(
                        "INSERT INTO interactions (user_id, item_id, rating, event_time, recorded_at)"
                        " VALUES (?, ?, ?, ?, ?)",
                        rows,
                    )
                    last = int(self._conn.execute("SELECT last_insert_rowid()").fetchone()[0])
                    self._conn.execute("COMMIT")
                except BaseException:
                    if self._conn.in_transaction:  # a failed COMMIT may already have rolled back
                        self._conn.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                raise InteractionLogError(f"could not store interactions ({exc})", path=self.path) from None
            self._apply(user_id, [(row[1], row[2]) for row in rows])
            self._last_offset = last
        return last

    # -- compaction -------------------------------------------------------------------------------

    def export(self, after: int = 0) -> SeenEvents:
        """Every stored event with offset > ``after``, oldest first, read as one consistent snapshot.

        ``recctl index rebuild`` merges these into the next bundle's seen sets
        and records ``last_offset`` in it, then calls :meth:`truncate_through`.
        """
        try:
            with self._write_lock:
                rows = self._conn.execute(
                    "SELECT seq, user_id, item_id, rating, event_time FROM interactions WHERE seq > ? ORDER BY seq",
                    (after,),
                ).fetchall()
        except sqlite3.Error as exc:
            raise InteractionLogError(f"could not read interactions ({exc})", path=self.path) from None
        return _events_from_rows(rows)

    def truncate_through(self, offset: int) -> int:
        """Delete events with offset <= ``offset`` (now part of a bundle); return how many were deleted.

        Call it only once a bundle holding those events is current: this
        instance forgets them too, so it must already serve from that bundle.
        """
        with self._write_lock:
            try:
                deleted = self._conn.execute("DELETE FROM interactions WHERE seq <= ?", (offset,)).rowcount
                self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error as exc:
                raise InteractionLogError(f"could not truncate the log ({exc})", path=self.path) from None
            self._replay_locked(offset)
        return int(deleted)

    # -- lifecycle --------------------------------------------------------------------------------

    def close(self) -> None:
        with self._write_lock:
            self._conn.close()

    def __enter__(self) -> InteractionLog:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- internals --------------------------------------------------------------------------------

    def _replay(self, after: int) -> None:
        with self._write_lock:
            self._replay_locked(after)

    def _replay_locked(self, after: int) -> None:
        """Rebuild every user's view from the events after ``after``, then swap the views in at once.

        Readers keep seeing the old views until the final assignment (one
        reference swap, atomic under the GIL), so a compaction never makes a
        live event briefly disappear from :meth:`extra_seen`.
        """
        try:
            cursor = self._conn.execute(
                "SELECT user_id, item_id, rating FROM interactions WHERE seq > ? ORDER BY seq", (after,)
            )
            per_user: dict[int, list[tuple[int, float | None]]] = {}
            for user_id, item_id, rating in cursor:
                per_user.setdefault(user_id, []).append((item_id, rating))
            max_seq = self._conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'interactions'").fetchone()
        except sqlite3.Error as exc:
            raise InteractionLogError(f"could not replay the log ({exc})", path=self.path) from None
        ratings: dict[int, dict[int, float]] = {}
        views: dict[int, _UserView] = {}
        for user_id, events in per_user.items():
            views[user_id] = _fold_events(ratings.setdefault(user_id, {}), events, self.like_threshold)
        self._ratings, self._views = ratings, views
        self._last_offset = int(max_seq[0]) if max_seq else 0

    def _apply(self, user_id: int, events: Sequence[tuple[int, float | None]]) -> None:
        """Fold events into the user's latest ratings and publish a fresh immutable view (caller holds the lock)."""
        self._views[user_id] = _fold_events(self._ratings.setdefault(user_id, {}), events, self.like_threshold)


def _fold_events(
    latest: dict[int, float], events: Sequence[tuple[int, float | None]], like_threshold: float
) -> _UserView:
    """Update ``latest`` (item id -> latest rating, NaN: none) with ``events`` and return the user's new view."""
    for item_id, rating in events:
        latest[item_id] = math.nan if rating is None else rating
    items = np.fromiter(latest.keys(), dtype=np.int64, count=len(latest))
    values = np.fromiter(latest.values(), dtype=np.float64, count=len(latest))
    order = np.argsort(items)
    items, values = items[order], values[order]
    liked = items[np.isnan(values) | (values >= like_threshold)]
    items.setflags(write=False)
    liked.setflags(write=False)
    return _UserView(seen=items, liked=liked)


def _connect(path: Path) -> sqlite3.Connection:
    """Open (creating if absent) a log database in WAL mode with fsync on every commit."""
    if path.exists() and not path.is_file():
        raise InteractionLogError("is not a file", path=path)
    if not path.parent.is_dir():
        raise InteractionLogError("its folder does not exist", path=path)
    try:
        conn = sqlite3.connect(path, timeout=_BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False)
    except sqlite3.Error as exc:
        raise InteractionLogError(f"cannot open the interaction log ({exc})", path=path) from None
    try:
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise InteractionLogError(f"SQLite refused WAL mode (got {mode!r})", path=path)
        conn.execute("PRAGMA synchronous=FULL")
        _ensure_schema(conn, path)
    except sqlite3.Error as exc:
        conn.close()
        raise InteractionLogError(f"not a readable interaction log ({exc})", path=path) from None
    except BaseException:
        conn.close()
        raise
    return conn


def _ensure_schema(conn: sqlite3.Connection, path: Path) -> None:
    version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if version == 0 and not tables:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(_SCHEMA)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        conn.execute("COMMIT")
    elif version != SCHEMA_VERSION or "interactions" not in tables:
        raise InteractionLogError(
            f"not an interaction log of this build (schema version {version}, expected {SCHEMA_VERSION})", path=path
        )


def _validated_rows(
    user_id: int,
    item_ids: Sequence[int] | npt.NDArray[np.integer],
    ratings: Sequence[float | None] | None,
    times: Sequence[int] | npt.NDArray[np.integer] | None,
    max_items: int,
) -> list[tuple[int, int, float | None, int, float]]:
    """Rows ready for INSERT, or InvalidInteractions naming the first problem."""
    if not _is_int64(user_id):
        raise InvalidInteractions(f"user_id {user_id!r} is not a 64-bit integer", field="user_id")
    items = _int64_list(item_ids, "item_ids")
    if not items:
        raise InvalidInteractions("item_ids is empty: nothing to record", field="item_ids")
    if len(items) > max_items:
        raise InvalidInteractions(f"{len(items)} item ids in one call; the limit is {max_items}", field="item_ids")
    rating_list: list[float | None] = [None] * len(items) if ratings is None else list(ratings)
    if len(rating_list) != len(items):
        raise InvalidInteractions(
            f"{len(rating_list)} ratings for {len(items)} item ids: give one per item or none", field="ratings"
        )
    for rating in rating_list:
        if rating is not None and not (_is_number(rating) and math.isfinite(rating)):
            raise InvalidInteractions(f"rating {rating!r} is not a finite number", field="ratings")
    now = time.time()
    time_list = [int(now)] * len(items) if times is None else _int64_list(times, "times")
    if len(time_list) != len(items):
        raise InvalidInteractions(
            f"{len(time_list)} times for {len(items)} item ids: give one per item or none", field="times"
        )
    if any(t < 0 for t in time_list):
        raise InvalidInteractions("times must be unix seconds >= 0", field="times")
    return [
        (int(user_id), item, None if rating is None else float(rating), when, now)
        for item, rating, when in zip(items, rating_list, time_list, strict=True)
    ]


def _int64_list(values: Sequence[int] | npt.NDArray[np.integer], name: str) -> list[int]:
    """``values`` as Python ints, refusing floats, booleans and anything outside int64."""
    array = np.asarray(values)
    if array.size == 0:
        return []
    if array.dtype.kind not in "iu" or (array.dtype.kind == "u" and int(array.max()) > _INT64_MAX):
        raise InvalidInteractions(f"{name} must be 64-bit integers", field=name)
    return [int(v) for v in array.reshape(-1).tolist()]


def _is_int64(value: object) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        return False
    return _INT64_MIN <= int(value) <= _INT64_MAX


def _is_number(value: object) -> bool:
    return isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool)


def _events_from_rows(rows: list[tuple[int, int, int, float | None, int]]) -> SeenEvents:
    n = len(rows)
    columns = list(zip(*rows, strict=True)) if rows else [(), (), (), (), ()]
    return SeenEvents(
        offsets=np.fromiter(columns[0], dtype=np.int64, count=n),
        user_ids=np.fromiter(columns[1], dtype=np.int64, count=n),
        item_ids=np.fromiter(columns[2], dtype=np.int64, count=n),
        ratings=np.fromiter((math.nan if r is None else r for r in columns[3]), dtype=np.float64, count=n),
        times=np.fromiter(columns[4], dtype=np.int64, count=n),
    )
