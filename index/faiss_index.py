"""FAISS index construction, persistence and the HNSW search path.

Two kinds:

``flat``  ``IndexFlatIP``: every item scored, exact. Serving scores with the
          same matrix product in numpy (see :mod:`movierec.index.topk` for why).
``hnsw``  ``IndexHNSWFlat`` over inner product, for catalogs too large to scan:
          approximate, with each query's exclusions applied *inside* the graph
          walk (a FAISS ID selector), the results re-ranked by the exact rule,
          never an excluded item and always ``min(k, allowed)`` results (a
          query whose walk comes back short is answered by the exact scan).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import numpy.typing as npt

from movierec.errors import BundleError
from movierec.index.topk import ExactSearcher, Recommendation, rank_candidates

KINDS = ("flat", "hnsw")
ADD_CHUNK = 4096
# A query excluding more than this share of the catalog goes straight to the exact scan: the graph walk
# would mostly visit excluded items, and the scan of what is left is then no slower.
EXACT_ABOVE_EXCLUDED_SHARE = 0.5


@dataclass(frozen=True)
class HnswParams:
    """``m``: graph degree; ``ef_construction``/``ef_search``: beam widths at build and query time."""

    m: int = 32
    ef_construction: int = 200
    ef_search: int = 128

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> HnswParams:
        unknown = set(options) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown HNSW parameter(s): {', '.join(sorted(unknown))}")
        params = cls(**{name: int(value) for name, value in options.items()})
        if min(params.m, params.ef_construction, params.ef_search) <= 0:
            raise ValueError("HNSW parameters must be positive")
        return params

    def to_json(self) -> dict[str, int]:
        return {
            "m": self.m,
            "ef_construction": self.ef_construction,
            "ef_search": self.ef_search,
        }


def create_index(
    kind: str,
    item_vectors: npt.NDArray[np.float32],
    hnsw: HnswParams,
    on_progress: Callable[[int], None] = lambda _n: None,
) -> faiss.Index:
    """Build an inner-product index over ``item_vectors``; ``on_progress(n)`` after each chunk of n added."""
    index = _empty_index(kind, int(item_vectors.shape[1]), hnsw)
    vectors = np.ascontiguousarray(item_vectors, dtype=np.float32)
    for start in range(0, vectors.shape[0], ADD_CHUNK):
        chunk = vectors[start : start + ADD_CHUNK]
        index.add(chunk)
        on_progress(int(chunk.shape[0]))
    return index


def _empty_index(kind: str, dim: int, hnsw: HnswParams) -> faiss.Index:
    if kind == "flat":
        return faiss.IndexFlatIP(dim)
    if kind == "hnsw":
        graph = faiss.IndexHNSWFlat(dim, hnsw.m, faiss.METRIC_INNER_PRODUCT)
        graph.hnsw.efConstruction = hnsw.ef_construction
        graph.hnsw.efSearch = hnsw.ef_search
        return graph
    raise ValueError(f"unknown index kind {kind!r} (choose from {', '.join(KINDS)})")


def write_index(index: faiss.Index, path: Path) -> None:
    faiss.write_index(index, str(path))


def read_index(path: Path, item_vectors: npt.NDArray[np.float32]) -> faiss.Index:
    """Load ``path`` and check it indexes exactly ``item_vectors`` (same count, dim and values).

    Only the kinds this module builds are accepted, and an HNSW graph's links are
    checked to stay inside it: a search walks them without bounds checks, so a bad
    link would read out of memory instead of raising. Anything wrong is a BundleError.
    """
    try:
        index = faiss.read_index(str(path))
    except (RuntimeError, MemoryError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BundleError(f"not a readable FAISS index ({first_line})", path=path) from None
    if not isinstance(index, faiss.IndexFlatIP | faiss.IndexHNSWFlat):
        raise BundleError(
            f"holds a {type(index).__name__}, not one of the kinds built here ({', '.join(KINDS)})", path=path
        )
    n_items, dim = item_vectors.shape
    if index.ntotal != n_items or index.d != dim:
        raise BundleError(
            f"index holds {index.ntotal} vectors of dim {index.d}, the model has {n_items} of dim {dim}", path=path
        )
    if index.metric_type != faiss.METRIC_INNER_PRODUCT:
        raise BundleError("index does not use the inner-product metric", path=path)
    if isinstance(index, faiss.IndexHNSWFlat) and (why := hnsw_graph_problem(index)) is not None:
        raise BundleError(f"HNSW graph is damaged: {why}", path=path)
    if n_items and not np.array_equal(index.reconstruct_n(0, n_items), item_vectors):
        raise BundleError("index vectors differ from the model's item vectors", path=path)
    return index


def hnsw_graph_problem(index: faiss.IndexHNSWFlat) -> str | None:
    """Why the graph of ``index`` could send a walk outside it (or its vectors are missing), or None.

    FAISS 1.15 runs the same checks when it reads a file; older releases (``faiss-cpu>=1.8`` is allowed) do not.
    """
    storage = faiss.downcast_index(index.storage)
    if not isinstance(storage, faiss.IndexFlat) or storage.ntotal != index.ntotal or storage.d != index.d:
        return "its vector storage does not hold one flat vector per node"
    graph: Any = index.hnsw  # faiss's bundled stubs omit the graph's tables
    n = int(index.ntotal)
    levels = faiss.vector_to_array(graph.levels).astype(np.int64)
    offsets = faiss.vector_to_array(graph.offsets).astype(np.int64)
    neighbors = faiss.vector_to_array(graph.neighbors)
    per_level = faiss.vector_to_array(graph.cum_nneighbor_per_level).astype(np.int64)
    if levels.shape[0] != n or offsets.shape[0] != n + 1 or per_level.size < 2:
        return "its level and offset tables do not have one entry per node"
    if n == 0:
        return None
    if levels.min() < 1 or levels.max() >= per_level.size:
        return "a node's level is outside the graph's levels"
    if offsets[0] != 0 or not np.array_equal(np.diff(offsets), per_level[levels]) or offsets[-1] != neighbors.size:
        return "its neighbour offsets do not match the nodes' levels"
    if neighbors.size and (neighbors.min() < -1 or neighbors.max() >= n):
        return "a link points outside the graph"
    if not 0 <= graph.entry_point < n or graph.max_level != levels[graph.entry_point] - 1:
        return "its entry point is outside the graph or not on its top level"
    if graph.max_level != levels.max() - 1:
        return "its top level does not match the nodes' levels"
    return None


class HnswSearcher:
    """Graph search with exclusions inside the walk, exact re-ranking, the exact scan when a walk comes back short.

    Thread-safe: every search passes its own ``SearchParametersHNSW`` instead of
    mutating ``index.hnsw.efSearch``.
    """

    def __init__(self, index: faiss.Index, exact: ExactSearcher, params: HnswParams) -> None:
        self.index = index
        self.exact = exact
        self.params = params

    def search(
        self, queries: npt.NDArray[np.float32], k: int, excluded: Sequence[npt.NDArray[np.int64]]
    ) -> list[Recommendation]:
        n_items = self.exact.n_items
        distinct = [np.unique(e) for e in excluded]
        wanted = [min(k, n_items - d.size) for d in distinct]
        answers: list[Recommendation | None] = [None] * queries.shape[0]
        unfiltered = [q for q, d in enumerate(distinct) if d.size == 0 and wanted[q] > 0]
        if unfiltered:  # one batched walk for every query without exclusions
            _, labels = self.index.search(queries[unfiltered], k, params=self._params(k, None))
            for position, q in enumerate(unfiltered):
                answers[q] = self._rerank(queries[q], labels[position], distinct[q], wanted[q])
        for q, excl in enumerate(distinct):
            if excl.size and wanted[q] > 0 and excl.size <= EXACT_ABOVE_EXCLUDED_SHARE * n_items:
                selector = faiss.IDSelectorNot(faiss.IDSelectorBatch(excl))  # referenced until the walk ends
                _, labels = self.index.search(queries[q : q + 1], k, params=self._params(k, selector))
                answers[q] = self._rerank(queries[q], labels[0], excl, wanted[q])
        fallback = [q for q in range(queries.shape[0]) if answers[q] is None]
        if fallback:
            exact = self.exact.search(queries[fallback], k, [distinct[q] for q in fallback])
            for q, answer in zip(fallback, exact, strict=True):
                answers[q] = answer
        return [a for a in answers if a is not None]

    def _params(self, k: int, selector: faiss.IDSelector | None) -> Any:
        # faiss's bundled type stubs omit SearchParametersHNSW.
        params = faiss.SearchParametersHNSW()  # type: ignore[attr-defined]
        params.efSearch = max(self.params.ef_search, k)
        if selector is not None:
            params.sel = selector
        return params

    def _rerank(
        self,
        query: npt.NDArray[np.float32],
        labels: npt.NDArray[np.int64],
        excluded: npt.NDArray[np.int64],
        wanted: int,
    ) -> Recommendation | None:
        """The walk's results ordered by the exact ranking rule; None when fewer than ``wanted`` came back."""
        candidates = np.unique(labels[labels >= 0])
        candidates = candidates[~np.isin(candidates, excluded)]  # the selector already did this; cheap insurance
        if candidates.size < wanted:
            return None
        with np.errstate(over="ignore", invalid="ignore"):
            scores = self.exact.item_vectors[candidates] @ query
        scores[np.isnan(scores)] = -np.inf
        return rank_candidates(candidates, scores, wanted)
