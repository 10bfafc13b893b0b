"""``recctl serve --workers 2``: two processes on one port, each a whole server; metrics summed; events shared."""

from __future__ import annotations

import contextlib
import os
import signal
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from bundle_factory import make_model_bundle, user_id_of_row
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from prometheus_client import multiprocess
from server_harness import ServeProcess

from movierec.index import build_index
from movierec.v1 import recommender_pb2 as pb
from movierec.v1 import recommender_pb2_grpc as pb_grpc

N_USERS = 40
CONNECTIONS = 16  # SO_REUSEPORT hashes each connection to a worker: 16 reach both with probability 1 - 2**-15


@pytest.fixture
def store(tmp_path: Path) -> Path:
    build_index(
        make_model_bundle(tmp_path / "model", n_users=N_USERS, n_items=90, dim=8, seen_per_user=6), tmp_path / "index"
    )
    return tmp_path / "index"


@dataclass
class Workers:
    """A running ``recctl serve --workers 2`` and its lifecycle events by kind."""

    serve: ServeProcess
    events: dict[str, dict[str, Any]]

    @property
    def port(self) -> int:
        return int(self.events["listening"]["port"])

    @property
    def pids(self) -> list[int]:
        return [int(pid) for pid in self.events["serving"]["pids"]]


@pytest.fixture
def workers(store: Path) -> Iterator[Workers]:
    serve = ServeProcess(
        "--index", str(store), "--workers", "2", "--metrics-port", "0", "--poll", "0.2", "--grace", "2"
    )
    events: dict[str, dict[str, Any]] = {}
    try:
        events = serve.wait_serving()
        yield Workers(serve, events)
    finally:
        serve.close()  # SIGKILL of the parent: its workers are ended here too, so no test leaves one behind
        for pid in events.get("serving", {}).get("pids", []):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def channels(port: int) -> list[grpc.Channel]:
    """Separate connections (a channel option makes each its own subchannel, so its own TCP connection)."""
    return [grpc.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.channel_id", n)]) for n in range(CONNECTIONS)]


def handled_by_pid(metrics_dir: str, pids: list[int]) -> dict[int, float]:
    """Recommend calls each worker answered, read from its own multiprocess counter file."""
    counts = {}
    for pid in pids:
        total = 0.0
        files = [f"{metrics_dir}/counter_{pid}.db"]
        for metric in multiprocess.MultiProcessCollector.merge(files):  # type: ignore[no-untyped-call]
            for sample in metric.samples:
                if sample.name == "grpc_server_handled_total" and sample.labels.get("grpc_method") == "Recommend":
                    total += sample.value
        counts[pid] = total
    return counts


def scrape(metrics_port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as response:
        return str(response.read().decode())


def test_every_worker_answers_with_health_and_reflection(
    workers: Workers,
) -> None:
    serve, events = workers.serve, workers.events
    port, pids = workers.port, workers.pids
    assert len(pids) == 2 and serve.process.pid not in pids
    opened = channels(port)
    try:
        for n, channel in enumerate(opened):
            assert health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5).status == (
                health_pb2.HealthCheckResponse.SERVING
            )
            reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
            (answer,) = reflection.ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")])
            )
            assert "movierec.v1.RecommenderService" in {s.name for s in answer.list_services_response.service}
            for row in range(3):
                pb_grpc.RecommenderServiceStub(channel).Recommend(
                    pb.RecommendRequest(user_id=user_id_of_row((n + row) % N_USERS), k=5), timeout=5
                )
        per_worker = handled_by_pid(events["metrics"]["multiprocess_dir"], pids)
        assert sum(per_worker.values()) == 3 * CONNECTIONS
        assert min(per_worker.values()) > 0, per_worker  # the kernel spread the connections over both
        exposed = scrape(events["metrics"]["metrics_port"])
        summed = [
            line
            for line in exposed.splitlines()
            if line.startswith("grpc_server_handled_total{") and 'grpc_method="Recommend"' in line
        ]
        assert summed and float(summed[0].rsplit(" ", 1)[1]) == 3 * CONNECTIONS  # one endpoint, both workers
    finally:
        for channel in opened:
            channel.close()


