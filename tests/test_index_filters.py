"""Item filters are exact: a filtered answer equals the brute-force top-K of the items that pass, property-tested.

The reference decides each item's pass/fail from the metadata in plain Python
(independently of the bitmaps), adds the failures to the exclusions and ranks
with the float64 reference of ``test_index_exact``.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import numpy.typing as npt
import pytest
from bundle_factory import make_bundle
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from test_index_exact import assert_matches_reference, search_cases

from movierec.bundle import ItemMetadata, write_model_bundle
from movierec.errors import MovierecError
from movierec.index import FilterError, ItemFilter, ServingIndex, build_index, open_index
from movierec.index.filters import CatalogFilters
from movierec.index.topk import ExactSearcher

GENRE_POOL = ("Action", "Comedy", "Drama", "Film-Noir", "Sci-Fi")
YEARS = (1990, 1995, 2000)


def passes(item_filter: ItemFilter, genres: list[str], year: int | None) -> bool:
    """The documented semantics, item by item: include ANY, exclude NONE, inclusive years, unknown year fails."""
    if item_filter.include_genres and not item_filter.include_genres & set(genres):
        return False
    if item_filter.exclude_genres & set(genres):
        return False
    if item_filter.min_year is None and item_filter.max_year is None:
        return True
    if year is None:
        return False
    return (item_filter.min_year is None or year >= item_filter.min_year) and (
        item_filter.max_year is None or year <= item_filter.max_year
    )


def failing_rows(item_filter: ItemFilter, items: ItemMetadata) -> npt.NDArray[np.int64]:
    keep = [passes(item_filter, g, y) for g, y in zip(items.genres, items.years, strict=True)]
    return np.flatnonzero(~np.array(keep, dtype=bool).reshape(-1)).astype(np.int64)


def random_metadata(n_items: int, rng: np.random.Generator) -> ItemMetadata:
    """0-3 genres per item from a small pool (so filters often match few or no items); some years unknown."""
    genres = [sorted(rng.choice(GENRE_POOL, size=rng.integers(0, 4), replace=False).tolist()) for _ in range(n_items)]
    years: list[int | None] = [None if rng.random() < 0.2 else int(rng.choice(YEARS)) for _ in range(n_items)]
    return ItemMetadata([f"item {r}" for r in range(n_items)], years, genres)


@st.composite
def item_filters(draw: st.DrawFn, genres: tuple[str, ...] = GENRE_POOL) -> ItemFilter:
    """Random filters over ``genres``, including empty ones, single-year ranges and open-ended ranges."""
    include = draw(st.frozensets(st.sampled_from(genres), max_size=3)) if genres else frozenset()
    exclude = draw(st.frozensets(st.sampled_from(genres), max_size=2)) if genres else frozenset()
    low = draw(st.none() | st.sampled_from((1989, *YEARS, 2001)))
    high = draw(st.none() | st.sampled_from((1989, *YEARS, 2001)))
    if low is not None and high is not None and low > high:
        low, high = high, low
    return ItemFilter(include, exclude, low, high)


def catalog_genres(items: ItemMetadata) -> tuple[str, ...]:
    return tuple(sorted({g for genres in items.genres for g in genres}))


class GeneralPathSearcher(ExactSearcher):
    """Always takes the path for possibly non-finite scores (allowed mask, NaN pass)."""

    def scores_are_finite(self, queries: npt.NDArray[np.float32]) -> bool:
        return False


@settings(max_examples=200, deadline=None)
@given(search_cases(), st.data())
def test_filtered_search_equals_brute_force_of_the_items_that_pass(
    case: tuple[npt.NDArray[np.float32], npt.NDArray[np.float32], list[npt.NDArray[np.int64]], int],
    data: st.DataObject,
) -> None:
    items_vectors, queries, excluded, k = case
    metadata = random_metadata(items_vectors.shape[0], np.random.default_rng(data.draw(st.integers(0, 2**16))))
    item_filter = data.draw(item_filters(catalog_genres(metadata)))
    allowed = CatalogFilters(metadata).allowed(item_filter)
    failing = failing_rows(item_filter, metadata)
    exact = ExactSearcher(items_vectors).search(queries, k, excluded, allowed)
    general = GeneralPathSearcher(items_vectors).search(queries, k, excluded, allowed)
    for fast, slow, query, excl in zip(exact, general, queries, excluded, strict=True):
        assert_matches_reference(fast, query, items_vectors, np.concatenate([excl, failing]), k)
        assert_matches_reference(slow, query, items_vectors, np.concatenate([excl, failing]), k)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 60), st.integers(0, 2**16), st.data())
def test_compiled_mask_is_the_documented_semantics(n_items: int, seed: int, data: st.DataObject) -> None:
    metadata = random_metadata(n_items, np.random.default_rng(seed))
    item_filter = data.draw(item_filters(catalog_genres(metadata)))
    allowed = CatalogFilters(metadata).allowed(item_filter)
    expected = [passes(item_filter, g, y) for g, y in zip(metadata.genres, metadata.years, strict=True)]
    if item_filter.is_empty:
        assert allowed is None
    else:
        assert allowed is not None
        assert allowed.tolist() == expected


def served_bundle_metadata(n_items: int) -> ItemMetadata:
    return random_metadata(n_items, np.random.default_rng(11))


@pytest.fixture(scope="module", params=["flat", "hnsw"])
def served(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> ServingIndex:
    root = tmp_path_factory.mktemp(f"filters-{request.param}")
    bundle = make_bundle(n_users=12, n_items=80, dim=6, seen_per_user=30, seed=5)
    write_model_bundle(replace(bundle, items=served_bundle_metadata(bundle.n_items)), root / "model")
    if request.param == "hnsw":  # a poor graph (m=4, ef_search=4): filtered queries must not depend on it
        return open_index(build_index(root / "model", root / "index", kind="hnsw", m=4, ef_search=4))
    return open_index(build_index(root / "model", root / "index"))


@settings(max_examples=60, deadline=None)
@given(item_filter=item_filters(), k=st.integers(1, 90), extra_size=st.integers(0, 40), seed=st.integers(0, 2**16))
def test_served_queries_with_a_filter_equal_brute_force(
    served: ServingIndex, item_filter: ItemFilter, k: int, extra_size: int, seed: int
) -> None:
    """recommend / recommend_vectors / similar_items, flat and HNSW, with seen items and extra exclusions."""
    assume(served.kind == "flat" or not item_filter.is_empty)  # unfiltered HNSW is approximate by design
    model = served.model
    rng = np.random.default_rng(seed)
    failing = failing_rows(item_filter, model.items)
    users = list(range(model.n_users))
    extras = [rng.integers(0, model.n_items, size=extra_size) for _ in users]
    answers = served.recommend(users, k, extras, item_filter=item_filter)
    for user, answer in zip(users, answers, strict=True):
        excluded = np.concatenate([model.seen.row(user), extras[user], failing])
        assert_matches_reference(answer, model.user_vectors[user], model.item_vectors, excluded, k)
    vectors = model.user_vectors[:2]
    folded = served.recommend_vectors(vectors, k, extras[:2], item_filter)
    for answer, vector, extra in zip(folded, vectors, extras[:2], strict=True):
        assert_matches_reference(answer, vector, model.item_vectors, np.concatenate([extra, failing]), k)
    similar = served.similar_items(3, k, extras[0], item_filter=item_filter)
    excluded = np.concatenate([[3], extras[0], failing])
    assert_matches_reference(similar, model.item_vectors[3], model.item_vectors, excluded, k)


def test_a_filter_that_leaves_nothing_gives_empty_answers(served: ServingIndex) -> None:
    nothing = ItemFilter(min_year=3000)
    assert [len(a) for a in served.recommend([0, 1], 10, item_filter=nothing)] == [0, 0]
    assert len(served.similar_items(0, 10, item_filter=nothing)) == 0


def test_a_narrow_filter_returns_every_allowed_unseen_item(served: ServingIndex) -> None:
    """Fewer than K items pass: all of them come back (none lost to a short candidate list)."""
    model = served.model
    item_filter = ItemFilter(include_genres=frozenset({"Film-Noir"}), min_year=1995, max_year=1995)
    allowed = served.allowed_items(item_filter)
    assert allowed is not None
    unseen_allowed = np.setdiff1d(np.flatnonzero(allowed), model.seen.row(0))
    assert 0 < unseen_allowed.size < 10
    answer = served.recommend([0], 10, item_filter=item_filter)[0]
    assert sorted(answer.item_rows.tolist()) == unseen_allowed.tolist()


def test_an_empty_filter_is_no_filter(served: ServingIndex) -> None:
    plain = served.recommend([0, 1], 7)
    filtered = served.recommend([0, 1], 7, item_filter=ItemFilter())
    assert [a.item_rows.tolist() for a in plain] == [a.item_rows.tolist() for a in filtered]
    assert served.allowed_items(ItemFilter()) is None


def test_genres_are_the_catalogs_sorted_names(served: ServingIndex) -> None:
    assert served.genres == sorted({g for genres in served.model.items.genres for g in genres})


def test_compiled_masks_are_cached_per_filter_and_read_only(served: ServingIndex) -> None:
    first = served.allowed_items(ItemFilter(include_genres=frozenset({"Drama", "Comedy"})))
    again = served.allowed_items(ItemFilter(include_genres=frozenset(["Comedy", "Drama"])))
    assert first is not None and first is again
    with pytest.raises(ValueError, match="read-only"):
        first[0] = not first[0]


def test_unknown_genre_is_an_error_listing_the_valid_ones(served: ServingIndex) -> None:
    with pytest.raises(FilterError, match=r"unknown genre\(s\) 'Western'; valid: Action, Comedy, Drama") as error:
        served.recommend([0], 5, item_filter=ItemFilter(exclude_genres=frozenset({"Western"})))
    assert isinstance(error.value, MovierecError) and isinstance(error.value, ValueError)
    with pytest.raises(FilterError, match="'drama'"):  # names are case-sensitive, as the dataset spells them
        served.similar_items(0, 5, item_filter=ItemFilter(include_genres=frozenset({"drama"})))


@pytest.mark.parametrize("n_allowed", [5, 45])  # 5 of 50: allowed vectors gathered; 45: full product, columns kept
def test_both_ways_of_scoring_a_filtered_catalog_equal_brute_force(n_allowed: int) -> None:
    rng = np.random.default_rng(n_allowed)
    items = rng.integers(-2, 3, size=(50, 4)).astype(np.float32)
    allowed = np.zeros(50, dtype=bool)
    allowed[rng.choice(50, size=n_allowed, replace=False)] = True
    query = rng.integers(-2, 3, size=(1, 4)).astype(np.float32)
    excluded = rng.choice(50, size=10, replace=False).astype(np.int64)
    answer = ExactSearcher(items).search(query, 3, [excluded], allowed)[0]
    assert_matches_reference(answer, query[0], items, np.concatenate([excluded, np.flatnonzero(~allowed)]), 3)


def test_a_mask_of_the_wrong_shape_is_refused() -> None:
    searcher = ExactSearcher(np.ones((3, 2), dtype=np.float32))
    with pytest.raises(ValueError, match="bool mask of shape"):
        searcher.search(np.ones((1, 2), dtype=np.float32), 2, [np.empty(0, np.int64)], np.ones(4, dtype=bool))


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"min_year": 2001, "max_year": 2000}, "min_year 2001 is after max_year 2000"),
        ({"min_year": "1990"}, "min_year must be an integer year"),
        ({"max_year": True}, "max_year must be an integer year"),
        ({"include_genres": "Drama"}, "include_genres must be a collection of genre names"),
    ],
)
def test_invalid_filters_are_refused_when_built(arguments: dict[str, object], message: str) -> None:
    with pytest.raises(FilterError, match=message):
        ItemFilter(**arguments)  # type: ignore[arg-type]


def test_genre_lists_are_normalised_to_frozensets() -> None:
    item_filter = ItemFilter(include_genres=["Drama", "Drama"])
    assert item_filter.include_genres == frozenset({"Drama"})
    assert hash(item_filter) == hash(ItemFilter(include_genres=frozenset({"Drama"})))


def test_unknown_year_fails_a_year_bounded_filter_only() -> None:
    metadata = ItemMetadata(["a", "b"], [None, 1995], [["Drama"], ["Drama"]])
    filters = CatalogFilters(metadata)
    year_bounded = filters.allowed(ItemFilter(max_year=2020))
    genre_only = filters.allowed(ItemFilter(include_genres=frozenset({"Drama"})))
    assert year_bounded is not None and year_bounded.tolist() == [False, True]
    assert genre_only is not None and genre_only.tolist() == [True, True]


def test_a_catalog_without_genres_says_so() -> None:
    filters = CatalogFilters(ItemMetadata.unknown(np.array([1, 2], dtype=np.int64)))
    assert filters.genres == []
    with pytest.raises(FilterError, match="no genre data"):
        filters.allowed(ItemFilter(include_genres=frozenset({"Drama"})))
