"""What the server asks of a live event store, the no-loss checks around it, and the one public way to read a log.

The server records "watched" events as they arrive and excludes them from the
very next answer; a rebuild (``recctl index rebuild``) compacts them into the
next index version. :class:`LiveEventStore` is that contract:
:class:`~movierec.server.interaction_log.InteractionLog` (SQLite, one host)
and :class:`~movierec.server.redis_events.RedisEventStore` (shared across
replicas) implement it, without the engine, the servicer or the reloader
knowing which one they hold.

The no-loss rule (README, "Live events: the no-loss rule"): a store is only
ever truncated through :func:`~movierec.index.rollback.safe_truncation_offset`
(:func:`truncate_safely`), so every retained version plus the store holds every
acknowledged event. Before a version goes live the server checks it
(:func:`check_continuity`): if the store was truncated past what the version
holds (a log truncated by an older build, a version restored from a backup),
the missing events are re-recorded from a newer retained version's compacted
events (:func:`repair_gap`), or the version is refused with the reason.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import numpy.typing as npt

from movierec.errors import MovierecError
from movierec.index.events import CompactedEvents, SeenEvents
from movierec.index.rollback import newest_events_holding, retained_versions, safe_truncation_offset
from movierec.server.interaction_log import InteractionLog
from movierec.server.user_views import EventRatings, EventTimes, ItemIds

logger = logging.getLogger(__name__)
REPAIR_CHUNK = 1000
"""Items per re-recorded call when a gap is repaired (well under any store's per-call limit)."""


class LiveEventStore(Protocol):
    """Durable per-user events, readable per user on the request path without blocking.

    User and item ids are dataset ids. Offsets increase strictly and are never
    reused, so "every event through offset N" names the same events before and
    after a compaction. ``record`` raises
    :class:`~movierec.server.interaction_log.InvalidInteractions` for input the
    client must fix (nothing stored) and
    :class:`~movierec.server.interaction_log.InteractionLogError` when the store
    refuses the write.
    """

    def record(
        self,
        user_id: int,
        item_ids: ItemIds,
        ratings: EventRatings | None = None,
        times: EventTimes | None = None,
        *,
        request_id: str | None = None,
    ) -> int:
        """Store one call's events durably, then make them visible to reads; return the last offset.

        A ``request_id`` the user already stored (within the store's memory of
        ids) stores nothing and returns the first call's offset.
        """
        ...

    def extra_seen(self, user_id: int) -> npt.NDArray[np.int64]:
        """Sorted item ids the user interacted with live (excluded from their answers)."""
        ...

    def liked(self, user_id: int) -> npt.NDArray[np.int64]:
        """Sorted item ids the user liked live (fold-in input for a user the model never saw)."""
        ...

    @property
    def last_offset(self) -> int:
        """Offset of the newest event stored (0 when none)."""
        ...

    def export(self, after: int = 0) -> SeenEvents:
        """Every event with offset > ``after``, oldest first, as one consistent snapshot."""
        ...

    def truncate_through(self, offset: int) -> int:
        """Forget events with offset <= ``offset`` (now compacted into the index); return how many."""
        ...

    def close(self) -> None: ...


class ContinuityGap(MovierecError):
    """An index version lacks events the live store no longer holds, and no retained version can fill them in."""


@dataclass(frozen=True)
class Continuity:
    """How a version and the live store fit together: ``truncated_through`` None when the store cannot say;
    ``repaired`` events re-recorded from ``repaired_from`` to close a gap."""

    version: str
    events_through: int
    truncated_through: int | None
    repaired: int = 0
    repaired_from: str | None = None

    @property
    def gap(self) -> bool:
        return self.truncated_through is not None and self.truncated_through > self.events_through


def truncation_point(store: LiveEventStore) -> int | None:
    """How far ``store`` was truncated (it holds every event after it); None for a store that cannot say.

    Both stores here say (the SQLite log's ``log_state`` table, Redis's ``{ns}:trimmed``); a third-party
    store without ``truncated_through`` is served with a warning instead of the check.
    """
    point = getattr(store, "truncated_through", None)
    return point if isinstance(point, int) else None


def check_continuity(store: LiveEventStore, version: str, events_through: int) -> Continuity:
    """Whether ``store`` still holds every event after ``events_through`` (cheap: no event is read)."""
    truncated = truncation_point(store)
    if truncated is None:
        logger.warning("live events: this store does not say how far it was truncated; continuity is not checked")
    return Continuity(version, events_through, truncated)


def gap_reason(continuity: Continuity) -> str:
    return (
        f"index {continuity.version} holds live events through offset {continuity.events_through}, but the event"
        f" log was truncated through offset {continuity.truncated_through}: events"
        f" {continuity.events_through + 1}..{continuity.truncated_through} are in neither"
    )


def check_repairable(continuity: Continuity, index_root: Path | None) -> None:
    """Raise :class:`ContinuityGap` when ``continuity`` has a gap no retained version can fill (manifests only)."""
    if not continuity.gap:
        return
    assert continuity.truncated_through is not None
    holders = [] if index_root is None else retained_versions(index_root)
    if not any(v.events_through is not None and v.events_through >= continuity.truncated_through for v in holders):
        raise ContinuityGap(
            f"{gap_reason(continuity)} and no retained index version holds them: serving it would recommend"
            " movies users have already watched (roll back to a newer version, or rebuild)"
        )


def repair_gap(
    store: LiveEventStore, index_root: Path | None, continuity: Continuity, compacted: CompactedEvents
) -> Continuity:
    """Close a gap by re-recording, from the newest verified version holding them, the (user, item) pairs
    that neither the version (``compacted``) nor the store has; idempotent (a second run records nothing).

    Re-recorded events carry no rating (compaction keeps none) and the time of
    the repair. Raises :class:`ContinuityGap` when no retained version can.
    """
    if not continuity.gap:
        return continuity
    assert continuity.truncated_through is not None
    source = None if index_root is None else newest_events_holding(index_root, continuity.truncated_through)
    if source is None:
        raise ContinuityGap(f"{gap_reason(continuity)} and no retained index version that verifies holds them")
    source_version, events = source
    missing = _pairs(events) - _pairs(compacted)
    by_user: dict[int, list[int]] = {}
    for user, item in sorted(missing):
        by_user.setdefault(user, []).append(item)
    repaired = 0
    for user, items in by_user.items():
        live = set(store.extra_seen(user).tolist())
        todo = [item for item in items if item not in live]
        for start in range(0, len(todo), REPAIR_CHUNK):
            store.record(user, todo[start : start + REPAIR_CHUNK])
        repaired += len(todo)
    logger.warning(
        "%s; re-recorded %d of them from version %s's compacted events",
        gap_reason(continuity),
        repaired,
        source_version,
    )
    return Continuity(
        continuity.version, continuity.events_through, continuity.truncated_through, repaired, source_version
    )


def truncate_safely(store: LiveEventStore, index_root: Path | None, serving_through: int | None = None) -> int:
    """Truncate ``store`` through the no-loss rule's safe offset (never further); return how many events went.

    The one way any live event store is truncated: by the server after a swap
    or a prune, and by ``recctl index rebuild --events`` / ``index prune --events``.
    """
    offset = safe_truncation_offset(index_root, serving_through)
    point = truncation_point(store)
    if offset <= 0 or (point is not None and offset <= point):
        return 0
    return store.truncate_through(offset)


def prepare_store(
    store: LiveEventStore, index_root: Path | None, version: str, compacted: CompactedEvents
) -> Continuity:
    """Make ``store`` fit to serve beside ``version`` (whose compacted events are ``compacted``): offsets past
    everything the store's versions hold, the gap check and repair, truncation to the safe offset.

    Raises :class:`ContinuityGap` when the version must not be served.
    """
    ensure_offsets = getattr(store, "ensure_offsets_after", None)
    if callable(ensure_offsets):
        held = [v.events_through or 0 for v in retained_versions(index_root)] if index_root is not None else []
        ensure_offsets(max([compacted.through_offset, *held]))
    continuity = check_continuity(store, version, compacted.through_offset)
    check_repairable(continuity, index_root)
    continuity = repair_gap(store, index_root, continuity, compacted)
    truncate_safely(store, index_root, compacted.through_offset)
    return continuity


def _pairs(events: CompactedEvents) -> set[tuple[int, int]]:
    return set(zip(events.user_ids.tolist(), events.item_ids.tolist(), strict=True))


def read_logged_events(log_path: Path) -> SeenEvents:
    """Every event in the interaction log at ``log_path``, read as one consistent snapshot.

    Safe beside a server that keeps appending (SQLite WAL gives this reader its
    own snapshot); the rebuild command's way in, so it needs no server internals.
    """
    if not Path(log_path).is_file():
        raise MovierecError("no such interaction log", path=log_path)
    with InteractionLog(log_path, replay=False) as log:
        return log.export()


def truncate_logged_events(log_path: Path, index_root: Path) -> int:
    """Truncate the log at ``log_path`` through the no-loss rule's safe offset for ``index_root``; how many went."""
    if not Path(log_path).is_file():
        raise MovierecError("no such interaction log", path=log_path)
    with InteractionLog(log_path, replay=False) as log:
        return truncate_safely(log, index_root)
