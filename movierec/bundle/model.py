"""Read and write the model bundle (design notes §1).

Layout (all arrays little-endian ``.npy``):

=====================  =====================================================
``user_vectors.npy``   float32 [n_users, dim] — dot with item vectors = score
``item_vectors.npy``   float32 [n_items, dim]
``user_ids.npy``       int64 [n_users] — dataset user id of each row, strictly ascending
``item_ids.npy``       int64 [n_items] — dataset movie id of each row, strictly ascending
``items.json``         titles, years (null if unknown), genres, per item row
``seen_*.npy``         CSR of every item each user rated, whatever the rating
``train_*.npy``        CSR of training positives (masked in evaluation)
``valid_*.npy``        CSR of the validation slice (a subset of train)
``test_*.npy``         CSR of held-out positives
``config.json``        how the model was trained (and the data it came from)
``metrics.json``       evaluation results
``manifest.json``      format version, dataset checksum, created time, file checksums
=====================  =====================================================

Reading trusts nothing: every file opened must be listed in the manifest, every
array's dtype, dimensions and size are checked from its header before it is
read, and :meth:`ModelBundle.check` holds the rest (row counts, id order, CSR
structure, finite vectors, typed ``items.json``, plain JSON), so a damaged or
hostile bundle is a :class:`~movierec.errors.BundleError` and nothing else.
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
from movierec.bundle.manifest import (
    MANIFEST_NAME,
    Manifest,
    listed_file,
    load_json,
    plain_json_problem,
    read_manifest,
    write_manifest,
)
from movierec.bundle.npy import read_npy
from movierec.errors import BundleError

MODEL_KIND = "model"
CSR_NAMES = ("seen", "train", "valid", "test")
YEAR_MIN, YEAR_MAX = -(2**31), 2**31 - 1
"""A year travels as a protobuf ``int32``: one outside it could not be put in any answer."""


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
        """Raise BundleError unless dtypes, shapes, id order and CSR structure agree.

        A reader relies on all of it: rows are found by binary search in the ascending ids, vectors are
        scored as float32, and a CSR row outside the matrix would index past an array.
        """
        problems = [*self._array_problems(), *self._items_problems()]
        for name in CSR_NAMES:
            csr: CSR = getattr(self, name)
            if csr.n_rows != self.n_users or csr.n_cols != self.n_items:
                problems.append(f"{name} CSR shape does not match users x items")
            elif (why := csr.validate()) is not None:
                problems.append(f"{name}: {why}")
        for name in ("config", "metrics", "dataset"):
            value = getattr(self, name)
            if not isinstance(value, dict):
                problems.append(f"{name} is not a JSON object")
            elif (why := plain_json_problem(value)) is not None:  # metrics go out in GetInfo, all are printed
                problems.append(f"{name} holds {why}")
        if problems:
            raise BundleError("inconsistent model bundle: " + "; ".join(problems))

    def _array_problems(self) -> list[str]:
        problems: list[str] = []
        expected = {
            "user_vectors": (np.float32, 2),
            "item_vectors": (np.float32, 2),
            "user_ids": (np.int64, 1),
            "item_ids": (np.int64, 1),
        }
        for name, (dtype, ndim) in expected.items():
            array = getattr(self, name)
            if array.dtype != dtype or array.ndim != ndim:
                problems.append(f"{name} must be {np.dtype(dtype).name} with {ndim} dimension(s)")
        if problems:
            return problems
        if self.user_vectors.shape[1] != self.item_vectors.shape[1]:
            problems.append("user and item vectors differ in dimension")
        elif self.item_vectors.shape[1] < 1:
            problems.append("vectors have no dimensions")
        if self.user_vectors.shape[0] != self.n_users:
            problems.append("user_vectors rows != user_ids")
        if self.item_vectors.shape[0] != self.n_items:
            problems.append("item_vectors rows != item_ids")
        for name in ("user_ids", "item_ids"):
            ids = getattr(self, name)
            if ids.size > 1 and not np.all(ids[1:] > ids[:-1]):
                problems.append(f"{name} are not strictly ascending (sorted, no duplicates)")
        if not np.all(np.isfinite(self.item_vectors)) or not np.all(np.isfinite(self.user_vectors)):
            problems.append("vectors contain NaN or infinity")
        return problems

    def _items_problems(self) -> list[str]:
        items = self.items
        if not (len(items.titles) == len(items.years) == len(items.genres) == self.n_items):
            return ["items.json does not have one entry per item"]
        if not all(isinstance(title, str) for title in items.titles):
            return ["items.json: a title is not a string"]
        if not all(
            year is None or (isinstance(year, int) and not isinstance(year, bool) and YEAR_MIN <= year <= YEAR_MAX)
            for year in items.years
        ):
            return [f"items.json: a year is neither null nor an integer in [{YEAR_MIN}, {YEAR_MAX}]"]
        if not all(isinstance(g, list) and all(isinstance(name, str) for name in g) for g in items.genres):
            return ["items.json: genres are not lists of strings"]
        try:  # JSON can carry lone surrogates; no answer holding such a title could be sent
            "\n".join([*items.titles, *(name for names in items.genres for name in names)]).encode("utf-8")
        except UnicodeEncodeError:
            return ["items.json: a title or genre is not valid Unicode text (a lone surrogate)"]
        return []


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


def read_model_bundle(path: Path, *, verify: bool = True, mmap: bool = False) -> ModelBundle:
    """Load a model bundle; with ``verify`` every file's checksum is checked first.

    Every file it opens must be listed in the manifest (so a caller that verified the
    manifest's files, here or as part of an index version, verified everything read),
    and every array's dtype and shape is checked from its header before it is read.
    Raises BundleError naming the file for anything missing, truncated, tampered
    with or inconsistent; nothing else. ``mmap``: the arrays are read-only views
    of the memory-mapped files, so every process serving the bundle shares their
    pages (the checksums are computed from the same files).
    """
    directory = Path(path)
    manifest = read_manifest(directory, MODEL_KIND, verify=verify)
    n_users = _meta_count(manifest, "n_users", directory)
    n_items = _meta_count(manifest, "n_items", directory)
    dim = _meta_count(manifest, "dim", directory)
    dataset = manifest.meta.get("dataset", {})
    if not isinstance(dataset, dict):
        raise BundleError("manifest meta.dataset is not an object", path=directory / MANIFEST_NAME)

    def array(name: str, dtype: type[np.generic], ndim: int) -> npt.NDArray[Any]:
        return read_npy(listed_file(manifest, directory, name), dtype, ndim, mmap=mmap)

    csrs = {
        name: CSR(
            indptr=array(f"{name}_indptr.npy", np.int64, 1),
            indices=array(f"{name}_indices.npy", np.int32, 1),
            n_cols=n_items,
        )
        for name in CSR_NAMES
    }
    raw_items = _load_json(manifest, directory, "items.json")
    if not isinstance(raw_items, dict) or not all(
        isinstance(raw_items.get(key), list) for key in ("titles", "years", "genres")
    ):
        raise BundleError("items.json lacks titles/years/genres lists", path=directory / "items.json")
    bundle = ModelBundle(
        user_vectors=array("user_vectors.npy", np.float32, 2),
        item_vectors=array("item_vectors.npy", np.float32, 2),
        user_ids=array("user_ids.npy", np.int64, 1),
        item_ids=array("item_ids.npy", np.int64, 1),
        items=ItemMetadata(titles=raw_items["titles"], years=raw_items["years"], genres=raw_items["genres"]),
        seen=csrs["seen"],
        train=csrs["train"],
        valid=csrs["valid"],
        test=csrs["test"],
        config=_load_json(manifest, directory, "config.json"),
        metrics=_load_json(manifest, directory, "metrics.json"),
        dataset=dataset,
        manifest=manifest,
    )
    try:
        bundle.check()
        if (bundle.n_users, bundle.dim) != (n_users, dim):
            raise BundleError(
                f"manifest says {n_users} users of dim {dim}, the arrays hold {bundle.n_users} of dim {bundle.dim}"
            )
    except BundleError as exc:
        raise BundleError(str(exc), path=directory) from None
    return bundle


def _meta_count(manifest: Manifest, key: str, directory: Path) -> int:
    value = manifest.meta.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise BundleError(f"manifest meta.{key} is missing or not a count", path=directory / MANIFEST_NAME)
    return value


def _load_json(manifest: Manifest, directory: Path, name: str) -> Any:
    return load_json(listed_file(manifest, directory, name))
