"""Damage a bundle the way a bug or an attacker would, then re-seal it so the checksums no longer catch it.

Re-sealing rewrites each listed file's size and SHA-256 (and, for an index
version, the pinned model-manifest hash): what is left to catch the damage is
the loaders' own checks of paths, fields, dtypes, shapes and order.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from movierec.bundle import MANIFEST_NAME, sha256_file
from movierec.index.layout import MODEL_DIR


def read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def write_json(path: Path, value: Any) -> None:
    path.write_text(json.dumps(value), encoding="utf-8")


def reseal(directory: Path) -> None:
    """Recompute size and checksum of every listed file that exists (a manifest that is no longer one is left)."""
    path = directory / MANIFEST_NAME
    try:
        raw = read_json(path)
        entries = raw["files"].items()
    except (ValueError, KeyError, TypeError, AttributeError, OSError, RecursionError):
        return
    for rel, entry in entries:
        file = directory / str(rel)
        if isinstance(entry, dict) and file.is_file():
            entry.update(sha256=sha256_file(file), bytes=file.stat().st_size)
    write_json(path, raw)


def reseal_version(version: Path) -> None:
    """Re-seal an index version: its model bundle, the pinned model manifest hash, then the version itself."""
    model = version / MODEL_DIR
    reseal(model)
    try:
        raw = read_json(version / MANIFEST_NAME)
        raw["meta"]["source_model"]["manifest_sha256"] = sha256_file(model / MANIFEST_NAME)
        write_json(version / MANIFEST_NAME, raw)
    except (ValueError, KeyError, TypeError, OSError, RecursionError):
        pass
    reseal(version)


def rewrite_array(path: Path, change: Any) -> None:
    """``path``'s array replaced by ``change(array)``."""
    array: npt.NDArray[Any] = np.load(path, allow_pickle=False)
    np.save(path, change(array))


def add_listed_file(directory: Path, name: str, content: bytes) -> Path:
    """Write ``directory/name`` and list it in the manifest with its real checksum."""
    path = directory / name
    path.write_bytes(content)
    raw = read_json(directory / MANIFEST_NAME)
    raw["files"][name] = {"sha256": sha256_file(path), "bytes": len(content)}
    write_json(directory / MANIFEST_NAME, raw)
    return path
