"""Live "watched" events shared by every replica through Redis: the multi-replica twin of the SQLite log.

:class:`RedisEventStore` has :class:`~movierec.server.interaction_log.InteractionLog`'s
public methods and semantics (``record``, ``extra_seen``, ``liked``,
``last_offset``, ``export``, ``truncate_through``, ``truncated_through``,
``ensure_offsets_after``, ``close``; replay after ``replay_after`` at start;
input checked by the same :func:`~movierec.server.interaction_log.validated_rows`;
the same per-user live-item cap, :class:`LiveEventCapExceeded` beyond): it is a
:class:`~movierec.server.live_events.LiveEventStore`, so the server and
``recctl index rebuild`` can hold either one.

Data layout (one namespace, default ``movierec``; the ``{...}`` hash tag keeps
every key of a namespace in one Redis Cluster slot, as the scripts require):

* ``{ns}:seq`` -- string counter: the highest offset ever assigned. It only
  grows (compaction never lowers it), so offsets are never reused.
* ``{ns}:events`` -- a stream with one entry per ``record`` call. The entry id
  is ``<last offset>-0``: the call's events hold offsets ``last - n + 1 ..
  last``, one per item, exactly as the SQLite log numbers its rows. Fields:
  ``u`` user id, ``n`` item count, ``i`` item ids and ``t`` event times
  (little-endian int64 arrays), ``r`` ratings (little-endian float64, NaN:
  none), ``at`` the server's clock when stored.
* ``{ns}:trimmed`` -- the highest offset compacted away: events at or below it
  are deleted. ``XTRIM`` removes whole entries, so a call that straddles the
  point keeps its entry and readers skip its compacted events.
* ``{ns}:trims`` -- a stream of at most one entry, added whenever the trim
  point moves: it wakes every replica's follower (blocked in ``XREAD``), which
  then reads ``{ns}:trimmed``. (A ``BLOCK`` timeout cannot stand in for it:
  Redis ends blocked reads on its ``hz`` clock, every 100 ms by default.)
* ``{ns}:rid:<user>:<request_id>`` -- the offset a ``request_id`` was stored
  at, with a TTL (default 24 h): a retried call within the TTL is stored once.

A call is one Lua script (dedupe check, counter, ``XADD``, dedupe key), so its
events are stored all or none and two writers never interleave offsets.
``truncate_through`` is ``XTRIM MINID`` with the trim point (and a counter bump
so no later write can land below the trimmed range); ``truncated_through``
reads the trim point back for the server's continuity check, and
``ensure_offsets_after`` raises the counter past what index versions hold (a
new or reset Redis must not hand out their offsets again).

Offsets are below 2**53 (Redis scripts count in doubles): 9e15 events.

Durability: ``record`` returns only after Redis replied to the script. With
``appendonly yes`` and ``appendfsync always`` Redis fsyncs the AOF before it
replies, so an acknowledged event survives kill -9 of Redis (and of this
process) and power loss. With ``appendfsync everysec`` a Redis crash or power
loss can drop about the last second of acknowledged events (a plain kill -9 of
the Redis process loses nothing: the data is already in the kernel); without
AOF, everything since the last RDB snapshot. Replicas keep what they already
applied in memory, and each write raises the counter to at least what the
writer has seen, so offsets are not reused even then. :attr:`durability_note`
says at start when the server's settings do not give the guarantee.

Replicas: each keeps a local per-user view (immutable sorted arrays, a lock-free
read path; writes merged in by binary search, :mod:`movierec.server.user_views`)
and a background thread follows the stream with ``XREAD BLOCK``, so another
replica's write is visible here within milliseconds; ``record``
applies its own events at once. The thread also waits on ``{ns}:trims`` and
reads ``{ns}:trimmed`` after every read: when another replica (or ``recctl
index rebuild``) truncates, this replica forgets the compacted events within
milliseconds, so its views and per-user cap hold what Redis holds, as a
restarted replica's would. Applying is keyed by offset (an item keeps its
newest event), so the thread and ``record`` may deliver an event twice in any
order. While Redis is unreachable, ``record`` raises :class:`EventStoreUnavailable`
(nothing acknowledged that is not stored), reads go on from the local view
(stale: other replicas' events since the outage are missing), :attr:`healthy`
is False, and the follower retries with backoff, catching up from the last
offset it saw once Redis answers again.

The per-user cap (``max_live_items_per_user``, distinct items not yet
compacted) is checked against the replica's local view with the user's writes
through this replica serialised: exact for one replica; across replicas a
user writing through several at the same instant can pass it by those calls'
new items (the views lag by the follower's milliseconds). It bounds memory,
not an exact quota.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any, cast
from urllib.parse import unquote, urlsplit

import numpy as np
import numpy.typing as npt
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from redis.typing import KeyT, StreamIdT

from movierec.errors import MovierecError
from movierec.index.events import SeenEvents
from movierec.server.interaction_log import (
    DEFAULT_LIKE_THRESHOLD,
    DEFAULT_MAX_ITEMS_PER_CALL,
    DEFAULT_MAX_LIVE_ITEMS_PER_USER,
    InteractionLogError,
    LiveEventCapExceeded,
    check_live_cap,
    validated_rows,
)
from movierec.server.live_limits import check_store_settings
from movierec.server.user_views import (
    EventRatings,
    EventTimes,
    ItemIds,
    UserView,
    folded_views,
    forgotten_through,
    views_of,
)

logger = logging.getLogger(__name__)

DEFAULT_NAMESPACE = "movierec"
DEFAULT_REQUEST_ID_TTL_S = 86_400.0
"""How long a ``request_id`` is remembered: a call retried within a day is stored once."""
DEFAULT_SOCKET_TIMEOUT_S = 2.0
"""A write to a Redis that hangs (not closed: e.g. paused) fails after this long, as UNAVAILABLE."""

_FOLLOW_BLOCK_MS = 200
"""``XREAD BLOCK`` returns at once on a new entry (or trim notice); this only bounds how long ``close`` waits."""
_PAGE = 1000
_BACKOFF_FIRST_S, _BACKOFF_MAX_S = 0.05, 1.0
_WRITE_LOCK_STRIPES = 64
"""Writes of one user are serialised (the cap is checked and the call stored as one step); users hash to this many
locks, so writes of different users mostly run side by side."""
_EMPTY = np.zeros(0, dtype=np.int64)
_EMPTY.setflags(write=False)

# KEYS: stream, counter, dedupe key. ARGV: item count, floor, dedupe TTL (ms; 0: no request id), user, items,
# ratings, times, at, 1 when the call is over the user's live-event cap.
# Returns {offset, 1 when the request id was already stored (offset is the stored call's)}, or {0, 2}: over the
# cap, nothing stored (a retry of a stored call is answered first, as the SQLite log does).
_RECORD_SCRIPT = """
local dedupe = ARGV[3] ~= '0'
if dedupe then
    local prior = redis.call('GET', KEYS[3])
    if prior then return {tonumber(prior), 1} end
