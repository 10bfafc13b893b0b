"""Describe an index store for operators: every version, which is current, and what each one holds.

A corrupt version is reported with the reason rather than raising, so
``recctl index info`` always shows the whole store.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from movierec.bundle import MANIFEST_NAME, VersionedStore, read_manifest, sha256_file
from movierec.bundle.manifest import listed_file, load_json
from movierec.bundle.model import MODEL_KIND
from movierec.errors import BundleError
from movierec.index.layout import INDEX_KIND, MODEL_DIR
from movierec.index.meta import IndexMeta

METRICS = f"{MODEL_DIR}/metrics.json"
"""The model's evaluation, shown by ``recctl index info`` when the version lists it."""


@dataclass(frozen=True)
class VersionInfo:
    version: str
    current: bool
    ok: bool
    problem: str | None = None
    kind: str | None = None
    dim: int | None = None
    n_items: int | None = None
    n_users: int | None = None
    created_at: str | None = None
    source_model: str | None = None
    model_created_at: str | None = None
    events: int = 0
    events_through: int = 0
    ranked_depth: int = 0
    ranked_bytes: int = 0
    metrics: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class StoreInfo:
    root: str
    current: str | None
    current_problem: str | None
    versions: list[VersionInfo]

    def to_json(self) -> dict[str, Any]:
        return {
            "root": self.root,
            "current": self.current,
            "current_problem": self.current_problem,
            "versions": [v.to_json() for v in self.versions],
        }


def describe_version(path: Path, *, current: bool, verify: bool = True) -> VersionInfo:
    """What one version holds; ``ok=False`` with the reason when it fails verification.

    Fields come from :class:`IndexMeta` (checked, never a KeyError), the model's creation time from the
    model manifest the version pins (its SHA-256 checked when ``verify``), and metrics only from a file the
    manifest lists.
    """
    try:
        manifest = read_manifest(path, INDEX_KIND, verify=verify)
        meta = IndexMeta.from_manifest(manifest, path)
        model = read_manifest(path / MODEL_DIR, MODEL_KIND, verify=False)
        if verify and sha256_file(path / MODEL_DIR / MANIFEST_NAME) != meta.source_model_sha256:
            raise BundleError("differs from the one the index was built from", path=path / MODEL_DIR / MANIFEST_NAME)
        metrics = load_json(listed_file(manifest, path, METRICS)) if METRICS in manifest.files else {}
        return VersionInfo(
            version=path.name,
            current=current,
            ok=True,
            kind=meta.kind,
            dim=meta.dim,
            n_items=meta.n_items,
            n_users=meta.n_users,
            created_at=manifest.created_at,
            source_model=meta.source_model_path,
            model_created_at=model.created_at,
            events=meta.compacted_events,
            events_through=meta.events_through,
            ranked_depth=meta.ranked_depth,
            ranked_bytes=meta.ranked_bytes,
            metrics=dict(metrics) if isinstance(metrics, dict) else {},
        )
    except BundleError as exc:
        return VersionInfo(version=path.name, current=current, ok=False, problem=str(exc))


def describe_store(root: Path, *, verify: bool = True) -> StoreInfo:
    """Every version under ``root`` (oldest first); ``verify`` re-checks every checksum."""
    root = Path(root)
    if not root.is_dir():
        raise BundleError("no such index store", path=root)
    store = VersionedStore(root)
    try:
        current, problem = store.current_version(), None
    except BundleError as exc:
        current, problem = None, str(exc)
    versions = [describe_version(store.path(v), current=v == current, verify=verify) for v in store.versions()]
    return StoreInfo(root=str(root), current=current, current_problem=problem, versions=versions)
