"""Exclusion is exact (README, "The exclusion contract"): equal to a float64 brute-force reference, property-tested.

The reference ranks the catalog minus the excluded items by float64 score,
ties by lower row. FAISS/BLAS float32 scores can differ from it by rounding,
so the comparison is robust: the answer's length, order, exclusions and
"nothing better was left out" are checked exactly up to a 1e-5 tolerance, and
the item order must equal the reference wherever the reference's score gaps
exceed that tolerance.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from bundle_factory import make_bundle
from hypothesis import given, settings
from hypothesis import strategies as st

from movierec.bundle import write_model_bundle
from movierec.index import Recommendation, ServingIndex, build_index, open_index
from movierec.index.topk import ExactSearcher, top_k_from_scores

TOLERANCE = 1e-5
# (item vectors, query vectors, one exclusion list per query, k)
Case = tuple[npt.NDArray[np.float32], npt.NDArray[np.float32], list[npt.NDArray[np.int64]], int]


def reference_top_k(
    query: npt.NDArray[np.float32], items: npt.NDArray[np.float32], excluded: npt.NDArray[np.integer], k: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
    """Brute force in float64: all allowed items sorted by (score desc, row asc), first k."""
    scores = items.astype(np.float64) @ query.astype(np.float64)
    allowed = np.setdiff1d(np.arange(items.shape[0]), excluded)
    order = np.lexsort((allowed, -scores[allowed]))
    return allowed[order][:k], scores


def assert_matches_reference(
    answer: Recommendation,
    query: npt.NDArray[np.float32],
    items: npt.NDArray[np.float32],
    excluded: npt.NDArray[np.integer],
    k: int,
) -> None:
    expected, exact_scores = reference_top_k(query, items, excluded, k)
    got = answer.item_rows.astype(np.int64)
    assert got.shape == expected.shape, "must return min(k, #allowed) items"
    assert np.unique(got).size == got.size, "duplicate item"
    assert not np.isin(got, excluded).any(), "excluded item returned"
    got_scores = exact_scores[got]
    assert np.all(np.diff(got_scores) <= TOLERANCE), "scores not non-increasing"
    np.testing.assert_allclose(answer.scores, got_scores, rtol=1e-5, atol=1e-4)
    if got.size:
        left_out = np.setdiff1d(np.setdiff1d(np.arange(items.shape[0]), excluded), got)
        assert np.all(exact_scores[left_out] <= got_scores[-1] + TOLERANCE), "a better allowed item was left out"
    if np.array_equal(items, np.round(items)) and np.array_equal(query, np.round(query)):
        # Small integer vectors score exactly in float32 and float64, so ties are exact: the lower row wins.
        tied = np.diff(got_scores) == 0
        assert np.all(np.diff(got)[tied] > 0), "tied scores not in ascending row order"
        if got.size:
            tied_left_out = left_out[exact_scores[left_out] == got_scores[-1]]
            assert np.all(tied_left_out > got[-1]), "a lower-row item tied with the last one was left out"
    # Where the reference's neighbouring scores are clearly apart, the order must be exactly the reference's.
    ref_scores = exact_scores[expected]
    if expected.size:
        gaps = np.abs(np.diff(np.concatenate([ref_scores, [exact_scores[got[-1]] - 1.0]])))
        margin_before = np.concatenate([[np.inf], gaps[:-1]])
        clear = (gaps > TOLERANCE) & (margin_before > TOLERANCE)
        assert np.array_equal(got[clear], expected[clear]), "order differs from the brute-force reference"


@st.composite
def search_cases(
    draw: st.DrawFn,
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32], list[npt.NDArray[np.int64]], int]:
    """Random catalogs (with deliberate duplicate item vectors = score ties), queries and exclusions."""
    n_items = draw(st.integers(0, 40))
    dim = draw(st.integers(1, 6))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    # Small integer-valued vectors make exact ties common; duplicated rows make them certain.
    items = rng.integers(-2, 3, size=(n_items, dim)).astype(np.float32)
    if n_items > 1 and draw(st.booleans()):
        copies = rng.integers(0, n_items, size=n_items // 2)
        items[rng.integers(0, n_items, size=copies.size)] = items[copies]
    if draw(st.booleans()):
        items = items + rng.standard_normal(items.shape).astype(np.float32) * 0.1
    n_queries = draw(st.integers(1, 5))
    queries = rng.integers(-2, 3, size=(n_queries, dim)).astype(np.float32)
    excluded = []
    for _ in range(n_queries):
        mode = draw(st.sampled_from(["none", "some", "almost_all", "all", "duplicates"]))
        if n_items == 0 or mode == "none":
            excluded.append(np.empty(0, dtype=np.int64))
        elif mode == "some":
            excluded.append(rng.choice(n_items, size=rng.integers(1, n_items + 1), replace=False))
        elif mode == "almost_all":
            excluded.append(rng.permutation(n_items)[: max(0, n_items - draw(st.integers(1, 3)))])
        elif mode == "all":
            excluded.append(np.arange(n_items))
        else:
            excluded.append(rng.integers(0, n_items, size=2 * n_items))
    k = draw(st.integers(1, 50))
    return items, queries, [e.astype(np.int64) for e in excluded], k


@settings(max_examples=300, deadline=None)
@given(search_cases())
def test_exact_search_equals_brute_force(
    case: Case,
) -> None:
    items, queries, excluded, k = case
    answers = ExactSearcher(items).search(queries, k, excluded)
    assert len(answers) == len(queries)
    for answer, query, excl in zip(answers, queries, excluded, strict=True):
        assert_matches_reference(answer, query, items, excl, k)


@settings(max_examples=150, deadline=None)
@given(search_cases())
def test_general_path_for_possibly_non_finite_scores_equals_brute_force(case: Case) -> None:
    """The path taken when scores might overflow (allowed mask, NaN pass) obeys the same contract."""
    items, queries, excluded, k = case
    answers = top_k_from_scores(queries @ items.T, excluded, k, finite=False)
    for answer, query, excl in zip(answers, queries, excluded, strict=True):
        assert_matches_reference(answer, query, items, excl, k)


def test_ties_break_by_lower_item_row() -> None:
    items = np.ones((6, 2), dtype=np.float32)  # every item scores the same
    answer = ExactSearcher(items).search(np.ones((1, 2), dtype=np.float32), 3, [np.array([0, 2], dtype=np.int64)])
    assert answer[0].item_rows.tolist() == [1, 3, 4]


def test_nan_scores_rank_last_and_are_still_returned() -> None:
    scores = np.array([[np.nan, 1.0, np.inf, -np.inf, 0.5]], dtype=np.float32)
    answer = top_k_from_scores(scores, [np.array([4], dtype=np.int64)], 4)[0]
    assert answer.item_rows.tolist() == [2, 1, 0, 3]  # NaN ranks as -inf; ties at -inf by lower row


def test_the_fast_path_is_taken_only_when_scores_cannot_overflow() -> None:
    searcher = ExactSearcher(np.full((3, 4), 2.0, dtype=np.float32))
    assert searcher.scores_are_finite(np.ones((2, 4), dtype=np.float32))
    assert not searcher.scores_are_finite(np.full((1, 4), 5e37, dtype=np.float32))
    assert not searcher.scores_are_finite(np.array([[np.nan, 0, 0, 0]], dtype=np.float32))


def test_overflowing_scores_do_not_break_the_search() -> None:
    big = np.float32(3e38)
    items = np.array([[big, big], [1.0, 0.0]], dtype=np.float32)
    answer = ExactSearcher(items).search(np.array([[1.0, 1.0]], dtype=np.float32), 2, [np.empty(0, np.int64)])
    assert answer[0].item_rows.tolist() == [0, 1]
    assert np.isposinf(answer[0].scores[0])


@pytest.fixture(scope="module")
def flat_index(tmp_path_factory: pytest.TempPathFactory) -> ServingIndex:
    root = tmp_path_factory.mktemp("exact")
    write_model_bundle(make_bundle(n_users=30, n_items=60, dim=6, seen_per_user=20, seed=3), root / "model")
    return open_index(build_index(root / "model", root / "index"))


def test_recommend_excludes_seen_and_extra_items(flat_index: ServingIndex) -> None:
    model = flat_index.model
    extras = [np.array([5, 5, 7], dtype=np.int32) for _ in range(model.n_users)]
    answers = flat_index.recommend(list(range(model.n_users)), 10, extras)
    for row, answer in enumerate(answers):
        excluded = np.concatenate([model.seen.row(row), extras[row]])
        assert_matches_reference(answer, model.user_vectors[row], model.item_vectors, excluded, 10)


def test_recommend_beyond_what_is_left_returns_every_unseen_item(flat_index: ServingIndex) -> None:
    model = flat_index.model
    answer = flat_index.recommend([0], 1000)[0]
    assert len(answer) == model.n_items - model.seen.row(0).size
    assert_matches_reference(answer, model.user_vectors[0], model.item_vectors, model.seen.row(0), 1000)


def test_recommend_vectors_and_similar_items(flat_index: ServingIndex) -> None:
    model = flat_index.model
    vector = model.item_vectors[:3].sum(axis=0, keepdims=True)
    liked = np.array([0, 1, 2], dtype=np.int32)
    answer = flat_index.recommend_vectors(vector, 7, [liked])[0]
    assert_matches_reference(answer, vector[0], model.item_vectors, liked, 7)
    similar = flat_index.similar_items(4, 5, exclude=np.array([9], dtype=np.int32))
    assert_matches_reference(similar, model.item_vectors[4], model.item_vectors, np.array([4, 9]), 5)


@pytest.mark.parametrize("k", [0, -1, True, 2.5])
def test_bad_k_is_a_value_error(flat_index: ServingIndex, k: object) -> None:
    with pytest.raises(ValueError, match="k must be a positive integer"):
        flat_index.recommend([0], k)  # type: ignore[arg-type]


def test_bad_rows_and_vectors_are_value_errors(flat_index: ServingIndex) -> None:
    with pytest.raises(ValueError, match="user row"):
        flat_index.recommend([flat_index.n_users], 5)
    with pytest.raises(ValueError, match="outside"):
        flat_index.recommend([0], 5, [np.array([flat_index.n_items], dtype=np.int32)])
    with pytest.raises(ValueError, match="NaN"):
        flat_index.recommend_vectors(
            np.full((1, flat_index.model.dim), np.nan, np.float32), 5, [np.array([], np.int32)]
        )
    with pytest.raises(ValueError, match="shape"):
        flat_index.recommend_vectors(np.zeros((1, 99), np.float32), 5, [np.array([], np.int32)])


def test_id_lookups(flat_index: ServingIndex, tmp_path: Path) -> None:
    model = flat_index.model
    assert flat_index.user_row(int(model.user_ids[7])) == 7
    assert flat_index.user_row(int(model.user_ids[-1]) + 1) is None
    assert flat_index.user_row(0) is None  # factory ids are odd, so 0 is unknown (and sorts first)
    rows = flat_index.item_rows([int(model.item_ids[3]), 12345, int(model.item_ids[0]), -1])
    assert rows.dtype == np.int32
    assert rows.tolist() == [3, 0]


def test_concurrent_queries_get_the_same_answers_as_sequential_ones(flat_index: ServingIndex) -> None:
    """The server queries one ServingIndex from many threads at once."""
    users = list(range(flat_index.n_users))
    expected = [a.item_rows.tolist() for a in flat_index.recommend(users, 7)]

    def one(user: int) -> list[int]:
        return [int(r) for r in flat_index.recommend([user], 7)[0].item_rows]

    with ThreadPoolExecutor(max_workers=8) as pool:
        got = list(pool.map(one, users * 5))
    assert got == expected * 5


def test_warm_up_runs_every_path_on_a_tiny_catalog(tmp_path: Path) -> None:
    write_model_bundle(make_bundle(n_users=2, n_items=3, dim=2, seen_per_user=1, seed=0), tmp_path / "model")
    served = open_index(build_index(tmp_path / "model", tmp_path / "index"))
    served.warm_up()
    assert [len(a) for a in served.recommend([0, 1], 10)] == [2, 2]
