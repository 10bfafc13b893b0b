"""Two ``recctl serve --events redis://...`` replicas sharing a real redis-server: an event recorded on one is
excluded by the other within 100 ms; Redis down means UNAVAILABLE writes, answers from what each replica has,
a health entry that says so, and recovery on its own; ``recctl index rebuild --events redis://`` compacts."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from bundle_factory import make_model_bundle, user_id_of_row
from grpc_health.v1 import health_pb2, health_pb2_grpc
from redis_harness import RedisServer, running_redis
from server_harness import RECCTL, ServeProcess

from movierec.index import build_index
from movierec.server.app import EVENTS_HEALTH_SERVICE
from movierec.v1 import recommender_pb2 as pb
from movierec.v1 import recommender_pb2_grpc as pb_grpc

N_USERS = 30
LAG_LIMIT_S = 0.1


@dataclass
class Replica:
    serve: ServeProcess
    channel: grpc.Channel

    @property
    def stub(self) -> pb_grpc.RecommenderServiceStub:
        return pb_grpc.RecommenderServiceStub(self.channel)

    def top(self, user: int, k: int = 20) -> list[int]:
        return [item.item_id for item in self.stub.Recommend(pb.RecommendRequest(user_id=user, k=k), timeout=5).items]

    def events_health(self) -> Any:
        request = health_pb2.HealthCheckRequest(service=EVENTS_HEALTH_SERVICE)
        return health_pb2_grpc.HealthStub(self.channel).Check(request, timeout=5).status


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    with running_redis(tmp_path) as started:
        yield started


@pytest.fixture
def models(tmp_path: Path) -> Path:
    make_model_bundle(tmp_path / "models" / "m1", n_users=N_USERS, n_items=90, dim=8, seen_per_user=6)
    return tmp_path / "models"


@pytest.fixture
def replicas(models: Path, tmp_path: Path, redis_server: RedisServer) -> Iterator[list[Replica]]:
    store = tmp_path / "index"
    build_index(models / "m1", store)
    started = [ServeProcess("--index", str(store), "--events", redis_server.url, "--poll", "0.2") for _ in range(2)]
    opened = []
    try:
        for serve in started:
            port = serve.wait_serving()["listening"]["port"]
            opened.append(Replica(serve, grpc.insecure_channel(f"127.0.0.1:{port}")))
        yield opened
    finally:
        for replica in opened:
            replica.channel.close()
        for serve in started:
            serve.close()


def wait_until(condition: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def events_health_is(replica: Replica, status: Any) -> Callable[[], bool]:
    return lambda: bool(replica.events_health() == status)


def compacted_through(replica: Replica, offset: int) -> Callable[[], bool]:
    return lambda: replica.stub.GetInfo(pb.GetInfoRequest(), timeout=5).events_through >= offset


def test_an_event_recorded_on_one_replica_is_excluded_on_the_other_within_100_ms(replicas: list[Replica]) -> None:
    first, second = replicas
    lags = []
    for row in range(5):
        user = user_id_of_row(row)
        top = second.top(user, 1)[0]
        first.stub.RecordInteractions(pb.RecordInteractionsRequest(user_id=user, item_ids=[top]), timeout=5)
        acknowledged = time.perf_counter()
        while top in second.top(user):
            assert time.perf_counter() - acknowledged < 5, "never excluded"
        lags.append(time.perf_counter() - acknowledged)
    assert max(lags) < LAG_LIMIT_S, lags


def test_redis_down_refuses_writes_serves_on_says_so_and_recovers(
    replicas: list[Replica], redis_server: RedisServer
) -> None:
    first, second = replicas
    user = user_id_of_row(3)
    top, other = first.top(user, 2)
    first.stub.RecordInteractions(pb.RecordInteractionsRequest(user_id=user, item_ids=[top]), timeout=5)
    assert wait_until(lambda: top not in second.top(user), 5)
    redis_server.kill()
    with pytest.raises(grpc.RpcError) as refused:
        first.stub.RecordInteractions(pb.RecordInteractionsRequest(user_id=user, item_ids=[other]), timeout=10)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    for replica in replicas:
        assert wait_until(events_health_is(replica, health_pb2.HealthCheckResponse.NOT_SERVING), 10)
        overall = health_pb2_grpc.HealthStub(replica.channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert overall.status == health_pb2.HealthCheckResponse.SERVING  # recommendations go on
        assert top not in replica.top(user)  # from what the replica already has
    redis_server.start()  # on its AOF
    for replica in replicas:
        assert wait_until(events_health_is(replica, health_pb2.HealthCheckResponse.SERVING), 15)
    second_top = second.top(user, 1)[0]
    second.stub.RecordInteractions(pb.RecordInteractionsRequest(user_id=user, item_ids=[second_top]), timeout=5)
    assert wait_until(lambda: second_top not in first.top(user) and top not in first.top(user), 5)


def test_rebuild_compacts_from_redis_and_the_replicas_swap(
    replicas: list[Replica], redis_server: RedisServer, models: Path, tmp_path: Path
) -> None:
    first = replicas[0]
    user = user_id_of_row(5)
    top = first.top(user, 1)[0]
    recorded = first.stub.RecordInteractions(pb.RecordInteractionsRequest(user_id=user, item_ids=[top]), timeout=5)
    result = subprocess.run(
        [
            RECCTL,
            "index",
            "rebuild",
            "--models",
            str(models),
            "--out",
            str(tmp_path / "index"),
            "--events",
            redis_server.url,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    for replica in replicas:
        assert wait_until(compacted_through(replica, recorded.offset), 20)
        assert top not in replica.top(user)  # now held by the index itself


def test_a_bad_redis_url_is_one_line(tmp_path: Path) -> None:
    result = subprocess.run(
        [RECCTL, "serve", "--index", str(tmp_path), "--events", "redis://host:notaport/0"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "not a Redis URL" in result.stderr and "Traceback" not in result.stderr
