"""Manifests: what a bundle holds, checksummed, so corruption is caught before serving."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from movierec.errors import BundleError

MANIFEST_NAME = "manifest.json"
FORMAT_VERSION = 1


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class Manifest:
    """``kind`` tells a model bundle from an index bundle; ``files`` maps relative path to sha256 and size."""

    kind: str
    format_version: int
    created_at: str
    files: dict[str, dict[str, Any]]
    meta: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "format_version": self.format_version,
            "created_at": self.created_at,
            "files": self.files,
            "meta": self.meta,
        }


def write_manifest(directory: Path, kind: str, meta: dict[str, Any]) -> Manifest:
    """Checksum every file under ``directory`` (except the manifest) and write ``manifest.json``."""
    files: dict[str, dict[str, Any]] = {}
    for path in sorted(p for p in directory.rglob("*") if p.is_file() and p.name != MANIFEST_NAME):
        rel = path.relative_to(directory).as_posix()
        files[rel] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
    manifest = Manifest(
        kind=kind,
        format_version=FORMAT_VERSION,
        created_at=datetime.now(UTC).isoformat(timespec="milliseconds"),
        files=files,
        meta=meta,
    )
    (directory / MANIFEST_NAME).write_text(json.dumps(manifest.to_json(), indent=2, sort_keys=True) + "\n")
    return manifest


def read_manifest(directory: Path, kind: str, *, verify: bool = True) -> Manifest:
    """Load and (by default) verify a manifest: every listed file present, same size, same sha256."""
    directory = Path(directory)
    if not directory.is_dir():
        raise BundleError(f"no {kind} bundle here (not a directory)", path=directory)
    path = directory / MANIFEST_NAME
    if not path.is_file():
        raise BundleError(f"not a {kind} bundle: {MANIFEST_NAME} is missing", path=directory)
    try:
        raw = json.loads(path.read_text())
        manifest = Manifest(
            kind=str(raw["kind"]),
            format_version=int(raw["format_version"]),
            created_at=str(raw["created_at"]),
            files=dict(raw["files"]),
            meta=dict(raw.get("meta", {})),
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise BundleError(f"unreadable manifest ({exc})", path=path) from None
    if manifest.kind != kind:
        raise BundleError(f"is a {manifest.kind!r} bundle, expected {kind!r}", path=directory)
    if manifest.format_version != FORMAT_VERSION:
        raise BundleError(
            f"format version {manifest.format_version} is not supported (this build reads {FORMAT_VERSION})",
            path=directory,
        )
    if verify:
        for rel, entry in manifest.files.items():
            file = directory / rel
            if not file.is_file():
                raise BundleError("listed in the manifest but missing", path=file)
            size = file.stat().st_size
            if size != entry["bytes"]:
                raise BundleError(f"truncated or altered: {size} bytes, manifest says {entry['bytes']}", path=file)
            if sha256_file(file) != entry["sha256"]:
                raise BundleError("checksum mismatch: the file was altered after the bundle was written", path=file)
    return manifest
