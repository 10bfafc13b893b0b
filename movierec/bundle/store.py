"""Versioned bundle directories (``v0001``, ``v0002``, ...) under one root with a movable ``CURRENT`` pointer.

Bundles are immutable; "current" is a one-line file replaced with an atomic
rename, so a reader sees the old version or the new one, never neither.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from movierec.bundle.atomic import fsync_dir
from movierec.errors import BundleError

POINTER_NAME = "CURRENT"
POINTER_MAX_BYTES = 64
"""A version name and a newline; a longer pointer is not one, and is not read whole."""
# The whole name, ASCII digits only: ``\d`` takes any script's digits and ``$`` a trailing newline.
_VERSION = re.compile(r"v([0-9]{4,12})")


class VersionedStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def versions(self) -> list[str]:
        """Complete versions, oldest first (staging directories are hidden and never listed)."""
        if not self.root.is_dir():
            return []
        found = [p.name for p in self.root.iterdir() if p.is_dir() and _VERSION.fullmatch(p.name)]
        return sorted(found, key=lambda name: int(name[1:]))

    def next_version(self) -> str:
        existing = self.versions()
        number = int(existing[-1][1:]) + 1 if existing else 1
        return f"v{number:04d}"

    def path(self, version: str) -> Path:
        if not _VERSION.fullmatch(version):
            raise BundleError(f"{version!r} is not a version name like v0001", path=self.root)
        return self.root / version

    def current_version(self) -> str | None:
        pointer = self.root / POINTER_NAME
        if not pointer.is_file():
            return None
        try:
            version = pointer.read_bytes()[:POINTER_MAX_BYTES].decode("ascii").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise BundleError(f"{POINTER_NAME} is unreadable ({exc})", path=pointer) from None
        if not _VERSION.fullmatch(version) or not (self.root / version).is_dir():
            raise BundleError(f"{POINTER_NAME} points at {version!r}, which is not a version here", path=pointer)
        return version

    def current(self) -> Path | None:
        version = self.current_version()
        return None if version is None else self.root / version

    def set_current(self, version: str) -> None:
        if not self.path(version).is_dir():
            raise BundleError(f"version {version} does not exist", path=self.root)
        tmp = self.root / f".{POINTER_NAME}.{os.getpid()}.tmp"
        with open(tmp, "w") as handle:
            handle.write(version + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, self.root / POINTER_NAME)
        fsync_dir(self.root)
