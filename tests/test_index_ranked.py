"""Precomputed ranking prefixes (movierec.index.ranked) give exactly the scan's answers, or defer to it."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from bundle_factory import make_bundle
from hypothesis import given, settings
from hypothesis import strategies as st
from test_index_exact import assert_matches_reference

from movierec.bundle import write_model_bundle
from movierec.bundle.csr import CSR
from movierec.index import ServingIndex, build_index, open_index
from movierec.index.ranked import RankedPrefixes
from movierec.index.topk import ExactSearcher, Recommendation

Query = tuple[int, int, npt.NDArray[np.int64]]  # (user row, k, extra exclusions)
RankedCase = tuple[npt.NDArray[np.float32], npt.NDArray[np.float32], CSR, int, list[Query]]


@st.composite
def ranked_cases(draw: st.DrawFn) -> RankedCase:
    """Integer vectors (exact float32 scores, so many exact ties), seen sets up to the whole catalogue,
    a prefix depth from 1 to beyond the catalogue, and queries with extra exclusions of every kind."""
    n_items = draw(st.integers(1, 30))
    n_users = draw(st.integers(1, 6))
    dim = draw(st.integers(1, 4))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    items = rng.integers(-2, 3, size=(n_items, dim)).astype(np.float32)
    users = rng.integers(-2, 3, size=(n_users, dim)).astype(np.float32)
    seen_rows, seen_cols = [], []
    for user in range(n_users):
        count = draw(st.integers(0, n_items))
        seen_cols.append(rng.choice(n_items, size=count, replace=False))
        seen_rows.append(np.full(count, user))
    seen = CSR.from_pairs(np.concatenate(seen_rows), np.concatenate(seen_cols).astype(np.int64), n_users, n_items)
    depth = draw(st.integers(1, n_items + 2))
    queries = []
    for _ in range(draw(st.integers(1, 5))):
        user = draw(st.integers(0, n_users - 1))
        k = draw(st.integers(1, n_items + 3))
        mode = draw(st.sampled_from(["none", "some", "prefix", "duplicates"]))
        extra: npt.NDArray[np.integer]
        if mode == "none":
            extra = np.empty(0, dtype=np.int64)
        elif mode == "some":
            extra = rng.choice(n_items, size=rng.integers(1, n_items + 1), replace=False)
        elif mode == "prefix":  # knock out the top of the user's ranking: forces the fallback when deep
            extra = (
                ExactSearcher(items)
                .search(users[user : user + 1], depth, [seen.row(user).astype(np.int64)])[0]
                .item_rows[: draw(st.integers(0, depth))]
            )
        else:
            extra = rng.integers(0, n_items, size=2 * n_items)
        queries.append((user, k, extra.astype(np.int64)))
    return items, users, seen, depth, queries


@settings(max_examples=300, deadline=None)
@given(ranked_cases())
def test_a_prefix_answer_is_the_scan_answer_and_undecidable_ones_defer(case: RankedCase) -> None:
    items, users, seen, depth, queries = case
    searcher = ExactSearcher(items)
    prefixes = RankedPrefixes.build(searcher, users, seen, depth)
    for user, k, extra in queries:
        excluded = np.concatenate([seen.row(user).astype(np.int64), extra])
        (scanned,) = searcher.search(users[user : user + 1], k, [excluded])
        answer = prefixes.answer(user, k, extra)
        unseen = items.shape[0] - seen.row(user).size
        if answer is None:
            # Deferring is only allowed when the prefix is cut short of the user's unseen items and
            # the exclusions left fewer than k of it.
            prefix = prefixes.rows[user, : prefixes.lengths[user]]
            assert unseen >= depth
            assert np.count_nonzero(~np.isin(prefix, extra)) < k
            continue
        assert_matches_reference(answer, users[user], items, excluded, k)
        assert answer.item_rows.tolist() == scanned.item_rows.tolist()
        assert answer.scores.tolist() == scanned.scores.tolist()


def test_build_refuses_a_non_positive_depth() -> None:
    items = np.eye(3, dtype=np.float32)
    with pytest.raises(ValueError, match="depth"):
        RankedPrefixes.build(ExactSearcher(items), items, CSR.from_pairs([], [], 3, 3), 0)


def open_flat(tmp_path: Path, ranked_depth: int) -> ServingIndex:
    if not (tmp_path / "index").exists():
        write_model_bundle(make_bundle(n_users=40, n_items=80, dim=8, seen_per_user=30, seed=5), tmp_path / "model")
        build_index(tmp_path / "model", tmp_path / "index")
    return open_index(tmp_path / "index", ranked_depth=ranked_depth)


def test_serving_index_answers_from_prefixes_without_scanning(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    scanning = open_flat(tmp_path, ranked_depth=0)
    ranked = open_flat(tmp_path, ranked_depth=16)
    assert scanning.ranked is None and ranked.ranked is not None
    users = list(range(ranked.n_users))
    extras = [np.array([u % 80, (3 * u) % 80], dtype=np.int32) for u in users]
    expected = [a.item_rows.tolist() for a in scanning.recommend(users, 10, extras)]

    def no_scan(*args: object) -> list[Recommendation]:
        raise AssertionError("scanned although the prefix decides the answer")

    monkeypatch.setattr(ranked, "_search", no_scan)
    assert [a.item_rows.tolist() for a in ranked.recommend(users, 10, extras)] == expected


def test_serving_index_scans_what_the_prefix_cannot_answer(tmp_path: Path) -> None:
    scanning = open_flat(tmp_path, ranked_depth=0)
    ranked = open_flat(tmp_path, ranked_depth=8)
    users = [0, 1, 2]
    top = [a.item_rows for a in scanning.recommend(users, 8)]
    # k beyond the depth, the whole prefix excluded, and a filter: each must still equal the scan.
    assert [a.item_rows.tolist() for a in ranked.recommend(users, 20)] == [
        a.item_rows.tolist() for a in scanning.recommend(users, 20)
    ]
    assert [a.item_rows.tolist() for a in ranked.recommend(users, 5, top)] == [
        a.item_rows.tolist() for a in scanning.recommend(users, 5, top)
    ]
    mixed = ranked.recommend(users, 5, [top[0], np.empty(0, np.int32), top[2]])
    assert [a.item_rows.tolist() for a in mixed] == [
        a.item_rows.tolist() for a in scanning.recommend(users, 5, [top[0], np.empty(0, np.int32), top[2]])
    ]


def test_a_negative_depth_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="ranked_depth"):
        open_flat(tmp_path, ranked_depth=-1)


def test_the_server_loader_precomputes_by_default_and_says_so(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from movierec.server.app import DEFAULT_RANKED_DEPTH, load_index

    open_flat(tmp_path, ranked_depth=0)  # writes the index
    with caplog.at_level(logging.INFO, logger="movierec.server.app"):
        served = load_index(tmp_path / "index")
        unranked = load_index(tmp_path / "index", ranked_depth=0)
    assert served.ranked is not None and served.ranked.depth == min(DEFAULT_RANKED_DEPTH, served.n_items)
    assert unranked.ranked is None
    messages = [record.getMessage() for record in caplog.records]
    assert len(messages) == 1 and f"{served.ranked.depth} places of {served.n_users} users' rankings" in messages[0]


def test_the_depth_shrinks_to_the_memory_cap_and_is_skipped_when_too_short(monkeypatch: pytest.MonkeyPatch) -> None:
    from movierec.index import ranked

    assert ranked.affordable_depth(n_users=6040, n_items=3706, wanted=256) == 256
    assert ranked.affordable_depth(n_users=10, n_items=80, wanted=256) == 80
    assert ranked.affordable_depth(n_users=10, n_items=5, wanted=256) == 5  # a tiny catalogue is still worth it
    monkeypatch.setattr(ranked, "MAX_BYTES", 6040 * 8 * 100)
    assert ranked.affordable_depth(n_users=6040, n_items=3706, wanted=256) == 100
    assert ranked.affordable_depth(n_users=6040 * 10, n_items=3706, wanted=256) == 0  # 10 places: not worth it


def test_an_index_over_the_memory_cap_serves_by_scanning(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from movierec.index import ranked

    monkeypatch.setattr(ranked, "MAX_BYTES", 40 * 8 * 20)  # 40 users x 20 places
    assert open_flat(tmp_path, ranked_depth=64).ranked.depth == 20  # type: ignore[union-attr]
    monkeypatch.setattr(ranked, "MAX_BYTES", 40 * 8 * 4)
    assert open_flat(tmp_path, ranked_depth=64).ranked is None


def test_the_server_loader_warns_when_the_cap_leaves_no_prefixes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from movierec.index import ranked
    from movierec.server.app import load_index

    open_flat(tmp_path, ranked_depth=0)
    monkeypatch.setattr(ranked, "MAX_BYTES", 40 * 8 * 4)
    with caplog.at_level(logging.INFO, logger="movierec.server.app"):
        assert load_index(tmp_path / "index", ranked_depth=64).ranked is None
    assert [r.levelname for r in caplog.records] == ["WARNING"]
    assert "every request scans" in caplog.records[0].getMessage()
