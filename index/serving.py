"""A verified, loaded index bundle and the queries the server asks of it.

A :class:`ServingIndex` is immutable once opened: the server answers every
request from one instance and hot-swaps by replacing its reference with a newly
opened one, so no request ever mixes two versions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import faiss
import numpy as np
import numpy.typing as npt

from movierec.bundle import MANIFEST_NAME, Manifest, ModelBundle, VersionedStore, read_manifest, sha256_file
from movierec.bundle.manifest import listed_file
from movierec.bundle.model import MODEL_KIND, read_model_bundle
from movierec.errors import BundleError
from movierec.index.because import BecauseExplainer
from movierec.index.diversify import Diversifier, check_diversity, pool_size
from movierec.index.events import (
    CompactedEvents,
    merge_into_seen,
    read_events,
    unknown_user_events,
)
from movierec.index.faiss_index import HnswParams, HnswSearcher, read_index
from movierec.index.filters import CatalogFilters, ItemFilter
from movierec.index.fold_in import FoldIn
from movierec.index.id_lookup import IdLookup
from movierec.index.layout import FAISS_FILE, INDEX_KIND, MODEL_DIR
from movierec.index.meta import IndexMeta
from movierec.index.ranked import RankedPrefixes, affordable_depth
from movierec.index.topk import ExactSearcher, Recommendation, as_exclusion, check_k

WARM_UP_QUERIES = 64


class Searcher(Protocol):
    def search(
        self, queries: npt.NDArray[np.float32], k: int, excluded: Sequence[npt.NDArray[np.int64]]
    ) -> list[Recommendation]: ...


class CatalogItem(NamedTuple):
    """What a recommended item shows besides its score: wire-neutral, one per item row."""

    item_id: int
    title: str
    genres: tuple[str, ...]
    year: int | None


class ServingIndex:
    """A verified, loaded index bundle: FAISS index + the model bundle it was built from.

    Batch-first like ``implicit``: :meth:`recommend` takes many user rows and
    answers them with one scoring pass. Every answer obeys the ranking rule of
    :mod:`movierec.index.topk` and never contains a seen or excluded item.

    Every query method takes an optional :class:`~movierec.index.filters.ItemFilter`
    (one per call, applied to every query of the batch): its compiled item mask
    (cached per distinct filter) is applied inside the exact search, so the
    answer is the brute-force top-K of the items that pass it. A filtered query
    on an HNSW index is answered by the exact scan: still exact and K items.

    Its public face is all a server needs (:attr:`index_version`, :attr:`model_version`, :attr:`meta`, id ->
    row lookups, :meth:`catalog`, :meth:`new_user_events`, :meth:`fold_in_vector`, counts, genres, metrics);
    ``model`` is the loaded bundle for index-layer tools and benchmarks, not for serving code.

    Safe to query from many threads at once (no search mutates shared state).
    A serving process should call :func:`movierec.index.limit_serving_threads`
    once at start-up, or BLAS/OpenMP pools fight the request threads for cores.
    """

    def __init__(
        self,
        version: str,
        path: Path,
        model: ModelBundle,
        meta: IndexMeta,
        faiss_index: faiss.Index,
        events: CompactedEvents | None = None,
        *,
        ranked_depth: int = 0,
    ) -> None:
        """``ranked_depth`` > 0 precomputes up to that many places of every user's ranking (see
        :mod:`movierec.index.ranked`: fewer when the users' prefixes would pass its memory cap; flat indexes
        only: an HNSW catalogue is too large to scan per user)."""
        self.version = version
        self.path = path
        self.meta = meta
        self.events = events if events is not None else CompactedEvents.none()
        _check_parts_agree(path, model, meta, self.events)
        # model.seen includes every compacted live event, so every query path excludes them.
        self.model = model if not len(self.events) else replace(model, seen=merge_into_seen(model, self.events)[0])
        self.faiss_index = faiss_index
        self.kind = self.meta.kind
        self._exact = ExactSearcher(model.item_vectors)
        self._searcher: Searcher = self._exact
        if self.kind == "flat" and not isinstance(faiss_index, faiss.IndexFlatIP):
            raise BundleError(f"manifest says flat but the file holds {type(faiss_index).__name__}", path=path)
        if self.kind == "hnsw":
            if not isinstance(faiss_index, faiss.IndexHNSWFlat):
                raise BundleError(f"manifest says hnsw but the file holds {type(faiss_index).__name__}", path=path)
            try:
                params = HnswParams.from_options(dict(self.meta.params))
            except (ValueError, TypeError) as exc:
                raise BundleError(f"index manifest: bad HNSW parameters ({exc})", path=path / MANIFEST_NAME) from None
            self._searcher = HnswSearcher(faiss_index, self._exact, params)
        self._users = IdLookup(model.user_ids)
        self._items = IdLookup(model.item_ids)
        self._fold_in = FoldIn.from_model(model)
        self._new_user_events = unknown_user_events(model, self.events)
        self._filters = CatalogFilters(model.items)
        self._explainer = BecauseExplainer.from_model(self.model)
        self._diversifier = Diversifier(model.item_vectors)
        self.ranked: RankedPrefixes | None = None
        if ranked_depth < 0:
            raise ValueError(f"ranked_depth must be >= 0, got {ranked_depth}")
        depth = affordable_depth(self.n_users, self.n_items, ranked_depth) if self.kind == "flat" else 0
        if depth:
            # The version's stored prefixes, memory-mapped; computed here only for versions built without them.
            self.ranked = RankedPrefixes.for_version(path, self._exact, self.model.user_vectors, self.model.seen, depth)

    @property
    def genres(self) -> list[str]:
        """Every genre name a filter may use, sorted."""
        return list(self._filters.genres)

    def allowed_items(self, item_filter: ItemFilter | None) -> npt.NDArray[np.bool_] | None:
        """The read-only mask of item rows ``item_filter`` allows (None: every item); FilterError if invalid."""
        return self._filters.allowed(item_filter)

    @property
    def index_version(self) -> str:
        """The version directory's name (e.g. ``v0003``): what a response's ``index_version`` reports."""
        return self.version

    @property
    def model_version(self) -> str:
        """``<model dir name>@<first 12 hex of its manifest SHA-256>`` (see :attr:`IndexMeta.model_version`)."""
        return self.meta.model_version

    @property
    def events_through(self) -> int:
        """The last live-event offset this version has compacted (0: none).

        The server does not replay only the events after it: it replays every event its store still holds
        (a swap to an older retained version needs them) and checks the store's truncation point against it
        (:func:`movierec.server.live_events.check_continuity`)."""
        return self.events.through_offset

    @property
    def n_items(self) -> int:
        return self.model.n_items

    @property
    def n_users(self) -> int:
        return self.model.n_users

    @property
    def dim(self) -> int:
        return self.model.dim

    @property
    def metrics(self) -> Mapping[str, Any]:
        """The training run's metrics, as the model bundle recorded them."""
        return self.model.metrics

    @property
    def item_ids(self) -> npt.NDArray[np.int64]:
        """The dataset id of each item row (ascending)."""
        return self.model.item_ids

    def user_row(self, user_id: int) -> int | None:
        """The internal row of dataset user ``user_id``, or None if the model never saw that user.

        A dense table lookup where the ids allow it (see :mod:`movierec.index.id_lookup`): this runs on every request.
        """
        return self._users.row(user_id)

    def user_rows(self, user_ids: Sequence[int] | npt.NDArray[np.integer]) -> npt.NDArray[np.int64]:
        """The row of each dataset user id, in order; -1 where the model never saw that user."""
        return self._users.rows(user_ids)

    def item_rows(self, item_ids: Sequence[int] | npt.NDArray[np.integer]) -> npt.NDArray[np.int32]:
        """Internal rows of the known ``item_ids``, in the given order; unknown ids are dropped (excluding a movie
        the model cannot recommend is a no-op). Takes a protobuf repeated field as it is."""
        return self._items.known_rows(item_ids)

    def unknown_item_ids(self, item_ids: Sequence[int] | npt.NDArray[np.integer]) -> npt.NDArray[np.int64]:
        """The ``item_ids`` not in the catalogue, in the given order (the same id lookup as :meth:`item_rows`)."""
        ids = np.asarray(item_ids, dtype=np.int64).reshape(-1)
        unknown: npt.NDArray[np.int64] = ids[self._items.rows(ids) < 0]
        return unknown

    def catalog(self) -> list[CatalogItem]:
        """Every item's display data (id, title, genres, year), by item row."""
        items = self.model.items
        return [
            CatalogItem(item_id, title, tuple(genres), year)
            for item_id, title, genres, year in zip(
                self.model.item_ids.tolist(), items.titles, items.genres, items.years, strict=True
            )
        ]

    def new_user_events(self, user_id: int) -> npt.NDArray[np.int64] | None:
        """Item ids of the compacted events of ``user_id`` when the model never saw that user (sorted, unique);
        None when there are none. A known user's compacted events are in :meth:`seen_rows` instead."""
        return self._new_user_events.get(user_id)

    def fold_in_vector(self, liked_rows: npt.NDArray[np.integer]) -> npt.NDArray[np.float32]:
        """A vector for a user the model never saw, from the item rows they liked (:mod:`movierec.index.fold_in`)."""
        return self._fold_in.user_vector(liked_rows)

    def seen_rows(self, user_row: int) -> npt.NDArray[np.int32]:
        """Every item the user rated in the data the model was trained from."""
        self._check_user_row(user_row)
        return self.model.seen.row(user_row).astype(np.int32, copy=False)

    def recommend(
        self,
        user_rows: Sequence[int],
        k: int,
        extra_exclude: Sequence[npt.NDArray[np.integer]] | None = None,
        item_filter: ItemFilter | None = None,
        diversity: float = 0.0,
    ) -> list[Recommendation]:
        """Top-``k`` for each known user row, excluding their seen items and ``extra_exclude[i]``,
        among the items ``item_filter`` allows. Unfiltered queries the ranked prefixes can decide are
        answered from them; the others share one scan. ``diversity`` > 0 re-ranks each user's exact best
        ``pool_size(k)`` by MMR (:mod:`movierec.index.diversify`); 0 is the exact top-``k``, untouched."""
        check_k(k)
        if check_diversity(diversity):
            pools = self.recommend(user_rows, pool_size(k), extra_exclude, item_filter)
            return [self._diversifier.rerank(pool, k, diversity) for pool in pools]
        allowed = self.allowed_items(item_filter)
        rows = [self._check_user_row(r) for r in user_rows]
        if extra_exclude is not None and len(extra_exclude) != len(rows):
            raise ValueError(f"extra_exclude has {len(extra_exclude)} lists for {len(rows)} users")
        extras = [
            as_exclusion(extra_exclude[position], self.n_items) if extra_exclude is not None else None
            for position in range(len(rows))
        ]
        answers: list[Recommendation | None] = [None] * len(rows)
        if self.ranked is not None and allowed is None:
            answers = [self.ranked.answer(row, k, extra) for row, extra in zip(rows, extras, strict=True)]
        missing = [position for position, answer in enumerate(answers) if answer is None]
        if missing:
            excluded = []
            for position in missing:
                seen = self.model.seen.row(rows[position]).astype(np.int64)
                extra = extras[position]
                excluded.append(seen if extra is None or extra.size == 0 else np.concatenate([seen, extra]))
            queries = np.ascontiguousarray(self.model.user_vectors[[rows[p] for p in missing]], dtype=np.float32)
            for position, answer in zip(missing, self._search(queries, k, excluded, allowed), strict=True):
                answers[position] = answer
        return _all_answered(answers)

    def recommend_vectors(
        self,
        vectors: npt.NDArray[np.float32],
        k: int,
        exclude: Sequence[npt.NDArray[np.integer]],
        item_filter: ItemFilter | None = None,
        diversity: float = 0.0,
    ) -> list[Recommendation]:
        """Top-``k`` for ad-hoc user vectors (fold-in users), excluding ``exclude[i]`` for vector ``i``,
        among the items ``item_filter`` allows; ``diversity`` as in :meth:`recommend`."""
        check_k(k)
        if check_diversity(diversity):
            pools = self.recommend_vectors(vectors, pool_size(k), exclude, item_filter)
            return [self._diversifier.rerank(pool, k, diversity) for pool in pools]
        allowed = self.allowed_items(item_filter)
        queries = np.ascontiguousarray(vectors, dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != self.model.dim:
            raise ValueError(f"vectors must have shape (n, {self.model.dim}), got {queries.shape}")
        if not np.all(np.isfinite(queries)):
            raise ValueError("vectors contain NaN or infinity")
        if len(exclude) != queries.shape[0]:
            raise ValueError(f"exclude has {len(exclude)} lists for {queries.shape[0]} vectors")
        return self._search(queries, k, [as_exclusion(e, self.n_items) for e in exclude], allowed)

    def similar_items(
        self,
        item_row: int,
        k: int,
        exclude: npt.NDArray[np.integer] | None = None,
        item_filter: ItemFilter | None = None,
    ) -> Recommendation:
        """Items nearest ``item_row`` by inner product of item vectors, never the item itself, among the items
        ``item_filter`` allows (the query item itself need not pass it)."""
        check_k(k)
        allowed = self.allowed_items(item_filter)
        if not 0 <= item_row < self.n_items:
            raise ValueError(f"item row {item_row} outside [0, {self.n_items})")
        excluded = np.array([item_row], dtype=np.int64)
        if exclude is not None:
            excluded = np.concatenate([excluded, as_exclusion(exclude, self.n_items)])
        query = self.model.item_vectors[item_row : item_row + 1]
        return self._search(np.ascontiguousarray(query, dtype=np.float32), k, [excluded], allowed)[0]

    def because(self, user_row: int, item_rows: npt.NDArray[np.integer]) -> npt.NDArray[np.int32]:
        """For each of ``item_rows`` (e.g. one recommendation's), the user's item that contributes most to
        its score (see :mod:`movierec.index.because`): among their training positives, else their seen items;
        -1 where the user has neither. One small matrix product per call."""
        row = self._check_user_row(user_row)
        positives = self.model.train.row(row)
        if positives.size == 0:
            positives = self.model.seen.row(row)
        return self._explainer.because(positives, item_rows)

    def because_of(
        self, positive_rows: npt.NDArray[np.integer], item_rows: npt.NDArray[np.integer]
    ) -> npt.NDArray[np.int32]:
        """:meth:`because` for a user given by their items (a fold-in user's liked rows); -1 if none given."""
        return self._explainer.because(positive_rows, item_rows)

    def warm_up(self) -> None:
        """Touch every code path once (BLAS threads, FAISS graph pages) before reporting SERVING."""
        if self.n_users and self.n_items:
            users = list(range(min(WARM_UP_QUERIES, self.n_users)))
            first = self.recommend(users[:1], 10)[0]
            self.recommend(users, 10)
            self.similar_items(0, 10)
            self.because(users[0], first.item_rows)
            if self.genres:
                self.recommend(users, 10, item_filter=ItemFilter(include_genres=frozenset(self.genres[:1])))

    def _search(
        self,
        queries: npt.NDArray[np.float32],
        k: int,
        excluded: Sequence[npt.NDArray[np.int64]],
        allowed: npt.NDArray[np.bool_] | None,
    ) -> list[Recommendation]:
        """The configured searcher, or, under a filter, the exact scan with its mask: HNSW would need an ID
        selector listing every blocked item for each query, and a walk through a narrow filter comes back short."""
        if allowed is None:
            return self._searcher.search(queries, k, excluded)
        return self._exact.search(queries, k, excluded, allowed)

    def _check_user_row(self, row: int) -> int:
        if isinstance(row, bool) or not isinstance(row, int | np.integer) or not 0 <= row < self.n_users:
            raise ValueError(f"user row {row!r} outside [0, {self.n_users})")
        return int(row)


def _check_parts_agree(path: Path, model: ModelBundle, meta: IndexMeta, events: CompactedEvents) -> None:
    """The manifest's counts match the loaded model, and the events are id vectors (``open_index`` also checks
    their count against the manifest; a caller may hand in more, e.g. events re-applied from a newer version)."""
    said = (meta.n_users, meta.n_items, meta.dim)
    if said != (model.n_users, model.n_items, model.dim):
        raise BundleError(
            f"index manifest says {said[0]} users, {said[1]} items, dim {said[2]}; the model holds "
            f"{model.n_users}, {model.n_items}, dim {model.dim}",
            path=path / MANIFEST_NAME,
        )
    arrays = (events.user_ids, events.item_ids)
    if any(a.dtype != np.int64 or a.ndim != 1 for a in arrays) or events.user_ids.shape != events.item_ids.shape:
        raise BundleError("compacted events are not two int64 vectors of one length", path=path)


def _all_answered(answers: list[Recommendation | None]) -> list[Recommendation]:
    """The answers, once every slot is filled (by the ranked prefixes or by the scan)."""
    filled = [answer for answer in answers if answer is not None]
    if len(filled) != len(answers):
        raise RuntimeError("a query was left unanswered")
    return filled


def resolve_version_dir(path: Path) -> Path:
    """``path`` itself when it is a version directory, else the version its ``CURRENT`` names (BundleError if none)."""
    path = Path(path)
    if (path / MANIFEST_NAME).is_file():
        return path
    if not path.is_dir():
        raise BundleError("no such index version or store", path=path)
    current = VersionedStore(path).current()
    if current is None:
        raise BundleError("neither an index version (no manifest.json) nor a store with a CURRENT pointer", path=path)
    return current


def open_index(path: Path, *, verify: bool = True, ranked_depth: int = 0) -> ServingIndex:
    """Load an index version (or a store root's current version), verifying every checksum first.

    The outer manifest checksums every file, including the copied model
    bundle's files; the model's own manifest (not covered, by name) is pinned
    by the SHA-256 recorded at build time, and every file it lists must be in
    the outer manifest with the same checksum. So one pass over the bytes
    verifies both bundles, and every file read (model arrays, items, metrics,
    the FAISS file, the compacted events) is one a verified manifest lists.
    Anything wrong is a :class:`BundleError`; nothing else escapes.
    """
    directory = resolve_version_dir(path)
    manifest = read_manifest(directory, INDEX_KIND, verify=verify)
    model_dir = directory / MODEL_DIR
    meta = IndexMeta.from_manifest(manifest, directory)
    model_manifest = model_dir / MANIFEST_NAME
    if verify and (not model_manifest.is_file() or sha256_file(model_manifest) != meta.source_model_sha256):
        raise BundleError(
            "model manifest is missing or differs from the one the index was built from", path=model_manifest
        )
    if verify:
        _check_model_files_covered(manifest, read_manifest(model_dir, MODEL_KIND, verify=False), directory)
    # Memory-mapped, read-only: the arrays are the page cache's pages, shared by every process serving this
    # version (workers after a hot swap load it each on its own). They were verified above from these files;
    # versions are never written after they are published.
    model = read_model_bundle(model_dir, verify=False, mmap=True)
    faiss_index = read_index(listed_file(manifest, directory, FAISS_FILE), model.item_vectors)
    # As the manifest lists them: both event files or neither, none unlisted, int64 vectors, as many as it says.
    events = read_events(directory, meta.events_through, manifest)
    return ServingIndex(directory.name, directory, model, meta, faiss_index, events, ranked_depth=ranked_depth)


def _check_model_files_covered(index_manifest: Manifest, model_manifest: Manifest, directory: Path) -> None:
    """Every file the model manifest lists is in the (verified) index manifest with the same size and checksum."""
    for rel, entry in model_manifest.files.items():
        outer = index_manifest.files.get(f"{MODEL_DIR}/{rel}")
        if outer is None or outer["sha256"] != entry["sha256"] or outer["bytes"] != entry["bytes"]:
            raise BundleError(
                f"{MODEL_DIR}/{rel} is not covered by the index manifest as the model manifest lists it",
                path=directory / MANIFEST_NAME,
            )
