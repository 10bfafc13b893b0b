"""``because``: the user's item with the largest LightGCN contribution v_i·v_j / sqrt(deg_j), ties to the lower row."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import numpy.typing as npt
import pytest
from bundle_factory import make_bundle
from hypothesis import given, settings
from hypothesis import strategies as st

from movierec.bundle import CSR, write_model_bundle
from movierec.index import BecauseExplainer, ServingIndex, build_index, open_index

# Item rows 0..4 in 2-d: 0 and 1 point along x and y, 2 is the diagonal, 3 is 0 doubled, 4 opposes 0.
VECTORS = np.array([[1, 0], [0, 1], [1, 1], [2, 0], [-1, 0]], dtype=np.float32)


def rows(*values: int) -> npt.NDArray[np.int64]:
    return np.array(values, dtype=np.int64)


def test_equal_degrees_pick_the_most_similar_positive() -> None:
    explainer = BecauseExplainer(VECTORS, np.ones(5, dtype=np.int64))
    # item 0 (x axis): v0·v1 = 0, v0·v2 = 1, v0·v3 = 2 -> row 3.
    assert explainer.because(rows(1, 2, 3), rows(0)).tolist() == [3]
    # item 1 (y axis): v1·v2 = 1 beats v1·v3 = 0 and v1·v4 = 0.
    assert explainer.because(rows(2, 3, 4), rows(1)).tolist() == [2]
    # item 4 (-x): every positive contributes <= 0; the largest is v4·v1 = 0.
    assert explainer.because(rows(1, 2, 3), rows(4)).tolist() == [1]


def test_a_popular_items_pull_is_discounted_by_its_degree() -> None:
    """v0·v3 = 2 > v0·v2 = 1, but item 3 has degree 16: 2/4 = 0.5 < 1/1, so item 2 contributes more."""
    degrees = np.array([1, 1, 1, 16, 1])
    explainer = BecauseExplainer(VECTORS, degrees)
    assert explainer.because(rows(2, 3), rows(0)).tolist() == [2]
    assert BecauseExplainer(VECTORS, np.ones(5, dtype=np.int64)).because(rows(2, 3), rows(0)).tolist() == [3]


def test_degree_zero_counts_as_one_like_the_trainers_adjacency() -> None:
    zero = BecauseExplainer(VECTORS, np.array([0, 0, 0, 0, 0]))
    one = BecauseExplainer(VECTORS, np.array([1, 1, 1, 1, 1]))
    assert zero.because(rows(1, 2, 3), rows(0, 1, 2)).tolist() == one.because(rows(1, 2, 3), rows(0, 1, 2)).tolist()


def test_ties_go_to_the_lower_row_whatever_the_positives_order() -> None:
    vectors = np.array([[1, 0], [1, 0], [1, 0], [0, 1]], dtype=np.float32)  # rows 0-2 identical
    explainer = BecauseExplainer(vectors, np.ones(4, dtype=np.int64))
    assert explainer.because(rows(2, 1, 2, 3), rows(0, 3)).tolist() == [1, 3]


def test_a_batch_answers_each_item_and_no_positive_gives_minus_one() -> None:
    explainer = BecauseExplainer(VECTORS, np.ones(5, dtype=np.int64))
    answer = explainer.because(rows(1, 3), rows(0, 1, 2, 4))
    assert answer.dtype == np.int32
    assert answer.tolist() == [3, 1, 3, 1]
    assert explainer.because(rows(), rows(0, 1)).tolist() == [-1, -1]
    assert explainer.because(rows(1), rows()).tolist() == []


@pytest.mark.parametrize(
    ("positives", "items", "message"),
    [
        (rows(5), rows(0), "positives must be item rows in"),
        (rows(0), rows(-1), "item_rows must be item rows in"),
        (np.array([0.5]), rows(0), "positives must be a 1-d array of integer"),
        (rows(0), np.zeros((1, 1), dtype=np.int64), "item_rows must be a 1-d array"),
    ],
)
def test_bad_rows_are_value_errors(
    positives: npt.NDArray[np.generic], items: npt.NDArray[np.generic], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        BecauseExplainer(VECTORS, np.ones(5, dtype=np.int64)).because(positives, items)


@settings(max_examples=100, deadline=None)
@given(seed=st.integers(0, 2**16), n_items=st.integers(1, 30), n_positives=st.integers(0, 10))
def test_because_equals_a_float64_loop_over_the_positives(seed: int, n_items: int, n_positives: int) -> None:
    rng = np.random.default_rng(seed)
    vectors = rng.integers(-3, 4, size=(n_items, 3)).astype(np.float32)  # integer vectors: exact ties happen
    degrees = rng.choice([1, 4, 9], size=n_items)  # perfect squares: the weights 1, 1/2, 1/3 are exact ratios
    positives = rng.integers(0, n_items, size=n_positives)
    items = rng.integers(0, n_items, size=5)
    got = BecauseExplainer(vectors, degrees).because(positives, items)
    for item, best in zip(items, got, strict=True):
        if n_positives == 0:
            assert best == -1
            continue
        # Compare c_j = v_i·v_j / sqrt(deg_j) as exact rationals: v_i·v_j * (36 / sqrt(deg_j)) is an integer.
        scaled = {int(j): int(vectors[item] @ vectors[j]) * (36 // int(np.sqrt(degrees[j]))) for j in positives}
        top = max(scaled.values())
        assert best == min(j for j, c in scaled.items() if c == top)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> ServingIndex:
    """A bundle whose training positives are a strict subset of the seen items (user 1 has none)."""
    root = tmp_path_factory.mktemp("because")
    bundle = make_bundle(n_users=3, n_items=5, dim=2, seen_per_user=0, seed=0, item_vectors=VECTORS)
    seen = CSR.from_pairs([0, 0, 0, 1, 1], [1, 2, 3, 2, 3], 3, 5)
    train = CSR.from_pairs([0, 0], [1, 2], 3, 5)
    write_model_bundle(replace(bundle, seen=seen, train=train), root / "model")
    return open_index(build_index(root / "model", root / "index"))


def test_served_because_uses_training_positives_and_their_degrees(served: ServingIndex) -> None:
    # User 0 trained on 1 and 2 (item 3 is seen but not trained on, so it cannot contribute): for item 0 the
    # best is 2 (v0·v2 = 1 > v0·v1 = 0).
    assert served.because(0, np.array([0, 4], dtype=np.int32)).tolist() == [2, 1]


def test_served_because_falls_back_to_seen_items_then_minus_one(served: ServingIndex) -> None:
    assert served.because(1, np.array([0], dtype=np.int32)).tolist() == [3]  # no train rows: seen {2, 3}
    assert served.because(2, np.array([0, 1], dtype=np.int32)).tolist() == [-1, -1]  # seen nothing at all


def test_because_of_liked_rows_for_fold_in_users(served: ServingIndex) -> None:
    assert served.because_of(np.array([4, 1], dtype=np.int32), np.array([0], dtype=np.int32)).tolist() == [1]


def test_bad_user_row_is_a_value_error(served: ServingIndex) -> None:
    with pytest.raises(ValueError, match="user row"):
        served.because(3, np.array([0], dtype=np.int32))
