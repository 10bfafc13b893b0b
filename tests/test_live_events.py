"""Live "watched" events through the server: excluded at once, durable across kill -9, compacted by rebuilds."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from bundle_factory import item_id_of_row, make_model_bundle, user_id_of_row
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from server_harness import ServeProcess, ServerThread, serving

from movierec.index import build_index, open_index, prune_versions
from movierec.index.fold_in import FoldIn
from movierec.server.app import ServerConfig
from movierec.server.interaction_log import InteractionLog
from movierec.server.limits import DEFAULT_MAX_REQUEST_ID
from movierec.server.live_events import truncation_point
from movierec.v1 import recommender_pb2 as pb
from movierec.v1 import recommender_pb2_grpc as pb_grpc

K = 5
NEW_USER = 2  # the factory's user ids are odd, so an even id is a user the model never saw


@pytest.fixture()
def store(tmp_path: Path) -> Path:
    make_model_bundle(tmp_path / "model", n_users=10, n_items=40, dim=4, seen_per_user=3)
    build_index(tmp_path / "model", tmp_path / "index")
    return tmp_path / "index"


@pytest.fixture()
def server(store: Path) -> Iterator[ServerThread]:
    with serving(ServerConfig(index_path=store, poll_seconds=0.02)) as thread:
        yield thread


@pytest.fixture()
def stub(server: ServerThread) -> Iterator[pb_grpc.RecommenderServiceStub]:
    with grpc.insecure_channel(server.target) as channel:
        yield pb_grpc.RecommenderServiceStub(channel)


def _top(stub: pb_grpc.RecommenderServiceStub, user_id: int, k: int = K) -> list[int]:
    return [item.item_id for item in stub.Recommend(pb.RecommendRequest(user_id=user_id, k=k), timeout=5).items]


def _code(call: object) -> grpc.StatusCode:
    assert callable(call)
    with pytest.raises(grpc.RpcError) as failed:
        call()
    code: grpc.StatusCode = failed.value.code()
    return code


def _blamed_field(error: grpc.RpcError) -> str | None:
    """The field a google.rpc.BadRequest detail names, if the error carries one."""
    assert isinstance(error, grpc.Call)
    status = rpc_status.from_call(error)
    for detail in status.details if status is not None else ():
        bad_request = error_details_pb2.BadRequest()
        if detail.Unpack(bad_request):
            return str(bad_request.field_violations[0].field)
    return None


def test_a_recorded_item_is_excluded_from_the_very_next_answer(stub: pb_grpc.RecommenderServiceStub) -> None:
    user = user_id_of_row(0)
    before = _top(stub, user, K + 2)
    recorded = stub.RecordInteractions(pb.RecordInteractionsRequest(user_id=user, item_ids=before[:2]), timeout=5)
    assert recorded.recorded == 2 and recorded.offset == 2
    assert _top(stub, user, K) == before[2:]
    stream = list(stub.RecommendStream(iter([pb.RecommendStreamRequest(user_id=user, k=K)]), timeout=5))
    assert [item.item_id for item in stream[0].items] == before[2:]
    similar = stub.SimilarItems(pb.SimilarItemsRequest(item_id=before[3], k=K + 2, user_id=user), timeout=5)
    assert not {item.item_id for item in similar.items} & set(before[:2])


def test_a_new_user_with_liked_events_gets_fold_in_recommendations(
    store: Path, stub: pb_grpc.RecommenderServiceStub
) -> None:
    assert _code(lambda: stub.Recommend(pb.RecommendRequest(user_id=NEW_USER, k=K), timeout=5)) == (
        grpc.StatusCode.NOT_FOUND
    )
    liked, disliked = [item_id_of_row(3), item_id_of_row(7)], item_id_of_row(11)
    stub.RecordInteractions(
        pb.RecordInteractionsRequest(user_id=NEW_USER, item_ids=[*liked, disliked], ratings=[5, 4, 1]), timeout=5
    )
    answer = [item.item_id for item in stub.Recommend(pb.RecommendRequest(user_id=NEW_USER, k=K), timeout=5).items]

    index = open_index(store)
    vector = FoldIn.from_model(index.model).user_vector(index.item_rows(liked))
    watched = index.item_rows([*liked, disliked]).astype(np.int64)
    (expected,) = index.recommend_vectors(vector[None, :], K, [watched])
    assert answer == index.model.item_ids[expected.item_rows].tolist()
    # The same user as a cold-start query of the liked items (the disliked one still excluded by hand).
    cold = stub.RecommendForItems(
        pb.RecommendForItemsRequest(item_ids=liked, k=K, exclude_item_ids=[disliked], explain=True), timeout=5
    )
    assert [item.item_id for item in cold.items] == answer
    assert all(item.because_item_id in liked for item in cold.items)


def test_record_rejects_bad_input_with_invalid_argument_naming_the_field(
    stub: pb_grpc.RecommenderServiceStub,
) -> None:
    user, known, other = user_id_of_row(1), item_id_of_row(1), item_id_of_row(3)
    too_long = "r" * (DEFAULT_MAX_REQUEST_ID + 1)  # the server runs with the default limits
    for request, field in (
        (pb.RecordInteractionsRequest(request_id=too_long, user_id=user, item_ids=[known]), "request_id"),
        (pb.RecordInteractionsRequest(user_id=user), "item_ids"),
        (pb.RecordInteractionsRequest(user_id=user, item_ids=[known, 7]), "item_ids"),  # 7: not in the catalogue
        (pb.RecordInteractionsRequest(user_id=user, item_ids=[known, other], ratings=[4.0]), "ratings"),
        (pb.RecordInteractionsRequest(user_id=user, item_ids=[known], ratings=[float("nan")]), "ratings"),
        (pb.RecordInteractionsRequest(user_id=user, item_ids=[known], times=[-5]), "times"),
        (pb.RecordInteractionsRequest(user_id=user, item_ids=[known], times=[1, 2]), "times"),
    ):
        with pytest.raises(grpc.RpcError) as refused:
            stub.RecordInteractions(request, timeout=5)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert _blamed_field(refused.value) == field, request
    assert stub.GetInfo(pb.GetInfoRequest()).events_last_offset == 0, "a refused call stored something"
    longest = too_long[:-1]
    recorded = stub.RecordInteractions(
        pb.RecordInteractionsRequest(request_id=longest, user_id=user, item_ids=[known]), timeout=5
    )
    assert recorded.request_id == longest and recorded.recorded == 1  # at the limit: stored


def test_recommend_for_items_errors(stub: pb_grpc.RecommenderServiceStub) -> None:
    call = stub.RecommendForItems
    assert _code(lambda: call(pb.RecommendForItemsRequest(k=K), timeout=5)) == grpc.StatusCode.INVALID_ARGUMENT
    assert _code(lambda: call(pb.RecommendForItemsRequest(item_ids=[2, 4], k=K), timeout=5)) == (
        grpc.StatusCode.NOT_FOUND
    )
    assert _code(lambda: call(pb.RecommendForItemsRequest(item_ids=[1], k=0), timeout=5)) == (
        grpc.StatusCode.INVALID_ARGUMENT
    )


def test_rebuild_compacts_the_log_and_the_server_truncates_it_once_no_retained_version_needs_it(
    store: Path, server: ServerThread, stub: pb_grpc.RecommenderServiceStub
) -> None:
    user = user_id_of_row(2)
    first = _top(stub, user, 1)
    stub.RecordInteractions(pb.RecordInteractionsRequest(user_id=user, item_ids=first), timeout=5)
    stub.RecordInteractions(pb.RecordInteractionsRequest(user_id=NEW_USER, item_ids=[item_id_of_row(5)]), timeout=5)
    with InteractionLog(store / "interactions.sqlite3") as reader:  # what `recctl index rebuild --events` does
        build_index(store.parent / "model", store, new_events=reader.export())
    deadline = time.monotonic() + 30
    while stub.GetInfo(pb.GetInfoRequest()).index_version != "v0002":
        assert time.monotonic() < deadline
        time.sleep(0.02)
    info = stub.GetInfo(pb.GetInfoRequest())
    assert info.events_through == 2 and info.swap_count == 1
    log = server.server.log
    assert log is not None and len(log.export()) == 2, "truncated although v0001 (which lacks them) is retained"
    prune_versions(store, keep=1)  # v0001 goes: every remaining version holds events 1..2
    deadline = time.monotonic() + 30
    while len(log.export()):
        assert time.monotonic() < deadline, "the server did not truncate after the prune"
        time.sleep(0.02)
    assert truncation_point(log) == 2
    assert first[0] not in _top(stub, user, K)
    assert item_id_of_row(5) not in _top(stub, NEW_USER, K), "a compacted new user's event is no longer excluded"


@pytest.mark.slow
def test_acknowledged_events_survive_kill_9(store: Path) -> None:
    user = user_id_of_row(4)
    process = ServeProcess("--index", str(store))
    try:
        target = f"127.0.0.1:{process.wait_serving()['listening']['port']}"
        with grpc.insecure_channel(target) as channel:
            stub = pb_grpc.RecommenderServiceStub(channel)
            watched = _top(stub, user, 2)
            for item in watched:  # two calls, each acknowledged
                stub.RecordInteractions(pb.RecordInteractionsRequest(user_id=user, item_ids=[item]), timeout=5)
        process.process.send_signal(signal.SIGKILL)
        process.process.wait(10)
    finally:
        process.close()

    restarted = ServeProcess("--index", str(store))
    try:
        target = f"127.0.0.1:{restarted.wait_serving()['listening']['port']}"
        with grpc.insecure_channel(target) as channel:
            stub = pb_grpc.RecommenderServiceStub(channel)
            assert not set(watched) & set(_top(stub, user, K))
            assert stub.GetInfo(pb.GetInfoRequest()).events_last_offset == 2
    finally:
        restarted.close()


def test_a_new_user_with_only_disliked_events_is_not_found_with_a_reason(stub: pb_grpc.RecommenderServiceStub) -> None:
    stub.RecordInteractions(
        pb.RecordInteractionsRequest(user_id=NEW_USER, item_ids=[item_id_of_row(1)], ratings=[1.0]), timeout=5
    )
    with pytest.raises(grpc.RpcError) as missing:
        stub.Recommend(pb.RecommendRequest(user_id=NEW_USER, k=K), timeout=5)
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND and "no liked movie" in (missing.value.details() or "")


def test_a_retried_record_call_is_stored_once_and_acknowledged_the_same(
    server: ServerThread, stub: pb_grpc.RecommenderServiceStub
) -> None:
    user, items = user_id_of_row(3), [item_id_of_row(4), item_id_of_row(6)]
    request = pb.RecordInteractionsRequest(request_id="checkout-17", user_id=user, item_ids=items)
    first = stub.RecordInteractions(request, timeout=5)
    again = stub.RecordInteractions(request, timeout=5)
    assert (again.offset, again.recorded, again.request_id) == (first.offset, first.recorded, "checkout-17")
    assert stub.GetInfo(pb.GetInfoRequest()).events_last_offset == first.offset == 2
    other = stub.RecordInteractions(pb.RecordInteractionsRequest(user_id=user, item_ids=items), timeout=5)
    assert other.offset == 4, "a call without a request id is always stored"


def test_a_user_past_the_live_event_cap_gets_resource_exhausted(
    server: ServerThread, stub: pb_grpc.RecommenderServiceStub
) -> None:
    store = server.server.log
    # The cap is the SQLite log's (default 10,000; no serve flag yet): set it on the log behind the server's
    # shared-file wrapper.
    log = getattr(store, "_log", store)
    assert isinstance(log, InteractionLog)
    log.max_live_items_per_user = 2
    user = user_id_of_row(5)
    stub.RecordInteractions(pb.RecordInteractionsRequest(user_id=user, item_ids=[item_id_of_row(1)]), timeout=5)
    with pytest.raises(grpc.RpcError) as refused:
        stub.RecordInteractions(
            pb.RecordInteractionsRequest(user_id=user, item_ids=[item_id_of_row(2), item_id_of_row(3)]), timeout=5
        )
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "limit is 2" in (refused.value.details() or "")
    assert log.extra_seen(user).tolist() == [item_id_of_row(1)], "a refused call stored something"
