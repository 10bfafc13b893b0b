"""Read and write the model bundle (design notes §1).

Layout (all arrays little-endian ``.npy``):

=====================  =====================================================
``user_vectors.npy``   float32 [n_users, dim] — dot with item vectors = score
``item_vectors.npy``   float32 [n_items, dim]
``user_ids.npy``       int64 [n_users] — dataset user id of each row
``item_ids.npy``       int64 [n_items] — dataset movie id of each row
``items.json``         titles, years (null if unknown), genres, per item row
``seen_*.npy``         CSR of every item each user rated, whatever the rating
``train_*.npy``        CSR of training positives (masked in evaluation)
``valid_*.npy``        CSR of the validation slice (a subset of train)
``test_*.npy``         CSR of held-out positives
``config.json``        how the model was trained (and the data it came from)
``metrics.json``       evaluation results
``manifest.json``      format version, dataset checksum, created time, file checksums
=====================  =====================================================
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from movierec.bundle.atomic import staged_directory
from movierec.bundle.csr import CSR
from movierec.bundle.manifest import Manifest, read_manifest, write_manifest
from movierec.errors import BundleError

MODEL_KIND = "model"
CSR_NAMES = ("seen", "train", "valid", "test")


@dataclass(frozen=True)
class ItemMetadata:
    """Per-item display data, aligned with the item rows; unknown year is None."""

    titles: list[str]
    years: list[int | None]
    genres: list[list[str]]

    def __len__(self) -> int:
        return len(self.titles)

    @classmethod
    def unknown(cls, item_ids: npt.NDArray[np.int64]) -> ItemMetadata:
        """Placeholder metadata for a dataset that ships no movie file."""
        return cls([f"item {i}" for i in item_ids.tolist()], [None] * len(item_ids), [[] for _ in item_ids])


@dataclass(frozen=True)
class ModelBundle:
    """Everything serving and evaluation need from a trained model."""

    user_vectors: npt.NDArray[np.float32]
    item_vectors: npt.NDArray[np.float32]
    user_ids: npt.NDArray[np.int64]
    item_ids: npt.NDArray[np.int64]
    items: ItemMetadata
    seen: CSR
    train: CSR
    valid: CSR
    test: CSR
    config: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    dataset: dict[str, Any] = field(default_factory=dict)
    manifest: Manifest | None = None

    @property
    def n_users(self) -> int:
        return int(self.user_ids.shape[0])

    @property
    def n_items(self) -> int:
        return int(self.item_ids.shape[0])

    @property
    def dim(self) -> int:
        return int(self.item_vectors.shape[1])

    def check(self) -> None:
        """Raise BundleError unless shapes, dtypes and CSR structure agree."""
        problems: list[str] = []
        if self.user_vectors.ndim != 2 or self.item_vectors.ndim != 2:
            problems.append("vectors must be 2-d")
        elif self.user_vectors.shape[1] != self.item_vectors.shape[1]:
            problems.append("user and item vectors differ in dimension")
        if self.user_vectors.shape[0] != self.n_users:
            problems.append("user_vectors rows != user_ids")
        if self.item_vectors.shape[0] != self.n_items:
            problems.append("item_vectors rows != item_ids")
        if len(self.items) != self.n_items or len(self.items.years) != self.n_items:
            problems.append("items.json does not have one entry per item")
        if np.unique(self.user_ids).size != self.n_users or np.unique(self.item_ids).size != self.n_items:
            problems.append("duplicate ids in user_ids or item_ids")
        for name in CSR_NAMES:
            csr: CSR = getattr(self, name)
            if csr.n_rows != self.n_users or csr.n_cols != self.n_items:
                problems.append(f"{name} CSR shape does not match users x items")
            elif (why := csr.validate()) is not None:
                problems.append(f"{name}: {why}")
        if not np.all(np.isfinite(self.item_vectors)) or not np.all(np.isfinite(self.user_vectors)):
            problems.append("vectors contain NaN or infinity")
        if problems:
            raise BundleError("inconsistent model bundle: " + "; ".join(problems))


def write_model_bundle(
    bundle: ModelBundle,
    out: Path,
    *,
    force: bool = False,
    attachments: dict[str, Path] | None = None,
) -> Manifest:
    """Write ``bundle`` to ``out`` atomically; ``attachments`` (e.g. a training-curve PNG) are copied in."""
    bundle.check()
    with staged_directory(Path(out), force=force) as stage:
        np.save(stage / "user_vectors.npy", np.ascontiguousarray(bundle.user_vectors, dtype=np.float32))
        np.save(stage / "item_vectors.npy", np.ascontiguousarray(bundle.item_vectors, dtype=np.float32))
        np.save(stage / "user_ids.npy", bundle.user_ids.astype(np.int64))
        np.save(stage / "item_ids.npy", bundle.item_ids.astype(np.int64))
        for name in CSR_NAMES:
            csr: CSR = getattr(bundle, name)
            np.save(stage / f"{name}_indptr.npy", csr.indptr.astype(np.int64))
            np.save(stage / f"{name}_indices.npy", csr.indices.astype(np.int32))
        items = {"titles": bundle.items.titles, "years": bundle.items.years, "genres": bundle.items.genres}
        (stage / "items.json").write_text(json.dumps(items, ensure_ascii=False))
        (stage / "config.json").write_text(json.dumps(bundle.config, indent=2, sort_keys=True, default=str))
        (stage / "metrics.json").write_text(json.dumps(bundle.metrics, indent=2, sort_keys=True))
        for name, source in (attachments or {}).items():
            shutil.copyfile(source, stage / name)
        meta = {
            "dataset": bundle.dataset,
            "n_users": bundle.n_users,
            "n_items": bundle.n_items,
            "dim": bundle.dim,
        }
        return write_manifest(stage, MODEL_KIND, meta)


def _load_npy(directory: Path, name: str, mmap: bool) -> npt.NDArray[Any]:
    path = directory / name
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)  # type: ignore[no-any-return]
    except FileNotFoundError:
        raise BundleError("missing from the bundle", path=path) from None
    except (ValueError, OSError) as exc:
        raise BundleError(f"not a readable .npy file ({exc})", path=path) from None


def _load_json(directory: Path, name: str) -> Any:
    path = directory / name
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BundleError("missing from the bundle", path=path) from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise BundleError(f"not valid JSON ({exc})", path=path) from None


def read_model_bundle(path: Path, *, verify: bool = True, mmap: bool = False) -> ModelBundle:
    """Load a model bundle; with ``verify`` every file's checksum is checked first.

    Raises BundleError naming the file for anything missing, truncated,
    tampered with or inconsistent.
    """
    directory = Path(path)
    manifest = read_manifest(directory, MODEL_KIND, verify=verify)
    n_items = int(manifest.meta.get("n_items", -1))
    csrs = {}
    for name in CSR_NAMES:
        csrs[name] = CSR(
            indptr=_load_npy(directory, f"{name}_indptr.npy", mmap),
            indices=_load_npy(directory, f"{name}_indices.npy", mmap),
            n_cols=n_items,
        )
    raw_items = _load_json(directory, "items.json")
    try:
        items = ItemMetadata(
            titles=list(raw_items["titles"]), years=list(raw_items["years"]), genres=list(raw_items["genres"])
        )
    except (KeyError, TypeError):
        raise BundleError("items.json lacks titles/years/genres", path=directory / "items.json") from None
    bundle = ModelBundle(
        user_vectors=_load_npy(directory, "user_vectors.npy", mmap),
        item_vectors=_load_npy(directory, "item_vectors.npy", mmap),
        user_ids=_load_npy(directory, "user_ids.npy", mmap),
        item_ids=_load_npy(directory, "item_ids.npy", mmap),
        items=items,
        seen=csrs["seen"],
        train=csrs["train"],
        valid=csrs["valid"],
        test=csrs["test"],
        config=_load_json(directory, "config.json"),
        metrics=_load_json(directory, "metrics.json"),
        dataset=dict(manifest.meta.get("dataset", {})),
        manifest=manifest,
    )
    try:
        bundle.check()
    except BundleError as exc:
        raise BundleError(str(exc), path=directory) from None
    return bundle
