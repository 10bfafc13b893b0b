"""Delete old index versions so a store that is rebuilt often does not grow without bound.

Never the current version, never one of the ``keep`` newest. Each victim is
first renamed to a hidden name (atomic: readers listing versions see it whole
or not at all), then removed. A server already serving a pruned version is
unaffected: :func:`movierec.index.open_index` reads everything into memory.

Pruning never loses a live event: the live store is only ever truncated
through what every *remaining* version holds
(:func:`movierec.index.rollback.safe_truncation_offset`), so removing versions
can only let that offset advance (``recctl index prune --events``, or the
server on its next poll), never leave a remaining version short.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from movierec.bundle import VersionedStore
from movierec.errors import BundleError
from movierec.index.build import build_lock


def prune_versions(index_root: Path, keep: int) -> list[str]:
    """Remove all but the ``keep`` newest versions (and the current one); return the removed names."""
    if keep < 1:
        raise ValueError("keep must be at least 1")
    root = Path(index_root)
    if not root.is_dir():
        raise BundleError("no such index store", path=root)
    with build_lock(root):
        store = VersionedStore(root)
        versions = store.versions()
        current = store.current_version()
        victims = [v for v in versions[: max(0, len(versions) - keep)] if v != current]
        for version in victims:
            trash = Path(tempfile.mkdtemp(prefix=f".{version}.pruned-", dir=root))
            os.replace(store.path(version), trash / version)
            shutil.rmtree(trash)
    return victims
