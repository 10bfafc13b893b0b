"""The gRPC server end to end over 127.0.0.1: answers, status codes, stream, health, reflection, cancellation."""

from __future__ import annotations

import asyncio
import json
import subprocess
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, cast

import grpc
import numpy as np
import pytest
from bundle_factory import item_id_of_row, user_id_of_row
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_status import rpc_status
from server_harness import ServerThread, make_index, serving

from movierec.index import ServingIndex, open_index
from movierec.server.app import ServerConfig, load_index
from movierec.server.engine import ServingEngine
from movierec.server.limits import Limits
from movierec.server.servicer import RecommenderServicer
from movierec.server.state import ServingState
from movierec.v1 import recommender_pb2 as pb
from movierec.v1 import recommender_pb2_grpc as pb_grpc

N_USERS, N_ITEMS = 30, 120
MAX_K, MAX_EXCLUDE = 50, 40
UNKNOWN_USER = 2  # the factory gives users odd ids


@pytest.fixture(scope="module")
def index_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_index(tmp_path_factory.mktemp("serving"), n_users=N_USERS, n_items=N_ITEMS, dim=8, seen_per_user=12)


@pytest.fixture(scope="module")
def index(index_root: Path) -> ServingIndex:
    return open_index(index_root)


@pytest.fixture(scope="module")
def server(index_root: Path) -> Iterator[ServerThread]:
    config = ServerConfig(index_root, limits=Limits(max_k=MAX_K, max_exclude_item_ids=MAX_EXCLUDE), max_stream_batch=8)
    with serving(config) as running:
        yield running


@pytest.fixture(scope="module")
def stub(server: ServerThread) -> Iterator[pb_grpc.RecommenderServiceStub]:
    with grpc.insecure_channel(server.target) as channel:
        yield pb_grpc.RecommenderServiceStub(channel)


def expected_items(index: ServingIndex, user_id: int, k: int, exclude_ids: list[int]) -> list[tuple[int, float]]:
    row = index.user_row(user_id)
    assert row is not None
    (result,) = index.recommend([row], k, extra_exclude=[index.item_rows(exclude_ids)])
    return [(int(index.model.item_ids[r]), float(s)) for r, s in zip(result.item_rows, result.scores, strict=True)]


def status_of(error: grpc.RpcError) -> tuple[grpc.StatusCode, str, str | None]:
    """(code, message, field named by a BadRequest detail)."""
    assert isinstance(error, grpc.Call)
    status = rpc_status.from_call(error)
    field = None
    if status is not None:
        for detail in status.details:
            bad_request = error_details_pb2.BadRequest()
            if detail.Unpack(bad_request):
                field = bad_request.field_violations[0].field
    return error.code(), error.details() or "", field


@pytest.mark.parametrize("user_row", [0, 7, N_USERS - 1])
def test_recommend_equals_the_index_answer_with_metadata(
    stub: pb_grpc.RecommenderServiceStub, index: ServingIndex, user_row: int
) -> None:
    user_id = user_id_of_row(user_row)
    exclude = [item_id_of_row(3), item_id_of_row(50), 999_999]  # the last is unknown: ignored
    response = stub.Recommend(pb.RecommendRequest(request_id="r1", user_id=user_id, k=10, exclude_item_ids=exclude))
    assert response.request_id == "r1"
    # float32 scores survive the wire exactly, so the comparison is exact.
    assert [(i.item_id, i.score) for i in response.items] == expected_items(index, user_id, 10, exclude)
    assert [i.rank for i in response.items] == list(range(1, 11))
    first = response.items[0]
    row = int(np.searchsorted(index.model.item_ids, first.item_id))
    assert (first.title, list(first.genres), first.year) == (
        index.model.items.titles[row],
        index.model.items.genres[row],
        index.model.items.years[row],
    )
    assert response.index_version == index.version
    assert response.model_version.endswith("@" + index.meta.source_model_sha256[:12])


def test_excluded_and_seen_items_never_come_back(stub: pb_grpc.RecommenderServiceStub, index: ServingIndex) -> None:
    user_id = user_id_of_row(4)
    first = stub.Recommend(pb.RecommendRequest(user_id=user_id, k=5))
    excluded = [item.item_id for item in first.items]
    second = stub.Recommend(pb.RecommendRequest(user_id=user_id, k=5, exclude_item_ids=excluded))
    returned = {item.item_id for item in second.items}
    seen = set(index.model.item_ids[index.seen_rows(4)].tolist())
    assert not returned & set(excluded)
    assert not returned & seen
    assert len(second.items) == 5


