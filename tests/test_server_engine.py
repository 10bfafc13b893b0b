"""ServingEngine without gRPC: id translation and batch answers match the index."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from bundle_factory import item_id_of_row, user_id_of_row
from server_harness import make_index

from movierec.index import ServingIndex, open_index
from movierec.server.engine import ServingEngine
from movierec.server.errors import RequestError
from movierec.server.limits import Limits
from movierec.v1 import recommender_pb2 as pb

N_ITEMS = 80


@pytest.fixture(scope="module")
def index(tmp_path_factory: pytest.TempPathFactory) -> ServingIndex:
    root: Path = make_index(tmp_path_factory.mktemp("engine"), n_users=15, n_items=N_ITEMS, dim=6, seen_per_user=5)
    return open_index(root)


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
        "Answer",
        "RequestError",
        "Answer",
        "RequestError",
        "RequestError",
        "Answer",
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
        ids = set(engine.index.item_ids[answer.item_rows].tolist())
        assert not ids & set(watched) and (user == known or item_id_of_row(user) not in ids)
