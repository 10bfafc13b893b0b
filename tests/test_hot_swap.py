"""Hot swap under load: new index versions are published while a stream runs, and broken ones are refused."""

from __future__ import annotations

import asyncio
import queue
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from bundle_factory import make_model_bundle, user_id_of_row
from grpc_health.v1 import health_pb2, health_pb2_grpc
from server_harness import ServeProcess, ServerThread, serving

from movierec.bundle import VersionedStore
from movierec.index import ServingIndex, build_index, open_index, prune_versions
from movierec.server.app import ServerConfig, load_index
from movierec.server.interaction_log import InteractionLogError
from movierec.v1 import recommender_pb2 as pb
from movierec.v1 import recommender_pb2_grpc as pb_grpc

N_USERS = 12
K = 5
POLL_SECONDS = 0.02
SWAP_TIMEOUT = 30.0


@pytest.fixture()
def store(tmp_path: Path) -> Path:
    """An index store at v0001, plus two other models (different vectors) ready to be indexed."""
    for seed in range(3):
        make_model_bundle(tmp_path / f"model{seed}", n_users=N_USERS, n_items=60, dim=6, seed=seed)
    build_index(tmp_path / "model0", tmp_path / "index")
    return tmp_path / "index"


@pytest.fixture()
def server(store: Path) -> Iterator[ServerThread]:
    with serving(ServerConfig(index_path=store, poll_seconds=POLL_SECONDS)) as thread:
        yield thread


def _wait_for(condition: object, what: str) -> None:
    assert callable(condition)
    deadline = time.monotonic() + SWAP_TIMEOUT
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(POLL_SECONDS)


def _expected(version_dir: Path) -> dict[int, list[int]]:
    """Each user's top-K item ids as that version answers them (the exact reference)."""
    index = open_index(version_dir)
    answers = index.recommend(list(range(N_USERS)), K)
    return {user_id_of_row(row): index.model.item_ids[answer.item_rows].tolist() for row, answer in enumerate(answers)}


@pytest.mark.slow
def test_versions_swap_under_a_running_stream_without_a_failed_request(store: Path, server: ServerThread) -> None:
    outgoing: queue.Queue[pb.RecommendStreamRequest | None] = queue.Queue()
    responses: list[pb.RecommendStreamResponse] = []
    health_seen: set[int] = set()
    stop = threading.Event()

    def requests() -> Iterator[pb.RecommendStreamRequest]:
        while (request := outgoing.get(timeout=30)) is not None:
            yield request

    def feed() -> None:
        sent = 0
        while not stop.is_set():
            outgoing.put(pb.RecommendStreamRequest(request_id=str(sent), user_id=user_id_of_row(sent % N_USERS), k=K))
            sent += 1
            if sent % 32 == 0:
                time.sleep(0.001)
        outgoing.put(None)

    with grpc.insecure_channel(server.target) as channel:
        stub = pb_grpc.RecommenderServiceStub(channel)
        health = health_pb2_grpc.HealthStub(channel)
        feeder = threading.Thread(target=feed, daemon=True)
        feeder.start()
        call = stub.RecommendStream(requests(), timeout=60)
        reader = threading.Thread(target=lambda: responses.extend(call), daemon=True)
        reader.start()
        for model in ("model1", "model2"):
            before = len(responses)
            version = build_index(store.parent / model, store).name
            _wait_for(lambda v=version: stub.GetInfo(pb.GetInfoRequest()).index_version == v, f"swap to {version}")
            _wait_for(lambda b=before: len(responses) > b + 50, "responses after the swap")
            health_seen.add(health.Check(health_pb2.HealthCheckRequest()).status)
        stop.set()
        feeder.join(10)
        reader.join(30)
        info = stub.GetInfo(pb.GetInfoRequest())

    expected = {v: _expected(store / v) for v in ("v0001", "v0002", "v0003")}
    assert responses and [r.request_id for r in responses] == [str(i) for i in range(len(responses))]
    assert all(r.error.code == 0 for r in responses), "a request failed during a swap"
    for response, request_number in zip(responses, range(len(responses)), strict=True):
        user_id = user_id_of_row(request_number % N_USERS)
        assert [item.item_id for item in response.items] == expected[response.index_version][user_id]
    served = [r.index_version for r in responses]
    assert served == sorted(served), "a response came from an older version after a newer one answered"
    assert {"v0001", "v0003"} <= set(served)
    assert health_seen == {health_pb2.HealthCheckResponse.SERVING}
    assert info.swap_count == 2 and info.index_version == "v0003" and info.last_reload_error == ""