def test_k_larger_than_the_unseen_catalogue_returns_every_unseen_item(index_root: Path) -> None:
    config = ServerConfig(index_root, limits=Limits(max_k=N_ITEMS))
    running = ServerThread(config)
    try:
        running.start_loading().result(30)
        with grpc.insecure_channel(running.target) as channel:
            response = pb_grpc.RecommenderServiceStub(channel).Recommend(
                pb.RecommendRequest(user_id=user_id_of_row(0), k=N_ITEMS)
            )
    finally:
        running.stop()
    ids = [item.item_id for item in response.items]
    assert len(ids) == len(set(ids)) == N_ITEMS - 12


@pytest.mark.parametrize("k", [0, -1, MAX_K + 1])
def test_k_outside_the_range_is_invalid_argument(stub: pb_grpc.RecommenderServiceStub, k: int) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        stub.Recommend(pb.RecommendRequest(user_id=user_id_of_row(0), k=k))
    code, message, field = status_of(caught.value)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert field == "k"
    assert str(MAX_K) in message


def test_k_at_the_limit_is_accepted(stub: pb_grpc.RecommenderServiceStub) -> None:
    assert len(stub.Recommend(pb.RecommendRequest(user_id=user_id_of_row(0), k=MAX_K)).items) == MAX_K


def test_unknown_user_is_not_found(stub: pb_grpc.RecommenderServiceStub) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        stub.Recommend(pb.RecommendRequest(user_id=UNKNOWN_USER, k=5))
    code, message, _ = status_of(caught.value)
    assert code == grpc.StatusCode.NOT_FOUND
    assert str(UNKNOWN_USER) in message


def test_too_many_exclusions_is_invalid_argument_naming_the_limit(stub: pb_grpc.RecommenderServiceStub) -> None:
    at_limit = [item_id_of_row(r) for r in range(MAX_EXCLUDE)]
    assert stub.Recommend(pb.RecommendRequest(user_id=1, k=5, exclude_item_ids=at_limit)).items
    with pytest.raises(grpc.RpcError) as caught:
        stub.Recommend(pb.RecommendRequest(user_id=1, k=5, exclude_item_ids=[*at_limit, 10**9]))
    code, message, field = status_of(caught.value)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert field == "exclude_item_ids"
    assert f"at most {MAX_EXCLUDE}" in message


class _Aborted(Exception):
    pass


class _ExpiredContext:
    """Just enough of grpc.aio.ServicerContext: the caller's deadline has already passed."""

    def __init__(self) -> None:
        self.code: grpc.StatusCode | None = None

    def time_remaining(self) -> float:
        return 0.0

    async def abort(self, code: grpc.StatusCode, details: str = "", trailing_metadata: object = ()) -> NoReturn:
        self.code = code
        raise _Aborted(details)


class _EngineThatMustNotRun:
    index_version = model_version = "never"

    def recommend(self, queries: object) -> NoReturn:
        raise AssertionError("searched although the deadline had expired")


def test_expired_deadline_is_answered_without_searching() -> None:
    state = ServingState()
    state.publish(cast(ServingEngine, _EngineThatMustNotRun()))
    context = _ExpiredContext()
    with pytest.raises(_Aborted):
        asyncio.run(RecommenderServicer(state).Recommend(pb.RecommendRequest(user_id=1, k=5), cast(Any, context)))
    assert context.code == grpc.StatusCode.DEADLINE_EXCEEDED


def test_client_deadline_is_enforced(stub: pb_grpc.RecommenderServiceStub) -> None:
    """A stream left open past its deadline ends with DEADLINE_EXCEEDED, not a hang."""
    release = threading.Event()

    def requests() -> Iterator[pb.RecommendStreamRequest]:
        yield pb.RecommendStreamRequest(request_id="only", user_id=1, k=3)
        release.wait(10)

    try:
        with pytest.raises(grpc.RpcError) as caught:
            list(stub.RecommendStream(requests(), timeout=0.3))
    finally:
        release.set()
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


