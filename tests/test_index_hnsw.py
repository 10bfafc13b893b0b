"""HNSW is approximate, but its answers still honour the exclusion contract and always have K items."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from bundle_factory import make_bundle
from hypothesis import given, settings
from hypothesis import strategies as st

from movierec.bundle import write_model_bundle
from movierec.errors import BundleError
from movierec.index import Recommendation, ServingIndex, build_index, open_index
from movierec.index.faiss_index import HnswParams, HnswSearcher, create_index
from movierec.index.topk import ExactSearcher


def hnsw_searcher(items: npt.NDArray[np.float32], **options: int) -> HnswSearcher:
    params = HnswParams.from_options(options)
    index = create_index("hnsw", items, params)
    return HnswSearcher(index, ExactSearcher(items), params)


def assert_contract(
    answer: Recommendation, items: npt.NDArray[np.float32], excluded: npt.NDArray[np.int64], k: int
) -> None:
    """Length min(k, allowed), nothing excluded, no duplicate, ordered by exact score then lower row."""
    allowed = items.shape[0] - np.unique(excluded).size
    rows = answer.item_rows
    assert len(rows) == min(k, allowed)
    assert np.unique(rows).size == rows.size
    assert not np.isin(rows, excluded).any()
    assert np.all(np.diff(answer.scores) <= 0)
    tied = np.diff(answer.scores) == 0
    assert np.all(np.diff(rows)[tied] > 0)


@settings(max_examples=60, deadline=None)
@given(
    n_items=st.integers(1, 150),
    k=st.integers(1, 40),
    excluded_fraction=st.sampled_from([0.0, 0.3, 0.9, 0.99, 1.0]),
    ef_search=st.sampled_from([1, 8, 128]),
    seed=st.integers(0, 2**32 - 1),
)
def test_hnsw_answers_keep_the_contract(
    n_items: int, k: int, excluded_fraction: float, ef_search: int, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    items = rng.standard_normal((n_items, 4)).astype(np.float32)
    searcher = hnsw_searcher(items, m=4, ef_search=ef_search)
    queries = rng.standard_normal((3, 4)).astype(np.float32)
    n_excluded = int(excluded_fraction * n_items)
    excluded = [rng.choice(n_items, size=n_excluded, replace=False).astype(np.int64) for _ in range(3)]
    excluded[1] = np.concatenate([excluded[1], excluded[1]])  # duplicates in an exclusion list
    for answer, excl in zip(searcher.search(queries, k, excluded), excluded, strict=True):
        assert_contract(answer, items, excl, k)


class CountingExact(ExactSearcher):
    """Records how many queries reach the exact scan, to prove the graph path is really used."""

    def __init__(self, items: npt.NDArray[np.float32]) -> None:
        super().__init__(items)
        self.queries = 0

    def search(
        self,
        queries: npt.NDArray[np.float32],
        k: int,
        excluded: Sequence[npt.NDArray[np.int64]],
        allowed_items: npt.NDArray[np.bool_] | None = None,
    ) -> list[Recommendation]:
        self.queries += queries.shape[0]
        return super().search(queries, k, excluded, allowed_items)


def test_light_exclusions_use_the_graph_and_find_the_true_neighbours() -> None:
    rng = np.random.default_rng(1)
    items = rng.standard_normal((2000, 16)).astype(np.float32)
    params = HnswParams(m=16, ef_search=64)
    exact = CountingExact(items)
    searcher = HnswSearcher(create_index("hnsw", items, params), exact, params)
    queries = rng.standard_normal((50, 16)).astype(np.float32)
    excluded = [rng.choice(2000, size=30, replace=False).astype(np.int64) for _ in range(50)]
    got = searcher.search(queries, 10, excluded)
    assert exact.queries == 0
    truth = ExactSearcher(items).search(queries, 10, excluded)
    hits = sum(np.intersect1d(g.item_rows, t.item_rows).size for g, t in zip(got, truth, strict=True))
    assert hits / (50 * 10) >= 0.9  # recall@10 of the graph on random data; the benchmark measures ML-1M
    for answer, excl in zip(got, excluded, strict=True):
        assert_contract(answer, items, excl, 10)


def test_heavy_exclusions_use_the_exact_scan() -> None:
    rng = np.random.default_rng(0)
    items = rng.standard_normal((300, 8)).astype(np.float32)
    params = HnswParams(m=8)
    exact = CountingExact(items)
    searcher = HnswSearcher(create_index("hnsw", items, params), exact, params)
    queries = rng.standard_normal((2, 8)).astype(np.float32)
    excluded = [np.arange(0, 290, dtype=np.int64), np.arange(0, 100, dtype=np.int64)]
    got = searcher.search(queries, 20, excluded)
    assert exact.queries == 1  # only the first query excludes more than half the catalog
    assert np.array_equal(got[0].item_rows, ExactSearcher(items).search(queries[:1], 20, excluded[:1])[0].item_rows)
    assert len(got[0]) == 10  # only ten items were left
    assert_contract(got[1], items, excluded[1], 20)


class ShortWalks:
    """A graph that finds nothing (all labels -1): every query must come from the exact scan."""

    ntotal = 50

    def search(self, queries: npt.NDArray[np.float32], k: int, params: object = None) -> tuple[object, object]:
        return None, np.full((queries.shape[0], k), -1, dtype=np.int64)


def test_walks_that_come_back_short_are_answered_exactly() -> None:
    rng = np.random.default_rng(2)
    items = rng.standard_normal((50, 4)).astype(np.float32)
    searcher = HnswSearcher(ShortWalks(), ExactSearcher(items), HnswParams())  # type: ignore[arg-type]
    queries = rng.standard_normal((3, 4)).astype(np.float32)
    excluded = [np.empty(0, np.int64), np.array([1, 2, 2], np.int64), np.arange(10, dtype=np.int64)]
    got = searcher.search(queries, 5, excluded)
    expected = ExactSearcher(items).search(queries, 5, excluded)
    assert [g.item_rows.tolist() for g in got] == [e.item_rows.tolist() for e in expected]


@pytest.fixture(scope="module")
def hnsw_index(tmp_path_factory: pytest.TempPathFactory) -> ServingIndex:
    root = tmp_path_factory.mktemp("hnsw")
    write_model_bundle(make_bundle(n_users=10, n_items=80, dim=6, seen_per_user=75, seed=5), root / "model")
    return open_index(build_index(root / "model", root / "index", kind="hnsw", m=8, ef_search=16))


def test_served_hnsw_index_for_users_who_saw_almost_everything(hnsw_index: ServingIndex) -> None:
    model = hnsw_index.model
    answers = hnsw_index.recommend(list(range(model.n_users)), 10, [np.array([0, 0], np.int32)] * model.n_users)
    for row, answer in enumerate(answers):
        excluded = np.concatenate([model.seen.row(row), [0]]).astype(np.int64)
        assert_contract(answer, model.item_vectors, excluded, 10)
        assert len(answer) == model.n_items - np.unique(excluded).size  # 4 or 5 left, all returned
    similar = hnsw_index.similar_items(3, 5)
    assert_contract(similar, model.item_vectors, np.array([3]), 5)


def test_hnsw_file_of_the_wrong_kind_is_refused(tmp_path: Path) -> None:
    write_model_bundle(make_bundle(n_users=4, n_items=20, dim=3, seen_per_user=2, seed=0), tmp_path / "model")
    flat = build_index(tmp_path / "model", tmp_path / "flat")
    hnsw = build_index(tmp_path / "model", tmp_path / "hnsw", kind="hnsw", m=4)
    (hnsw / "index.faiss").write_bytes((flat / "index.faiss").read_bytes())
    with pytest.raises(BundleError, match="manifest says hnsw"):
        open_index(hnsw, verify=False)