def test_a_corrupt_version_is_refused_and_the_old_one_keeps_serving(store: Path, server: ServerThread) -> None:
    broken = build_index(store.parent / "model1", store, make_current=False)
    vectors = broken / "model" / "item_vectors.npy"
    assert vectors.is_file()
    data = bytearray(vectors.read_bytes())
    data[-1] ^= 0xFF
    vectors.write_bytes(bytes(data))
    VersionedStore(store).set_current(broken.name)

    with grpc.insecure_channel(server.target) as channel:
        stub = pb_grpc.RecommenderServiceStub(channel)
        _wait_for(lambda: stub.GetInfo(pb.GetInfoRequest()).last_refused_version == broken.name, "the refusal")
        info = stub.GetInfo(pb.GetInfoRequest())
        assert info.index_version == "v0001" and info.swap_count == 0
        assert "item_vectors.npy" in info.last_reload_error
        answer = stub.Recommend(pb.RecommendRequest(user_id=user_id_of_row(0), k=K))
        assert answer.index_version == "v0001" and len(answer.items) == K

        # The operator's reload reports the same reason (from memory: the files are unchanged); nothing changes.
        reload = stub.ReloadIndex(pb.ReloadIndexRequest())
        assert not reload.swapped and reload.index_version == "v0001" and "item_vectors.npy" in reload.error
        assert reload.outcome == pb.RELOAD_OUTCOME_REFUSED and reload.cached

        # A good version afterwards is taken, and the refusal is cleared.
        repaired = build_index(store.parent / "model2", store).name
        _wait_for(lambda: stub.GetInfo(pb.GetInfoRequest()).index_version == repaired, "the repaired version")
        info = stub.GetInfo(pb.GetInfoRequest())
        assert info.swap_count == 1 and info.last_reload_error == "" and info.last_refused_version == ""


def test_reload_is_refused_for_a_single_version_server(store: Path) -> None:
    thread = ServerThread(ServerConfig(index_path=store / "v0001"))
    try:
        thread.start_loading().result(30)
        with grpc.insecure_channel(thread.target) as channel, pytest.raises(grpc.RpcError) as refused:
            pb_grpc.RecommenderServiceStub(channel).ReloadIndex(pb.ReloadIndexRequest(), timeout=5)
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    finally:
        thread.stop()


@pytest.mark.slow
def test_sighup_reloads_a_server_that_does_not_poll(store: Path) -> None:
    process = ServeProcess("--index", str(store), "--poll", "0")
    try:
        target = f"127.0.0.1:{process.wait_serving()['listening']['port']}"
        version = build_index(store.parent / "model1", store).name
        with grpc.insecure_channel(target) as channel:
            stub = pb_grpc.RecommenderServiceStub(channel)
            time.sleep(0.5)
            assert stub.GetInfo(pb.GetInfoRequest(), timeout=5).index_version == "v0001", "--poll 0 still polled"
            process.process.send_signal(signal.SIGHUP)
            _wait_for(lambda: stub.GetInfo(pb.GetInfoRequest(), timeout=5).index_version == version, "SIGHUP reload")
    finally:
        process.close()


@pytest.mark.slow
def test_a_refused_version_and_its_reason_are_logged(store: Path) -> None:
    broken = build_index(store.parent / "model1", store, make_current=False)
    (broken / "index.faiss").write_bytes(b"not a faiss index")
    process = ServeProcess("--index", str(store), "--poll", "0")
    try:
        target = f"127.0.0.1:{process.wait_serving()['listening']['port']}"
        VersionedStore(store).set_current(broken.name)
        process.process.send_signal(signal.SIGHUP)
        with grpc.insecure_channel(target) as channel:
            stub = pb_grpc.RecommenderServiceStub(channel)
            _wait_for(lambda: stub.GetInfo(pb.GetInfoRequest(), timeout=5).last_refused_version == broken.name, "log")
        process.process.send_signal(signal.SIGTERM)
        assert process.process.wait(30) == 0
        assert process.process.stderr is not None
        log = process.process.stderr.read()
    finally:
        process.close()
    refusal = [line for line in log.splitlines() if f"refused index {broken.name}" in line]
    assert len(refusal) == 1 and "ERROR" in refusal[0] and "index.faiss" in refusal[0]