def test_stream_answers_every_message_in_order_and_survives_bad_ones(
    stub: pb_grpc.RecommenderServiceStub, index: ServingIndex
) -> None:
    requests = []
    for n in range(40):  # more than max_stream_batch, mixed k, with bad messages in between
        if n % 7 == 3:
            requests.append(pb.RecommendStreamRequest(request_id=f"bad-user-{n}", user_id=UNKNOWN_USER, k=5))
        elif n % 11 == 5:
            requests.append(pb.RecommendStreamRequest(request_id=f"bad-k-{n}", user_id=1, k=0))
        else:
            user_id = user_id_of_row(n % N_USERS)
            requests.append(pb.RecommendStreamRequest(request_id=f"ok-{n}", user_id=user_id, k=3 + n % 4))
    responses = list(stub.RecommendStream(iter(requests), timeout=10))
    assert [r.request_id for r in responses] == [q.request_id for q in requests]
    for request, response in zip(requests, responses, strict=True):
        if request.request_id.startswith("bad-user"):
            assert response.error.code == grpc.StatusCode.NOT_FOUND.value[0] and not response.items
        elif request.request_id.startswith("bad-k"):
            assert response.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0] and not response.items
        else:
            assert response.error.code == 0
            # A batched search may round float32 dot products differently in the last bit than a single one.
            expected = expected_items(index, request.user_id, request.k, [])
            assert [i.item_id for i in response.items] == [item_id for item_id, _ in expected]
            assert [i.score for i in response.items] == pytest.approx([score for _, score in expected], rel=1e-5)
            assert response.index_version == index.version


def test_stream_exclusions_apply_per_message(stub: pb_grpc.RecommenderServiceStub, index: ServingIndex) -> None:
    exclude = [item_id_of_row(r) for r in range(0, N_ITEMS, 3)]
    requests = [
        pb.RecommendStreamRequest(request_id="plain", user_id=1, k=8),
        pb.RecommendStreamRequest(request_id="excl", user_id=1, k=8, exclude_item_ids=exclude),
    ]
    plain, excl = stub.RecommendStream(iter(requests), timeout=10)
    assert [i.item_id for i in plain.items] == [i for i, _ in expected_items(index, 1, 8, [])]
    assert [i.item_id for i in excl.items] == [i for i, _ in expected_items(index, 1, 8, exclude)]


