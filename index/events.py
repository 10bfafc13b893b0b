"""Compaction of live "watched" events into index versions (issue 5: events survive rebuilds).

The server logs interactions as they happen and excludes them at once; a
rebuild folds them into the new version's seen sets so the log can shrink.
Each version keeps *every* event compacted so far (dataset ids, so they survive
a retrained model with different rows) and the log offset it covers
(:attr:`CompactedEvents.through_offset`): the next rebuild carries them forward
onto whatever model it indexes. The log is truncated only through what every
retained version holds (:mod:`movierec.index.rollback`), and a version that
falls behind it is repaired from a newer one's compacted events.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from movierec.bundle import CSR, Manifest, ModelBundle, read_manifest, sha256_file
from movierec.bundle.manifest import listed_file
from movierec.bundle.npy import read_npy
from movierec.errors import BundleError
from movierec.index.layout import INDEX_KIND
from movierec.index.meta import IndexMeta

EVENT_USERS_FILE = "events_user_ids.npy"
EVENT_ITEMS_FILE = "events_item_ids.npy"
EVENT_FILES = (EVENT_USERS_FILE, EVENT_ITEMS_FILE)


@dataclass(frozen=True)
class SeenEvents:
    """Events read from a live event store (:meth:`InteractionLog.export`), in offset order, as parallel arrays.

    ``ratings`` is NaN where none was given. The index layer owns the type so that
    a rebuild can take events from any store without importing the server.
    """

    offsets: npt.NDArray[np.int64]
    user_ids: npt.NDArray[np.int64]
    item_ids: npt.NDArray[np.int64]
    ratings: npt.NDArray[np.float64]
    times: npt.NDArray[np.int64]

    def __len__(self) -> int:
        return int(self.offsets.shape[0])

    @property
    def last_offset(self) -> int:
        """The offset of the newest event here, 0 when there is none."""
        return int(self.offsets[-1]) if len(self) else 0


@dataclass(frozen=True)
class CompactedEvents:
    """(user id, item id) pairs already part of a version, and the last log offset they include."""

    user_ids: npt.NDArray[np.int64]
    item_ids: npt.NDArray[np.int64]
    through_offset: int = 0

    def __len__(self) -> int:
        return int(self.user_ids.shape[0])

    @classmethod
    def none(cls) -> CompactedEvents:
        return cls(np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64), 0)

    def extended(self, new: SeenEvents) -> CompactedEvents:
        """These events plus those of ``new`` past :attr:`through_offset` (earlier ones are already here)."""
        fresh = np.asarray(new.offsets, dtype=np.int64) > self.through_offset
        if not fresh.any():
            return self
        return CompactedEvents(
            np.concatenate([self.user_ids, np.asarray(new.user_ids, dtype=np.int64)[fresh]]),
            np.concatenate([self.item_ids, np.asarray(new.item_ids, dtype=np.int64)[fresh]]),
            int(np.asarray(new.offsets, dtype=np.int64)[fresh].max()),
        )


def rows_of(sorted_ids: npt.NDArray[np.int64], wanted: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """Row of each wanted id in ``sorted_ids`` (ascending, unique), -1 where the id is unknown."""
    rows: npt.NDArray[np.int64] = np.searchsorted(sorted_ids, wanted).astype(np.int64)
    inside = rows < sorted_ids.shape[0]
    known = np.zeros(wanted.shape, dtype=bool)
    known[inside] = sorted_ids[rows[inside]] == wanted[inside]
    rows[~known] = -1
    return rows


def merge_into_seen(model: ModelBundle, events: CompactedEvents) -> tuple[CSR, int]:
    """``model.seen`` plus every event whose user and item the model knows; also how many events were merged.

    Events of users the model never saw cannot enter the seen CSR (it has one
    row per known user): they stay in the compacted events, where the server
    still finds them for fold-in and exclusion.
    """
    users = rows_of(model.user_ids, events.user_ids)
    items = rows_of(model.item_ids, events.item_ids)
    known = (users >= 0) & (items >= 0)
    seen_rows, seen_cols = model.seen.to_pairs()
    merged = CSR.from_pairs(
        np.concatenate([seen_rows, users[known]]),
        np.concatenate([seen_cols.astype(np.int64), items[known]]),
        model.n_users,
        model.n_items,
    )
    return merged, int(known.sum())


def unknown_user_events(model: ModelBundle, events: CompactedEvents) -> dict[int, npt.NDArray[np.int64]]:
    """Compacted events of users the model never saw, by user id (sorted unique item ids each).

    :func:`merge_into_seen` can only put known users' events into the seen CSR;
    the others are still theirs to exclude and to fold in from.
    """
    if not len(events):
        return {}
    unknown = rows_of(model.user_ids, events.user_ids) < 0
    users, items = events.user_ids[unknown], events.item_ids[unknown]
    if not users.size:  # every compacted event is already in the seen CSR
        return {}
    order = np.argsort(users, kind="stable")
    users, items = users[order], items[order]
    distinct, starts = np.unique(users, return_index=True)
    groups = np.split(items, starts[1:])
    return {int(user): np.unique(group) for user, group in zip(distinct.tolist(), groups, strict=True)}


def write_events(directory: Path, events: CompactedEvents) -> None:
    np.save(directory / EVENT_USERS_FILE, events.user_ids.astype(np.int64))
    np.save(directory / EVENT_ITEMS_FILE, events.item_ids.astype(np.int64))


def read_events(
    directory: Path, through_offset: int, manifest: Manifest | None = None, *, verify: bool = False
) -> CompactedEvents:
    """The compacted events of a version, as its manifest lists them (``directory``'s own when not given).

    The manifest decides, never the files on disk: neither file listed is a
    version without events (unless one lies there unlisted: refused, it would
    be read unverified), one listed without the other is half a version. Both
    are read by :func:`~movierec.bundle.npy.read_npy` (int64 vectors, sizes
    checked from the header) and must hold as many events as the manifest's
    ``interactions.events``. ``verify`` checks each file's size and SHA-256
    against its manifest entry first, for a caller that has not verified the
    whole version (a rebuild carrying them forward must never certify altered
    events in a new manifest). Anything wrong is a :class:`BundleError`.
    """
    directory = Path(directory)
    if manifest is None:
        manifest = read_manifest(directory, INDEX_KIND, verify=False)
    listed = [name in manifest.files for name in EVENT_FILES]
    if not all(listed):
        if any(listed):
            raise BundleError(f"the manifest lists only some of {', '.join(EVENT_FILES)}", path=directory)
        present = [name for name in EVENT_FILES if (directory / name).exists()]
        if present:
            raise BundleError(f"{', '.join(present)} present but not listed in the manifest", path=directory)
        events = CompactedEvents.none()
    else:
        paths = [listed_file(manifest, directory, name) for name in EVENT_FILES]
        if verify:
            for name, path in zip(EVENT_FILES, paths, strict=True):
                _verify_entry(manifest.files[name], path)
        users, items = (read_npy(path, np.int64, 1) for path in paths)
        if users.shape != items.shape:
            raise BundleError("compacted event user and item arrays differ in shape", path=directory)
        events = CompactedEvents(users, items, through_offset)
    expected = IndexMeta.from_manifest(manifest, directory).compacted_events
    if len(events) != expected:
        raise BundleError(
            f"index manifest says {expected} compacted events, the version holds {len(events)}", path=directory
        )
    return events


def _verify_entry(entry: dict[str, Any], path: Path) -> None:
    """``path`` has the size and SHA-256 its manifest entry records."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise BundleError("listed in the manifest but missing", path=path) from None
    if size != entry["bytes"]:
        raise BundleError(f"truncated or altered: {size} bytes, manifest says {entry['bytes']}", path=path)
    if sha256_file(path) != entry["sha256"]:
        raise BundleError("checksum mismatch: the file was altered after the bundle was written", path=path)
