"""Limits of the live event stores, in a module light enough for ``recctl serve --help`` (no numpy, no index).

The SQLite log and the Redis store take them as their defaults
(:mod:`movierec.server.interaction_log` re-exports them); the CLI shows them.
"""

from __future__ import annotations

DEFAULT_MAX_ITEMS_PER_CALL = 10_000
"""Events one RecordInteractions call may carry (INVALID_ARGUMENT beyond)."""
DEFAULT_MAX_LIVE_ITEMS_PER_USER = 10_000
"""Distinct items one user may have in the live store at once (not yet compacted); RESOURCE_EXHAUSTED beyond."""


def check_store_settings(*, replay_after: int, max_items_per_call: int, max_live_items_per_user: int) -> None:
    """Raise ValueError for settings no live event store can run with, so the SQLite log and Redis refuse alike."""
    if replay_after < 0:
        raise ValueError("replay_after must be >= 0")
    if max_items_per_call < 1:
        raise ValueError("max_items_per_call must be >= 1")
    if max_live_items_per_user < 1:
        raise ValueError("max_live_items_per_user must be >= 1")