def test_a_server_fault_ends_the_stream_instead_of_hanging_it(
    server: ServerThread, stub: pb_grpc.RecommenderServiceStub, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = server.server.state.engine
    assert engine is not None

    def broken(queries: object) -> NoReturn:
        raise RuntimeError("simulated bug")

    monkeypatch.setattr(engine, "recommend", broken)
    with pytest.raises(grpc.RpcError) as caught:
        list(stub.RecommendStream(iter([pb.RecommendStreamRequest(user_id=1, k=3)]), timeout=10))
    assert caught.value.code() == grpc.StatusCode.UNKNOWN
    assert server.server.servicer.active_streams == 0


def test_cancelled_stream_is_cleaned_up(server: ServerThread, stub: pb_grpc.RecommenderServiceStub) -> None:
    release = threading.Event()

    def requests() -> Iterator[pb.RecommendStreamRequest]:
        yield pb.RecommendStreamRequest(request_id="first", user_id=1, k=3)
        release.wait(10)  # keep the stream open until the client cancels

    call = stub.RecommendStream(requests())
    assert next(iter(call)).request_id == "first"
    assert server.server.servicer.active_streams == 1
    call.cancel()  # type: ignore[no-untyped-call]
    release.set()
    deadline = time.monotonic() + 5
    while server.server.servicer.active_streams and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.server.servicer.active_streams == 0


def test_similar_items_leave_out_the_item_and_the_users_seen_items(
    stub: pb_grpc.RecommenderServiceStub, index: ServingIndex
) -> None:
    item_id = item_id_of_row(5)
    plain = stub.SimilarItems(pb.SimilarItemsRequest(item_id=item_id, k=10))
    expected = index.similar_items(5, 10)
    assert [i.item_id for i in plain.items] == index.model.item_ids[expected.item_rows].tolist()
    assert item_id not in [i.item_id for i in plain.items]
    personal = stub.SimilarItems(pb.SimilarItemsRequest(item_id=item_id, k=10, user_id=user_id_of_row(2)))
    seen = set(index.model.item_ids[index.seen_rows(2)].tolist())
    assert not {i.item_id for i in personal.items} & seen
    with pytest.raises(grpc.RpcError) as caught:
        stub.SimilarItems(pb.SimilarItemsRequest(item_id=7, k=10))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


def test_get_info_describes_what_is_served(
    stub: pb_grpc.RecommenderServiceStub, index: ServingIndex, index_root: Path
) -> None:
    info = stub.GetInfo(pb.GetInfoRequest())
    assert (info.user_count, info.item_count, info.dimension) == (N_USERS, N_ITEMS, 8)
    assert (info.max_k, info.max_exclude_item_ids, info.index_kind) == (MAX_K, MAX_EXCLUDE, "flat")
    assert info.index_version == index.version
    assert dict(info.training_metrics) == index.model.metrics


def test_reflection_lists_the_services(server: ServerThread) -> None:
    with grpc.insecure_channel(server.target) as channel:
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        (response,) = list(reflection.ServerReflectionInfo(iter([request]), timeout=5))
    names = {service.name for service in response.list_services_response.service}
    assert {"movierec.v1.RecommenderService", "grpc.health.v1.Health"} <= names


BUF = Path(__file__).resolve().parents[1] / "node_modules" / ".bin" / "buf"


@pytest.mark.skipif(not BUF.exists(), reason="buf is installed by `npm ci` (CI does)")
def test_buf_curl_answers_through_reflection(server: ServerThread, index: ServingIndex) -> None:
    """The issue's generic-client check: buf discovers the schema by reflection alone, no .proto given."""
    url = f"http://{server.target}/movierec.v1.RecommenderService/Recommend"
    result = subprocess.run(
        [str(BUF), "curl", "--protocol", "grpc", "--http2-prior-knowledge", url, "-d", '{"user_id": 1, "k": 5}'],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert [int(item["itemId"]) for item in answer["items"]] == [i for i, _ in expected_items(index, 1, 5, [])]
    assert answer["indexVersion"] == index.version


if TYPE_CHECKING:  # generic in the type stubs only; subscripting it at run time fails
    _ServerInterceptor = grpc.aio.ServerInterceptor[Any, Any]
else:
    _ServerInterceptor = grpc.aio.ServerInterceptor


class _MethodRecorder(_ServerInterceptor):
    def __init__(self) -> None:
        self.methods: list[str] = []

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        self.methods.append(handler_call_details.method)
        return await continuation(handler_call_details)


def test_interceptors_see_every_call(index_root: Path) -> None:
    """The hook auth and metrics plug into: every RPC, health included, passes through."""
    recorder = _MethodRecorder()
    running = ServerThread(ServerConfig(index_root), interceptors=[recorder])
    try:
        running.start_loading().result(30)
        with grpc.insecure_channel(running.target) as channel:
            pb_grpc.RecommenderServiceStub(channel).Recommend(pb.RecommendRequest(user_id=1, k=2), timeout=5)
            health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    finally:
        running.stop()
    assert recorder.methods == [
        "/movierec.v1.RecommenderService/Recommend",
        "/grpc.health.v1.Health/Check",
    ]


def test_health_and_status_while_loading_then_serving(index_root: Path) -> None:
    """NOT_SERVING + UNAVAILABLE until the index is loaded and warmed up, SERVING after."""
    may_finish = threading.Event()

    def slow_loader(path: Path) -> ServingIndex:
        may_finish.wait(10)
        return load_index(path)

    running = ServerThread(ServerConfig(index_root), loader=slow_loader)
    try:
        loading = running.start_loading()
        with grpc.insecure_channel(running.target) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            stub = pb_grpc.RecommenderServiceStub(channel)
            for service in ("", "movierec.v1.RecommenderService"):
                status = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status
                assert status == health_pb2.HealthCheckResponse.NOT_SERVING
            with pytest.raises(grpc.RpcError) as caught:
                stub.Recommend(pb.RecommendRequest(user_id=1, k=5), timeout=5)
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
            (early,) = stub.RecommendStream(iter([pb.RecommendStreamRequest(request_id="e", user_id=1, k=5)]))
            assert early.error.code == grpc.StatusCode.UNAVAILABLE.value[0]
            may_finish.set()
            loading.result(30)
            status = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status
            assert status == health_pb2.HealthCheckResponse.SERVING
            assert len(stub.Recommend(pb.RecommendRequest(user_id=1, k=5), timeout=5).items) == 5
            running.run(running.server.stop(0))
            with pytest.raises(grpc.RpcError):
                health.Check(health_pb2.HealthCheckRequest(service=""), timeout=2)
    finally:
        may_finish.set()
        running.stop()
