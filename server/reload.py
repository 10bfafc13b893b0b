"""Hot swap: follow an index store's ``CURRENT`` and publish each new version without dropping a request.

A new version is opened *beside* the one serving (every checksum verified,
then warmed up) on a worker thread while the event loop keeps answering from
the old engine; only a fully loaded engine is published, by one reference
assignment (:meth:`ServingState.publish`). A version that fails to load is
refused: the reason is logged and kept for ``GetInfo`` and the old version
keeps serving. A refused version is not retried until ``CURRENT`` moves (a
corrupt bundle stays corrupt; re-verifying it every poll would only burn
CPU), unless an operator forces it (``ReloadIndex`` RPC, SIGHUP).

After a swap to a version that compacted live events, the interaction log
drops what that version now holds (``truncate_through``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from movierec.bundle import VersionedStore
from movierec.index import ServingIndex
from movierec.server.engine import ServingEngine
from movierec.server.live_events import LiveEventStore
from movierec.server.state import ServingState

logger = logging.getLogger(__name__)
DEFAULT_POLL_SECONDS = 1.0


@dataclass(frozen=True)
class ReloadOutcome:
    """What one reload attempt did: ``swapped`` to a new version, or ``error`` (empty when none)."""

    swapped: bool
    error: str = ""


class IndexReloader:
    """Loads the store's current version when it differs from the one serving; one attempt at a time."""

    def __init__(
        self,
        store_root: Path,
        state: ServingState,
        loader: Callable[[Path], ServingIndex],
        make_engine: Callable[[ServingIndex], ServingEngine],
        log: LiveEventStore | None = None,
    ) -> None:
        self.store = VersionedStore(store_root)
        self._state = state
        self._loader = loader
        self._make_engine = make_engine
        self._log = log
        self._lock = asyncio.Lock()

    async def reload(self, *, force: bool = False) -> ReloadOutcome:
        """Swap to ``CURRENT`` if it is new; ``force`` retries a version refused before."""
        async with self._lock:
            serving = self._state.engine
            try:
                current = self.store.current_version()
            except Exception as exc:  # a broken CURRENT pointer: refuse it, keep serving
                return self._refuse("CURRENT", f"cannot read CURRENT: {exc}")
            if current is None:
                return self._refuse("CURRENT", f"{self.store.root} has no CURRENT version")
            if serving is not None and current == serving.index_version:
                return ReloadOutcome(swapped=False)
            if not force and current == self._state.last_refused_version:
                return ReloadOutcome(swapped=False, error=self._state.last_reload_error)
            try:
                engine = await asyncio.to_thread(self._load_engine, self.store.path(current))
            except Exception as exc:  # any failure to load means "do not serve it", never "stop serving"
                return self._refuse(current, f"{type(exc).__name__}: {exc}")
            self._state.publish(engine)
            logger.info("hot swap: now serving index %s (model %s)", engine.index_version, engine.model_version)
            await self._compact_log(serving, engine)
            return ReloadOutcome(swapped=True)

    async def watch(self, poll_seconds: float = DEFAULT_POLL_SECONDS) -> None:
        """Poll ``CURRENT`` until cancelled."""
        while True:
            await asyncio.sleep(poll_seconds)
            await self.reload()

    def _load_engine(self, path: Path) -> ServingEngine:
        return self._make_engine(self._loader(path))

    def _refuse(self, version: str, reason: str) -> ReloadOutcome:
        """Record a refusal once: polling a broken CURRENT every second must not flood the log or the counter."""
        if version != self._state.last_refused_version or reason != self._state.last_reload_error:
            logger.error("refused index %s; the old version keeps serving: %s", version, reason)
            self._state.refuse(version, reason)
        return ReloadOutcome(swapped=False, error=reason)

    async def _compact_log(self, old: ServingEngine | None, new: ServingEngine) -> None:
        """Drop the log's events the new version holds, on a worker thread.

        The delete, the WAL checkpoint and the replay take milliseconds that the
        event loop keeps answering through: ``truncate_through`` swaps in its
        rebuilt views at once, so no request sees them half rebuilt, and until
        then the old views only repeat exclusions the new index already holds.
        """
        through = new.index.events_through
        if self._log is None or through <= (0 if old is None else old.index.events_through):
            return
        deleted = await asyncio.to_thread(self._log.truncate_through, through)
        logger.info("interaction log: %d events now compacted into index %s", deleted, new.index_version)