def test_an_event_recorded_on_one_worker_is_excluded_by_all_within_100_ms(
    workers: Workers,
) -> None:
    events = workers.events
    opened = channels(events["listening"]["port"])
    try:
        stubs = [pb_grpc.RecommenderServiceStub(channel) for channel in opened]
        user = user_id_of_row(7)
        for trial in range(3):
            top = stubs[0].Recommend(pb.RecommendRequest(user_id=user, k=1), timeout=5).items[0].item_id
            stubs[trial + 1].RecordInteractions(pb.RecordInteractionsRequest(user_id=user, item_ids=[top]), timeout=5)
            time.sleep(0.1)
            for stub in stubs:
                answer = stub.Recommend(pb.RecommendRequest(user_id=user, k=20), timeout=5)
                assert top not in [item.item_id for item in answer.items]
    finally:
        for channel in opened:
            channel.close()


def test_sigterm_drains_every_worker(workers: Workers) -> None:
    serve = workers.serve
    pids = workers.pids
    serve.process.send_signal(signal.SIGTERM)
    assert serve.process.wait(30) == 0
    kinds = []
    while not serve.events.empty():
        kinds.append(serve.next_event(1)["event"])
    assert kinds[-2:] == ["draining", "stopped"]
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_a_call_made_after_the_draining_line_is_unavailable_on_every_worker(workers: Workers) -> None:
    """A client that saw "draining" and calls again on any open connection is refused (UNAVAILABLE: retry on
    another replica), not answered: the parent says it only once every worker's shutdown has begun."""
    opened = channels(workers.port)
    try:
        stubs = [pb_grpc.RecommenderServiceStub(channel) for channel in opened]
        for stub in stubs:
            assert len(stub.Recommend(pb.RecommendRequest(user_id=user_id_of_row(0), k=3), timeout=10).items) == 3
        per_worker = handled_by_pid(workers.events["metrics"]["multiprocess_dir"], workers.pids)
        assert min(per_worker.values()) > 0, per_worker  # open connections to both workers
        workers.serve.process.send_signal(signal.SIGTERM)
        while workers.serve.next_event(10)["event"] != "draining":
            pass
        for stub in stubs:
            with pytest.raises(grpc.RpcError) as refused:
                stub.Recommend(pb.RecommendRequest(user_id=user_id_of_row(0), k=3), timeout=10)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        for channel in opened:
            channel.close()
    assert workers.serve.process.wait(30) == 0


def test_a_new_version_reaches_every_worker(workers: Workers, store: Path, tmp_path: Path) -> None:
    events = workers.events
    old = events["serving"]["index_version"]
    new = build_index(make_model_bundle(tmp_path / "model2", n_users=N_USERS, n_items=90, dim=8, seed=3), store).name
    assert new != old
    opened = channels(events["listening"]["port"])
    try:
        deadline = time.monotonic() + 20
        versions: set[str] = set()
        while time.monotonic() < deadline:
            versions = {
                pb_grpc.RecommenderServiceStub(c).GetInfo(pb.GetInfoRequest(), timeout=5).index_version for c in opened
            }
            if versions == {new}:
                break
            time.sleep(0.1)
        assert versions == {new}
    finally:
        for channel in opened:
            channel.close()