class _CountingLoader:
    """``load_index`` that counts which versions it opened (each open re-hashes every file)."""

    def __init__(self) -> None:
        self.opened: list[str] = []

    def __call__(self, path: Path) -> ServingIndex:
        self.opened.append(path.name)
        return load_index(path)


def test_a_refused_version_is_not_re_verified_until_its_files_change(store: Path) -> None:
    loader = _CountingLoader()
    thread = ServerThread(ServerConfig(index_path=store, poll_seconds=0), loader=loader)
    try:
        thread.start_loading().result(30)
        broken = build_index(store.parent / "model1", store)
        vectors = broken / "model" / "item_vectors.npy"
        good = vectors.read_bytes()
        vectors.write_bytes(good[:-1] + bytes([good[-1] ^ 0xFF]))
        with grpc.insecure_channel(thread.target) as channel:
            stub = pb_grpc.RecommenderServiceStub(channel)
            first = stub.ReloadIndex(pb.ReloadIndexRequest(), timeout=10)
            assert first.outcome == pb.RELOAD_OUTCOME_REFUSED and not first.cached and "item_vectors" in first.error
            for _ in range(5):
                again = stub.ReloadIndex(pb.ReloadIndexRequest(), timeout=10)
                assert again.outcome == pb.RELOAD_OUTCOME_REFUSED and again.cached and again.error == first.error
            assert loader.opened == ["index", "v0002"], "a refused, unchanged version was hashed again"
            vectors.write_bytes(good)  # the operator repairs it: its files changed, so it is tried again
            repaired = stub.ReloadIndex(pb.ReloadIndexRequest(), timeout=10)
            assert repaired.outcome == pb.RELOAD_OUTCOME_SWAPPED and repaired.swapped and repaired.error == ""
            assert repaired.index_version == "v0002" and loader.opened == ["index", "v0002", "v0002"]
            same = stub.ReloadIndex(pb.ReloadIndexRequest(), timeout=10)
            assert same.outcome == pb.RELOAD_OUTCOME_ALREADY_SERVING and not same.swapped
    finally:
        thread.stop()


def _failing_truncation(offset: int) -> int:
    raise InteractionLogError("could not truncate the log (database is locked)")


def test_an_error_after_a_swap_is_reported_and_never_stops_the_swaps(store: Path) -> None:
    thread = ServerThread(ServerConfig(index_path=store, poll_seconds=0))
    try:
        thread.start_loading().result(30)
        log = thread.server.log
        assert log is not None
        user = user_id_of_row(0)
        log.record(user, [10])
        with grpc.insecure_channel(thread.target) as channel:
            stub = pb_grpc.RecommenderServiceStub(channel)
            build_index(store.parent / "model1", store, new_events=log.export())  # v0002 holds event 1
            assert stub.ReloadIndex(pb.ReloadIndexRequest(), timeout=10).outcome == pb.RELOAD_OUTCOME_SWAPPED
            log.record(user, [20])
            build_index(store.parent / "model2", store, new_events=log.export())  # v0003 holds events 1..2
            prune_versions(store, keep=1)  # only v0003 is left: the log may go through 1 now (v0002 still serves)
            log.truncate_through = _failing_truncation  # type: ignore[method-assign]
            after = stub.ReloadIndex(pb.ReloadIndexRequest(), timeout=10)
            assert after.outcome == pb.RELOAD_OUTCOME_ERROR_AFTER_SWAP and after.swapped
            assert after.index_version == "v0003" and "database is locked" in after.error
            assert "database is locked" in stub.GetInfo(pb.GetInfoRequest()).last_reload_error
            assert set(log.extra_seen(user).tolist()) == {10, 20}, "a failed truncation lost events"

        # The poller goes on through the same failure, swap after swap.
        watcher = thread.run(_start_watching(thread))
        try:
            with grpc.insecure_channel(thread.target) as channel:
                stub = pb_grpc.RecommenderServiceStub(channel)
                for model in ("model0", "model1"):
                    version = build_index(store.parent / model, store).name
                    _wait_for(lambda v=version: stub.GetInfo(pb.GetInfoRequest()).index_version == v, version)
        finally:
            thread.run(_cancel(watcher))
    finally:
        thread.stop()


async def _start_watching(thread: ServerThread) -> asyncio.Task[None]:
    assert thread.server.reloader is not None
    return asyncio.create_task(thread.server.reloader.watch(POLL_SECONDS))


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
