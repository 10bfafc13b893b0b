"""The no-loss rule on the index side: what every retained version holds, and the operator's way back.

Each index version records ``events_through``: the live-event offset whose
events it has compacted (and, for users the model never saw, the compacted
events themselves; :class:`~movierec.index.events.CompactedEvents` are
cumulative, so a newer version holds every event an older one does). A live
event store may forget events only when *every* version that could go live
again holds them, so :func:`safe_truncation_offset` is the minimum
``events_through`` over the versions retained in the store (and the version a
server is serving, which may already be pruned). Any store (SQLite, Redis) is
truncated through that one offset; the store decides nothing.

:func:`rollback` moves ``CURRENT`` back to an older retained version, verified
first; since no retained version lacks an event the log still holds, the
server that swaps to it excludes every acknowledged event.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from movierec.bundle import VersionedStore, read_manifest
from movierec.errors import BundleError
from movierec.index.build import build_lock
from movierec.index.events import CompactedEvents, read_events
from movierec.index.layout import INDEX_KIND
from movierec.index.meta import IndexMeta

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RetainedVersion:
    """One version in the store and the live-event offset it holds (None: its manifest cannot be read)."""

    version: str
    path: Path
    events_through: int | None
    problem: str = ""


@dataclass(frozen=True)
class RollbackResult:
    """``CURRENT`` moved from ``previous`` (None: there was none) to ``current``."""

    previous: str | None
    current: str
    events_through: int

    def to_json(self) -> dict[str, object]:
        return {"previous": self.previous, "current": self.current, "events_through": self.events_through}


def retained_versions(index_root: Path) -> list[RetainedVersion]:
    """Every version in the store, oldest first, with its ``events_through`` read from the manifest (no hashing)."""
    store = VersionedStore(Path(index_root))
    found = []
    for version in store.versions():
        path = store.path(version)
        try:
            meta = IndexMeta.from_manifest(read_manifest(path, INDEX_KIND, verify=False), path)
        except BundleError as exc:
            found.append(RetainedVersion(version, path, None, str(exc)))
            continue
        found.append(RetainedVersion(version, path, meta.events_through))
    return found


def safe_truncation_offset(index_root: Path | None, serving_through: int | None = None) -> int:
    """The highest offset a live event store may be truncated through without any retained version losing an event.

    The minimum ``events_through`` over the store's readable versions and
    ``serving_through`` (the version a server serves, retained or not). A
    version whose manifest cannot be read cannot go live (it fails
    verification) and is skipped; should an operator repair it after the log
    moved past it, the server's continuity check catches the gap.
    """
    offsets = [] if serving_through is None else [serving_through]
    if index_root is not None:
        for retained in retained_versions(index_root):
            if retained.events_through is None:
                logger.warning(
                    "version %s left out of the safe truncation offset: %s", retained.version, retained.problem
                )
            else:
                offsets.append(retained.events_through)
    return min(offsets) if offsets else 0


def newest_events_holding(index_root: Path, through: int) -> tuple[str, CompactedEvents] | None:
    """The compacted events of the newest verified version holding every event through ``through``.

    The repair source when a version has fallen behind the log's truncation
    point: compacted events are cumulative, so that version holds the missing
    ones. Every checksum of the candidate is verified; a corrupt one is skipped.
    """
    for retained in reversed(retained_versions(index_root)):
        if retained.events_through is None or retained.events_through < through:
            continue
        try:
            manifest = read_manifest(retained.path, INDEX_KIND, verify=True)
            return retained.version, read_events(retained.path, retained.events_through, manifest)
        except BundleError as exc:
            logger.warning("version %s cannot repair a gap: %s", retained.version, exc)
    return None


def previous_version(store: VersionedStore) -> str:
    """The newest version older than ``CURRENT`` (the default rollback target)."""
    current = store.current_version()
    if current is None:
        raise BundleError("no CURRENT version to roll back from", path=store.root)
    older = [v for v in store.versions() if int(v[1:]) < int(current[1:])]
    if not older:
        raise BundleError(f"no version older than the current {current} to roll back to", path=store.root)
    return older[-1]


def rollback(index_root: Path, to: str | None = None) -> RollbackResult:
    """Point ``CURRENT`` at ``to`` (default: the version before it) once every checksum of ``to`` verifies.

    Runs under the store's build lock (no build or prune moves CURRENT or
    deletes ``to`` meanwhile); the pointer moves by one atomic rename. Raises
    :class:`BundleError` naming the problem: no such store or version, a
    corrupt target (CURRENT stays where it was).
    """
    root = Path(index_root)
    if not root.is_dir():
        raise BundleError("no such index store", path=root)
    with build_lock(root):
        store = VersionedStore(root)
        previous = store.current_version()
        target = previous_version(store) if to is None else to
        path = store.path(target)
        if not path.is_dir():
            raise BundleError(
                f"no version {target} here (versions: {', '.join(store.versions()) or 'none'})", path=root
            )
        try:
            meta = IndexMeta.from_manifest(read_manifest(path, INDEX_KIND, verify=True), path)
        except BundleError as exc:
            raise BundleError(f"refusing to roll back to {target}, it does not verify: {exc}") from None
        if target != previous:
            store.set_current(target)
    return RollbackResult(previous=previous, current=target, events_through=meta.events_through)
