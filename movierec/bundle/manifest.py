"""Manifests: what a bundle holds, checksummed, so corruption is caught before serving."""

from __future__ import annotations

import hashlib
import json
import re
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any, TypeVar

from movierec.errors import BundleError

MANIFEST_NAME = "manifest.json"
FORMAT_VERSION = 1
JSON_MAX_DEPTH = 32
"""Deepest nesting accepted in a bundle's JSON: far more than any writer here produces, far less than a stack."""
_FLOAT_MAX = int(sys.float_info.max)


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
    """Load and (by default) verify a manifest: every listed file present, same size, same sha256.

    Whether or not it verifies, the manifest itself is checked field by field
    (a missing or ill-typed field is a BundleError, never a KeyError) and every
    listed path must stay inside ``directory``: relative, no ``..``, and no
    symlink on the way that leads out of it.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise BundleError(f"no {kind} bundle here (not a directory)", path=directory)
    path = directory / MANIFEST_NAME
    if not path.is_file():
        raise BundleError(f"not a {kind} bundle: {MANIFEST_NAME} is missing", path=directory)
    _check_inside(directory, path)
    raw = load_json(path, "unreadable manifest")
    if (why := plain_json_problem(raw)) is not None:
        raise BundleError(f"unreadable manifest ({why})", path=path)
    manifest = _parse(raw, path)
    if manifest.kind != kind:
        raise BundleError(f"is a {manifest.kind!r} bundle, expected {kind!r}", path=directory)
    if manifest.format_version != FORMAT_VERSION:
        raise BundleError(
            f"format version {manifest.format_version} is not supported (this build reads {FORMAT_VERSION})",
            path=directory,
        )
    for rel in manifest.files:
        _check_inside(directory, directory / rel)
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


def load_json(path: Path, what: str = "not valid JSON") -> Any:
    """``path`` parsed as UTF-8 JSON; BundleError ``what (reason)`` for a file that is not (nesting too deep
    for the parser included: json raises RecursionError, not a ValueError, for that)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BundleError("missing from the bundle", path=path) from None
    except (ValueError, OSError, RecursionError) as exc:  # UnicodeDecodeError, JSONDecodeError are ValueErrors
        raise BundleError(f"{what} ({type(exc).__name__}: {str(exc)[:200]})", path=path) from None


def plain_json_problem(value: Any, depth: int = 0) -> str | None:
    """Why parsed JSON could not travel on (protobuf) or be printed, or None: a lone surrogate in a string or
    key (JSON's ``\\ud800`` escape allows one), an integer past float range, nesting past
    :data:`JSON_MAX_DEPTH`."""
    if depth > JSON_MAX_DEPTH:
        return f"nested deeper than {JSON_MAX_DEPTH} levels"
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return "text that is not valid Unicode (a lone surrogate)"
        return None
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > _FLOAT_MAX:
        return "an integer beyond the range of a float"
    if isinstance(value, dict):
        children: list[Any] = [*value.keys(), *value.values()]
    elif isinstance(value, list):
        children = value
    else:
        return None
    for child in children:
        if (why := plain_json_problem(child, depth + 1)) is not None:
            return why
    return None


def listed_file(manifest: Manifest, directory: Path, name: str) -> Path:
    """``directory / name``, once the manifest lists it: a loader opens nothing the manifest does not vouch for."""
    if name not in manifest.files:
        raise BundleError(f"{name} is not listed in the manifest, so it cannot be verified", path=Path(directory))
    return Path(directory) / name


def _parse(raw: object, where: Path) -> Manifest:
    """The manifest's fields, each checked for presence and type."""
    if not isinstance(raw, dict):
        raise BundleError("unreadable manifest (not a JSON object)", path=where)
    kind = _required(raw, "kind", str, where)
    format_version = _required(raw, "format_version", int, where)
    created_at = _required(raw, "created_at", str, where)
    files = _required(raw, "files", dict, where)
    meta = raw.get("meta", {})
    if not isinstance(meta, dict):
        raise BundleError("manifest field 'meta' is not an object", path=where)
    for rel, entry in files.items():
        check_member_name(rel, where)
        if not isinstance(entry, dict):
            raise BundleError(f"manifest entry for {rel!r} is not an object", path=where)
        digest = entry.get("sha256")
        if not isinstance(digest, str) or not _SHA256.fullmatch(digest):
            raise BundleError(f"manifest entry for {rel!r} has no valid sha256", path=where)
        size = entry.get("bytes")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise BundleError(f"manifest entry for {rel!r} has no valid byte count", path=where)
    return Manifest(kind=kind, format_version=format_version, created_at=created_at, files=files, meta=meta)


T = TypeVar("T")


def _required(raw: dict[str, Any], key: str, kind: type[T], where: Path) -> T:
    value = raw.get(key)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise BundleError(f"manifest field {key!r} is missing or not {_TYPE_NAMES[kind]}", path=where)
    return value


_TYPE_NAMES: dict[type, str] = {str: "a string", int: "an integer", dict: "an object"}
_SHA256 = re.compile(r"[0-9a-f]{64}")


def check_member_name(rel: object, where: Path) -> None:
    """A listed path must be a plain relative POSIX path inside the bundle: no ``..``, no absolute path."""
    if not isinstance(rel, str) or not rel:
        raise BundleError(f"manifest lists an empty or non-string path {rel!r}", path=where)
    parts = PurePosixPath(rel).parts
    if (
        "\\" in rel
        or "\x00" in rel
        or PurePosixPath(rel).is_absolute()
        or PurePosixPath(rel).as_posix() != rel
        or any(part in (".", "..") for part in parts)
    ):
        raise BundleError(f"manifest path {rel!r} leaves the bundle or is not a plain relative path", path=where)


def _check_inside(directory: Path, file: Path) -> None:
    """Refuse ``file`` when symlinks take it outside ``directory``."""
    try:
        inside = file.resolve().is_relative_to(directory.resolve())
    except (OSError, RuntimeError) as exc:  # a symlink loop
        raise BundleError(f"cannot resolve ({exc})", path=file) from None
    if not inside:
        raise BundleError("a symlink leads outside the bundle", path=file)
