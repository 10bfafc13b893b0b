"""New movies into the served index without retraining (``recctl index add-items``).

A movie nobody has rated has no trained vector; it gets one from its metadata (genres, year) through the
model bundle's feature model (:mod:`movierec.item_features`):

* a GraphSAGE bundle ships its own item tower: the model's exact forward pass for a movie without neighbours;
* any other bundle (LightGCN, NGCF) gets a ridge regression from features to its item vectors, fitted here
  on the items that had training positives, and stored in the new version's model bundle, so every later
  ``add-items`` on that line of versions uses the same regressor.

The current version's model bundle (verified) is rewritten with the new movies merged into the id order
(old items keep their relative order, so the seen/train/valid/test CSRs only renumber their columns), then
indexed by :func:`movierec.index.build.build_index` like any other model: same kind and parameters as the
current version, live events carried forward, verified, staged, and CURRENT moved by atomic rename, so a
running server hot-swaps to it on its next poll. No user vector changes; nobody has seen the new movies.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from movierec.bundle import CSR, ItemMetadata, ModelBundle, VersionedStore, read_manifest, read_model_bundle
from movierec.bundle.model import CSR_NAMES, write_model_bundle
from movierec.errors import BundleError
from movierec.index.build import build_index
from movierec.index.layout import INDEX_KIND, MODEL_DIR
from movierec.index.meta import IndexMeta
from movierec.item_features import ItemEncoder, ItemFeatureModel, fit_ridge, read_item_feature_model

# Files write_model_bundle writes itself; anything else the manifest lists (training curve, item tower) is carried.
_BUNDLE_FILES = {
    "user_vectors.npy",
    "item_vectors.npy",
    "user_ids.npy",
    "item_ids.npy",
    "items.json",
    "config.json",
    "metrics.json",
    *(f"{name}_{part}.npy" for name in CSR_NAMES for part in ("indptr", "indices")),
}


@dataclass(frozen=True)
class NewMovies:
    """Movies to add, as parsed from a MovieLens movies file (plain data: no trainer import needed here)."""

    item_ids: Sequence[int]
    titles: Sequence[str]
    years: Sequence[int | None]
    genres: Sequence[Sequence[str]]


@dataclass(frozen=True)
class AddedItems:
    version: Path
    added: int
    vectors_from: str  # "graphsage" (the model's item tower) or "ridge" (features regressed onto item vectors)

    def to_json(self) -> dict[str, Any]:
        return {"version": str(self.version), "added": self.added, "vectors_from": self.vectors_from}


def add_items(index_root: Path, movies: NewMovies, *, progress: bool = False) -> AddedItems:
    """Write a new version of ``index_root`` holding ``movies`` too and make it CURRENT (module docstring)."""
    index_root = Path(index_root)
    current = VersionedStore(index_root).current()
    if current is None:
        raise BundleError("no current index version to add movies to (build one first)", path=index_root)
    meta = IndexMeta.from_manifest(read_manifest(current, INDEX_KIND, verify=False), current)
    model = read_model_bundle(current / MODEL_DIR, verify=True)
    _check_new(model, movies)
    features = feature_model_for(model, current / MODEL_DIR)
    vectors = features.vectors(movies.genres, movies.years)
    merged = merged_bundle(model, movies, vectors, features.source)
    with tempfile.TemporaryDirectory(prefix="movierec-add-items-") as scratch:
        stage = Path(scratch)
        carried = {name: current / MODEL_DIR / name for name in _carried_files(model)}
        if features.source == "ridge":  # fitted here: stored so later additions use the same regressor
            carried.update({p.name: p for p in features.write(_fresh(stage / "features"))})
        write_model_bundle(merged, stage / "model", attachments=carried)
        params = dict(meta.params) if meta.kind == "hnsw" else {}
        version = build_index(stage / "model", index_root, kind=meta.kind, progress=progress, **params)
    return AddedItems(version, len(movies.item_ids), features.source)


def _fresh(directory: Path) -> Path:
    directory.mkdir()
    return directory


def _carried_files(model: ModelBundle) -> list[str]:
    assert model.manifest is not None  # read_model_bundle sets it
    return [name for name in model.manifest.files if name not in _BUNDLE_FILES]


def _check_new(model: ModelBundle, movies: NewMovies) -> None:
    """Refuse an empty list, or a movie the index already holds (naming it): nothing is written then."""
    ids = np.asarray(movies.item_ids, dtype=np.int64)
    if ids.size == 0:
        raise BundleError("no movies to add")
    present = np.isin(ids, model.item_ids)
    if present.any():
        first = int(np.flatnonzero(present)[0])
        raise BundleError(
            f"movie {int(ids[first])} ({movies.titles[first]!r}) is already in the index"
            + (f", and {int(present.sum()) - 1} more" if present.sum() > 1 else "")
            + "; add-items only adds movies the model has never seen"
        )
    if np.unique(ids).size != ids.size:
        raise BundleError("a movie id is given twice")


def feature_model_for(model: ModelBundle, directory: Path) -> ItemFeatureModel:
    """The bundle's own feature model (GraphSAGE's tower, or a ridge stored earlier), else a ridge fitted now."""
    assert model.manifest is not None
    stored = read_item_feature_model(directory, model.manifest, model.dim)
    if stored is not None:
        return stored
    return ridge_for(model.items, model.item_vectors, model.train)


def ridge_for(items: ItemMetadata, vectors: npt.NDArray[np.float32], train: CSR) -> ItemFeatureModel:
    """Ridge from features to vectors over the items with training positives (the others' vectors are noise)."""
    trained = np.flatnonzero(np.bincount(train.indices, minlength=train.n_cols) > 0)
    if trained.size == 0:
        raise BundleError("no item has training positives: nothing to fit new movies' vectors on")
    genres = [items.genres[row] for row in trained.tolist()]
    years = [items.years[row] for row in trained.tolist()]
    return fit_ridge(ItemEncoder.fit(genres, years), genres, years, vectors[trained])


def merged_bundle(model: ModelBundle, movies: NewMovies, vectors: npt.NDArray[np.float32], source: str) -> ModelBundle:
    """``model`` with the new movies merged into its ascending id order; CSR columns renumbered."""
    all_ids = np.concatenate([model.item_ids, np.asarray(movies.item_ids, dtype=np.int64)])
    order = np.argsort(all_ids, kind="stable")
    new_row = np.empty_like(order)
    new_row[order] = np.arange(order.size)  # old row r -> new_row[r]; increasing over old rows

    def renumbered(csr: CSR) -> CSR:
        return CSR(csr.indptr, new_row[csr.indices].astype(np.int32), n_cols=int(all_ids.size))

    titles = [*model.items.titles, *movies.titles]
    years = [*model.items.years, *movies.years]
    genres = [*model.items.genres, *(list(g) for g in movies.genres)]
    rows = order.tolist()
    added = model.config.get("added_items", [])
    record = {"item_ids": [int(i) for i in movies.item_ids], "vectors_from": source}
    return ModelBundle(
        user_vectors=model.user_vectors,
        item_vectors=np.ascontiguousarray(np.concatenate([model.item_vectors, vectors])[order], dtype=np.float32),
        user_ids=model.user_ids,
        item_ids=all_ids[order],
        items=ItemMetadata([titles[r] for r in rows], [years[r] for r in rows], [genres[r] for r in rows]),
        seen=renumbered(model.seen),
        train=renumbered(model.train),
        valid=renumbered(model.valid),
        test=renumbered(model.test),
        config={**model.config, "added_items": [*(added if isinstance(added, list) else []), record]},
        metrics=model.metrics,
        dataset=model.dataset,
    )
