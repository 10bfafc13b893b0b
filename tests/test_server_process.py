"""``recctl serve`` as a real process: free port announced, SIGTERM drains in-flight calls and exits 0."""

from __future__ import annotations

import queue
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from bundle_factory import user_id_of_row
from server_harness import RECCTL, STARTUP_TIMEOUT, ServeProcess, make_index

from movierec.v1 import recommender_pb2 as pb
from movierec.v1 import recommender_pb2_grpc as pb_grpc


@pytest.fixture(scope="module")
def index_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_index(tmp_path_factory.mktemp("process"), n_users=10, n_items=40, dim=4, seen_per_user=3)


@pytest.fixture()
def serve_process(index_root: Path) -> Iterator[ServeProcess]:
    process = ServeProcess("--index", str(index_root), "--grace", "20")
    try:
        yield process
    finally:
        process.close()


@pytest.mark.slow
def test_sigterm_drains_the_open_stream_then_exits_zero(serve_process: ServeProcess) -> None:
    listening = serve_process.next_event()
    assert listening["event"] == "listening" and listening["port"] > 0
    assert serve_process.next_event()["event"] == "serving"
    target = f"127.0.0.1:{listening['port']}"

    outgoing: queue.Queue[pb.RecommendStreamRequest | None] = queue.Queue()

    def requests() -> Iterator[pb.RecommendStreamRequest]:
        while (request := outgoing.get(timeout=30)) is not None:
            yield request

    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.RecommenderServiceStub(channel)
        responses = iter(stub.RecommendStream(requests(), timeout=30))
        outgoing.put(pb.RecommendStreamRequest(request_id="before", user_id=user_id_of_row(0), k=3))
        assert next(responses).request_id == "before"

        serve_process.process.send_signal(signal.SIGTERM)
        assert serve_process.next_event(10)["event"] == "draining"

        # The call that was in flight at SIGTERM keeps being served during the grace period ...
        outgoing.put(pb.RecommendStreamRequest(request_id="during", user_id=user_id_of_row(1), k=3))
        during = next(responses)
        assert during.request_id == "during" and len(during.items) == 3 and during.error.code == 0
        # ... while new calls are refused: a new caller gets UNAVAILABLE (retryable elsewhere). "draining" is
        # announced once grpc core's shutdown has begun; the listening socket itself closes on grpc's own
        # threads a moment later, so wait for that before dialling a fresh connection.
        _wait_until_refused(listening["port"])
        with grpc.insecure_channel(target) as fresh, pytest.raises(grpc.RpcError) as refused:
            pb_grpc.RecommenderServiceStub(fresh).Recommend(pb.RecommendRequest(user_id=1, k=3), timeout=5)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE

        outgoing.put(None)  # the client finishes; the server need not wait out the grace period
        assert list(responses) == []

    assert serve_process.process.wait(15) == 0
    assert serve_process.next_event(5)["event"] == "stopped"


@pytest.mark.slow
def test_a_call_made_after_the_draining_line_is_unavailable_not_served(serve_process: ServeProcess) -> None:
    """A client that saw "draining" and calls again on its open connection is refused (UNAVAILABLE: retry on
    another replica), not answered: the line comes only after the server's shutdown has begun."""
    port = serve_process.wait_serving()["listening"]["port"]
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.RecommenderServiceStub(channel)
        assert len(stub.Recommend(pb.RecommendRequest(user_id=user_id_of_row(0), k=3), timeout=10).items) == 3
        serve_process.process.send_signal(signal.SIGTERM)
        assert serve_process.next_event(10)["event"] == "draining"
        with pytest.raises(grpc.RpcError) as refused:
            stub.Recommend(pb.RecommendRequest(user_id=user_id_of_row(0), k=3), timeout=10)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    assert serve_process.process.wait(15) == 0


def _wait_until_refused(port: int, timeout: float = 10.0) -> None:
    """Return once nothing accepts connections on the port (the server closed its listener)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except ConnectionRefusedError:
            return
        assert time.monotonic() < deadline, "the server kept accepting connections while draining"
        time.sleep(0.01)


@pytest.mark.slow
def test_a_port_in_use_is_one_line_and_exit_one(index_root: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [RECCTL, "serve", "--index", str(index_root), "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=STARTUP_TIMEOUT,
            check=False,
        )
    assert result.returncode == 1
    assert result.stderr.startswith(f"recctl: error: cannot listen on 127.0.0.1:{port}")
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_a_bad_index_is_one_line_and_exit_one(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    result = subprocess.run(
        [RECCTL, "serve", "--index", str(tmp_path / "empty"), "--port", "0"],
        capture_output=True,
        text=True,
        timeout=STARTUP_TIMEOUT,
        check=False,
    )
    assert result.returncode == 1
    assert result.stderr.startswith("recctl: error: ") and str(tmp_path / "empty") in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
