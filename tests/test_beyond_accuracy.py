"""Beyond-accuracy metrics of the evaluator (coverage, novelty, popularity, Gini, long tail, genre diversity)
against examples worked out by hand and against a plain re-statement of each definition."""

from __future__ import annotations

from math import log2

import numpy as np
import numpy.typing as npt
import pytest

from movierec.bundle.csr import CSR
from movierec.trainer.evaluate import (
    WORKING_BYTES_PER_SCORE,
    ItemStatistics,
    evaluate_ranking,
    evaluate_vectors,
    gini_index,
    top_k_items,
)

# 4 users x 5 items. Training interactions per item: 3, 2, 2, 1, 0 (8 in all).
# user 0: train {0},       test {1}; scores 9 1 5 4 3 -> ranking 2, 3, 4, 1
# user 1: train {0, 1},    test {3}; scores 0 0 2 3 1 -> ranking 3, 2, 4
# user 2: train {0, 1, 2}, test {4}; scores 0 0 0 1 2 -> ranking 4, 3
# user 3: train {2, 3},    no test  -> not evaluated, but its interactions count towards popularity.
SCORES = np.array([[9, 1, 5, 4, 3], [0, 0, 2, 3, 1], [0, 0, 0, 1, 2], [1, 1, 1, 1, 1]], dtype=np.float32)
TRAIN = CSR.from_pairs([0, 1, 1, 2, 2, 2, 3, 3], [0, 0, 1, 0, 1, 2, 2, 3], n_rows=4, n_cols=5)
TEST = CSR.from_pairs([0, 1, 2], [1, 3, 4], n_rows=4, n_cols=5)
GENRES = [["A"], ["A", "B"], ["A", "B"], ["B", "C"], []]


def score_rows(rows: npt.NDArray[np.int64]) -> npt.NDArray[np.float32]:
    return SCORES[rows]


def test_beyond_accuracy_matches_the_hand_computed_example() -> None:
    got = evaluate_ranking(score_rows, TRAIN, TEST, ks=(1, 2), item_genres=GENRES)
    # Lists @1: [2], [3], [4]; @2: [2, 3], [3, 2], [4, 3].
    # Self-information -log2(max(c, 1) / 8): item 2 -> 2 bits, item 3 -> 3, item 4 (never trained on) -> 3.
    assert got["coverage@1"] == pytest.approx(3 / 5)
    assert got["coverage@2"] == pytest.approx(3 / 5)
    assert got["novelty@1"] == pytest.approx((2 + 3 + 3) / 3)
    assert got["novelty@2"] == pytest.approx(((2 + 3) / 2 + (3 + 2) / 2 + (3 + 3) / 2) / 3)
    assert got["average_popularity@1"] == pytest.approx((2 + 1 + 0) / 3)
    assert got["average_popularity@2"] == pytest.approx(((2 + 1) / 2 + (1 + 2) / 2 + (0 + 1) / 2) / 3)
    # Gini: counts sorted ascending, weights 2j - n - 1 = -4 -2 0 2 4.
    # @1 counts [0, 0, 1, 1, 1] -> (0 + 2 + 4) / (5 * 3); @2 counts [0, 0, 1, 2, 3] -> (0 + 4 + 12) / (5 * 6).
    assert got["gini_index@1"] == pytest.approx(6 / 15)
    assert got["gini_index@2"] == pytest.approx(16 / 30)
    # Tail: max(int(5 * 0.1), 1) = 1 item, the least interacted: item 4 (0 interactions).
    assert got["tail_percentage@1"] == pytest.approx(1 / 3)
    assert got["tail_percentage@2"] == pytest.approx((0 + 0 + 1 / 2) / 3)
    # Genre Jaccard distance: {A,B} vs {B,C} -> 1 - 1/3; {} vs {B,C} -> 1. No pairs in a list of one.
    assert got["intra_list_diversity@2"] == pytest.approx((2 / 3 + 2 / 3 + 1) / 3)
    assert "intra_list_diversity@1" not in got
    # The accuracy metrics are still there: users 1 and 2 hit at rank 1.
    assert got["recall@2"] == pytest.approx(2 / 3)
    assert got["users_evaluated"] == 3


