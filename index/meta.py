"""The index manifest's ``meta`` block, parsed once into a typed, frozen :class:`IndexMeta`.

Every reader of an index version (the server, ``recctl index info``, tests) gets
the same checked fields instead of digging through ``manifest.meta[...]``: a
missing or ill-typed field is a :class:`~movierec.errors.BundleError` naming the
manifest, never a ``KeyError`` from deep inside a request handler.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePath
from types import MappingProxyType
from typing import Any, TypeVar

from movierec.bundle import MANIFEST_NAME, Manifest
from movierec.errors import BundleError

INDEX_KINDS = ("flat", "hnsw")
# Hex digits of the model manifest's SHA-256 shown in a model version: unique per model content in practice.
MODEL_VERSION_SHA_DIGITS = 12
T = TypeVar("T")


@dataclass(frozen=True)
class IndexMeta:
    """What an index version says about itself (``manifest.json`` -> ``meta``); see :mod:`movierec.index`."""

    kind: str
    """``flat`` (exact inner-product scan) or ``hnsw`` (graph search, exact under filters)."""
    params: Mapping[str, Any]
    """The index's build/search parameters (HNSW ``m``, ``ef_construction``, ``ef_search``; empty for flat)."""
    metric: str
    faiss_version: str
    dim: int
    n_items: int
    n_users: int
    source_model_path: str
    """Where the model bundle was when the index was built (the version holds its own copy)."""
    source_model_sha256: str
    """SHA-256 of the model's manifest.json: pins the copy under ``model/``."""
    events_through: int
    """The interaction-log offset whose events this version has compacted (0: none)."""
    compacted_events: int
    """How many live events the version holds (known users' ones are merged into the seen sets)."""
    ranked_depth: int = 0
    """Places of every user's ranking the version stores (``ranked_*.npy``, memory-mapped at load; 0: none)."""
    ranked_bytes: int = 0
    """Bytes of those stored prefixes on disk (0: none)."""

    @property
    def model_version(self) -> str:
        """``<model dir name>@<first 12 hex of its manifest SHA-256>``: readable, and unique per model content."""
        return f"{PurePath(self.source_model_path).name}@{self.source_model_sha256[:MODEL_VERSION_SHA_DIGITS]}"

    @classmethod
    def from_manifest(cls, manifest: Manifest, directory: Path) -> IndexMeta:
        """Check and copy the fields of ``manifest.meta``; ``directory`` is named in any error."""
        where = Path(directory) / MANIFEST_NAME
        meta = _mapping(manifest.meta, "meta", where)
        index = _mapping(meta.get("index"), "index", where)
        source = _mapping(meta.get("source_model"), "source_model", where)
        # Versions built before live events existed have no interactions block: they compacted none.
        interactions = _mapping(meta.get("interactions", {}), "interactions", where)
        # Versions without stored ranked prefixes (HNSW, --ranked-depth 0, older builds) have no ranked block.
        ranked = _mapping(meta.get("ranked", {}), "ranked", where)
        kind = _field(index, "kind", str, "index", where)
        ranked_depth = _field(ranked, "depth", int, "ranked", where) if ranked else 0
        ranked_bytes = _field(ranked, "bytes", int, "ranked", where) if ranked else 0
        if ranked and (ranked_depth < 1 or ranked_bytes < 0):
            raise BundleError("index manifest: ranked.depth must be >= 1 and ranked.bytes >= 0", path=where)
        if kind not in INDEX_KINDS:
            raise BundleError(f"unknown index kind {kind!r} (expected one of {', '.join(INDEX_KINDS)})", path=where)
        return cls(
            kind=kind,
            params=MappingProxyType(dict(_mapping(index.get("params", {}), "index.params", where))),
            metric=_field(index, "metric", str, "index", where, default="inner_product"),
            faiss_version=_field(index, "faiss_version", str, "index", where, default=""),
            dim=_field(meta, "dim", int, "meta", where),
            n_items=_field(meta, "n_items", int, "meta", where),
            n_users=_field(meta, "n_users", int, "meta", where),
            source_model_path=_field(source, "path", str, "source_model", where),
            source_model_sha256=_field(source, "manifest_sha256", str, "source_model", where),
            events_through=_field(interactions, "through_offset", int, "interactions", where, default=0),
            compacted_events=_field(interactions, "events", int, "interactions", where, default=0),
            ranked_depth=ranked_depth,
            ranked_bytes=ranked_bytes,
        )


def _mapping(value: object, name: str, where: Path) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise BundleError(f"index manifest: {name} is missing or not an object", path=where)
    return value


def _field(
    block: Mapping[str, Any], key: str, kind: type[T], block_name: str, where: Path, *, default: T | None = None
) -> T:
    """``block[key]`` as ``kind`` (bool is not an int here), or ``default`` when absent and a default is given."""
    if key not in block and default is not None:
        return default
    value = block.get(key)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        expected = "an integer" if kind is int else f"a {kind.__name__}"
        raise BundleError(f"index manifest: {block_name}.{key} is missing or not {expected}", path=where)
    return value
