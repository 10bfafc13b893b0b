"""Write a directory so that readers see all of it or none of it."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from movierec.errors import BundleError


def fsync_dir(path: Path) -> None:
    """Flush a directory entry so a rename inside it survives a power cut."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    for dirpath, _dirnames, filenames in os.walk(root):
        for name in filenames:
            with open(os.path.join(dirpath, name), "rb") as handle:
                os.fsync(handle.fileno())
        fsync_dir(Path(dirpath))


@contextmanager
def staged_directory(final: Path, *, force: bool = False) -> Iterator[Path]:
    """Yield an empty staging directory beside ``final``; rename it into place on success.

    On any exception the staging directory is removed and ``final`` is left as
    it was, so an interrupted writer never leaves a half bundle. An existing
    ``final`` is refused unless ``force``; with ``force`` the old directory is
    only removed after the new one is complete.
    """
    final = Path(final)
    if final.exists() and not force:
        raise BundleError("already exists (pass --force to replace it)", path=final)
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.staging-", dir=final.parent))
    try:
        yield staging
        _fsync_tree(staging)
        if final.exists():
            retired = Path(tempfile.mkdtemp(prefix=f".{final.name}.retired-", dir=final.parent))
            os.replace(final, retired / final.name)
            os.replace(staging, final)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.replace(staging, final)
        fsync_dir(final.parent)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
