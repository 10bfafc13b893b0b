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

``recctl index refresh-items`` (:func:`refresh_items`) then moves each added movie toward the users who
interacted with it, from the live events (those compacted into the current version plus the log's):

    v = (c · v_features + n · mean of the n users' vectors) / (c + n)

normalised when the bundle is cosine-scored (then each user vector is normalised before the mean too), with
``c`` = :data:`SHRINKAGE` and ``n`` the distinct users the model knows (event order, at most
:data:`MAX_INTERACTIONS`). Served scores are inner products with user vectors, so users whose vectors
resemble the first raters' see the movie rise. ``v_features`` is recomputed from the bundle's feature model
every time and the compacted events are all carried forward, so a refresh starts from the features again
(never compounds) and two refreshes over the same events give the same vector. A movie with training
positives, or not added by ``add-items``, keeps its vector bit for bit. Past :data:`MAX_INTERACTIONS` users
the vector stops moving: a mean of first raters is a stopgap, and retraining learns the movie from its edges.

``recctl index rebuild`` indexes a newly trained bundle, which lacks the added movies unless it was trained on
their ratings; :func:`carried_bundle` merges each one it lacks into it, its vector computed in the new model's
space exactly as here (the new bundle's item tower, or a ridge fitted on the new bundle), its metadata kept and
recorded again in ``added_items`` (with ``carried_from``), so the catalogue never silently shrinks.
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from movierec.bundle import CSR, ItemMetadata, ModelBundle, VersionedStore, read_manifest, read_model_bundle
from movierec.bundle.manifest import load_json
from movierec.bundle.model import CSR_NAMES, write_model_bundle
from movierec.errors import BundleError
from movierec.index.build import build_index
from movierec.index.events import CompactedEvents, SeenEvents, read_events, rows_of
from movierec.index.layout import INDEX_KIND, MODEL_DIR
from movierec.index.meta import IndexMeta
from movierec.item_features import ItemEncoder, ItemFeatureModel, fit_ridge, read_item_feature_model

# refresh-items: the feature vector weighs as much as this many interacting users (shrinkage toward features).
SHRINKAGE = 5.0
# refresh-items: users per movie blended in at most; past this, retraining is the answer (module docstring).
MAX_INTERACTIONS = 50

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


@dataclass(frozen=True)
class RefreshedItems:
    version: Path
    users_blended: dict[int, int]  # added movie id -> interacting users folded into its vector (0: features only)
    past_cap: list[int]  # added movies with more than MAX_INTERACTIONS users: retrain to learn the rest

    def to_json(self) -> dict[str, Any]:
        return {
            "version": str(self.version),
            "users_blended": {str(item): n for item, n in self.users_blended.items()},
            "past_cap": self.past_cap,
            "shrinkage": SHRINKAGE,
            "max_interactions": MAX_INTERACTIONS,
        }


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
        version = build_index(
            stage / "model",
            index_root,
            kind=meta.kind,
            progress=progress,
            based_on=current,
            source=Path(meta.source_model_path),
            **params,
        )
    return AddedItems(version, len(movies.item_ids), features.source)


def carried_bundle(current: Path | None, model_dir: Path, scratch: Path) -> Path:
    """The bundle ``rebuild`` should index (module docstring; :func:`carried_items` lists what it carried).

    ``model_dir`` itself when the ``current`` version holds no movie added by ``add-items`` that ``model_dir``
    lacks (a movie it holds was retrained and keeps its trained vector); else a merged copy written under
    ``scratch``.
    """
    if current is None:
        return model_dir
    config = load_json(current / MODEL_DIR / "config.json")
    records = config.get("added_items", []) if isinstance(config, dict) else []
    if not records:  # the common case: nothing to read beyond the config
        return model_dir
    old = read_model_bundle(current / MODEL_DIR, verify=True)
    new = read_model_bundle(model_dir, verify=True)
    ids = np.asarray([int(i) for record in records for i in record.get("item_ids", [])], dtype=np.int64)
    rows = rows_of(old.item_ids, np.unique(ids))
    rows = rows[rows >= 0]
    rows = rows[~np.isin(old.item_ids[rows], new.item_ids)]
    if rows.size == 0:
        return model_dir
    movies = NewMovies(
        item_ids=[int(i) for i in old.item_ids[rows]],
        titles=[old.items.titles[r] for r in rows.tolist()],
        years=[old.items.years[r] for r in rows.tolist()],
        genres=[list(old.items.genres[r]) for r in rows.tolist()],
    )
    features = feature_model_for(new, model_dir)
    vectors = features.vectors(movies.genres, movies.years)
    merged = merged_bundle(new, movies, vectors, features.source, carried_from=current.name)
    carried = {name: model_dir / name for name in _carried_files(new)}
    if features.source == "ridge":  # fitted on the new bundle: stored so later additions use the same regressor
        carried.update({p.name: p for p in features.write(_fresh(scratch / "features"))})
    write_model_bundle(merged, scratch / "model", attachments=carried)
    return scratch / "model"


def carried_items(version: Path) -> list[int]:
    """Ids of the added movies a rebuild carried forward into ``version`` (what ``rebuild`` reports)."""
    config = load_json(Path(version) / MODEL_DIR / "config.json")
    records = config.get("added_items", []) if isinstance(config, dict) else []
    return [int(i) for record in records if "carried_from" in record for i in record.get("item_ids", [])]


def refresh_items(index_root: Path, new_events: SeenEvents | None, *, progress: bool = False) -> RefreshedItems:
    """Write a new version whose added movies' vectors blend features and first raters (module docstring);
    ``new_events`` are compacted into it as by ``rebuild --events``, and CURRENT moves to it."""
    index_root = Path(index_root)
    current = VersionedStore(index_root).current()
    if current is None:
        raise BundleError("no current index version to refresh", path=index_root)
    manifest = read_manifest(current, INDEX_KIND, verify=False)
    meta = IndexMeta.from_manifest(manifest, current)
    model = read_model_bundle(current / MODEL_DIR, verify=True)
    rows = added_rows(model)
    if rows.size == 0:
        raise BundleError("the current version holds no movie added by add-items without training interactions")
    events = read_events(current, meta.events_through, manifest, verify=True)
    if new_events is not None:
        events = events.extended(new_events)
    features = feature_model_for(model, current / MODEL_DIR)
    from_features = features.vectors([model.items.genres[r] for r in rows], [model.items.years[r] for r in rows])
    vectors, users = blended_vectors(model, rows, from_features, events, cosine=features.tower.normalize)
    ids = [int(i) for i in model.item_ids[rows]]
    blended = {item: min(n, MAX_INTERACTIONS) for item, n in zip(ids, users, strict=True)}
    users_blended = {str(item): n for item, n in blended.items()}
    record = {"shrinkage": SHRINKAGE, "max_interactions": MAX_INTERACTIONS, "users_blended": users_blended}
    refreshed = dataclasses.replace(model, item_vectors=vectors, config={**model.config, "refreshed_items": record})
    with tempfile.TemporaryDirectory(prefix="movierec-refresh-items-") as scratch:
        carried = {name: current / MODEL_DIR / name for name in _carried_files(model)}
        write_model_bundle(refreshed, Path(scratch) / "model", attachments=carried)
        params = dict(meta.params) if meta.kind == "hnsw" else {}
        version = build_index(
            Path(scratch) / "model",
            index_root,
            kind=meta.kind,
            progress=progress,
            new_events=new_events,
            based_on=current,
            source=Path(meta.source_model_path),
            **params,
        )
    past_cap = [item for item, n in zip(ids, users, strict=True) if n > MAX_INTERACTIONS]
    return RefreshedItems(version, blended, past_cap)


def added_rows(model: ModelBundle) -> npt.NDArray[np.int64]:
    """Rows of the movies ``add-items`` put into this bundle that still have no training positives."""
    ids = [int(i) for record in model.config.get("added_items", []) for i in record.get("item_ids", [])]
    rows = rows_of(model.item_ids, np.asarray(ids, dtype=np.int64))
    rows = np.unique(rows[rows >= 0])
    untrained = np.bincount(model.train.indices, minlength=model.n_items)[rows] == 0
    return np.asarray(rows[untrained], dtype=np.int64)


def blended_vectors(
    model: ModelBundle,
    rows: npt.NDArray[np.int64],
    from_features: npt.NDArray[np.float32],
    events: CompactedEvents,
    *,
    cosine: bool,
) -> tuple[npt.NDArray[np.float32], list[int]]:
    """``model.item_vectors`` with ``rows`` set to the shrunk blend (module docstring); also, per row, how many
    distinct known users interacted (uncapped). A row nobody interacted with keeps its stored vector exactly."""
    vectors = model.item_vectors.copy()
    user_rows = rows_of(model.user_ids, events.user_ids)
    item_rows = rows_of(model.item_ids, events.item_ids)
    counts = []
    for row, feature_vector in zip(rows.tolist(), from_features, strict=True):
        raters = user_rows[(item_rows == row) & (user_rows >= 0)]
        distinct, first = np.unique(raters, return_index=True)
        raters = distinct[np.argsort(first, kind="stable")]  # event order: the first raters are kept past the cap
        counts.append(int(raters.size))
        if raters.size == 0:
            continue
        users = model.user_vectors[raters[:MAX_INTERACTIONS]].astype(np.float64)
        if cosine:
            users /= np.maximum(np.linalg.norm(users, axis=1, keepdims=True), 1e-12)
        n = users.shape[0]
        vector = (SHRINKAGE * feature_vector.astype(np.float64) + n * users.mean(axis=0)) / (SHRINKAGE + n)
        if cosine:
            vector /= max(float(np.linalg.norm(vector)), 1e-12)
        vectors[row] = vector.astype(np.float32)
    return vectors, counts


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


def merged_bundle(
    model: ModelBundle,
    movies: NewMovies,
    vectors: npt.NDArray[np.float32],
    source: str,
    *,
    carried_from: str | None = None,
) -> ModelBundle:
    """``model`` with the new movies merged into its ascending id order; CSR columns renumbered. ``carried_from``
    names the version a rebuild carried them forward from (recorded with them)."""
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
    record: dict[str, Any] = {"item_ids": [int(i) for i in movies.item_ids], "vectors_from": source}
    if carried_from is not None:
        record["carried_from"] = carried_from
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
