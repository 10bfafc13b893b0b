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
* a recorded call is one transaction, so a call's items (and its request id)
  are stored all or none.

The durable log is the source of truth; in memory each user has an immutable
snapshot (sorted ``int64`` item ids with each item's latest rating and offset)
that writers replace whole, so the hot path (:meth:`InteractionLog.extra_seen`)
is one dict lookup with no lock. A write merges the call's few items into the
user's sorted arrays (a binary search and one copy; no re-sort of the history),
and the per-user cap bounds that copy.

Offsets are SQLite ``AUTOINCREMENT`` row ids: strictly increasing and never
reused, even after the prefix is deleted, so "everything through offset N" is
stable across compactions. The log remembers how far it was truncated
(:attr:`InteractionLog.truncated_through`) so the server can check that the
index version it serves holds every event the log no longer has
(:mod:`movierec.server.live_events`).

Retries: a call that carries a ``request_id`` is remembered (user, request id
-> offset, in the same transaction as its events) for ``request_id_ttl_s``
(default 24 h, persisted, so it survives restarts); a retry within that time
stores nothing and gets the first call's offset back.
"""

from __future__ import annotations

import math
import sqlite3
import threading
import time
from pathlib import Path
from types import TracebackType

import numpy as np
import numpy.typing as npt

from movierec.errors import MovierecError
from movierec.index.events import SeenEvents
from movierec.server.live_limits import DEFAULT_MAX_ITEMS_PER_CALL as DEFAULT_MAX_ITEMS_PER_CALL
from movierec.server.live_limits import DEFAULT_MAX_LIVE_ITEMS_PER_USER as DEFAULT_MAX_LIVE_ITEMS_PER_USER
from movierec.server.live_limits import check_store_settings
from movierec.server.user_views import (
    EventRatings,
    EventTimes,
    ItemIds,
    UserView,
    folded_views,
    forgotten_through,
    merged_view,
    views_of,
)

LOG_FILE_NAME = "interactions.sqlite3"
"""The log's file name beside the index root (plus SQLite's ``-wal``/``-shm`` companions)."""

SCHEMA_VERSION = 2
DEFAULT_REQUEST_ID_TTL_S = 86_400.0
"""How long a ``request_id`` is remembered: a call retried within a day is stored once."""
DEFAULT_LIKE_THRESHOLD = 4.0
"""Ratings at or above this count as liked (the evaluation's positives are ratings >= 4)."""

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_BUSY_TIMEOUT_S = 30.0
_REPLAY_BATCH = 262_144
_PURGE_EVERY = 1024
"""Forget expired request ids once per this many stored calls (one indexed DELETE)."""
_EMPTY = np.zeros(0, dtype=np.int64)
_EMPTY.setflags(write=False)

_TABLES = {
    "interactions": """
CREATE TABLE interactions (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,  -- the offset: increasing, never reused
    user_id INTEGER NOT NULL,
    item_id INTEGER NOT NULL,
    rating REAL,                            -- NULL: an interaction without a rating (e.g. "watched")
    event_time INTEGER NOT NULL,            -- unix seconds; the server's clock when the client sent none
    recorded_at REAL NOT NULL               -- unix seconds when the server stored it
)""",
    "log_state": """
CREATE TABLE log_state (
    name TEXT PRIMARY KEY,                  -- 'truncated_through': events at or below it were deleted
    value INTEGER NOT NULL
)""",
    "request_ids": """
CREATE TABLE request_ids (
    user_id INTEGER NOT NULL,
    request_id TEXT NOT NULL,
    offset INTEGER NOT NULL,                -- the last offset the call stored: its acknowledgement
    stored_at REAL NOT NULL,
    PRIMARY KEY (user_id, request_id)
) WITHOUT ROWID""",
}
_INDEXES = ("CREATE INDEX request_ids_by_age ON request_ids (stored_at)",)


class InvalidInteractions(MovierecError):
    """A record call the client must fix (the server answers INVALID_ARGUMENT).

    ``field`` names the request field at fault, so the server can blame it in
    ``google.rpc.BadRequest`` without parsing the message.
    """

    def __init__(self, message: str, *, field: str) -> None:
        super().__init__(message)
        self.field = field


class LiveEventCapExceeded(MovierecError):
    """The user already has as many live items as the log allows (the server answers RESOURCE_EXHAUSTED).

    Nothing was stored; the user's items become recordable again once a
    rebuild compacts their events into an index version.
    """


class InteractionLogError(MovierecError):
    """The log file cannot be opened, read or written (the server answers UNAVAILABLE or refuses to start)."""


class InteractionLog:
    """A durable, replayed log of per-user interactions with a lock-free read path.

    ``replay_after`` skips events already merged into the bundle being served
    (the server passes 0: it keeps every event the log still holds, so any
    retained index version it may swap to finds them). ``replay=False`` opens
    the log for export and truncation only (``recctl index rebuild``): no
    in-memory views are built. Users and items are dataset ids.
    """

    def __init__(
        self,
        path: Path,
        *,
        replay_after: int = 0,
        replay: bool = True,
        like_threshold: float = DEFAULT_LIKE_THRESHOLD,
        max_items_per_call: int = DEFAULT_MAX_ITEMS_PER_CALL,
        max_live_items_per_user: int = DEFAULT_MAX_LIVE_ITEMS_PER_USER,
        request_id_ttl_s: float = DEFAULT_REQUEST_ID_TTL_S,
    ) -> None:
        check_store_settings(
            replay_after=replay_after,
            max_items_per_call=max_items_per_call,
            max_live_items_per_user=max_live_items_per_user,
        )
        if request_id_ttl_s <= 0:
            raise ValueError("request_id_ttl_s must be > 0")
        self.path = Path(path)
        self.like_threshold = like_threshold
        self.max_items_per_call = max_items_per_call
        self.max_live_items_per_user = max_live_items_per_user
        self.request_id_ttl_s = request_id_ttl_s
        self._write_lock = threading.Lock()
        self._conn = _connect(self.path)
        self._views: dict[int, UserView] = {}
        self._last_offset = 0
        self._read_through = 0  # every event at or below it has been read from the file (replay, refresh)
        self._forgotten_through = 0  # the file's truncation point this instance's views already reflect
        self._file_version: int | None = None  # PRAGMA data_version when refresh last read the file
        self._calls_since_purge = 0
        try:
            with self._write_lock:
                if replay:
                    self._replay_locked(replay_after)
                else:
                    self._last_offset = self._sequence()
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

    @property
    def truncated_through(self) -> int:
        """The highest offset deleted by :meth:`truncate_through` (0: nothing ever was): the log holds every
        event after it. An index version that holds fewer events than this has a gap."""
        try:
            with self._write_lock:
                return self._truncated_through()
        except sqlite3.Error as exc:
            raise InteractionLogError(f"could not read the log's state ({exc})", path=self.path) from None

    @property
    def users(self) -> int:
        """How many users have live events in memory."""
        return len(self._views)

    # -- writes -----------------------------------------------------------------------------------

    def record(
        self,
        user_id: int,
        item_ids: ItemIds,
        ratings: EventRatings | None = None,
        times: EventTimes | None = None,
        *,
        request_id: str | None = None,
    ) -> int:
        """Store one call's events durably (one fsync'd transaction), then publish them; return the last offset.

        When this returns, the events survive kill -9 and power loss and the
        next :meth:`extra_seen` includes them. A ``request_id`` this user
        already stored within ``request_id_ttl_s`` stores nothing: the first
        call's offset is returned. Raises :class:`InvalidInteractions` for bad
        input, :class:`LiveEventCapExceeded` past the per-user cap, and
        :class:`InteractionLogError` when the disk refuses the write (in every
        case nothing is stored or published).
        """
        rows = validated_rows(user_id, item_ids, ratings, times, self.max_items_per_call)
        user = int(user_id)
        with self._write_lock:
            try:
                if request_id:
                    prior = self._stored_request(user, request_id, rows[0][4])
                    if prior is not None:
                        return prior
                check_live_cap(self._views.get(user), user, rows, self.max_live_items_per_user)
                last = self._insert(user, rows, request_id)
            except sqlite3.Error as exc:
                raise InteractionLogError(f"could not store interactions ({exc})", path=self.path) from None
            first = last - len(rows) + 1
            self._views[user] = merged_view(
                self._views.get(user),
                np.array([row[1] for row in rows], dtype=np.int64),
                np.array([math.nan if row[2] is None else row[2] for row in rows], dtype=np.float64),
                np.arange(first, last + 1, dtype=np.int64),
                self.like_threshold,
            )
            self._last_offset = max(self._last_offset, last)
        return last

    def ensure_offsets_after(self, offset: int) -> None:
        """Make every future offset greater than ``offset`` (an index version already holds events through it).

        A new or replaced log file would otherwise number its events from 1
        again, and a rebuild would then skip them as "already compacted".
        """
        with self._write_lock:
            try:
                if self._sequence() >= offset:
                    return
                self._conn.execute("BEGIN IMMEDIATE")
                try:
                    updated = self._conn.execute(
                        "UPDATE sqlite_sequence SET seq = ? WHERE name = 'interactions'", (offset,)
                    ).rowcount
                    if not updated:
                        self._conn.execute(
                            "INSERT INTO sqlite_sequence (name, seq) VALUES ('interactions', ?)", (offset,)
                        )
                    self._conn.execute("COMMIT")
                except BaseException:
                    _rollback(self._conn)
                    raise
            except sqlite3.Error as exc:
                raise InteractionLogError(f"could not advance the log's offsets ({exc})", path=self.path) from None
            self._last_offset = max(self._last_offset, offset)

    # -- compaction -------------------------------------------------------------------------------

    def export(self, after: int = 0) -> SeenEvents:
        """Every stored event with offset > ``after``, oldest first, read as one consistent snapshot.

        ``recctl index rebuild`` merges these into the next bundle's seen sets
        and records ``last_offset`` in it.
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
        """Delete events with offset <= ``offset``; return how many were deleted.

        Only call it with an offset every retained index version holds
        (:func:`movierec.index.rollback.safe_truncation_offset`): this instance
        forgets them too. Never moves backwards. When another process already
        truncated the file past ``offset``, nothing is deleted (0) but this
        instance still forgets what the file no longer holds, so its per-user
        cap stops counting compacted events.
        """
        if offset < 0:
            raise ValueError("offset must be >= 0")
        with self._write_lock:
            try:
                if offset <= self._truncated_through():
                    self._forget_truncated_locked()
                    return 0
                self._conn.execute("BEGIN IMMEDIATE")
                try:
                    deleted = self._conn.execute("DELETE FROM interactions WHERE seq <= ?", (offset,)).rowcount
                    self._conn.execute(
                        "INSERT INTO log_state (name, value) VALUES ('truncated_through', ?)"
                        " ON CONFLICT (name) DO UPDATE SET value = max(value, excluded.value)",
                        (offset,),
                    )
                    self._conn.execute("COMMIT")
                except BaseException:
                    _rollback(self._conn)
                    raise
                self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error as exc:
                raise InteractionLogError(f"could not truncate the log ({exc})", path=self.path) from None
            self._forget_through_locked(offset)
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

    # -- internals (callers hold the write lock) --------------------------------------------------

    def _stored_request(self, user: int, request_id: str, now: float) -> int | None:
        """The offset a remembered, unexpired call with this request id stored, else None."""
        found = self._conn.execute(
            "SELECT offset FROM request_ids WHERE user_id = ? AND request_id = ? AND stored_at >= ?",
            (user, request_id, now - self.request_id_ttl_s),
        ).fetchone()
        return None if found is None else int(found[0])

    def _insert(self, user: int, rows: list[tuple[int, int, float | None, int, float]], request_id: str | None) -> int:
        """One transaction: the events, the request id, sometimes a purge of expired ids; the last offset."""
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            self._conn.executemany(
                "INSERT INTO interactions (user_id, item_id, rating, event_time, recorded_at) VALUES (?, ?, ?, ?, ?)",
                rows,
            )
            last = int(self._conn.execute("SELECT last_insert_rowid()").fetchone()[0])
            now = rows[0][4]
            if request_id:
                self._conn.execute(
                    "INSERT OR REPLACE INTO request_ids (user_id, request_id, offset, stored_at) VALUES (?, ?, ?, ?)",
                    (user, request_id, last, now),
                )
            self._calls_since_purge += 1
            if self._calls_since_purge >= _PURGE_EVERY:
                self._conn.execute("DELETE FROM request_ids WHERE stored_at < ?", (now - self.request_id_ttl_s,))
                self._calls_since_purge = 0
            self._conn.execute("COMMIT")
        except BaseException:
            _rollback(self._conn)
            raise
        return last

    def _forget_truncated_locked(self) -> None:
        """Forget the events the file no longer holds (another process truncated it); one indexed read."""
        self._forget_through_locked(self._truncated_through())

    def _forget_through_locked(self, offset: int) -> None:
        if offset > self._forgotten_through:
            self._views = forgotten_through(self._views, offset, self.like_threshold)  # one swap for readers
            self._forgotten_through = offset

    def _truncated_through(self) -> int:
        found = self._conn.execute("SELECT value FROM log_state WHERE name = 'truncated_through'").fetchone()
        return 0 if found is None else int(found[0])

    def _sequence(self) -> int:
        found = self._conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'interactions'").fetchone()
        return 0 if found is None else int(found[0])

    def _replay_locked(self, after: int) -> None:
        """Build every user's view from the events after ``after`` (read in batches, grouped with numpy)."""
        try:
            truncated = self._truncated_through()  # before the rows: a later truncation is refresh()'s
            columns = _read_columns(self._conn, after)
            top = self._sequence()
        except sqlite3.Error as exc:
            raise InteractionLogError(f"could not replay the log ({exc})", path=self.path) from None
        self._views = views_of(*columns, self.like_threshold)
        self._forgotten_through = truncated
        self._last_offset = top
        self._read_through = max(after, int(columns[0][-1]) if columns[0].size else 0)

    def refresh(self) -> int:
        """Apply the events other processes appended to the file since this instance last read it; how many.

        For several processes serving from one file (``recctl serve --workers``):
        a follower calls it every few milliseconds; when no other connection
        has committed since the last call it is one pragma read (SQLite's
        ``data_version``), else one indexed range read and one single-row read. Events this instance
        recorded itself come back too and change nothing (an item keeps its
        highest-offset event). Events another process truncated away (it
        compacted them into a version every retained one builds on) are
        forgotten here too, so every process's views, and so its per-user cap,
        hold what the file holds, as a restarted process's would.
        """
        with self._write_lock:
            try:
                # SQLite bumps data_version when another connection commits; this connection's own writes are
                # already in the views. Unchanged: nothing to read (most polls, for a server alone on a file).
                version = int(self._conn.execute("PRAGMA data_version").fetchone()[0])
                if version == self._file_version:
                    return 0
                offsets, users, items, ratings = _read_columns(self._conn, self._read_through)
                if offsets.size:
                    self._views.update(folded_views(self._views, offsets, users, items, ratings, self.like_threshold))
                self._forget_truncated_locked()
            except sqlite3.Error as exc:
                raise InteractionLogError(f"could not read new interactions ({exc})", path=self.path) from None
            self._file_version = version  # read before the rows: a commit after it is seen by the next poll
            if not offsets.size:
                return 0
            self._read_through = int(offsets[-1])
            self._last_offset = max(self._last_offset, self._read_through)
        return int(offsets.size)


def _read_columns(
    conn: sqlite3.Connection, after: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.float64]]:
    """Offsets, users, items and ratings (NaN: none) of the events after ``after``, in offset order.

    SQLite builds each chunk of 262,144 rows into two comma-separated strings
    (``group_concat``) and numpy parses them in C: no Python object per row
    (creating them was most of the cost), ~40 bytes an event while reading.
    Ratings travel as ``%.17g``, which round-trips every double.
    """
    parts: list[npt.NDArray[np.int64]] = []
    rating_parts: list[npt.NDArray[np.float64]] = []
    while True:
        ids, ratings, last = conn.execute(
            "SELECT group_concat(seq || ',' || user_id || ',' || item_id),"
            " group_concat(CASE WHEN rating IS NULL THEN 'nan' ELSE printf('%.17g', rating) END), max(seq)"
            " FROM (SELECT seq, user_id, item_id, rating FROM interactions WHERE seq > ? ORDER BY seq LIMIT ?)",
            (after, _REPLAY_BATCH),
        ).fetchone()
        if last is None:
            break
        parts.append(np.fromstring(ids, dtype=np.int64, sep=",").reshape(-1, 3))
        rating_parts.append(np.fromstring(ratings, dtype=np.float64, sep=","))
        if parts[-1].shape[0] != rating_parts[-1].shape[0]:
            raise sqlite3.DatabaseError("the log's rows could not be read back whole")
        after = int(last)
    if not parts:
        return _EMPTY, _EMPTY, _EMPTY, np.zeros(0, dtype=np.float64)
    rows, all_ratings = np.concatenate(parts), np.concatenate(rating_parts)
    if not (np.diff(rows[:, 0]) > 0).all():  # group_concat keeps the scan's order; never trust it blindly
        order = np.argsort(rows[:, 0], kind="stable")
        rows, all_ratings = rows[order], all_ratings[order]
    return rows[:, 0].copy(), rows[:, 1].copy(), rows[:, 2].copy(), all_ratings


