"""ServingEngine without gRPC: id translation and batch answers match the index."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from bundle_factory import item_id_of_row, user_id_of_row
from server_harness import make_index

from movierec.index import ServingIndex, open_index
from movierec.server import engine as engine_module
from movierec.server.engine import ServingEngine
from movierec.server.errors import RequestError
from movierec.server.limits import Limits
from movierec.v1 import recommender_pb2 as pb

N_ITEMS = 80


@pytest.fixture(scope="module")
def index(tmp_path_factory: pytest.TempPathFactory) -> ServingIndex:
    root: Path = make_index(tmp_path_factory.mktemp("engine"), n_users=15, n_items=N_ITEMS, dim=6, seen_per_user=5)
    return open_index(root)


@pytest.mark.parametrize("dense_table", [True, False], ids=["dense-table", "binary-search"])
def test_exclusion_ids_map_to_the_same_rows_as_the_index(
    index: ServingIndex, dense_table: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not dense_table:
        monkeypatch.setattr(engine_module, "MAX_LOOKUP_IDS", 0)
    engine = ServingEngine(index, Limits())
    assert (engine._item_lookup is not None) == dense_table
    known = [item_id_of_row(r) for r in (0, 7, N_ITEMS - 1, 7)]  # a duplicate stays a duplicate
    unknown = [-10, 0, 5, item_id_of_row(N_ITEMS), 10**12, 2**62]
    wanted = [unknown[0], known[0], unknown[1], known[1], unknown[2], known[2], unknown[3], known[3], *unknown[4:]]
    rows = engine._item_rows(wanted)
    assert rows.tolist() == index.item_rows(np.array(wanted, dtype=np.int64)).tolist() == [0, 7, N_ITEMS - 1, 7]


@pytest.mark.parametrize("dense_table", [True, False], ids=["dense-table", "binary-search"])
def test_user_ids_map_to_the_same_rows_as_the_index(
    index: ServingIndex, dense_table: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not dense_table:
        monkeypatch.setattr(engine_module, "MAX_LOOKUP_IDS", 0)
    engine = ServingEngine(index, Limits())
    assert (engine._user_lookup is not None) == dense_table
    known = [user_id_of_row(r) for r in range(index.n_users)]
    unknown = [-10, -1, 0, 4, user_id_of_row(index.n_users), 10**12, 2**62]  # the factory's user ids are odd
    for user_id in known + unknown:
        assert engine._user_row(user_id) == index.user_row(user_id), user_id
    assert [engine._user_row(u) for u in known] == list(range(index.n_users))


def test_a_batch_mixes_valid_and_invalid_queries_and_groups_by_k(index: ServingIndex) -> None:
    engine = ServingEngine(index, Limits(max_k=20, max_exclude_item_ids=3))
    queries = [
        pb.RecommendStreamRequest(user_id=user_id_of_row(0), k=5),
        pb.RecommendStreamRequest(user_id=user_id_of_row(1), k=0),
        pb.RecommendStreamRequest(user_id=user_id_of_row(2), k=7, exclude_item_ids=[item_id_of_row(3)]),
        pb.RecommendStreamRequest(user_id=user_id_of_row(3), k=5, exclude_item_ids=[1, 2, 3, 4]),
        pb.RecommendStreamRequest(user_id=4, k=5),  # the factory's user ids are odd
        pb.RecommendStreamRequest(user_id=user_id_of_row(4), k=5),
    ]
    answers = engine.recommend(queries)
    assert [type(a).__name__ for a in answers] == [
        "Answered",
        "RequestError",
        "Answered",
        "RequestError",
        "RequestError",
        "Answered",
    ]
    for slot, user_row, k, extra in ((0, 0, 5, []), (2, 2, 7, [3]), (5, 4, 5, [])):
        (expected,) = index.recommend([user_row], k, extra_exclude=[np.array(extra, dtype=np.int32)])
        answer = answers[slot]
        assert not isinstance(answer, RequestError)
        assert answer.item_rows.tolist() == expected.item_rows.tolist()


@pytest.mark.parametrize("new_users", [0, 2], ids=["known-users-only", "with-new-users"])
def test_compacted_events_exclude_for_known_and_new_users(tmp_path: Path, new_users: int) -> None:
    """A version whose compacted events are all of known users (the common case) must load too."""
    from movierec.index import build_index
    from movierec.server.interaction_log import InteractionLog

    root = make_index(tmp_path, n_users=6, n_items=30, dim=4, seen_per_user=2)
    known, watched = user_id_of_row(1), [item_id_of_row(3), item_id_of_row(4)]
    with InteractionLog(tmp_path / "events.sqlite3") as log:
        log.record(known, watched)
        for new_user in range(2, 2 + 2 * new_users, 2):  # even ids: users the model never saw
            log.record(new_user, [*watched, item_id_of_row(new_user)])
        build_index(tmp_path / "model", root, new_events=log.export())
    engine = ServingEngine(open_index(root), Limits())
    users = [known, *range(2, 2 + 2 * new_users, 2)]
    answers = engine.recommend([pb.RecommendRequest(user_id=user, k=20) for user in users])
    for user, answer in zip(users, answers, strict=True):
        assert not isinstance(answer, RequestError), f"user {user}: {answer}"
        ids = set(engine.index.model.item_ids[answer.item_rows].tolist())
        assert not ids & set(watched) and (user == known or item_id_of_row(user) not in ids)