end
if ARGV[9] == '1' then return {0, 2} end
local top = tonumber(redis.call('GET', KEYS[2]) or '0')
local floor = tonumber(ARGV[2])
local newest = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)[1]
if newest then
    local newest_offset = tonumber(string.match(newest[1], '^(%d+)'))
    if newest_offset > floor then floor = newest_offset end
end
if floor > top then redis.call('SET', KEYS[2], string.format('%d', floor)) end
local last = redis.call('INCRBY', KEYS[2], ARGV[1])
local id = string.format('%d', last)
redis.call('XADD', KEYS[1], id .. '-0', 'u', ARGV[4], 'n', ARGV[1], 'i', ARGV[5], 'r', ARGV[6], 't', ARGV[7],
    'at', ARGV[8])
if dedupe then redis.call('SET', KEYS[3], id, 'PX', ARGV[3]) end
return {last, 0}
"""

# KEYS: counter. ARGV: offset. Raises the counter to ``offset`` (never lowers it); returns the counter after.
_FLOOR_SCRIPT = """
local top = tonumber(redis.call('GET', KEYS[1]) or '0')
local offset = tonumber(ARGV[1])
if top < offset then
    redis.call('SET', KEYS[1], ARGV[1])
    return offset
end
return top
"""

# KEYS: stream, counter, trim point, trim notices. ARGV: offset, first id kept. Returns the trim point before
# this call.
_TRIM_SCRIPT = """
local offset = tonumber(ARGV[1])
local top = tonumber(redis.call('GET', KEYS[2]) or '0')
if top < offset then redis.call('SET', KEYS[2], ARGV[1]) end
local before = tonumber(redis.call('GET', KEYS[3]) or '0')
if before < offset then
    redis.call('SET', KEYS[3], ARGV[1])
    redis.call('XADD', KEYS[4], 'MAXLEN', '1', '*', 'p', ARGV[1])
