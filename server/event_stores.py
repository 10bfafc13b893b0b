"""Which live event store a server holds, from one ``--events`` spec, and how the server watches its health.

* ``redis://HOST:PORT/DB`` (or ``rediss://``): :class:`~movierec.server.redis_events.RedisEventStore`,
  shared by every replica on every host.
* a file path: the SQLite interaction log, read through :class:`SharedFileLog`,
  so that every process serving from that file (``recctl serve --workers N``,
  or two servers on one host) sees the others' events within one poll
  (:data:`DEFAULT_FILE_POLL_S`), not only its own.

Both are :class:`~movierec.server.live_events.LiveEventStore`: the engine, the
servicer and the reloader never know which one they hold.
"""

from __future__ import annotations

import asyncio
import logging
import math
import sqlite3
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import numpy.typing as npt

from movierec.index.events import CompactedEvents, SeenEvents
from movierec.server.interaction_log import DEFAULT_LIKE_THRESHOLD, InteractionLog, InteractionLogError
from movierec.server.live_events import LiveEventStore

logger = logging.getLogger(__name__)

REDIS_SCHEMES = ("redis://", "rediss://")
DEFAULT_FILE_POLL_S = 0.02
"""How often a process looks at the shared SQLite file for other processes' events: well inside 100 ms."""
HEALTH_CHECK_S = 0.25
_EMPTY = np.zeros(0, dtype=np.int64)
_EMPTY.setflags(write=False)
_POLL_PAGE = 10_000
_BACKOFF_MAX_S = 1.0


def is_redis_url(spec: str | Path) -> bool:
    return isinstance(spec, str) and spec.startswith(REDIS_SCHEMES)


def open_event_store(spec: str | Path, *, replay_after: int = 0, follow: bool = True) -> LiveEventStore:
    """The store ``spec`` names, replayed after ``replay_after`` (the offset the served index has compacted).

    ``follow=False`` opens without following other writers (a one-shot reader
    such as ``recctl index rebuild``). Raises
    :class:`~movierec.server.interaction_log.InteractionLogError` (Redis:
    ``EventStoreUnavailable``) when the store cannot be opened, and
    ``InvalidEventsUrl`` for a Redis URL it cannot read.
    """
    if is_redis_url(spec):
        from movierec.server.redis_events import RedisEventStore

        return RedisEventStore(str(spec), replay_after=replay_after, follow=follow)
    path = Path(spec)
    if not follow:
        return InteractionLog(path, replay_after=replay_after)
    return SharedFileLog(path, replay_after=replay_after)


def store_error(store: LiveEventStore) -> str | None:
    """Why the store cannot take writes right now (None: it can, or it cannot tell)."""
    healthy = getattr(store, "healthy", True)
    return None if healthy else str(getattr(store, "last_error", None) or "the live event store is unavailable")


async def watch_store_health(
    store: LiveEventStore, on_change: Callable[[str | None], object], period_s: float = HEALTH_CHECK_S
) -> None:
    """Call ``on_change(error or None)`` at start and whenever the store turns unusable or usable again, until
    cancelled.

    Logged once per change: a Redis outage is one error line and one recovery line, not one per poll.
    """
    usable: bool | None = None  # not reported yet
    while True:
        error = store_error(store)
        if (error is None) != usable:
            if error is not None:
                logger.error("live events unavailable: %s (RecordInteractions answers UNAVAILABLE)", error)
            elif usable is not None:
                logger.warning("live events available again")
            result = on_change(error)
            if asyncio.iscoroutine(result):
                await result
            usable = error is None
        await asyncio.sleep(period_s)