def test_one_reload_call_reaches_every_worker(store: Path, tmp_path: Path) -> None:
    """Without polling, one ReloadIndex (answered by one worker) swaps every worker, and nothing loops: the
    parent and both workers stay alive and keep serving the new version."""
    serve = ServeProcess("--index", str(store), "--workers", "2", "--poll", "0", "--grace", "2")
    pids: list[int] = []
    try:
        events = serve.wait_serving()
        pids = [int(pid) for pid in events["serving"]["pids"]]
        new = build_index(make_model_bundle(tmp_path / "model2", n_users=N_USERS, n_items=90, dim=8, seed=3), store)
        opened = channels(events["listening"]["port"])
        try:
            stubs = [pb_grpc.RecommenderServiceStub(channel) for channel in opened]
            answer = stubs[0].ReloadIndex(pb.ReloadIndexRequest(), timeout=30)
            assert answer.swapped and answer.index_version == new.name
            deadline = time.monotonic() + 10
            while (versions := {s.GetInfo(pb.GetInfoRequest(), timeout=5).index_version for s in stubs}) != {new.name}:
                assert time.monotonic() < deadline, versions
                time.sleep(0.05)
            time.sleep(0.5)  # a SIGHUP loop would show as repeated reloads or a dead process by now
            infos = [s.GetInfo(pb.GetInfoRequest(), timeout=5) for s in stubs]
            assert {info.index_version for info in infos} == {new.name}
            assert {info.swap_count for info in infos} == {1}
        finally:
            for channel in opened:
                channel.close()
        assert serve.process.poll() is None
        for pid in pids:
            os.kill(pid, 0)  # alive
    finally:
        serve.close()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _http_handled(metrics_dir: str, pid: int) -> float:
    """HTTP requests one worker answered, read from its own multiprocess counter file."""
    return sum(
        sample.value
        for metric in multiprocess.MultiProcessCollector.merge([f"{metrics_dir}/counter_{pid}.db"])  # type: ignore[no-untyped-call]
        for sample in metric.samples
        if sample.name == "grpc_server_handled_total" and sample.labels.get("grpc_type") == "http"
    )


def test_http_port_0_is_one_port_for_every_worker(store: Path) -> None:
    """``--http-port 0 --workers 2``: the parent picks the HTTP port and both workers join it (fresh connections
    reach both, as on gRPC's port); the HTTP requests are counted, per worker, beside the gRPC calls."""
    serve = ServeProcess(
        *("--index", str(store), "--workers", "2", "--http-port", "0"), *("--metrics-port", "0", "--poll", "0")
    )
    pids: list[int] = []
    try:
        events = serve.wait_serving()
        pids = [int(pid) for pid in events["serving"]["pids"]]
        http_port = int(events["listening"]["http_port"])
        assert http_port > 0 and http_port != events["listening"]["port"]
        assert events["serving"]["http_port"] == http_port
        for n in range(CONNECTIONS):  # a new connection each time: the kernel spreads them over the workers
            with httpx.Client(base_url=f"http://127.0.0.1:{http_port}", timeout=10) as client:
                answer = client.post("/recommend", json={"user_id": user_id_of_row(n % N_USERS), "k": 3})
                assert answer.status_code == 200 and len(answer.json()["items"]) == 3
        deadline = time.monotonic() + 5  # a request is counted just after its last byte is sent
        while True:
            per_worker = {pid: _http_handled(events["metrics"]["multiprocess_dir"], pid) for pid in pids}
            if sum(per_worker.values()) == CONNECTIONS or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert sum(per_worker.values()) == CONNECTIONS and min(per_worker.values()) > 0, per_worker
    finally:
        serve.close()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_a_dead_worker_is_replaced(workers: Workers) -> None:
    serve, events = workers.serve, workers.events
    pids = workers.pids
    os.kill(pids[0], signal.SIGKILL)
    port = events["listening"]["port"]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # the survivor answers meanwhile, and a new worker joins
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            pb_grpc.RecommenderServiceStub(channel).GetInfo(pb.GetInfoRequest(), timeout=5, wait_for_ready=True)
        children = Path(f"/proc/{serve.process.pid}/task/{serve.process.pid}/children").read_text().split()
        alive = [int(pid) for pid in children if int(pid) != pids[0]]
        if len(alive) >= 2:
            break
        time.sleep(0.2)
    assert len(alive) >= 2


