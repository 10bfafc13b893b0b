"""Hot swap: follow an index store's ``CURRENT`` and publish each new version without dropping a request.

A new version is opened *beside* the one serving (every checksum verified,
then warmed up) on a worker thread while the event loop keeps answering from
the old engine; only a fully loaded engine is published, by one reference
assignment (:meth:`ServingState.publish`). A version that fails to load is
refused: the reason is logged and kept for ``GetInfo`` and the old version
keeps serving. A refusal is remembered with a fingerprint of the version's
files (path, size, mtime of each): asking again, by poll, ``ReloadIndex`` or
anything else, answers from memory until a file changes (a repaired version is
retried at once; an unchanged corrupt one is never re-hashed). SIGHUP
(``force``) re-verifies regardless.

Before a version goes live its continuity with the live event store is checked
(:mod:`movierec.server.live_events`): a gap is repaired from a newer retained
version or the version is refused. After a swap, and whenever the set of
versions changes (``recctl index prune``), the store is truncated through the
no-loss rule's safe offset. Nothing after a swap (a failed truncation, a full
disk, a locked database) undoes the swap or stops the polling: it is logged,
kept for ``GetInfo`` and reported as ``error_after_swap``.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from movierec.bundle import VersionedStore, read_manifest
from movierec.index import IndexMeta, ServingIndex
from movierec.index.layout import INDEX_KIND
from movierec.server.engine import ServingEngine
from movierec.server.live_events import (
    Continuity,
    LiveEventStore,
    check_continuity,
    check_repairable,
    repair_gap,
    truncate_safely,
)
from movierec.server.state import ServingState

logger = logging.getLogger(__name__)
DEFAULT_POLL_SECONDS = 1.0
Fingerprint = tuple[tuple[str, int, int], ...]


class ReloadStatus(StrEnum):
    """What one reload attempt did."""

    SWAPPED = "swapped"
    """A new version was verified, loaded and published."""
    ALREADY_SERVING = "already_serving"
    """``CURRENT`` names the version being served: nothing to do."""
    REFUSED = "refused"
    """``CURRENT`` (or the pointer itself) cannot be served; the old version keeps serving."""
    ERROR_AFTER_SWAP = "error_after_swap"
    """Swapped, then a follow-up step (truncating the live events) failed; the new version serves."""


@dataclass(frozen=True)
class ReloadOutcome:
    """``status``, the ``version`` looked at, and ``error``: the refusal's reason or the follow-up's failure.

    ``cached``: a refusal answered from memory (the version's files are unchanged since it was refused).
    """

    status: ReloadStatus
    version: str = ""
    error: str = ""
    cached: bool = False

    @property
    def swapped(self) -> bool:
        """True when this attempt published a new version (even if a step after it failed)."""
        return self.status in (ReloadStatus.SWAPPED, ReloadStatus.ERROR_AFTER_SWAP)


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
        self._refusals: dict[str, tuple[Fingerprint, str]] = {}
        self._versions = tuple(self.store.versions())
        # Truncation still owed: held back for the previous version's requests in flight, or failed.
        self._truncation_pending = False
        self._truncation_error = ""

    async def reload(self, *, force: bool = False) -> ReloadOutcome:
        """Swap to ``CURRENT`` if it is new; ``force`` re-verifies a refused version even if its files are unchanged."""
        async with self._lock:
            serving = self._state.engine
            try:
                current = self.store.current_version()
            except Exception as exc:  # a broken CURRENT pointer: refuse it, keep serving
                return self._refuse("CURRENT", f"cannot read CURRENT: {exc}")
            if current is None:
                return self._refuse("CURRENT", f"{self.store.root} has no CURRENT version")
            if serving is not None and current == serving.index_version:
                await self._follow_prunes(serving)
                return ReloadOutcome(ReloadStatus.ALREADY_SERVING, current)
            return await self._swap_to(current, serving, force)

    async def watch(self, poll_seconds: float = DEFAULT_POLL_SECONDS) -> None:
        """Poll ``CURRENT`` until cancelled; no failure of one attempt ends the polling."""
        while True:
            await asyncio.sleep(poll_seconds)
            try:
                await self.reload()
            except Exception:  # a bug in one attempt must not stop every later swap
                logger.exception("reload attempt failed; polling goes on")

    async def _swap_to(self, version: str, serving: ServingEngine | None, force: bool) -> ReloadOutcome:
        path = self.store.path(version)
        fingerprint = await asyncio.to_thread(_fingerprint, path)
        known = self._refusals.get(version)
        if known is not None and known[0] == fingerprint and not force:
            return self._refuse(version, known[1], cached=True)
        try:
            continuity = await asyncio.to_thread(self._precheck, path)
        except Exception as exc:  # a continuity gap or an unreadable store: cheap to ask again, so not remembered
            return self._refuse(version, f"{type(exc).__name__}: {exc}")
        try:
            engine = await asyncio.to_thread(self._load_engine, path)
        except Exception as exc:  # any failure to load means "do not serve it", never "stop serving"
            reason = f"{type(exc).__name__}: {exc}"
            self._refusals[version] = (fingerprint, reason)
            return self._refuse(version, reason)
        if continuity is not None and continuity.gap and self._log is not None:
            try:
                await asyncio.to_thread(repair_gap, self._log, self.store.root, continuity, engine.index.events)
            except Exception as exc:
                return self._refuse(version, f"{type(exc).__name__}: {exc}")
        self._state.publish(engine)
        self._refusals.pop(version, None)
        logger.info("hot swap: now serving index %s (model %s)", engine.index_version, engine.model_version)
        through = engine.index.events_through
        if serving is not None and serving.index.events_through < through:
            through = serving.index.events_through  # requests in flight may still be answered by the old version
            self._truncation_pending = True  # the rest on the next poll
        error = await self._truncate(through)
        if error:
            self._state.last_reload_error = f"after the swap to {version}: {error}"
            return ReloadOutcome(ReloadStatus.ERROR_AFTER_SWAP, version, error)
        return ReloadOutcome(ReloadStatus.SWAPPED, version)

    def _precheck(self, path: Path) -> Continuity | None:
        """The version's continuity with the live store from its manifest alone (no hashing): raises
        ContinuityGap when no retained version could fill a gap."""
        if self._log is None:
            return None
        meta = IndexMeta.from_manifest(read_manifest(path, INDEX_KIND, verify=False), path)
        continuity = check_continuity(self._log, path.name, meta.events_through)
        check_repairable(continuity, self.store.root)
        return continuity

    def _load_engine(self, path: Path) -> ServingEngine:
        return self._make_engine(self._loader(path))

    async def _follow_prunes(self, serving: ServingEngine) -> None:
        """When versions came or went since the last look (or a truncation is owed), truncate the live store as
        far as the rule now allows."""
        versions = tuple(self.store.versions())
        if versions == self._versions and not self._truncation_pending:
            return
        self._refusals = {v: known for v, known in self._refusals.items() if v in versions}
        self._truncation_pending = False
        error = await self._truncate(serving.index.events_through)
        if error:
            self._state.last_reload_error = error

    async def _truncate(self, serving_through: int) -> str:
        """Truncate the live store through the safe offset on a worker thread; the error text, "" when none.

        The delete, the WAL checkpoint and the in-memory filter take
        milliseconds that the event loop keeps answering through: the store
        swaps in its filtered views at once, so no request sees them half done.
        """
        self._versions = tuple(self.store.versions())
        if self._log is None:
            return ""
        try:
            deleted = await asyncio.to_thread(truncate_safely, self._log, self.store.root, serving_through)
        except Exception as exc:  # disk full, a locked database, Redis away: the events stay, the swap stands
            error = f"truncating the live events failed: {type(exc).__name__}: {exc}"
            if error != self._truncation_error:  # retried every poll: logged once per distinct failure
                logger.error("live events: %s (the events stay in the log; retried on the next poll)", error)
            self._truncation_error, self._truncation_pending = error, True
            return error
        self._truncation_error = ""
        if deleted:
            logger.info("live events: %d events compacted into every retained version, dropped from the log", deleted)
        return ""

    def _refuse(self, version: str, reason: str, *, cached: bool = False) -> ReloadOutcome:
        """Record a refusal once: polling a broken CURRENT every second must not flood the log or the counter."""
        if version != self._state.last_refused_version or reason != self._state.last_reload_error:
            logger.error("refused index %s; the old version keeps serving: %s", version, reason)
            self._state.refuse(version, reason)
        return ReloadOutcome(ReloadStatus.REFUSED, version, reason, cached)


def _fingerprint(path: Path) -> Fingerprint:
    """Every file under a version with its size and modification time: cheap to take, and changed by any repair."""
    entries = []
    for folder, _dirs, files in os.walk(path):
        for name in files:
            file = Path(folder) / name
            try:
                stat = file.stat()
            except OSError:
                continue
            entries.append((str(file.relative_to(path)), stat.st_size, stat.st_mtime_ns))
    return tuple(sorted(entries))