end
redis.call('XTRIM', KEYS[1], 'MINID', ARGV[2])
return before
"""


class InvalidEventsUrl(MovierecError):
    """An ``--events`` URL that does not name a Redis database (the CLI prints it on one line)."""


class EventStoreUnavailable(InteractionLogError):
    """Redis did not accept or answer a call: nothing was acknowledged (the server answers UNAVAILABLE).

    A subclass of :class:`InteractionLogError`, so code written for the SQLite
    log already maps it to UNAVAILABLE.
    """


@dataclass(frozen=True)
class RedisTarget:
    """Where the events live, parsed from ``redis://[[USER]:PASSWORD@]HOST[:PORT][/DB]`` (``rediss://``: TLS)."""

    host: str
    port: int
    db: int
    username: str | None = None
    password: str | None = None
    tls: bool = False

    @property
    def display(self) -> str:
        """The URL without its password, for logs and error messages."""
        scheme = "rediss" if self.tls else "redis"
        user = f"{self.username or ''}:***@" if self.password else (f"{self.username}@" if self.username else "")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{user}{host}:{self.port}/{self.db}"


def parse_events_url(url: str) -> RedisTarget:
    """Parse a Redis URL, refusing anything this store would misread (an error names the part at fault)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise InvalidEventsUrl(f"not a Redis URL ({exc}): expected redis://HOST:PORT/DB") from None
    if parts.scheme not in ("redis", "rediss"):
        shown = f"{parts.scheme}://" if parts.scheme else "no scheme"
        raise InvalidEventsUrl(f"unsupported scheme ({shown}): expected redis://HOST:PORT/DB or rediss://")
    if not parts.hostname:
        raise InvalidEventsUrl("no host in the URL: expected redis://HOST:PORT/DB")
    if parts.query or parts.fragment:
        raise InvalidEventsUrl("options after '?' or '#' are not supported: expected redis://HOST:PORT/DB")
    if port == 0:
        raise InvalidEventsUrl("port 0 is not a Redis port: expected 1-65535")
    db_text = parts.path.removeprefix("/")
    if db_text and not (db_text.isascii() and db_text.isdigit()):
        raise InvalidEventsUrl(f"database {db_text!r} is not a number: expected redis://HOST:PORT/DB, DB >= 0")
    return RedisTarget(
        host=parts.hostname,
        port=port or 6379,
        db=int(db_text) if db_text else 0,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
        tls=parts.scheme == "rediss",
    )


@dataclass(frozen=True)
class _Entry:
    """One stored call: events ``first .. last`` (offsets) for one user."""

    last: int
    user_id: int
    item_ids: npt.NDArray[np.int64]
    ratings: npt.NDArray[np.float64]
    times: npt.NDArray[np.int64]

    @property
    def first(self) -> int:
        return self.last - int(self.item_ids.shape[0]) + 1

    @property
    def offsets(self) -> npt.NDArray[np.int64]:
        return np.arange(self.first, self.last + 1, dtype=np.int64)


class RedisEventStore:
    """Live events in a Redis stream, shared by every replica, with a local lock-free read path.

    ``replay_after`` skips events already merged into the bundle being served.
    ``follow=False`` opens without the follower thread (``recctl index
    rebuild`` only exports and truncates). Raises :class:`EventStoreUnavailable`
    when Redis cannot be reached at start: a replica that has not replayed the
    events must not serve.
    """

    def __init__(
        self,
        url: str,
        *,
        replay_after: int = 0,
        like_threshold: float = DEFAULT_LIKE_THRESHOLD,
        max_items_per_call: int = DEFAULT_MAX_ITEMS_PER_CALL,
        max_live_items_per_user: int = DEFAULT_MAX_LIVE_ITEMS_PER_USER,
        namespace: str = DEFAULT_NAMESPACE,
        request_id_ttl_s: float = DEFAULT_REQUEST_ID_TTL_S,
        socket_timeout_s: float = DEFAULT_SOCKET_TIMEOUT_S,
        follow: bool = True,
    ) -> None:
        check_store_settings(
            replay_after=replay_after,
            max_items_per_call=max_items_per_call,
            max_live_items_per_user=max_live_items_per_user,
        )
        if request_id_ttl_s < 0.001:
            raise ValueError("request_id_ttl_s must be at least 0.001 (one millisecond)")
        if not namespace or any(c in namespace for c in "{}"):
            raise ValueError("namespace must be non-empty and free of '{' and '}'")
        self.target = parse_events_url(url)
        self.like_threshold = like_threshold
        self.max_items_per_call = max_items_per_call
        self.max_live_items_per_user = max_live_items_per_user
        self._request_id_ttl_ms = round(request_id_ttl_s * 1000)
        self._stream_key = f"{{{namespace}}}:events"
        self._counter_key = f"{{{namespace}}}:seq"
        self._trimmed_key = f"{{{namespace}}}:trimmed"
        self._trims_key = f"{{{namespace}}}:trims"
        self._request_key_prefix = f"{{{namespace}}}:rid:"
        self._client = _connect(self.target, socket_timeout_s)
        self._record_script = self._client.register_script(_RECORD_SCRIPT)
        self._trim_script = self._client.register_script(_TRIM_SCRIPT)
        self._floor_script = self._client.register_script(_FLOOR_SCRIPT)
        self._state_lock = threading.Lock()
        self._write_locks = [threading.Lock() for _ in range(_WRITE_LOCK_STRIPES)]
        self._views: dict[int, UserView] = {}
        self._last_offset = 0
        self._trimmed_through = replay_after  # events at or below this are in the index: never applied
        self._last_error: str | None = None
        self._stop = threading.Event()
        self._follower: threading.Thread | None = None
        try:
            self.durability_note = self._check_durability()
            self._cursor = self._replay(replay_after)
        except BaseException:
            self._client.close()
            raise
        if follow:
            self._follower = threading.Thread(target=self._follow, name="redis-events-follower", daemon=True)
            self._follower.start()

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
        """The newest offset this replica has stored, replayed or followed (0 when none)."""
        return self._last_offset

    @property
    def healthy(self) -> bool:
        """False while the last Redis call (a write or the follower's read) failed: reads are then stale."""
        return self._last_error is None

    @property
    def last_error(self) -> str | None:
        """Why Redis is unusable right now (None when it answers), for health checks and logs."""
        return self._last_error

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
        """Store one call's events in Redis (all or none), then publish them here; return the last offset.

        When this returns, Redis has replied (with ``appendfsync always``: the
        events are fsync'd) and the next :meth:`extra_seen` includes them. A
        ``request_id`` already stored for this user within the TTL is not
        stored again: the first call's offset is returned. Raises
        :class:`InvalidInteractions` for bad input,
        :class:`LiveEventCapExceeded` when the user would hold more than
        ``max_live_items_per_user`` distinct live items (nothing stored), and
        :class:`EventStoreUnavailable` when Redis does not confirm the write
        (it may or may not be stored; a retry with the same ``request_id``
        stores it once).

        The cap is checked against this replica's view of the user, with the
        user's writes through this replica serialised, so one replica never
        lets a user past it. Across replicas the view lags by the follower's
        delay (milliseconds): calls for one user sent to several replicas at
        the same instant can each pass, so the user can exceed the cap by at
        most those calls' new items. The cap bounds memory; it is not an
        exact quota across replicas.
        """
        rows = validated_rows(user_id, item_ids, ratings, times, self.max_items_per_call)
        with self._write_locks[hash(int(user_id)) % _WRITE_LOCK_STRIPES]:
            return self._record_locked(int(user_id), rows, request_id)

    def _record_locked(
        self, user_id: int, rows: list[tuple[int, int, float | None, int, float]], request_id: str | None
    ) -> int:
        """:meth:`record` once the user's write lock is held: the cap check, the script, the local view."""
        over_cap: LiveEventCapExceeded | None = None
        try:
            check_live_cap(self._views.get(user_id), user_id, rows, self.max_live_items_per_user)
        except LiveEventCapExceeded as exc:
            over_cap = exc  # raised only if Redis does not know the call already (a retry is answered first)
        items, entry_ratings, entry_times = _arrays(rows)
        request_key = f"{self._request_key_prefix}{user_id}:{request_id}" if request_id else self._request_key_prefix
        args: list[bytes | str | int] = [
            len(rows),
            max(self._last_offset, self._trimmed_through),
            self._request_id_ttl_ms if request_id else 0,
            user_id,
            items.astype("<i8").tobytes(),
            entry_ratings.astype("<f8").tobytes(),
            entry_times.astype("<i8").tobytes(),
            repr(rows[0][4]),
            1 if over_cap is not None else 0,
        ]
        try:
            reply = cast(
                list[int], self._record_script(keys=[self._stream_key, self._counter_key, request_key], args=args)
            )
            offset, outcome = int(reply[0]), int(reply[1])
            if outcome == 2 and over_cap is not None:
                self._last_error = None
                raise over_cap
            stored = (
                self._read_entry(offset) if outcome == 1 else _Entry(offset, user_id, items, entry_ratings, entry_times)
            )
        except redis.RedisError as exc:
            raise self._unavailable("could not store interactions", exc) from None
        self._last_error = None
        with self._state_lock:
            self._apply_locked([] if stored is None else [stored])
        return offset

    # -- compaction -------------------------------------------------------------------------------

    def export(self, after: int = 0) -> SeenEvents:
        """Every stored event with offset > ``after``, oldest first, up to the newest one at the call.

        ``recctl index rebuild --events redis://...`` merges these into the
        next bundle and records ``last_offset`` in it.
        """
        try:
            end = self._top()
            after = max(after, self._trim_point())
            entries = list(self._entries(after, end))
        except redis.RedisError as exc:
            raise self._unavailable("could not read interactions", exc) from None
        return _events_of(entries, after)

    def truncate_through(self, offset: int) -> int:
        """Delete the events with offset <= ``offset`` (now part of a bundle); return how many were deleted.

        This replica forgets them at once (it must already serve a bundle that
        holds them; when Redis was already trimmed further, it forgets through
        that point too); every other replica's follower sees ``{ns}:trimmed``
        move (woken by ``{ns}:trims``) and forgets them within milliseconds.
        """
        if offset < 0:
            raise ValueError("offset must be >= 0")
        try:
            doomed = list(self._entries(self._trim_point(), offset))
            doomed += self._entries_from(offset + 1, count=1)  # one call may straddle the point
            keys = [self._stream_key, self._counter_key, self._trimmed_key, self._trims_key]
            before = int(cast(int, self._trim_script(keys=keys, args=[offset, f"{offset + 1}-0"])))
        except redis.RedisError as exc:
            raise self._unavailable("could not truncate the events", exc) from None
        deleted = sum(int(np.count_nonzero((e.offsets > before) & (e.offsets <= offset))) for e in doomed)
        self._forget_through(max(offset, before))
        return deleted

    @property
    def truncated_through(self) -> int:
        """The highest offset compacted away in Redis (0: nothing ever was): Redis holds every event after it.

        Shared by every replica (``{ns}:trimmed``), so the server's continuity
        check (:func:`movierec.server.live_events.check_continuity`) works as
        for the SQLite log: a version holding fewer events than this has a gap.
        A Redis reset (FLUSHALL, a new instance, an AOF lost) forgets the point
        with the events: say 0, as nothing after it can be checked either.
        """
        try:
            return self._trim_point()
        except redis.RedisError as exc:
            raise self._unavailable("could not read how far the events were truncated", exc) from None

    def ensure_offsets_after(self, offset: int) -> None:
        """Make every future offset greater than ``offset`` (an index version already holds events through it).

        Raises ``{ns}:seq`` to ``offset`` in one script, never lowers it: a new
        or reset Redis would otherwise number events from 1 again, and a
        rebuild would skip them as already compacted. Every replica's next
        write lands after it.
        """
        if offset < 0:
            raise ValueError("offset must be >= 0")
        try:
            top = int(cast(int, self._floor_script(keys=[self._counter_key], args=[offset])))
        except redis.RedisError as exc:
            raise self._unavailable("could not advance the event offsets", exc) from None
        with self._state_lock:
            self._last_offset = max(self._last_offset, top)

    # -- lifecycle --------------------------------------------------------------------------------

    def close(self) -> None:
        """Stop following and drop the connections (waits at most one ``XREAD BLOCK`` period)."""
        self._stop.set()
        if self._follower is not None:
            self._follower.join()
        self._client.close()

    def __enter__(self) -> RedisEventStore:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- internals --------------------------------------------------------------------------------

    def _check_durability(self) -> str | None:
        """None when Redis fsyncs every write before replying; otherwise what the operator should know."""
        try:
            config = {_text(k): _text(v) for k, v in cast(dict[Any, Any], self._client.config_get("append*")).items()}
        except redis.ConnectionError as exc:
            raise self._unavailable("cannot reach Redis", exc) from None
        except redis.RedisError as exc:
            note = f"cannot read Redis's persistence settings ({exc}); the no-loss guarantee needs"
            note += " appendonly yes and appendfsync always"
            logger.warning("live events in %s: %s", self.target.display, note)
            return note
        appendonly, appendfsync = config.get("appendonly", ""), config.get("appendfsync", "")
        if appendonly == "yes" and appendfsync == "always":
            return None
        note = f"Redis runs with appendonly {appendonly or '?'}, appendfsync {appendfsync or '?'}:"
        note += " a crash of Redis or its host can lose acknowledged events (set appendonly yes, appendfsync always)"
        logger.warning("live events in %s: %s", self.target.display, note)
        return note

    def _replay(self, after: int) -> int:
        """Load every event after ``after`` into the local views; return the follower's starting offset."""
        try:
            top = self._top()
            self._trimmed_through = after = max(after, self._trim_point())
            entries = list(self._entries(after, None))
        except redis.RedisError as exc:
            raise self._unavailable("cannot replay the live events", exc) from None
        if top < after:
            logger.warning(
                "live events in %s stop at offset %d but the index holds events through %d: a new or reset Redis?"
                " New offsets continue after %d",
                self.target.display,
                top,
                after,
                after,
            )
        events = _events_of(entries, after)
        with self._state_lock:
            self._views = views_of(
                events.offsets, events.user_ids, events.item_ids, events.ratings, self.like_threshold
            )
            self._last_offset = max(self._last_offset, top, entries[-1].last if entries else 0)
        return max(top, after, entries[-1].last if entries else 0)

    def _follow(self) -> None:
        """Apply other replicas' entries as they arrive; on failure back off, then resume from the cursor."""
        follower = _connect(self.target, _FOLLOW_BLOCK_MS / 1000 + DEFAULT_SOCKET_TIMEOUT_S)
        delay = _BACKOFF_FIRST_S
        failing = False
        trims_seen = "0-0"  # the newest trim notice read (the first read returns the standing one: harmless)
        try:
            while not self._stop.is_set():
                try:
                    if failing:
                        self._check_not_rewound(follower)
                    streams: dict[KeyT, StreamIdT] = {
                        self._stream_key: f"{self._cursor}-0",
                        self._trims_key: trims_seen,
                    }
                    reply = follower.xread(streams, count=_PAGE, block=_FOLLOW_BLOCK_MS)
                    trim_point = int(cast(bytes | None, follower.get(self._trimmed_key)) or 0)  # after: the newest
                except redis.RedisError as exc:
                    if not failing:
                        logger.error("live events: lost Redis at %s (%s); retrying", self.target.display, exc)
                    failing = True
                    self._last_error = f"Redis at {self.target.display}: {exc}"
                    self._stop.wait(delay)
                    delay = min(delay * 2, _BACKOFF_MAX_S)
                    continue
                if failing:
                    logger.warning("live events: Redis at %s answers again; catching up", self.target.display)
                    failing, delay = False, _BACKOFF_FIRST_S
                self._last_error = None
                try:
                    for stream, raw_entries in cast(list[tuple[bytes, list[tuple[bytes, dict[bytes, Any]]]]], reply):
                        if stream.decode() == self._trims_key:
                            trims_seen = raw_entries[-1][0].decode()
                        else:
                            self._take(raw_entries)
                    self._forget_through(trim_point)
                except Exception as exc:  # a bug here must not end following for good: log it, retry later
                    logger.exception("live events: could not apply entries after offset %d", self._cursor)
                    self._last_error = f"applying followed events failed: {exc!r}"
                    self._stop.wait(_BACKOFF_MAX_S)
        finally:
            follower.close()

    def _take(self, raw_entries: list[tuple[bytes, dict[bytes, Any]]]) -> None:
        """Apply followed entries and move the cursor past them (a foreign entry is logged and skipped)."""
        entries = _decoded(raw_entries)
        if entries and entries[0].first > self._cursor + 1:
            logger.warning(
                "live events: offsets %d..%d were trimmed before this replica read them",
                self._cursor + 1,
                entries[0].first - 1,
            )
        with self._state_lock:
            self._apply_locked(entries)
        if raw_entries:
            self._cursor = int(raw_entries[-1][0].split(b"-", 1)[0])

    def _forget_through(self, offset: int) -> None:
        """Forget the events at or below ``offset`` (compacted away in Redis); never moves backwards."""
        with self._state_lock:
            if offset > self._trimmed_through:
                self._trimmed_through = offset
                self._views = forgotten_through(self._views, offset, self.like_threshold)  # one swap for readers

    def _check_not_rewound(self, follower: redis.Redis) -> None:
        """After an outage: say loudly if Redis came back without events this replica had already seen."""
        top = int(cast(bytes | None, follower.get(self._counter_key)) or 0)
        if top < self._cursor:
            logger.error(
                "live events: Redis at %s came back at offset %d, below the %d this replica had seen:"
                " acknowledged events were lost (run Redis with appendonly yes, appendfsync always)",
                self.target.display,
                top,
                self._cursor,
            )

    def _apply_locked(self, entries: list[_Entry]) -> None:
        """Fold entries into the touched users' views, merged by binary search (caller holds the state lock).

        An item keeps its highest-offset event, so applying an entry twice or
        out of order changes nothing: ``record`` and the follower may race.
        """
        if not entries:
            return
        events = _events_of(entries, self._trimmed_through)
        if len(events):
            self._views.update(
                folded_views(
                    self._views, events.offsets, events.user_ids, events.item_ids, events.ratings, self.like_threshold
                )
            )
        self._last_offset = max(self._last_offset, *(entry.last for entry in entries))

    def _entries(self, after: int, through: int | None) -> Iterator[_Entry]:
        """Stored entries holding an offset > ``after`` (and with last offset <= ``through``), page by page."""
        start = f"{after + 1}-0"
        end = "+" if through is None else f"{through}-0"
        while True:
            page = cast(
                list[tuple[bytes, dict[bytes, bytes]]], self._client.xrange(self._stream_key, start, end, count=_PAGE)
            )
            yield from _decoded(page)
            if len(page) < _PAGE:
                return
            start = f"({page[-1][0].decode()}"

    def _entries_from(self, first_last_offset: int, *, count: int) -> list[_Entry]:
        """Up to ``count`` entries whose last offset is >= ``first_last_offset``."""
        page = cast(
            list[tuple[bytes, dict[bytes, bytes]]],
            self._client.xrange(self._stream_key, f"{first_last_offset}-0", "+", count=count),
        )
        return _decoded(page)

    def _read_entry(self, offset: int) -> _Entry | None:
        """The stored entry whose last offset is ``offset`` (None once compacted away)."""
        found = self._entries_from(offset, count=1)
        return found[0] if found and found[0].last == offset else None

    def _trim_point(self) -> int:
        """The highest offset compacted away (events at or below it are deleted)."""
        return int(cast(bytes | None, self._client.get(self._trimmed_key)) or 0)

    def _top(self) -> int:
        """The highest offset Redis has assigned."""
        return int(cast(bytes | None, self._client.get(self._counter_key)) or 0)

    def _unavailable(self, what: str, exc: redis.RedisError) -> EventStoreUnavailable:
        self._last_error = f"Redis at {self.target.display}: {exc}"
        return EventStoreUnavailable(f"{what}: Redis at {self.target.display} did not answer ({exc})")


def _connect(target: RedisTarget, socket_timeout_s: float) -> redis.Redis:
    """A client that fails fast and never resends a command on its own (a resent write could store twice)."""
    return redis.Redis(
        host=target.host,
        port=target.port,
        db=target.db,
        username=target.username,
        password=target.password,
        ssl=target.tls,
        socket_timeout=socket_timeout_s,
        socket_connect_timeout=min(socket_timeout_s, DEFAULT_SOCKET_TIMEOUT_S),
        retry=Retry(NoBackoff(), 0),
        client_name="movierec-events",
    )


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _arrays(
    rows: list[tuple[int, int, float | None, int, float]],
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64], npt.NDArray[np.int64]]:
    return (
        np.array([row[1] for row in rows], dtype=np.int64),
        np.array([math.nan if row[2] is None else row[2] for row in rows], dtype=np.float64),
        np.array([row[3] for row in rows], dtype=np.int64),
    )