def _rollback(conn: sqlite3.Connection) -> None:
    if conn.in_transaction:  # a failed COMMIT may already have rolled back
        conn.execute("ROLLBACK")


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
        _set_up(conn, path)
    except sqlite3.Error as exc:
        conn.close()
        raise InteractionLogError(f"not a readable interaction log ({exc})", path=path) from None
    except BaseException:
        conn.close()
        raise
    return conn


def _set_up(conn: sqlite3.Connection, path: Path) -> None:
    """WAL mode, fsync on commit and the schema, retried while another process holds the lock.

    Worker processes open one log at the same moment. Switching a new file to
    WAL takes a lock that SQLite's busy handler does not wait for (the pragma
    fails at once with "database is locked"), so the set-up itself waits and
    retries, within the same budget as every other locked statement.
    """
    deadline = time.monotonic() + _BUSY_TIMEOUT_S
    delay = 0.005
    while True:
        try:
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise InteractionLogError(f"SQLite refused WAL mode (got {mode!r})", path=path)
            conn.execute("PRAGMA synchronous=FULL")
            _ensure_schema(conn, path)
            return
        except sqlite3.OperationalError as exc:
            if ("locked" not in str(exc) and "busy" not in str(exc)) or time.monotonic() + delay > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.1)


def _ensure_schema(conn: sqlite3.Connection, path: Path) -> None:
    """Create a new log, upgrade a version-1 log in place (one transaction), or refuse anything else."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if version == 0 and not tables:
            _create(conn, _TABLES)
        elif version == 1 and tables >= {"interactions"}:
            _create(conn, {name: sql for name, sql in _TABLES.items() if name not in tables})
            # Version 1 deleted only prefixes: whatever lies below the oldest remaining event was truncated.
            oldest = conn.execute("SELECT min(seq) FROM interactions").fetchone()[0]
            top = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'interactions'").fetchone()
            truncated = int(oldest) - 1 if oldest is not None else (int(top[0]) if top else 0)
            conn.execute("INSERT INTO log_state (name, value) VALUES ('truncated_through', ?)", (truncated,))
        elif version != SCHEMA_VERSION or not tables >= set(_TABLES):
            raise InteractionLogError(
                f"not an interaction log of this build (schema version {version}, expected {SCHEMA_VERSION})",
                path=path,
            )
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        _rollback(conn)
        raise


def _create(conn: sqlite3.Connection, tables: dict[str, str]) -> None:
    for sql in tables.values():
        conn.execute(sql)
    if "request_ids" in tables:
        for sql in _INDEXES:
            conn.execute(sql)


def check_interactions(
    user_id: int,
    item_ids: ItemIds,
    ratings: EventRatings | None,
    times: EventTimes | None,
) -> None:
    """Raise :class:`InvalidInteractions` for a call no store would take, whatever its per-call limit (which
    the store checks): lets a server report the field at fault before it looks the items up."""
    validated_rows(user_id, item_ids, ratings, times, max_items=_INT64_MAX)


def check_live_cap(
    view: UserView | None, user: int, rows: list[tuple[int, int, float | None, int, float]], cap: int
) -> None:
    """Raise :class:`LiveEventCapExceeded` when ``rows`` would give ``user`` more than ``cap`` distinct live items.

    ``view`` is the user's live items now; items already live take no room. Every store checks its cap with
    this one function, so SQLite and Redis refuse the same calls.
    """
    items = np.unique(np.array([row[1] for row in rows], dtype=np.int64))
    held = 0 if view is None else int(view.seen.shape[0])
    if view is not None and held:
        positions = np.minimum(np.searchsorted(view.seen, items), held - 1)
        items = items[view.seen[positions] != items]
    if held + int(items.shape[0]) > cap:
        raise LiveEventCapExceeded(
            f"user {user} has {held} live items not yet compacted into the index and this call adds"
            f" {items.shape[0]}; the limit is {cap} until the next rebuild"
        )


def validated_rows(
    user_id: int,
    item_ids: ItemIds,
    ratings: EventRatings | None,
    times: EventTimes | None,
    max_items: int,
) -> list[tuple[int, int, float | None, int, float]]:
    """One call's rows ``(user, item, rating or None, event time, now)``, or InvalidInteractions naming the first
    problem: every store validates its input with this one function, so all refuse alike."""
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


def _int64_list(values: ItemIds | EventTimes, name: str) -> list[int]:
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
