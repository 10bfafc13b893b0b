"""One client over several replicas: calls spread round-robin, and a replica killed under load fails no call."""

from __future__ import annotations

import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from bundle_factory import user_id_of_row
from server_harness import ServeProcess, make_index

from movierec.clients.client import RecommenderClient, RecommenderError, channel_target_of, service_config

N_USERS = 30
LOAD_THREADS = 4


@pytest.fixture(scope="module")
def index_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_index(tmp_path_factory.mktemp("replicas"), n_users=N_USERS, n_items=80, dim=8, seen_per_user=6)


@pytest.fixture
def replicas(index_root: Path, tmp_path: Path) -> Iterator[list[Replica]]:
    started = [
        ServeProcess(
            "--index",
            str(index_root),
            "--events",
            str(tmp_path / f"events-{n}.sqlite3"),
            "--grace",
            "0",
            "--metrics-port",
            "0",
        )
        for n in range(2)
    ]
    try:
        replicas = []
        for process in started:
            events = process.wait_serving()
            replicas.append(Replica(process, events["listening"]["port"], events["metrics"]["metrics_port"]))
        yield replicas
    finally:
        for process in started:
            process.close()


@dataclass(frozen=True)
class Replica:
    serve: ServeProcess
    port: int
    metrics_port: int

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def recommend_calls(self) -> int:
        """How many Recommend calls this replica has answered, from its own Prometheus metrics."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as response:
            text = response.read().decode()
        return sum(
            int(float(line.rsplit(" ", 1)[1]))
            for line in text.splitlines()
            if line.startswith("grpc_server_handled_total{") and 'grpc_method="Recommend"' in line
        )


def test_a_list_of_replicas_becomes_one_static_target() -> None:
    assert channel_target_of(["127.0.0.1:5001", "localhost:5002"])[0].startswith("ipv4:127.0.0.1:5001,127.0.0.1:5002")
    assert channel_target_of("dns:///recommender:50051") == ("dns:///recommender:50051", None)
    with pytest.raises(ValueError, match="HOST:PORT"):
        channel_target_of(["127.0.0.1"])
    assert '"round_robin"' in service_config() and '"UNAVAILABLE"' in service_config()


def test_calls_spread_over_every_replica(replicas: list[Replica]) -> None:
    with RecommenderClient([replica.target for replica in replicas], timeout=5) as client:
        client.wait_until_serving(30)
        for n in range(40):
            assert len(client.recommend(user_id_of_row(n % N_USERS), 5).items) == 5
    counts = [replica.recommend_calls() for replica in replicas]
    assert sum(counts) == 40
    assert min(counts) >= 10, counts  # round_robin: about half each (pick_first would give 40 and 0)


def test_killing_a_replica_under_load_fails_no_call(replicas: list[Replica]) -> None:
    calls, failures = [0], []
    stop = threading.Event()
    with RecommenderClient([replica.target for replica in replicas], timeout=10) as client:
        client.wait_until_serving(30)
        # Both replicas up and connected before the load starts (round_robin connects to every address).
        for n in range(10):
            client.recommend(user_id_of_row(n), 5)

        def load() -> None:
            n = 0
            while not stop.is_set():
                n += 1
                try:
                    answer = client.recommend(user_id_of_row(n % N_USERS), 5)
                    assert len(answer.items) == 5
                    calls[0] += 1
                except RecommenderError as error:
                    failures.append(error)

        threads = [threading.Thread(target=load) for _ in range(LOAD_THREADS)]
        for thread in threads:
            thread.start()
        time.sleep(1.0)
        before_kill = calls[0]
        replicas[0].serve.process.kill()  # SIGKILL: no drain, connections reset mid-call
        replicas[0].serve.process.wait(10)
        time.sleep(2.0)
        stop.set()
        for thread in threads:
            thread.join(20)
    assert before_kill > 20, "the load never got going"
    assert calls[0] > before_kill + 20, "the surviving replica did not take the load"
    assert failures == []