class SharedFileLog:
    """The SQLite interaction log shared by every process serving from one file.

    Writes go through :class:`InteractionLog` (one fsync'd transaction, then
    acknowledged). Reads come from this object's own per-user views, which a
    background thread keeps up to date by reading every row past the last
    offset it applied, every :data:`DEFAULT_FILE_POLL_S` (a primary-key range
    read of nothing, most of the time: microseconds). So an event recorded by
    any process is excluded here within one poll, and one recorded here at
    once (``record`` applies the new rows before it returns). Each item keeps
    its highest-offset event, so the order in which rows arrive never matters.
    """

    def __init__(
        self,
        path: Path,
        *,
        replay_after: int = 0,
        like_threshold: float = DEFAULT_LIKE_THRESHOLD,
        poll_s: float = DEFAULT_FILE_POLL_S,
    ) -> None:
        self.path = Path(path)
        self.like_threshold = like_threshold
        self._log = InteractionLog(self.path, replay_after=replay_after, like_threshold=like_threshold)
        self._lock = threading.Lock()
        self._latest: dict[int, dict[int, tuple[float, int]]] = {}  # user -> item -> (rating or NaN, offset)
        self._views: dict[int, tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]] = {}  # user -> (seen, liked)
        self._trimmed_through = replay_after
        self._cursor = replay_after
        self._last_error: str | None = None
        self._stop = threading.Event()
        try:
            self._reader = sqlite3.connect(
                f"file:{self.path}?mode=ro", uri=True, isolation_level=None, check_same_thread=False, timeout=30
            )
            self._catch_up()
        except sqlite3.Error as exc:
            self._log.close()
            raise InteractionLogError(f"cannot read the interaction log ({exc})", path=self.path) from None
        except BaseException:
            self._log.close()
            raise
        self._poll_s = poll_s
        self._follower = threading.Thread(target=self._follow, name="interaction-log-follower", daemon=True)
        self._follower.start()

    # -- hot path ---------------------------------------------------------------------------------

    def extra_seen(self, user_id: int) -> npt.NDArray[np.int64]:
        view = self._views.get(user_id)
        return _EMPTY if view is None else view[0]

    def liked(self, user_id: int) -> npt.NDArray[np.int64]:
        view = self._views.get(user_id)
        return _EMPTY if view is None else view[1]

    @property
    def last_offset(self) -> int:
        return max(self._cursor, self._log.last_offset)

    @property
    def healthy(self) -> bool:
        """False while reading other processes' events fails (reads are then stale)."""
        return self._last_error is None

    @property
    def last_error(self) -> str | None:
        return self._last_error

    # -- writes and compaction --------------------------------------------------------------------

    def record(
        self,
        user_id: int,
        item_ids: Sequence[int] | npt.NDArray[np.integer],
        ratings: Sequence[float | None] | None = None,
        times: Sequence[int] | npt.NDArray[np.integer] | None = None,
        *,
        request_id: str | None = None,
    ) -> int:
        """Store durably (see :meth:`InteractionLog.record`), then apply every new row before returning."""
        retry_key: dict[str, Any] = {"request_id": request_id} if request_id else {}
        offset = self._log.record(user_id, item_ids, ratings, times, **retry_key)
        try:
            self._catch_up()
        except sqlite3.Error as exc:  # stored and durable: the follower applies it on its next poll
            logger.warning("interaction log: stored through offset %d but could not read it back (%s)", offset, exc)
        return offset

    def export(self, after: int = 0) -> SeenEvents:
        return self._log.export(after)

    def truncate_through(self, offset: int) -> int:
        """Delete the events the serving index now holds, and forget them here (other processes forget theirs
        when they swap to that index)."""
        deleted = self._log.truncate_through(offset)
        with self._lock:
            self._trimmed_through = max(self._trimmed_through, offset)
            latest: dict[int, dict[int, tuple[float, int]]] = {}
            views: dict[int, tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]] = {}
            for user_id, items in self._latest.items():
                kept = {item: event for item, event in items.items() if event[1] > offset}
                if kept:
                    latest[user_id] = kept
                    views[user_id] = _view_of(kept, self.like_threshold)
            self._latest, self._views = latest, views  # one swap: readers never see half a rebuild
        return deleted

    def close(self) -> None:
        self._stop.set()
        self._follower.join()
        with self._lock:
            self._reader.close()
        self._log.close()

    def __getattr__(self, name: str) -> Any:
        """Everything else the log offers (its truncation point, offset floor, ...) is the file's, not this
        process's: asked of the log itself."""
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._log, name)

    def __enter__(self) -> SharedFileLog:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- internals --------------------------------------------------------------------------------

    def _follow(self) -> None:
        delay = self._poll_s
        while not self._stop.wait(delay):
            try:
                self._catch_up()
            except sqlite3.Error as exc:
                if self._last_error is None:
                    logger.error("interaction log %s: cannot read other processes' events (%s)", self.path, exc)
                self._last_error = f"interaction log {self.path}: {exc}"
                delay = min(max(delay, self._poll_s) * 2, _BACKOFF_MAX_S)
                continue
            if self._last_error is not None:
                logger.warning("interaction log %s readable again", self.path)
                self._last_error = None
            delay = self._poll_s

    def _catch_up(self) -> None:
        """Apply every row past the cursor (any process's), page by page, and republish the touched users."""
        with self._lock:
            while True:
                rows = self._reader.execute(
                    "SELECT seq, user_id, item_id, rating FROM interactions WHERE seq > ? ORDER BY seq LIMIT ?",
                    (self._cursor, _POLL_PAGE),
                ).fetchall()
                if not rows:
                    return
                touched: set[int] = set()
                for offset, user_id, item_id, rating in rows:
                    if offset <= self._trimmed_through:
                        continue
                    latest = self._latest.setdefault(user_id, {})
                    prior = latest.get(item_id)
                    if prior is None or prior[1] < offset:
                        latest[item_id] = (math.nan if rating is None else float(rating), offset)
                        touched.add(user_id)
                for user_id in touched:
                    self._views[user_id] = _view_of(self._latest[user_id], self.like_threshold)
                self._cursor = int(rows[-1][0])
                if len(rows) < _POLL_PAGE:
                    return


def _view_of(
    latest: dict[int, tuple[float, int]], like_threshold: float
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """A user's sorted seen items and liked items (latest rating none or >= the threshold), read-only."""
    items = np.fromiter(latest.keys(), dtype=np.int64, count=len(latest))
    ratings = np.fromiter((event[0] for event in latest.values()), dtype=np.float64, count=len(latest))
    order = np.argsort(items)
    items, ratings = items[order], ratings[order]
    liked = items[np.isnan(ratings) | (ratings >= like_threshold)]
    items.setflags(write=False)
    liked.setflags(write=False)
    return items, liked


def open_server_store(
    spec: str | Path, index_root: Path | None, version: str, compacted: CompactedEvents
) -> LiveEventStore:
    """The store a server serves ``version`` beside: every event it still holds replayed, followed from then
    on, and checked and prepared for the version by the no-loss rule
    (:func:`movierec.server.live_events.prepare_store`: offset floor, gap repair, safe truncation).

    Raises :class:`~movierec.server.live_events.ContinuityGap` (the version must
    not be served) or :class:`~movierec.server.interaction_log.InteractionLogError`.
    """
    from movierec.server.live_events import prepare_store

    store = open_event_store(spec)
    try:
        prepare_store(store, index_root, version, compacted)
    except BaseException:
        store.close()
        raise
    return store