def _decoded(raw_entries: list[tuple[bytes, dict[bytes, Any]]]) -> list[_Entry]:
    """The live events among stream entries; anything else written into the stream is logged and skipped."""
    entries: list[_Entry] = []
    for entry_id, fields in raw_entries:
        try:
            entries.append(_decode(entry_id, fields))
        except InteractionLogError as exc:
            logger.error("live events: skipped %s", exc)
    return entries


def _decode(entry_id: bytes, fields: dict[bytes, Any]) -> _Entry:
    """A stream entry as written by the record script (ids are ``<last offset>-0``).

    Raises :class:`InteractionLogError` for an entry something else wrote into the stream.
    """
    try:
        entry = _Entry(
            last=int(entry_id.split(b"-", 1)[0]),
            user_id=int(fields[b"u"]),
            item_ids=np.frombuffer(fields[b"i"], dtype="<i8").astype(np.int64),
            ratings=np.frombuffer(fields[b"r"], dtype="<f8").astype(np.float64),
            times=np.frombuffer(fields[b"t"], dtype="<i8").astype(np.int64),
        )
        consistent = entry.item_ids.shape == entry.ratings.shape == entry.times.shape and entry.item_ids.size > 0
    except (KeyError, ValueError) as exc:
        raise InteractionLogError(f"stream entry {entry_id!r} is not a live event ({exc!r})") from None
    if not consistent:
        raise InteractionLogError(f"stream entry {entry_id!r} is not a live event (field lengths differ)")
    return entry


def _events_of(entries: list[_Entry], after: int) -> SeenEvents:
    """Entries flattened into events, dropping those at or below ``after`` (an entry may straddle it)."""
    if not entries:
        empty_float = np.zeros(0, dtype=np.float64)
        return SeenEvents(_EMPTY.copy(), _EMPTY.copy(), _EMPTY.copy(), empty_float, _EMPTY.copy())
    offsets = np.concatenate([entry.offsets for entry in entries])
    keep = offsets > after
    return SeenEvents(
        offsets=offsets[keep],
        user_ids=np.concatenate([np.full(entry.item_ids.shape[0], entry.user_id, np.int64) for entry in entries])[keep],
        item_ids=np.concatenate([entry.item_ids for entry in entries])[keep],
        ratings=np.concatenate([entry.ratings for entry in entries])[keep],
        times=np.concatenate([entry.times for entry in entries])[keep],
    )
