"""Limits of the live event stores, in a module light enough for ``recctl serve --help`` (no numpy, no index).

The SQLite log and the Redis store take them as their defaults
(:mod:`movierec.server.interaction_log` re-exports them); the CLI shows them.
"""

from __future__ import annotations

DEFAULT_MAX_ITEMS_PER_CALL = 10_000
"""Events one RecordInteractions call may carry (INVALID_ARGUMENT beyond)."""
DEFAULT_MAX_LIVE_ITEMS_PER_USER = 10_000
"""Distinct items one user may have in the live store at once (not yet compacted); RESOURCE_EXHAUSTED beyond."""
