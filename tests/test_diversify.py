"""The diversity knob: MMR re-ranking of an exact candidate pool (index/diversify.py, ServingIndex.recommend).

Worked examples pin the MMR arithmetic; property tests hold the exclusion contract (exact exclusion, K while K
remain, no duplicates, every item from the exact pool) for any diversity; diversity 0 is today's answer.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from bundle_factory import GENRES, item_id_of_row, make_bundle, user_id_of_row
from hypothesis import given, settings
from hypothesis import strategies as st
from server_harness import ServerThread, serving

from movierec.bundle import write_model_bundle
from movierec.clients import RecommenderClient, RecommenderError, StreamQuery
from movierec.clients.cli.main import main
from movierec.index import ItemFilter, Recommendation, ServingIndex, build_index, open_index
from movierec.index.diversify import Diversifier, check_diversity, pool_size
from movierec.server.app import ServerConfig
from movierec.server.engine import ServingEngine
from movierec.server.errors import RequestError
from movierec.server.limits import Limits
from movierec.v1 import recommender_pb2 as pb

# Item 1 is a near-copy of item 0 (cosine 0.995); item 2 is unlike both; relevance scaled 1, 0.95, 0.
VECTORS = np.array([[1.0, 0.0], [0.99, 0.1], [0.0, 1.0]], dtype=np.float32)
POOL = Recommendation(np.array([0, 1, 2], dtype=np.int32), np.array([3.0, 2.9, 1.0], dtype=np.float32))


def test_pool_size_and_bounds() -> None:
    assert [pool_size(k) for k in (1, 12, 13, 100)] == [50, 50, 52, 400]
    assert [check_diversity(v) for v in (0, 0.25, 1)] == [0.0, 0.25, 1.0]
    for bad in (float("nan"), -0.01, 1.01, float("inf"), True, "0.5", None):
        with pytest.raises(ValueError, match="diversity"):
            check_diversity(bad)  # type: ignore[arg-type]


def test_mmr_swaps_the_near_copy_for_the_different_item() -> None:
    diversifier = Diversifier(VECTORS)
    # d = 0.5: item 1 scores 0.5 * 0.95 - 0.5 * 0.995 < 0, item 2 scores 0.5 * 0 - 0.5 * 0 = 0.
    mixed = diversifier.rerank(POOL, 3, 0.5)
    assert mixed.item_rows.tolist() == [0, 2, 1]
    assert mixed.scores.tolist() == [3.0, 1.0, pytest.approx(2.9)]  # the model's scores, carried along
    # d = 0.01: relevance dominates (0.99 * 0.95 - 0.01 * 0.995 > 0): the exact order.
    assert diversifier.rerank(POOL, 3, 0.01).item_rows.tolist() == [0, 1, 2]
    # d = 1: the best item keeps its place, then the least similar; k cuts the list.
    assert diversifier.rerank(POOL, 2, 1.0).item_rows.tolist() == [0, 2]


def test_popularity_penalty_moves_popular_items_down() -> None:
    popularity = np.array([1000, 10, 10])
    diversifier = Diversifier(VECTORS, popularity)
    # Item 0 pays the full penalty (popularity scaled to 1); items 1, 2 pay log(11) / log(1001) of it.
    assert diversifier.rerank(POOL, 3, 0.1, popularity_penalty=1.0).item_rows.tolist()[0] == 1
    assert diversifier.rerank(POOL, 3, 0.1).item_rows.tolist()[0] == 0
    with pytest.raises(ValueError, match="popularity"):
        Diversifier(VECTORS).rerank(POOL, 3, 0.5, popularity_penalty=0.5)
    with pytest.raises(ValueError, match="popularity_penalty"):
        diversifier.rerank(POOL, 3, 0.5, popularity_penalty=-1.0)


def test_an_empty_pool_or_zero_vectors_are_fine() -> None:
    diversifier = Diversifier(np.zeros((3, 2), dtype=np.float32))
    empty = Recommendation(np.empty(0, dtype=np.int32), np.empty(0, dtype=np.float32))
    assert len(diversifier.rerank(empty, 5, 0.5)) == 0
    assert diversifier.rerank(POOL, 3, 0.5).item_rows.tolist() == [0, 1, 2]  # no similarity: relevance order


@pytest.fixture(scope="module")
def index(tmp_path_factory: pytest.TempPathFactory) -> ServingIndex:
    root = tmp_path_factory.mktemp("diversify")
    write_model_bundle(make_bundle(n_users=25, n_items=120, dim=6, seen_per_user=30, seed=5), root / "model")
    return open_index(build_index(root / "model", root / "index"))


@settings(max_examples=60, deadline=None)
@given(
    user=st.integers(0, 24),
    k=st.integers(1, 120),
    diversity=st.floats(0.0, 1.0, allow_nan=False, exclude_min=True),
    extra=st.lists(st.integers(0, 119), max_size=40),
    genre=st.sampled_from([None, *GENRES]),
)
def test_the_exclusion_contract_holds_for_any_diversity(
    index: ServingIndex, user: int, k: int, diversity: float, extra: list[int], genre: str | None
) -> None:
    item_filter = None if genre is None else ItemFilter(include_genres=frozenset({genre}))
    extra_rows = np.array(extra, dtype=np.int64)
    (answer,) = index.recommend([user], k, [extra_rows], item_filter, diversity=diversity)
    (pool,) = index.recommend([user], pool_size(k), [extra_rows], item_filter)
    allowed = np.ones(index.n_items, dtype=bool)
    allowed[index.model.seen.row(user)] = False
    allowed[extra_rows] = False
    if item_filter is not None:
        mask = index.allowed_items(item_filter)
        assert mask is not None
        allowed &= mask
    rows = answer.item_rows
    assert len(answer) == min(k, int(allowed.sum())), "K while K allowed unseen items remain"
    assert np.unique(rows).size == rows.size, "duplicate item"
    assert allowed[rows].all(), "a seen, excluded or filtered-out item came back"
    assert np.isin(rows, pool.item_rows).all(), "every item comes from the exact pool"
    if len(answer):
        assert rows[0] == pool.item_rows[0], "the best item keeps first place"
        by_row = dict(zip(pool.item_rows.tolist(), pool.scores.tolist(), strict=True))
        assert answer.scores.tolist() == [by_row[r] for r in rows.tolist()], "scores are the model's"


def test_diversity_zero_is_the_exact_answer(index: ServingIndex) -> None:
    users = list(range(index.n_users))
    plain = index.recommend(users, 10)
    for got, want in zip(index.recommend(users, 10, diversity=0.0), plain, strict=True):
        np.testing.assert_array_equal(got.item_rows, want.item_rows)
        np.testing.assert_array_equal(got.scores, want.scores)
    vectors = index.model.user_vectors[:3]
    no_exclusions = [np.empty(0, dtype=np.int64)] * 3
    for got, want in zip(
        index.recommend_vectors(vectors, 10, no_exclusions, diversity=0.0),
        index.recommend_vectors(vectors, 10, no_exclusions),
        strict=True,
    ):
        np.testing.assert_array_equal(got.item_rows, want.item_rows)


def test_more_diversity_gives_lists_of_less_similar_items(index: ServingIndex) -> None:
    unit = index.model.item_vectors / np.linalg.norm(index.model.item_vectors, axis=1, keepdims=True)
    users = list(range(index.n_users))

    def mean_pairwise_cosine(diversity: float) -> float:
        lists = [a.item_rows for a in index.recommend(users, 10, diversity=diversity)]
        return float(np.mean([(unit[r] @ unit[r].T)[np.triu_indices(len(r), 1)].mean() for r in lists]))

    similarity = [mean_pairwise_cosine(d) for d in (0.0, 0.25, 0.5, 1.0)]
    assert similarity == sorted(similarity, reverse=True), similarity
    assert similarity[-1] < similarity[0] - 0.1


def test_fold_in_users_and_ranked_prefixes_take_the_same_path(index: ServingIndex, tmp_path: Path) -> None:
    liked = index.model.seen.row(0).astype(np.int64)
    vector = index.fold_in_vector(liked)[None, :]
    (folded,) = index.recommend_vectors(vector, 8, [liked], diversity=0.6)
    (pool,) = index.recommend_vectors(vector, pool_size(8), [liked])
    assert len(folded) == 8 and not np.isin(folded.item_rows, liked).any()
    assert np.isin(folded.item_rows, pool.item_rows).all()
    ranked = open_index(index.path, ranked_depth=100)  # pools of 50 come from the stored prefixes
    assert ranked.ranked is not None
    for got, want in zip(
        ranked.recommend(list(range(5)), 8, diversity=0.6),
        index.recommend(list(range(5)), 8, diversity=0.6),
        strict=True,
    ):
        np.testing.assert_array_equal(got.item_rows, want.item_rows)


@pytest.mark.parametrize("bad", [float("nan"), -0.5, 2.0])
def test_a_bad_diversity_is_a_value_error(index: ServingIndex, bad: float) -> None:
    with pytest.raises(ValueError, match="diversity"):
        index.recommend([0], 5, diversity=bad)
    with pytest.raises(ValueError, match="diversity"):
        index.recommend_vectors(index.model.user_vectors[:1], 5, [np.empty(0, dtype=np.int64)], diversity=bad)


def test_the_engine_groups_by_diversity_and_refuses_a_bad_one(index: ServingIndex) -> None:
    engine = ServingEngine(index, Limits(max_k=50))
    user = user_id_of_row(3)
    queries = [
        pb.RecommendStreamRequest(user_id=user, k=10),
        pb.RecommendStreamRequest(user_id=user, k=10, diversity=0.7),
        pb.RecommendStreamRequest(user_id=user, k=10, diversity=float("nan")),
        pb.RecommendStreamRequest(user_id=user, k=10, diversity=1.5),
        pb.RecommendStreamRequest(user_id=user, k=10, diversity=-0.25),
        pb.RecommendStreamRequest(user_id=user, k=10, diversity=0.0),
    ]
    plain, diverse, *refused, zero = engine.recommend(queries)
    for error in refused:
        assert isinstance(error, RequestError) and error.code == grpc.StatusCode.INVALID_ARGUMENT
        assert "diversity must be between 0 and 1" in error.message
    for answer, diversity in ((plain, 0.0), (diverse, 0.7), (zero, 0.0)):
        assert not isinstance(answer, RequestError)
        (expected,) = index.recommend([3], 10, diversity=diversity)
        assert answer.item_rows.tolist() == expected.item_rows.tolist()
    assert not isinstance(plain, RequestError) and not isinstance(diverse, RequestError)
    assert plain.item_rows.tolist() != diverse.item_rows.tolist()


@pytest.fixture(scope="module")
def server(index: ServingIndex) -> Iterator[ServerThread]:
    with serving(ServerConfig(index.path.parent, limits=Limits(max_k=50))) as running:
        yield running


def test_over_grpc_unary_stream_batch_and_recctl(
    server: ServerThread, index: ServingIndex, capsys: pytest.CaptureFixture[str]
) -> None:
    user = user_id_of_row(6)
    (expected,) = index.recommend([6], 8, diversity=0.5)
    want = [item_id_of_row(r) for r in expected.item_rows.tolist()]
    with RecommenderClient(server.target, timeout=10) as client:
        assert [i.item_id for i in client.recommend(user, 8, diversity=0.5).items] == want
        (streamed,) = client.recommend_stream([StreamQuery("s", user, 8, diversity=0.5)])
        (batched,) = client.recommend_batch([StreamQuery("b", user, 8, diversity=0.5)])
        for result in (streamed, batched):
            assert not isinstance(result, RecommenderError)
            assert [i.item_id for i in result.items] == want
        with pytest.raises(RecommenderError) as refused:
            client.recommend(user, 8, diversity=1.01)
        assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT and refused.value.field == "diversity"
    assert (
        main(["recommend", "--server", server.target, "--user", str(user), "-k", "8", "--diversity", "0.5", "--json"])
        == 0
    )
    assert [item["item_id"] for item in json.loads(capsys.readouterr().out)["items"]] == want


@pytest.mark.parametrize("text", ["nan", "1.5", "-0.1", "lots"])
def test_recctl_refuses_a_bad_diversity_in_one_line(text: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["recommend", "--user", "1", "--diversity", text])
    assert exited.value.code == 2
    assert "argument --diversity" in capsys.readouterr().err.strip().splitlines()[-1]


def test_recctl_diversity_is_not_for_liked_movies(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["recommend", "--liked", "10", "--diversity", "0.5"]) == 1
    assert (
        capsys.readouterr().err.strip()
        == "recctl: error: --diversity works with --user and --users-file, not with --liked"
    )