def test_intra_list_diversity_averages_every_pair_of_the_list() -> None:
    # One user, no training items, list [0, 1, 2, 3]; genres {A}, {A}, {B}, {}.
    train = CSR.from_pairs([], [], n_rows=1, n_cols=4)
    test = CSR.from_pairs([0], [0], n_rows=1, n_cols=4)
    genres = [["A"], ["A"], ["B"], []]
    got = evaluate_ranking(
        lambda rows: np.array([[4, 3, 2, 1]], dtype=np.float32), train, test, ks=(3, 4), item_genres=genres
    )
    # @3 pairs (0,1) 0, (0,2) 1, (1,2) 1; @4 adds (0,3) 1, (1,3) 1, (2,3) 1.
    assert got["intra_list_diversity@3"] == pytest.approx(2 / 3)
    assert got["intra_list_diversity@4"] == pytest.approx(5 / 6)
    # Two genre-less items cannot be told apart: distance 0.
    empty = evaluate_ranking(
        lambda rows: np.array([[4, 3, 2, 1]], dtype=np.float32), train, test, ks=(2,), item_genres=[[], [], ["A"], []]
    )
    assert empty["intra_list_diversity@2"] == pytest.approx(0.0)


def test_genre_diversity_needs_genres() -> None:
    without = evaluate_ranking(score_rows, TRAIN, TEST, ks=(2,))
    no_item_has_one = evaluate_ranking(score_rows, TRAIN, TEST, ks=(2,), item_genres=[[]] * 5)
    assert not any(name.startswith("intra_list_diversity") for name in (*without, *no_item_has_one))
    assert without == no_item_has_one
    with pytest.raises(ValueError, match="4 entries for 5 items"):
        evaluate_ranking(score_rows, TRAIN, TEST, ks=(2,), item_genres=GENRES[:4])


def test_gini_index_extremes() -> None:
    assert gini_index(np.array([5, 5, 5, 5])) == pytest.approx(0.0)  # every item equally often
    assert gini_index(np.array([0, 0, 0, 8])) == pytest.approx(3 / 4)  # one item only: (n - 1) / n
    assert gini_index(np.zeros(3, dtype=np.int64)) == 0.0


def test_tail_is_the_least_interacted_tenth_ties_to_the_lower_row() -> None:
    # 20 items: 19 with 2 interactions, and item 7 with 1 -> tail = 2 items: item 7, then item 0 (tie at 2).
    users = np.repeat([0, 1], 19)
    items = np.tile([i for i in range(20) if i != 7], 2)
    train = CSR.from_pairs(np.append(users, 0), np.append(items, 7), n_rows=2, n_cols=20)
    assert np.flatnonzero(ItemStatistics.from_training(train).in_tail).tolist() == [0, 7]


def _reference(
    scores: npt.NDArray[np.float32], train: CSR, test: CSR, k: int, genres: list[list[str]]
) -> dict[str, float]:
    """Each definition restated the slow way, from the dense top-k lists of the evaluated users."""
    n_items = train.n_cols
    evaluated = [u for u in range(test.n_rows) if test.row(u).size]
    masked = scores.copy()
    for u in range(train.n_rows):
        masked[u, train.row(u)] = -np.inf
    lists = top_k_items(masked[evaluated], k)
    count = np.bincount(train.indices, minlength=n_items)
    total = count.sum()
    tail = set(sorted(range(n_items), key=lambda i: (count[i], i))[: max(int(n_items * 0.1), 1)])
    recommended = np.bincount(lists.ravel(), minlength=n_items)
    shown = np.sort(recommended[recommended > 0])  # RecBole's form: only recommended items, ranked n-m+1..n
    ranks = np.arange(n_items - shown.size + 1, n_items + 1)

    def distance(a: int, b: int) -> float:
        union = set(genres[a]) | set(genres[b])
        return 1 - len(set(genres[a]) & set(genres[b])) / len(union) if union else 0.0

    return {
        f"coverage@{k}": len(set(lists.ravel().tolist())) / n_items,
        f"novelty@{k}": float(np.mean([np.mean([-log2(max(count[i], 1) / total) for i in row]) for row in lists])),
        f"average_popularity@{k}": float(np.mean([np.mean([count[i] for i in row]) for row in lists])),
        f"gini_index@{k}": float(np.sum((2 * ranks - n_items - 1) * shown) / lists.size / n_items),
        f"tail_percentage@{k}": float(np.mean([np.mean([i in tail for i in row]) for row in lists])),
        f"intra_list_diversity@{k}": float(
            np.mean([np.mean([distance(a, b) for j, a in enumerate(row) for b in row[j + 1 :]]) for row in lists])
        ),
    }


