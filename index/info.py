"""Describe an index store for operators: every version, which is current, and what each one holds.

A corrupt version is reported with the reason rather than raising, so
``recctl index info`` always shows the whole store.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from movierec.bundle import VersionedStore, read_manifest
from movierec.errors import BundleError
from movierec.index.layout import INDEX_KIND, MODEL_DIR


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
    """What one version holds; ``ok=False`` with the reason when it fails verification."""
    try:
        manifest = read_manifest(path, INDEX_KIND, verify=verify)
        meta = manifest.meta
        metrics_path = path / MODEL_DIR / "metrics.json"
        try:
            metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
        except ValueError as exc:
            raise BundleError(f"not valid JSON ({exc})", path=metrics_path) from None
        return VersionInfo(
            version=path.name,
            current=current,
            ok=True,
            kind=str(meta["index"]["kind"]),
            dim=int(meta["dim"]),
            n_items=int(meta["n_items"]),
            n_users=int(meta["n_users"]),
            created_at=manifest.created_at,
            source_model=str(meta["source_model"]["path"]),
            model_created_at=str(meta["source_model"]["created_at"]),
            events=int(meta.get("interactions", {}).get("events", 0)),
            events_through=int(meta.get("interactions", {}).get("through_offset", 0)),
            metrics=dict(metrics) if isinstance(metrics, dict) else {},
        )
    except BundleError as exc:
        return VersionInfo(version=path.name, current=current, ok=False, problem=str(exc))
    except (KeyError, TypeError, ValueError) as exc:
        return VersionInfo(version=path.name, current=current, ok=False, problem=f"incomplete manifest ({exc})")


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
