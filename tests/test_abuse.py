"""Hostile and careless clients over the wire: every call gets OK or a precise status, the server stays healthy.

Hypothesis builds request messages for every RPC with extreme values (ids at
the int64 edges, k at the int32 edges, empty and giant lists, long and odd
strings, NaN ratings); each call must end OK or with a status that says what
was wrong (never UNKNOWN or INTERNAL), RESOURCE_EXHAUSTED exactly when the
message is larger than the server's receive limit, and health must still
answer SERVING afterwards. Then the admission layer piece by piece: an
oversized message never reaches a handler, the stream cap, and bounded error
messages for a flood of unknown genres.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from bundle_factory import item_id_of_row, user_id_of_row
from google.protobuf.message import Message
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from server_harness import RECCTL, ServerThread, make_index

from movierec.errors import MovierecError
from movierec.server.admission import (
    HEADROOM,
    MIN_TOKEN_LENGTH,
    ByteBudget,
    StreamShare,
    check_token,
    exposure_warnings,
    receive_limit,
)
from movierec.server.app import ServerConfig
from movierec.server.errors import MAX_MESSAGE_BYTES, client_safe
from movierec.server.limits import Limits
from movierec.v1 import recommender_pb2 as pb
from movierec.v1 import recommender_pb2_grpc as pb_grpc

N_USERS, N_ITEMS = 12, 60
# A precise answer to a bad request; UNKNOWN, INTERNAL, DEADLINE_EXCEEDED or UNAVAILABLE would mean a fault.
PRECISE = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.FAILED_PRECONDITION,
}
CODES = {code.value[0]: code for code in grpc.StatusCode}
ABUSE = settings(
    max_examples=50, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow], database=None
)


@pytest.fixture(scope="module")
def index_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_index(tmp_path_factory.mktemp("abuse"), n_users=N_USERS, n_items=N_ITEMS, dim=4, seen_per_user=5)


def started(config: ServerConfig) -> ServerThread:
    server = ServerThread(config)
    server.start_loading().result(30)
    return server


@pytest.fixture(scope="module")
def server(index_root: Path) -> Iterator[ServerThread]:
    running = started(ServerConfig(index_path=index_root, poll_seconds=0))
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def channel(server: ServerThread) -> Iterator[grpc.Channel]:
    # The client accepts big answers and trailers: what is checked is what the server sends, not client limits.
    options = [("grpc.max_receive_message_length", 64 * 2**20), ("grpc.max_metadata_size", 64 * 1024)]
    with grpc.insecure_channel(server.target, options=options) as opened:
        yield opened


@pytest.fixture(scope="module")
def stub(channel: grpc.Channel) -> pb_grpc.RecommenderServiceStub:
    return pb_grpc.RecommenderServiceStub(channel)


# --- strategies ---------------------------------------------------------------------------------------------

INT64 = st.one_of(
    st.sampled_from([0, -1, 1, 2**63 - 1, -(2**63), 2**53 + 1, -(2**31)]),
    st.integers(-(2**63), 2**63 - 1),
    st.integers(0, N_USERS).map(user_id_of_row),
    st.integers(0, N_ITEMS).map(item_id_of_row),
)
INT32 = st.one_of(st.sampled_from([0, -1, 1, 10, 1000, 1001, 2**31 - 1, -(2**31)]), st.integers(-(2**31), 2**31 - 1))
GENRE = st.one_of(st.sampled_from(["Drama", "Comedy", "Action", "drama", "", "Sci-Fi"]), st.text(max_size=30))
LONG_TEXT = st.sampled_from([128, 129, 10_000, 600_000]).map(lambda n: "\u00e9" * n)
TEXT = st.one_of(st.text(max_size=40), LONG_TEXT)


def id_lists(max_giant: int = 200_000) -> st.SearchStrategy[list[int]]:
    """Empty, small, at and past the limits, and giant (built cheaply: one value repeated)."""
    giant = st.tuples(st.sampled_from([10_000, 10_001, 60_000, max_giant]), INT64).map(lambda nv: [nv[1]] * nv[0])
    return st.one_of(st.lists(INT64, max_size=30), giant)


def genre_lists() -> st.SearchStrategy[list[str]]:
    giant = st.tuples(st.sampled_from([65, 5_000, 300_000]), GENRE).map(lambda nv: [nv[1]] * nv[0])
    return st.one_of(st.lists(GENRE, max_size=8), giant)


@st.composite
def filters(draw: st.DrawFn) -> pb.ItemFilter | None:
    if draw(st.booleans()):
        return None
    message = pb.ItemFilter(include_genres=draw(genre_lists()), exclude_genres=draw(genre_lists()))
    for year in ("min_year", "max_year"):
        value = draw(st.none() | INT32)
        if value is not None:
            setattr(message, year, value)
    return message


def recommend_fields(draw: st.DrawFn) -> dict[str, Any]:
    return {
        "request_id": draw(TEXT),
        "user_id": draw(INT64),
        "k": draw(INT32),
        "exclude_item_ids": draw(id_lists()),
        "filter": draw(filters()),
        "explain": draw(st.booleans()),
    }


@st.composite
def recommend_requests(draw: st.DrawFn) -> pb.RecommendRequest:
    return pb.RecommendRequest(**recommend_fields(draw))


@st.composite
def stream_requests(draw: st.DrawFn) -> list[pb.RecommendStreamRequest]:
    return [pb.RecommendStreamRequest(**recommend_fields(draw)) for _ in range(draw(st.integers(1, 4)))]


@st.composite
def batch_requests(draw: st.DrawFn) -> pb.RecommendBatchRequest:
    count = draw(st.sampled_from([0, 1, 3, 1000, 1001]))
    if count <= 3:
        return pb.RecommendBatchRequest(requests=[pb.RecommendRequest(**recommend_fields(draw)) for _ in range(count)])
    plain = pb.RecommendRequest(request_id=draw(st.text(max_size=40)), user_id=draw(INT64), k=draw(INT32))
    return pb.RecommendBatchRequest(requests=[plain] * count)


@st.composite
def similar_requests(draw: st.DrawFn) -> pb.SimilarItemsRequest:
    message = pb.SimilarItemsRequest(
        request_id=draw(TEXT),
        item_id=draw(INT64),
        k=draw(INT32),
        exclude_item_ids=draw(id_lists()),
        filter=draw(filters()),
    )
    user = draw(st.none() | INT64)
    if user is not None:
        message.user_id = user
    return message


@st.composite
def for_items_requests(draw: st.DrawFn) -> pb.RecommendForItemsRequest:
    return pb.RecommendForItemsRequest(
        request_id=draw(TEXT),
        item_ids=draw(id_lists()),
        k=draw(INT32),
        exclude_item_ids=draw(id_lists()),
        filter=draw(filters()),
        explain=draw(st.booleans()),
    )


@st.composite
def record_requests(draw: st.DrawFn) -> pb.RecordInteractionsRequest:
    item_ids = draw(id_lists(max_giant=100_000))
    ratings = draw(
        st.one_of(
            st.just([]),
            st.lists(st.floats(width=32), min_size=len(item_ids), max_size=len(item_ids))
            if len(item_ids) < 50
            # NaN, infinities and out-of-range ratings for a giant call, cheaply
            else st.sampled_from([float("nan"), float("inf"), -1.0, 4.0]).map(lambda r: [r] * len(item_ids)),
            st.lists(st.floats(width=32), max_size=5),
        )
    )
    times = draw(st.one_of(st.just([]), INT64.map(lambda t: [t] * len(item_ids))))
    return pb.RecordInteractionsRequest(
        request_id=draw(TEXT), user_id=draw(INT64), item_ids=item_ids, ratings=ratings, times=times
    )


# --- checks -------------------------------------------------------------------------------------------------


def outcome(call: Callable[[], object]) -> grpc.StatusCode:
    try:
        call()
    except grpc.RpcError as error:
        return error.code()
    return grpc.StatusCode.OK


def assert_precise(code: grpc.StatusCode, request: Message, server: ServerThread) -> None:
    """A precise status, RESOURCE_EXHAUSTED exactly for a message past the receive limit (or a RecordInteractions
    user at the live-event cap), and a server still SERVING."""
    assert code in PRECISE, f"{code} for a {type(request).__name__} of {request.ByteSize():,} bytes"
    too_big = request.ByteSize() > server.server.config.receive_bytes
    if too_big:
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    elif not isinstance(request, pb.RecordInteractionsRequest):
        assert code != grpc.StatusCode.RESOURCE_EXHAUSTED
    with grpc.insecure_channel(server.target) as channel:
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert health.status == health_pb2.HealthCheckResponse.SERVING


@ABUSE
@given(request=recommend_requests())
def test_recommend_abuse(stub: pb_grpc.RecommenderServiceStub, server: ServerThread, request: Any) -> None:
    assert_precise(outcome(lambda: stub.Recommend(request, timeout=10)), request, server)


@ABUSE
@given(request=batch_requests())
def test_recommend_batch_abuse(stub: pb_grpc.RecommenderServiceStub, server: ServerThread, request: Any) -> None:
    code = outcome(lambda: stub.RecommendBatch(request, timeout=10))
    assert_precise(code, request, server)


@ABUSE
@given(requests=stream_requests())
def test_recommend_stream_abuse(stub: pb_grpc.RecommenderServiceStub, server: ServerThread, requests: Any) -> None:
    """Every message gets its one answer (OK or a precise error in it) unless the call is refused for size."""
    try:
        answers = list(stub.RecommendStream(iter(requests), timeout=10))
    except grpc.RpcError as error:
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert max(r.ByteSize() for r in requests) > server.server.config.receive_bytes
    else:
        assert len(answers) == len(requests)
        assert {CODES[a.error.code] for a in answers} <= PRECISE - {grpc.StatusCode.RESOURCE_EXHAUSTED}
        for request, answer in zip(requests, answers, strict=True):
            if len(request.request_id) <= Limits().max_request_id_length:
                assert answer.request_id == request.request_id
    assert_precise(grpc.StatusCode.OK, pb.RecommendStreamRequest(), server)


@ABUSE
@given(request=similar_requests())
def test_similar_items_abuse(stub: pb_grpc.RecommenderServiceStub, server: ServerThread, request: Any) -> None:
    assert_precise(outcome(lambda: stub.SimilarItems(request, timeout=10)), request, server)


@ABUSE
@given(request=for_items_requests())
def test_recommend_for_items_abuse(stub: pb_grpc.RecommenderServiceStub, server: ServerThread, request: Any) -> None:
    assert_precise(outcome(lambda: stub.RecommendForItems(request, timeout=10)), request, server)


@ABUSE
@given(request=record_requests())
def test_record_interactions_abuse(stub: pb_grpc.RecommenderServiceStub, server: ServerThread, request: Any) -> None:
    assert_precise(outcome(lambda: stub.RecordInteractions(request, timeout=10)), request, server)


@settings(max_examples=5, deadline=None, database=None)
@given(st.sampled_from(["GetInfo", "ReloadIndex"]))
def test_info_and_reload_abuse(stub: pb_grpc.RecommenderServiceStub, server: ServerThread, method: str) -> None:
    request = pb.GetInfoRequest() if method == "GetInfo" else pb.ReloadIndexRequest()
    assert_precise(outcome(lambda: getattr(stub, method)(request, timeout=10)), request, server)


# --- admission, piece by piece --------------------------------------------------------------------------------


def test_an_oversized_message_is_refused_before_any_handler_runs(
    stub: pb_grpc.RecommenderServiceStub, server: ServerThread, monkeypatch: pytest.MonkeyPatch
) -> None:
    handled: list[int] = []
    state = server.server.state
    require_engine = state.require_engine

    def counting() -> Any:  # every handler asks the state for the engine first
        handled.append(1)
        return require_engine()

    monkeypatch.setattr(state, "require_engine", counting)
    small = pb.RecommendRequest(user_id=user_id_of_row(0), k=3)
    stub.Recommend(small, timeout=5)
    assert len(handled) == 1  # the spy sees handlers
    limit = server.server.config.receive_bytes
    huge = pb.RecommendRequest(user_id=user_id_of_row(0), k=3, exclude_item_ids=[2**62] * (limit // 9))
    assert huge.ByteSize() > limit
    with pytest.raises(grpc.RpcError) as refused:
        stub.Recommend(huge, timeout=5)
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    with pytest.raises(grpc.RpcError) as refused_stream:
        list(stub.RecommendStream(iter([pb.RecommendStreamRequest(exclude_item_ids=huge.exclude_item_ids)]), timeout=5))
    assert refused_stream.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert len(handled) == 1
    assert stub.Recommend(small, timeout=5).items


def test_streams_beyond_the_cap_are_refused_and_unary_calls_go_on(index_root: Path) -> None:
    server = started(ServerConfig(index_path=index_root, poll_seconds=0, max_streams=2))
    release = threading.Event()

    def held_open() -> Iterator[pb.RecommendStreamRequest]:
        yield pb.RecommendStreamRequest(request_id="first", user_id=user_id_of_row(0), k=3)
        release.wait(20)

    try:
        with grpc.insecure_channel(server.target) as channel:
            stub = pb_grpc.RecommenderServiceStub(channel)
            open_calls = [stub.RecommendStream(held_open(), timeout=30) for _ in range(2)]
            for call in open_calls:
                assert next(iter(call)).request_id == "first"
            with pytest.raises(grpc.RpcError) as refused:
                list(stub.RecommendStream(iter([pb.RecommendStreamRequest(user_id=1, k=3)]), timeout=5))
            assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "max_streams" in (refused.value.details() or "")
            quota = _detail(refused.value, error_details_pb2.QuotaFailure)
            assert quota.violations[0].subject == "RecommendStream"
            assert stub.Recommend(pb.RecommendRequest(user_id=user_id_of_row(1), k=3), timeout=5).items
            open_calls[0].cancel()  # type: ignore[no-untyped-call]
            deadline = time.monotonic() + 5
            while server.server.servicer.active_streams > 1 and time.monotonic() < deadline:
                time.sleep(0.01)
            answers = list(stub.RecommendStream(iter([pb.RecommendStreamRequest(user_id=user_id_of_row(2), k=3)])))
            assert len(answers) == 1 and answers[0].items
    finally:
        release.set()
        server.stop()


def test_300k_unknown_genres_get_a_short_invalid_argument_naming_the_field(index_root: Path) -> None:
    """Through a server whose receive limit lets the message in: the engine refuses it by its length alone."""
    server = started(ServerConfig(index_path=index_root, poll_seconds=0, max_receive_bytes=16 * 2**20))
    names = [f"no-such-genre-{i}" for i in range(300_000)]
    request = pb.RecommendRequest(user_id=user_id_of_row(0), k=3, filter=pb.ItemFilter(include_genres=names))
    try:
        with grpc.insecure_channel(server.target) as channel:
            stub = pb_grpc.RecommenderServiceStub(channel)
            for call in (
                lambda: stub.Recommend(request, timeout=10),
                lambda: stub.SimilarItems(
                    pb.SimilarItemsRequest(item_id=item_id_of_row(0), k=3, filter=request.filter), timeout=10
                ),
            ):
                with pytest.raises(grpc.RpcError) as refused:
                    call()
                error = refused.value
                assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
                message = error.details() or ""
                assert len(message.encode()) < 1024 and "include_genres" in message and "300,000" in message
                violation = _detail(error, error_details_pb2.BadRequest).field_violations[0]
                assert violation.field == "filter" and len(violation.description.encode()) < 1024
            # A few unknown names among known ones: the message quotes at most three of them.
            few = pb.ItemFilter(include_genres=["nope-1", "nope-2", "nope-3", "nope-4"])
            with pytest.raises(grpc.RpcError) as refused:
                stub.Recommend(pb.RecommendRequest(user_id=user_id_of_row(0), k=3, filter=few), timeout=5)
            details = refused.value.details() or ""
            assert "'nope-1', 'nope-2', 'nope-3' and 1 more" in details and "nope-4" not in details
    finally:
        server.stop()


def test_a_refused_version_is_reported_without_server_paths(tmp_path: Path) -> None:
    """A damaged version's BundleError names files by absolute path in the server's log; a client sees none."""
    root = make_index(tmp_path, n_users=N_USERS, n_items=N_ITEMS, dim=4, seen_per_user=5)
    shutil.copytree(root / "v0001", root / "v0002")
    with (root / "v0002" / "index.faiss").open("ab") as damaged:
        damaged.write(b"tampered")
    server = started(ServerConfig(index_path=root, poll_seconds=0))
    (root / "CURRENT").write_text("v0002\n")
    try:
        with grpc.insecure_channel(server.target) as channel:
            stub = pb_grpc.RecommenderServiceStub(channel)
            reload = stub.ReloadIndex(pb.ReloadIndexRequest(), timeout=30)
            info = stub.GetInfo(pb.GetInfoRequest(), timeout=5)
    finally:
        server.stop()
    assert not reload.swapped and "index.faiss" in reload.error and info.last_reload_error
    for reported in (reload.error, info.last_reload_error):
        assert str(tmp_path) not in reported and "/tmp/" not in reported, reported


def test_a_short_token_stops_recctl_serve_before_it_listens(tmp_path: Path, index_root: Path) -> None:
    token = tmp_path / "token"
    token.write_text("short-token\n")
    done = subprocess.run(
        [RECCTL, "serve", "--index", str(index_root), "--port", "0", "--token-file", str(token)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0 and "listening" not in done.stdout
    assert done.stderr.strip().splitlines() == [
        f"recctl: error: the token is 11 characters; at least {MIN_TOKEN_LENGTH} are required "
        "(e.g. 'openssl rand -hex 16' makes 32)"
    ]


def _detail(error: grpc.RpcError, kind: type[Any]) -> Any:
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None
    for packed in status.details:
        if packed.Is(kind.DESCRIPTOR):
            detail = kind()
            packed.Unpack(detail)
            return detail
    raise AssertionError(f"no {kind.__name__} in the status details")


# --- the pure parts -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("limits", [Limits(), Limits(max_exclude_item_ids=50_000, max_request_id_length=1000)])
def test_the_receive_limit_admits_the_largest_valid_request_of_every_rpc(limits: Limits) -> None:
    """Built at the limits with the widest encodings (negative ids: 10-byte varints) and ASCII request ids."""
    request_id = "r" * limits.max_request_id_length
    ids = [-1] * limits.max_exclude_item_ids
    genres = ["G" * 20] * limits.max_filter_genres
    item_filter = pb.ItemFilter(include_genres=genres, exclude_genres=genres, min_year=-1, max_year=-1)
    largest = [
        pb.RecommendRequest(request_id=request_id, user_id=-1, k=-1, exclude_item_ids=ids, filter=item_filter),
        pb.RecommendForItemsRequest(
            request_id=request_id, item_ids=ids, k=-1, exclude_item_ids=ids, filter=item_filter, explain=True
        ),
        pb.RecordInteractionsRequest(
            request_id=request_id, user_id=-1, item_ids=[-1] * 10_000, ratings=[4.0] * 10_000, times=[-1] * 10_000
        ),
        pb.RecommendBatchRequest(
            requests=[pb.RecommendRequest(request_id=request_id, user_id=-1, k=-1, explain=True)] * 1000
        ),
    ]
    limit = receive_limit(limits, max_batch_size=1000)
    assert limit < 4 * 2**20 or limits != Limits()
    for message in largest:
        assert message.ByteSize() * HEADROOM <= limit + 64 * 1024, type(message).__name__
        assert message.ByteSize() <= limit


def test_a_byte_budget_stops_the_reader_until_answers_free_room() -> None:
    async def scenario() -> list[str]:
        budget = ByteBudget(100)
        steps: list[str] = []
        await budget.acquire(60)
        await budget.acquire(40)  # exactly full
        waiting = asyncio.create_task(budget.acquire(1))
        await asyncio.sleep(0.01)
        steps.append("blocked" if not waiting.done() else "admitted")
        budget.release(60)
        await asyncio.wait_for(waiting, 1)
        steps.append(f"admitted at {budget.used}")
        budget.release(41)
        await budget.acquire(500)  # one message larger than the budget still flows, alone
        steps.append(f"oversized alone: {budget.used}")
        return steps

    assert asyncio.run(scenario()) == ["blocked", "admitted at 41", "oversized alone: 500"]


def test_streams_yield_the_loop_only_while_other_calls_are_about() -> None:
    async def scenario() -> tuple[float, float, float]:
        share = StreamShare(share=0.5, window=0.05, recent=10)
        started = time.monotonic()
        share.spent(1.0)  # far over any share, but no other call yet: streams keep the loop
        await share.turn()
        alone = time.monotonic() - started
        share.other_call()
        await share.turn()  # opens a window
        share.spent(0.02)  # under half of 50 ms: the next batch goes at once
        started = time.monotonic()
        await share.turn()
        under = time.monotonic() - started
        share.spent(0.01)  # 30 ms of 50: over the share, the next batch waits for the next window
        started = time.monotonic()
        await share.turn()
        return alone, under, time.monotonic() - started

    alone, under, over = asyncio.run(scenario())
    assert alone < 0.01 and under < 0.01 and 0.01 < over <= 0.06


def test_errors_sent_to_clients_name_no_server_path_and_stay_short() -> None:
    text = "cannot read /srv/movierec/index/v0003/manifest.json: checksum mismatch (see ratings/times)"
    assert client_safe(text) == "cannot read .../v0003/manifest.json: checksum mismatch (see ratings/times)"
    assert len(client_safe("\u00e9" * 5000).encode()) <= MAX_MESSAGE_BYTES


def test_public_addresses_without_tls_or_a_token_are_warned_about() -> None:
    assert exposure_warnings("127.0.0.1", tls=False, token=False) == []
    assert exposure_warnings("[::1]", tls=False, token=False) == []
    assert exposure_warnings("localhost", tls=False, token=False) == []
    both = exposure_warnings("0.0.0.0", tls=False, token=False)
    assert len(both) == 2 and "WITHOUT TLS" in both[0] and "WITHOUT A TOKEN" in both[1]
    assert [w for w in exposure_warnings("::", tls=True, token=False) if "TLS" in w.split(":")[0]] == []
    assert exposure_warnings("10.1.2.3", tls=True, token=True) == []


def test_a_short_token_is_refused() -> None:
    with pytest.raises(MovierecError, match=f"at least {MIN_TOKEN_LENGTH}"):
        check_token("t0ken")
    check_token("x" * MIN_TOKEN_LENGTH)