def _pss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1])
    raise AssertionError(f"no Pss line for {pid}")


@pytest.mark.skipif(not Path("/proc/self/smaps_rollup").is_file(), reason="PSS is read from Linux's smaps_rollup")
def test_two_workers_cost_at_most_1_6_times_one_server_in_memory(tmp_path: Path) -> None:
    """Summed PSS of the parent and both workers against one ordinary server on the same index (big enough that
    its arrays matter): the index is loaded once before the fork (and its ranked prefixes are memory-mapped), so
    the second worker costs little more than its own interpreter state."""
    model = make_model_bundle(tmp_path / "model", n_users=3000, n_items=2000, dim=32, seen_per_user=50)
    store = build_index(model, tmp_path / "index").parent
    measured = []
    for args in (("--workers", "2"), ()):
        serve = ServeProcess("--index", str(store), "--poll", "0", *args)
        try:
            events = serve.wait_serving()
            time.sleep(0.5)
            measured.append(sum(_pss_kib(pid) for pid in [serve.process.pid, *events["serving"].get("pids", [])]))
        finally:
            serve.close()
    together, one = measured
    assert together <= 1.6 * one, (together, one)


def test_processes_sharing_a_log_file_see_each_others_events_within_100_ms(tmp_path: Path) -> None:
    """SharedFileLog, the SQLite log as every worker reads it: another writer's events arrive within one poll,
    the newest event of an item wins whoever wrote it, and a truncation made by one is forgotten by the other
    within a poll too (every retained version holds those events), so no process's cap counts them."""
    from movierec.server.event_stores import SharedFileLog

    path = tmp_path / "events.sqlite3"
    with SharedFileLog(path) as one, SharedFileLog(path) as other:
        one.record(7, [10, 11], [5.0, 5.0])
        acknowledged = time.perf_counter()
        while other.extra_seen(7).tolist() != [10, 11]:
            assert time.perf_counter() - acknowledged < 0.1, "not seen within 100 ms"
            time.sleep(0.002)
        assert other.liked(7).tolist() == [10, 11]
        last = other.record(7, [10], [1.0])  # re-rated elsewhere: no longer liked, still seen
        assert other.liked(7).tolist() == [11]
        deadline = time.perf_counter() + 0.1
        while one.liked(7).tolist() != [11]:
            assert time.perf_counter() < deadline, "the newer rating did not reach the other process"
            time.sleep(0.002)
        assert one.last_offset == other.last_offset == last
        one.truncate_through(last - 1)  # [11] is in an index now; 10's newest event (at `last`) is not
        assert one.extra_seen(7).tolist() == [10]
        deadline = time.perf_counter() + 0.1
        while other.extra_seen(7).tolist() != [10]:
            assert time.perf_counter() < deadline, "the other process kept events the file no longer holds"
            time.sleep(0.002)


def test_the_live_item_cap_counts_every_process_events(tmp_path: Path) -> None:
    """One user's cap is the file's, not one process's: items another process recorded take room here."""
    from movierec.server.event_stores import SharedFileLog
    from movierec.server.interaction_log import LiveEventCapExceeded

    path = tmp_path / "events.sqlite3"
    with SharedFileLog(path, max_live_items_per_user=3) as one, SharedFileLog(path, max_live_items_per_user=3) as other:
        one.record(7, [10, 11])
        deadline = time.perf_counter() + 1.0
        while other.extra_seen(7).size < 2:
            assert time.perf_counter() < deadline, "the other process's events never arrived"
            time.sleep(0.005)
        with pytest.raises(LiveEventCapExceeded):
            other.record(7, [12, 13])
        assert other.record(7, [11, 12]) > 0  # 11 is live already: it takes no more room
        assert other.extra_seen(7).tolist() == [10, 11, 12]
