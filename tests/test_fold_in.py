"""Cold-start fold-in: the LightGCN propagation rule over final item vectors, and the plain mean."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import numpy.typing as npt
import pytest
from bundle_factory import make_bundle

from movierec.bundle import CSR
from movierec.index.fold_in import FOLD_IN_METHODS, FoldIn, FoldInError, FoldInMethod


def _fold_in(vectors: list[list[float]], degrees: list[int]) -> FoldIn:
    return FoldIn(np.array(vectors, dtype=np.float32), np.array(degrees, dtype=np.int64))


def _top(fold_in: FoldIn, vectors: npt.NDArray[np.float32], liked: list[int], method: FoldInMethod) -> int:
    scores = np.matmul(vectors, fold_in.user_vector(liked, method))
    scores[liked] = -np.inf
    return int(np.argmax(scores))


def test_propagation_matches_the_formula_by_hand() -> None:
    fold_in = _fold_in([[1.0, 0.0], [0.0, 2.0], [3.0, 3.0]], degrees=[3, 0, 8])
    got = fold_in.user_vector([0, 1])
    # sum_i v_i / sqrt(|N_u| (|N_i| + 1)) with |N_u| = 2
    expected = np.array([1.0, 0.0]) / np.sqrt(2 * 4) + np.array([0.0, 2.0]) / np.sqrt(2 * 1)
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    np.testing.assert_allclose(fold_in.user_vector([0, 1], "mean"), [0.5, 1.0], rtol=1e-6)


def test_duplicates_in_the_liked_list_count_once() -> None:
    fold_in = _fold_in([[1.0, 0.0], [0.0, 1.0]], degrees=[1, 1])
    np.testing.assert_array_equal(fold_in.user_vector([0, 1, 1, 0]), fold_in.user_vector([1, 0]))


def test_the_item_a_liked_item_points_to_is_recommended() -> None:
    # Items 0 and 1 are liked; item 2 lies in the direction of item 0, item 3 is orthogonal to both.
    vectors = np.array([[1.0, 0.0, 0.0], [0.2, 0.1, 0.0], [0.9, 0.0, 0.1], [0.0, 0.0, 1.0]], dtype=np.float32)
    fold_in = FoldIn(vectors, np.array([5, 5, 5, 5]))
    for method in FOLD_IN_METHODS:
        assert _top(fold_in, vectors, [0, 1], method) == 2


def test_propagation_discounts_popular_items_and_the_mean_does_not() -> None:
    # The user liked a blockbuster (item 0, degree 10,000) and a niche film (item 1, degree 0).
    # Item 2 resembles the blockbuster, item 3 the niche film, equally strongly.
    vectors = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.05], [0.05, 1.0]], dtype=np.float32)
    fold_in = FoldIn(vectors, np.array([10_000, 0, 1, 1]))
    assert _top(fold_in, vectors, [0, 1], "propagation") == 3
    mean = fold_in.user_vector([0, 1], "mean")
    assert mean[0] == mean[1]  # the mean weighs both liked items alike


def test_batch_equals_one_user_at_a_time_and_is_deterministic() -> None:
    bundle = make_bundle(n_users=30, n_items=40, dim=8, seen_per_user=6, seed=3)
    fold_in = FoldIn.from_model(bundle)
    for method in FOLD_IN_METHODS:
        batch = fold_in.user_vectors(bundle.train, method)
        assert batch.shape == (30, 8) and batch.dtype == np.float32
        assert np.all(np.isfinite(batch))
        for row in range(bundle.n_users):
            np.testing.assert_array_equal(batch[row], fold_in.user_vector(bundle.train.row(row), method))
        np.testing.assert_array_equal(batch, fold_in.user_vectors(bundle.train, method))


def test_degrees_come_from_the_training_graph() -> None:
    bundle = make_bundle(n_users=10, n_items=12, dim=4, seen_per_user=3, seed=1)
    fold_in = FoldIn.from_model(bundle)
    item = int(bundle.train.indices[0])
    degree = int(np.sum(bundle.train.indices == item))
    expected = bundle.item_vectors[item].astype(np.float64) / np.sqrt(degree + 1)  # |N_u| = 1
    np.testing.assert_allclose(fold_in.user_vector([item]), expected, rtol=1e-6)


def test_huge_degrees_and_vectors_stay_finite() -> None:
    fold_in = _fold_in([[1e30, -1e30], [1e-30, 0.0]], degrees=[2**40, 0])
    assert np.all(np.isfinite(fold_in.user_vector([0, 1])))


@pytest.mark.parametrize(
    ("liked", "method", "message"),
    [
        ([], "propagation", "no liked item"),
        ([2], "propagation", r"in \[0, 2\)"),
        ([-1], "mean", r"in \[0, 2\)"),
        ([2**32], "mean", r"in \[0, 2\)"),  # would wrap to row 0 if narrowed to int32 unchecked
        ([0], "average", "unknown fold-in method"),
    ],
)
def test_bad_liked_lists_are_clear_errors(liked: list[int], method: str, message: str) -> None:
    fold_in = _fold_in([[1.0], [2.0]], degrees=[1, 1])
    with pytest.raises(FoldInError, match=message):
        fold_in.user_vector(liked, method)  # type: ignore[arg-type]


def test_a_csr_over_another_catalogue_is_refused() -> None:
    fold_in = _fold_in([[1.0], [2.0]], degrees=[1, 1])
    with pytest.raises(FoldInError, match="3 columns"):
        fold_in.user_vectors(CSR.from_pairs([0], [2], n_rows=1, n_cols=3))


def test_mismatched_shapes_are_refused() -> None:
    with pytest.raises(ValueError, match="do not match"):
        FoldIn(np.zeros((3, 2), dtype=np.float32), np.zeros(4, dtype=np.int64))


@pytest.mark.parametrize(("train_config", "expected"), [({"cosine": True}, "mean"), ({"cosine": False}, "propagation")])
def test_the_default_method_follows_how_the_bundle_scores(train_config: dict[str, bool], expected: str) -> None:
    bundle = make_bundle(n_users=10, n_items=12, dim=4, seen_per_user=3, seed=1)
    bundle = replace(bundle, config={**bundle.config, "train": train_config})
    fold_in = FoldIn.from_model(bundle)
    assert fold_in.default_method == expected
    liked = bundle.train.row(0)
    np.testing.assert_array_equal(fold_in.user_vector(liked), fold_in.user_vector(liked, expected))
    assert FoldIn.from_model(make_bundle(n_users=4, n_items=5, dim=2, seen_per_user=1, seed=0)).default_method == (
        "propagation"
    )
