"""What the server asks of a live event store, and the one public way to read a store's events.

The server records "watched" events as they arrive and excludes them from the
very next answer; a rebuild (``recctl index rebuild``) compacts them into the
next index version. :class:`LiveEventStore` is that contract:
:class:`~movierec.server.interaction_log.InteractionLog` (SQLite, one host)
implements it, and any other store (shared across replicas) may, without the
engine, the servicer or the reloader knowing which one they hold.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import numpy.typing as npt

from movierec.errors import MovierecError
from movierec.index.events import SeenEvents
from movierec.server.interaction_log import InteractionLog


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
        item_ids: Sequence[int] | npt.NDArray[np.integer],
        ratings: Sequence[float | None] | None = None,
        times: Sequence[int] | npt.NDArray[np.integer] | None = None,
    ) -> int:
        """Store one call's events durably, then make them visible to reads; return the last offset."""
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


def read_logged_events(log_path: Path) -> SeenEvents:
    """Every event in the interaction log at ``log_path``, read as one consistent snapshot.

    Safe beside a server that keeps appending (SQLite WAL gives this reader its
    own snapshot); the rebuild command's way in, so it needs no server internals.
    """
    if not Path(log_path).is_file():
        raise MovierecError("no such interaction log", path=log_path)
    with InteractionLog(log_path) as log:
        return log.export()
