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
import threading
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import numpy.typing as npt

from movierec.index.events import CompactedEvents, SeenEvents
from movierec.server.interaction_log import (
    DEFAULT_LIKE_THRESHOLD,
    DEFAULT_MAX_LIVE_ITEMS_PER_USER,
    InteractionLog,
    InteractionLogError,
)
from movierec.server.live_events import LiveEventStore
from movierec.server.user_views import EventRatings, EventTimes, ItemIds

logger = logging.getLogger(__name__)

REDIS_SCHEMES = ("redis://", "rediss://")
DEFAULT_FILE_POLL_S = 0.02
"""How often a process looks at the shared SQLite file for other processes' events: well inside 100 ms."""
HEALTH_CHECK_S = 0.25
_BACKOFF_MAX_S = 1.0


def is_redis_url(spec: str | Path) -> bool:
    return isinstance(spec, str) and spec.startswith(REDIS_SCHEMES)


def open_event_store(
    spec: str | Path,
    *,
    replay_after: int = 0,
    follow: bool = True,
    max_live_items_per_user: int = DEFAULT_MAX_LIVE_ITEMS_PER_USER,
) -> LiveEventStore:
    """The store ``spec`` names, replayed after ``replay_after`` (the offset the served index has compacted).

    ``max_live_items_per_user``: distinct items a user may hold not yet compacted (RESOURCE_EXHAUSTED beyond),
    the same cap whichever store. ``follow=False`` opens without following other writers (a one-shot reader
    such as ``recctl index rebuild``). Raises
    :class:`~movierec.server.interaction_log.InteractionLogError` (Redis:
    ``EventStoreUnavailable``) when the store cannot be opened, and
    ``InvalidEventsUrl`` for a Redis URL it cannot read.
    """
    if is_redis_url(spec):
        from movierec.server.redis_events import RedisEventStore

        return RedisEventStore(
            str(spec), replay_after=replay_after, follow=follow, max_live_items_per_user=max_live_items_per_user
        )
    path = Path(spec)
    if not follow:
        return InteractionLog(path, replay_after=replay_after, max_live_items_per_user=max_live_items_per_user)
    return SharedFileLog(path, replay_after=replay_after, max_live_items_per_user=max_live_items_per_user)


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

    One :class:`InteractionLog` does everything: writes (one fsync'd
    transaction, then acknowledged and visible here at once), reads (its
    lock-free per-user views) and the per-user cap (checked against those
    views, which hold every process's events, not only this one's). What this
    wrapper adds is a background thread that calls
    :meth:`InteractionLog.refresh` every :data:`DEFAULT_FILE_POLL_S`, so an
    event recorded by any other process is excluded here within one poll (with
    no other process's commit since, one pragma read: microseconds). Start-up is the log's
    own batched replay, once.
    """

    def __init__(
        self,
        path: Path,
        *,
        replay_after: int = 0,
        like_threshold: float = DEFAULT_LIKE_THRESHOLD,
        poll_s: float = DEFAULT_FILE_POLL_S,
        **log_options: Any,
    ) -> None:
        """``log_options`` go to :class:`InteractionLog` (per-call and per-user limits, request id memory)."""
        self.path = Path(path)
        self._log = InteractionLog(self.path, replay_after=replay_after, like_threshold=like_threshold, **log_options)
        self._last_error: str | None = None
        self._stop = threading.Event()
        self._poll_s = poll_s
        self._follower = threading.Thread(target=self._follow, name="interaction-log-follower", daemon=True)
        self._follower.start()

    # -- hot path ---------------------------------------------------------------------------------

    def extra_seen(self, user_id: int) -> npt.NDArray[np.int64]:
        return self._log.extra_seen(user_id)

    def liked(self, user_id: int) -> npt.NDArray[np.int64]:
        return self._log.liked(user_id)

    @property
    def last_offset(self) -> int:
        return self._log.last_offset

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
        item_ids: ItemIds,
        ratings: EventRatings | None = None,
        times: EventTimes | None = None,
        *,
        request_id: str | None = None,
    ) -> int:
        """Store durably and publish here (see :meth:`InteractionLog.record`); other processes within a poll."""
        return self._log.record(user_id, item_ids, ratings, times, request_id=request_id)

    def export(self, after: int = 0) -> SeenEvents:
        return self._log.export(after)

    def truncate_through(self, offset: int) -> int:
        """Delete the events the serving index now holds, and forget them here (other processes' followers see
        the file's truncation point move and forget theirs within one poll)."""
        return self._log.truncate_through(offset)

    def close(self) -> None:
        self._stop.set()
        self._follower.join()
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
        """Apply other processes' rows every poll; on a read error back off (up to a second) and say so once."""
        delay = self._poll_s
        while not self._stop.wait(delay):
            try:
                self._log.refresh()
            except InteractionLogError as exc:
                if self._last_error is None:
                    logger.error("interaction log %s: cannot read other processes' events (%s)", self.path, exc)
                self._last_error = f"interaction log {self.path}: {exc}"
                delay = min(max(delay, self._poll_s) * 2, _BACKOFF_MAX_S)
                continue
            if self._last_error is not None:
                logger.warning("interaction log %s readable again", self.path)
                self._last_error = None
            delay = self._poll_s


def open_server_store(
    spec: str | Path,
    index_root: Path | None,
    version: str,
    compacted: CompactedEvents,
    *,
    max_live_items_per_user: int = DEFAULT_MAX_LIVE_ITEMS_PER_USER,
) -> LiveEventStore:
    """The store a server serves ``version`` beside: every event it still holds replayed, followed from then
    on, and checked and prepared for the version by the no-loss rule
    (:func:`movierec.server.live_events.prepare_store`: offset floor, gap repair, safe truncation).

    Raises :class:`~movierec.server.live_events.ContinuityGap` (the version must
    not be served) or :class:`~movierec.server.interaction_log.InteractionLogError`.
    """
    from movierec.server.live_events import prepare_store

    store = open_event_store(spec, max_live_items_per_user=max_live_items_per_user)
    try:
        prepare_store(store, index_root, version, compacted)
    except BaseException:
        store.close()
        raise
    return store