def _random_problem(seed: int) -> tuple[npt.NDArray[np.float32], CSR, CSR, list[list[str]]]:
    rng = np.random.default_rng(seed)
    n_users, n_items = 300, 80
    popular = rng.zipf(1.5, 4000) % n_items  # skewed popularity, some items never trained on
    train = CSR.from_pairs(rng.integers(0, n_users, 4000), popular, n_users, n_items)
    test = CSR.from_pairs(rng.integers(0, n_users, 600), rng.integers(0, n_items, 600), n_users, n_items)
    scores = rng.integers(0, 6, (n_users, n_items)).astype(np.float32)  # many ties
    names = ["Action", "Comedy", "Drama", "Horror", "Sci-Fi"]
    genres = [[name for name in names if rng.random() < 0.3] for _ in range(n_items)]
    return scores, train, test, genres


def test_every_measure_agrees_with_its_definition_restated() -> None:
    scores, train, test, genres = _random_problem(seed=11)
    got = evaluate_ranking(lambda rows: scores[rows], train, test, ks=(5, 20), item_genres=genres)
    for k in (5, 20):
        for name, value in _reference(scores, train, test, k, genres).items():
            assert got[name] == pytest.approx(value, rel=1e-12, abs=1e-12), name


def test_memory_chunks_do_not_change_a_single_bit_of_any_measure() -> None:
    scores, train, test, genres = _random_problem(seed=12)
    n_items = train.n_cols
    results = [
        evaluate_ranking(lambda rows: scores[rows], train, test, ks=(5, 20), memory_budget=budget, item_genres=genres)
        for budget in (1, 7 * n_items * WORKING_BYTES_PER_SCORE, 2**40)
    ]
    assert results[0] == results[1] == results[2]
    assert {"coverage@20", "novelty@20", "gini_index@20", "intra_list_diversity@20"} <= results[0].keys()


def test_evaluate_vectors_passes_the_genres_on() -> None:
    users = np.eye(4, 5, dtype=np.float32)
    items = np.eye(5, dtype=np.float32)
    got = evaluate_vectors(users, items, TRAIN, TEST, ks=(2,), item_genres=GENRES)
    assert "intra_list_diversity@2" in got


def test_long_lists_with_genres_stay_within_the_memory_budget() -> None:
    import tracemalloc

    # K = 100 on 3,000 items: K^2 pair cells per user exceed the user's score cells, so the pair matrices
    # must be built a few users at a time to stay within the budget.
    rng = np.random.default_rng(13)
    n_users, n_items, budget = 400, 3000, 4 * 2**20
    train = CSR.from_pairs(rng.integers(0, n_users, 4000), rng.integers(0, n_items, 4000), n_users, n_items)
    test = CSR.from_pairs(rng.integers(0, n_users, 1200), rng.integers(0, n_items, 1200), n_users, n_items)
    users = rng.standard_normal((n_users, 8), dtype=np.float32)
    items = rng.standard_normal((n_items, 8), dtype=np.float32)
    genres = [[f"g{g}" for g in range(18) if rng.random() < 0.2] for _ in range(n_items)]
    tracemalloc.start()
    try:
        got = evaluate_vectors(users, items, train, test, ks=(10, 100), memory_budget=budget, item_genres=genres)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert 0 < got["intra_list_diversity@100"] < 1
    assert peak <= budget, f"peak {peak / 2**20:.1f} MiB over the {budget / 2**20:.0f} MiB budget"
