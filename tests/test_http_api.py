"""The HTTP/JSON API (``recctl serve --http-port``) against a real server process, with a real HTTP client.

Answers are compared with gRPC's from the same process: same items, same order, same scores.
"""

from __future__ import annotations

import signal
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from bundle_factory import GENRES, item_id_of_row, make_model_bundle, user_id_of_row
from server_harness import RECCTL, STARTUP_TIMEOUT, ServeProcess, ServerThread, make_index
from test_auth import Pki, pki  # noqa: F401  (pki is the fixture: a throw-away CA and server certificate)

from movierec.index import ServingIndex, build_index
from movierec.server.app import ServerConfig, load_index
from movierec.v1 import recommender_pb2 as pb
from movierec.v1 import recommender_pb2_grpc as pb_grpc

N_USERS, N_ITEMS = 12, 60
TOKEN = "http-s3cret-token"


@pytest.fixture(scope="module")
def index_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_index(tmp_path_factory.mktemp("http"), n_users=N_USERS, n_items=N_ITEMS, dim=8, seen_per_user=5)


@pytest.fixture(scope="module")
def served(index_root: Path) -> Iterator[tuple[str, str]]:
    """``recctl serve --http-port 0``: yields the HTTP base URL and the gRPC target of one process."""
    process = ServeProcess("--index", str(index_root), "--http-port", "0")
    try:
        events = process.wait_serving()
        listening = events["listening"]
        assert listening["http_port"] > 0 and listening["http_port"] != listening["port"]
        assert events["serving"]["http_port"] == listening["http_port"]
        yield f"http://127.0.0.1:{listening['http_port']}", f"127.0.0.1:{listening['port']}"
    finally:
        process.close()


@pytest.fixture(scope="module")
def http(served: tuple[str, str]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=served[0], timeout=10) as client:
        yield client


@pytest.fixture(scope="module")
def stub(served: tuple[str, str]) -> Iterator[pb_grpc.RecommenderServiceStub]:
    with grpc.insecure_channel(served[1]) as channel:
        yield pb_grpc.RecommenderServiceStub(channel)


def _items(answer: dict[str, Any]) -> list[tuple[int, float, int, str, list[str], int | None, int | None]]:
    return [
        (i["item_id"], i["score"], i["rank"], i["title"], i["genres"], i["year"], i["because_item_id"])
        for i in answer["items"]
    ]


def _grpc_items(response: Any) -> list[tuple[int, float, int, str, list[str], int | None, int | None]]:
    return [
        (
            i.item_id,
            i.score,
            i.rank,
            i.title,
            list(i.genres),
            i.year if i.HasField("year") else None,
            i.because_item_id if i.HasField("because_item_id") else None,
        )
        for i in response.items
    ]


CASES: list[dict[str, Any]] = [
    {"k": 5},
    {"k": 7, "exclude_item_ids": [item_id_of_row(r) for r in range(0, N_ITEMS, 3)]},
    {"k": 4, "include_genres": [GENRES[0], GENRES[2]], "min_year": 1985},
    {"k": 6, "exclude_genres": [GENRES[1]], "max_year": 2010, "exclude_item_ids": [item_id_of_row(5)]},
    {"k": 3, "explain": True},
    {"k": 5, "diversity": 0.6, "exclude_genres": [GENRES[4]]},
    {"k": N_ITEMS},  # deeper than what is left unseen: both answer every unseen movie
]


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=lambda case: ",".join(sorted(case)))
def test_recommend_answers_exactly_what_grpc_answers(
    http: httpx.Client, stub: pb_grpc.RecommenderServiceStub, case: dict[str, Any]
) -> None:
    grpc_filter = {
        name: case[name] for name in ("include_genres", "exclude_genres", "min_year", "max_year") if name in case
    }
    for row in (0, 3, 7, N_USERS - 1):
        user_id = user_id_of_row(row)
        answer = http.post("/recommend", json={"user_id": user_id, "request_id": f"r{row}", **case})
        assert answer.status_code == 200, answer.text
        body = answer.json()
        expected = stub.Recommend(
            pb.RecommendRequest(
                user_id=user_id,
                k=case["k"],
                exclude_item_ids=case.get("exclude_item_ids", []),
                filter=pb.ItemFilter(**grpc_filter),
                explain=case.get("explain", False),
                diversity=case.get("diversity"),
            ),
            timeout=10,
        )
        assert _items(body) == _grpc_items(expected) and body["items"]
        assert body["request_id"] == f"r{row}"
        assert (body["model_version"], body["index_version"]) == (expected.model_version, expected.index_version)
        returned = {item["item_id"] for item in body["items"]}
        assert not returned & set(case.get("exclude_item_ids", []))
        if "include_genres" in case:
            assert all(set(item["genres"]) & set(case["include_genres"]) for item in body["items"])
        if case.get("explain"):
            assert any(item["because_item_id"] is not None for item in body["items"])


@pytest.mark.slow
def test_similar_and_info_match_grpc(http: httpx.Client, stub: pb_grpc.RecommenderServiceStub) -> None:
    for item_row, user_id, excluded in ((0, None, []), (4, user_id_of_row(2), [GENRES[3]])):
        item_id = item_id_of_row(item_row)
        answer = http.post(
            "/similar", json={"item_id": item_id, "k": 5, "user_id": user_id, "exclude_genres": excluded}
        )
        assert answer.status_code == 200, answer.text
        request = pb.SimilarItemsRequest(item_id=item_id, k=5, filter=pb.ItemFilter(exclude_genres=excluded))
        if user_id is not None:
            request.user_id = user_id
        assert _items(answer.json()) == _grpc_items(stub.SimilarItems(request, timeout=10))
    assert http.post("/similar", json={"item_id": 7, "k": 5}).status_code == 404

    info = http.get("/info")
    assert info.status_code == 200
    expected = stub.GetInfo(pb.GetInfoRequest(), timeout=10)
    got = info.json()
    assert (got["index_version"], got["user_count"], got["item_count"]) == (
        expected.index_version,
        N_USERS,
        N_ITEMS,
    )
    assert got["genres"] == list(expected.genres) and got["max_k"] == expected.max_k


@pytest.mark.slow
def test_unknown_user_bad_k_and_bad_json_are_clear_errors(http: httpx.Client) -> None:
    unknown = http.post("/recommend", json={"user_id": 2, "k": 3})  # the factory's user ids are odd
    assert unknown.status_code == 404
    assert unknown.json()["code"] == "NOT_FOUND" and "unknown user id 2" in unknown.json()["message"]

    for k in (0, -1, 100_000):
        bad_k = http.post("/recommend", json={"user_id": 1, "k": k})
        assert bad_k.status_code == 400, bad_k.text
        assert bad_k.json() == {
            "code": "INVALID_ARGUMENT",
            "message": f"k must be between 1 and 1000, got {k}",  # word for word what gRPC says
            "field": "k",
        }
    for body, field in (
        ({"user_id": 1, "k": "ten"}, "k"),
        ({"user_id": 1, "k": 2.5}, "k"),
        ({"user_id": 1, "k": 2**40}, "k"),
        ({"user_id": True, "k": 3}, "user_id"),
        ({"k": 3}, "user_id"),
        ({"user_id": 1, "kk": 3}, "kk"),
        ({"user_id": 1, "exclude_item_ids": ["x"]}, "exclude_item_ids.0"),
    ):
        refused = http.post("/recommend", json=body)
        assert refused.status_code == 422, (body, refused.text)
        assert refused.json()["field"] == field and refused.json()["message"], body
    assert "unknown field 'kk'" in http.post("/recommend", json={"user_id": 1, "kk": 3}).json()["message"]

    headers = {"Content-Type": "application/json"}
    malformed = http.post("/recommend", content=b'{"user_id": 1, "k": 3', headers=headers)
    assert malformed.status_code == 400
    assert malformed.json()["message"].startswith("malformed JSON body at character")
    not_json = http.post("/recommend", content=b"user_id=1", headers={"Content-Type": "text/plain"})
    assert not_json.status_code == 400 and "Content-Type: application/json" in not_json.json()["message"]
    for diversity in (1.5, -0.1):
        refused = http.post("/recommend", json={"user_id": 1, "k": 3, "diversity": diversity})
        assert refused.status_code == 400 and refused.json()["field"] == "diversity", refused.text
    assert http.post("/recommend", json={"user_id": 1, "diversity": True}).status_code == 422
    genre = http.post("/recommend", json={"user_id": 1, "include_genres": ["Western?"]})
    assert genre.status_code == 400 and "Western?" in genre.json()["message"]

    huge = http.post("/recommend", content=b"[" + b"1," * 400_000 + b"1]", headers=headers)
    assert huge.status_code == 413 and huge.json()["code"] == "RESOURCE_EXHAUSTED"
    assert http.get("/recommend").status_code == 405
    assert http.get("/no-such-route").json()["code"] == "NOT_FOUND"


@pytest.mark.slow
def test_openapi_and_docs_are_served(http: httpx.Client) -> None:
    schema = http.get("/openapi.json")
    assert schema.status_code == 200
    paths = schema.json()["paths"]
    assert {"/recommend", "/similar", "/health", "/info"} <= set(paths)
    assert "user_id" in schema.json()["components"]["schemas"]["RecommendBody"]["properties"]
    docs = http.get("/docs")
    assert docs.status_code == 200 and docs.headers["content-type"].startswith("text/html")
    assert "/openapi.json" in docs.text


@pytest.mark.slow
def test_token_and_tls_are_those_of_grpc(tmp_path: Path, index_root: Path, pki: Pki) -> None:  # noqa: F811
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    process = ServeProcess(
        "--index", str(index_root), "--http-port", "0", "--token-file", str(token_file),
        "--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key),
    )  # fmt: skip
    try:
        port = process.wait_serving()["listening"]["http_port"]
        body = {"user_id": user_id_of_row(0), "k": 3}
        with httpx.Client(
            base_url=f"https://localhost:{port}", verify=ssl.create_default_context(cafile=pki.ca), timeout=10
        ) as client:
            assert client.get("/health").json()["status"] == "SERVING"  # public, like gRPC health
            schema = client.get("/openapi.json")  # public, like reflection; it declares the bearer scheme
            assert schema.status_code == 200 and "HTTPBearer" in schema.json()["components"]["securitySchemes"]
            for headers, message in (
                ({}, "missing bearer token"),
                ({"Authorization": "Basic abc"}, "malformed Authorization header"),
                ({"Authorization": "Bearer wrong-token-here"}, "invalid bearer token"),
            ):
                refused = client.post("/recommend", json=body, headers=headers)
                assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer"
                assert refused.json()["code"] == "UNAUTHENTICATED" and message in refused.json()["message"]
            assert client.get("/info").status_code == 401
            granted = client.post("/recommend", json=body, headers={"Authorization": f"Bearer {TOKEN}"})
            assert granted.status_code == 200 and len(granted.json()["items"]) == 3
        with httpx.Client(timeout=5) as plaintext, pytest.raises(httpx.HTTPError):
            plaintext.get(f"http://127.0.0.1:{port}/health")
    finally:
        process.close()


@pytest.mark.slow
def test_health_is_503_while_loading_then_200(index_root: Path) -> None:
    """In process (the load is held back on purpose), still over a real socket and a real client."""
    release = threading.Event()

    def slow_loader(path: Path) -> ServingIndex:
        release.wait(30)
        return load_index(path)

    server = ServerThread(ServerConfig(index_root, http_port=0, poll_seconds=0), loader=slow_loader)
    try:
        assert server.server.http is not None and server.server.http.port is not None
        base = f"http://127.0.0.1:{server.server.http.port}"
        loading = server.start_loading()
        with httpx.Client(base_url=base, timeout=10) as client:
            health = client.get("/health")
            assert (health.status_code, health.json()["status"]) == (503, "NOT_SERVING")
            early = client.post("/recommend", json={"user_id": user_id_of_row(0), "k": 3})
            assert early.status_code == 503 and early.json()["code"] == "UNAVAILABLE"
            assert early.headers["retry-after"] == "1"
            release.set()
            loading.result(STARTUP_TIMEOUT)
            health = client.get("/health")
            assert (health.status_code, health.json()["status"]) == (200, "SERVING")
            assert client.post("/recommend", json={"user_id": user_id_of_row(0), "k": 3}).status_code == 200
    finally:
        release.set()
        server.stop()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{base}/health", timeout=5)


@pytest.mark.slow
def test_sigterm_stops_http_with_grpc_and_a_taken_port_is_one_line(index_root: Path) -> None:
    process = ServeProcess("--index", str(index_root), "--http-port", "0")
    try:
        port = process.wait_serving()["listening"]["http_port"]
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            assert client.get("/health").status_code == 200  # a keep-alive connection is open at SIGTERM
            process.process.send_signal(signal.SIGTERM)
            assert process.process.wait(15) == 0
        kinds = [process.next_event(5)["event"] for _ in range(2)]
        assert kinds == ["draining", "stopped"]
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://127.0.0.1:{port}/health", timeout=5)
    finally:
        process.close()

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        result = subprocess.run(
            [RECCTL, "serve", "--index", str(index_root), "--port", "0", "--http-port", str(busy)],
            capture_output=True,
            text=True,
            timeout=STARTUP_TIMEOUT,
        )
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{busy} for HTTP" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow
def test_a_hot_swap_reaches_http_and_grpc_alike(tmp_path: Path) -> None:
    index_root = make_index(tmp_path, n_users=N_USERS, n_items=N_ITEMS, dim=8, seen_per_user=5)
    process = ServeProcess("--index", str(index_root), "--http-port", "0", "--poll", "0.2")
    try:
        listening = process.wait_serving()["listening"]
        with (
            httpx.Client(base_url=f"http://127.0.0.1:{listening['http_port']}", timeout=10) as client,
            grpc.insecure_channel(f"127.0.0.1:{listening['port']}") as channel,
        ):
            first = client.get("/info").json()["index_version"]
            other_model = make_model_bundle(tmp_path / "model2", n_users=N_USERS, n_items=N_ITEMS, dim=8, seed=5)
            second = build_index(other_model, index_root).name
            assert second != first
            deadline = time.monotonic() + STARTUP_TIMEOUT
            while client.get("/info").json()["index_version"] != second:
                assert time.monotonic() < deadline, "the HTTP API never saw the new version"
                time.sleep(0.1)
            answer = client.post("/recommend", json={"user_id": user_id_of_row(1), "k": 5}).json()
            expected = pb_grpc.RecommenderServiceStub(channel).Recommend(
                pb.RecommendRequest(user_id=user_id_of_row(1), k=5), timeout=10
            )
            assert answer["index_version"] == expected.index_version == second
            assert _items(answer) == _grpc_items(expected)
    finally:
        process.close()


@pytest.mark.slow
def test_connections_beyond_the_concurrency_cap_are_refused(index_root: Path) -> None:
    """uvicorn counts open connections against max_concurrent_rpcs (the cap gRPC calls have): 503 beyond."""
    server = ServerThread(ServerConfig(index_root, http_port=0, poll_seconds=0, max_concurrent_rpcs=2))
    try:
        server.start_loading().result(STARTUP_TIMEOUT)
        assert server.server.http is not None
        base = f"http://127.0.0.1:{server.server.http.port}"
        with httpx.Client(base_url=base, timeout=10) as first, httpx.Client(base_url=base, timeout=10) as second:
            assert first.get("/health").status_code == 200
            assert second.get("/health").status_code == 503  # the first connection is still open (keep-alive)
        deadline = time.monotonic() + 10  # both closed: room again, once the server has seen them go
        while (status := httpx.get(f"{base}/health", timeout=10).status_code) != 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert status == 200
    finally:
        server.stop()


def _handled_lines(metrics_port: int) -> dict[tuple[str, str, str], float]:
    """grpc_server_handled_total by (method, type, code), scraped from the metrics port."""
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as response:
        text = response.read().decode()
    counts: dict[tuple[str, str, str], float] = {}
    for line in text.splitlines():
        if line.startswith("grpc_server_handled_total{"):
            labels = dict(part.split("=", 1) for part in line[line.index("{") + 1 : line.index("}")].split(","))
            key = (labels["grpc_method"].strip('"'), labels["grpc_type"].strip('"'), labels["grpc_code"].strip('"'))
            counts[key] = float(line.rsplit(" ", 1)[1])
    return counts


def test_http_requests_are_counted_in_the_metrics_beside_grpc(index_root: Path) -> None:
    """Same metric names as gRPC calls, the gRPC method of the same meaning, grpc_type="http", and the gRPC code
    the HTTP status means; gRPC calls stay apart (their own grpc_type)."""
    process = ServeProcess("--index", str(index_root), "--http-port", "0", "--metrics-port", "0")
    try:
        events = process.wait_serving()
        base = f"http://127.0.0.1:{events['listening']['http_port']}"
        with httpx.Client(base_url=base, timeout=10) as client:
            for row in range(3):
                assert client.post("/recommend", json={"user_id": user_id_of_row(row), "k": 3}).status_code == 200
            assert client.post("/recommend", json={"user_id": user_id_of_row(0), "k": 0}).status_code == 400
            assert client.post("/recommend", json={"user_id": "1"}).status_code == 422
            assert client.post("/recommend", json={"user_id": 2**40, "k": 3}).status_code == 404
            assert client.post("/similar", json={"item_id": item_id_of_row(0), "k": 3}).status_code == 200
            assert client.get("/health").status_code == 200
            assert client.get("/docs").status_code == 200  # not a counted route
        with grpc.insecure_channel(f"127.0.0.1:{events['listening']['port']}") as channel:
            pb_grpc.RecommenderServiceStub(channel).Recommend(
                pb.RecommendRequest(user_id=user_id_of_row(1), k=3), timeout=10
            )
        deadline = time.monotonic() + 5  # a request is counted just after its last byte is sent
        while (handled := _handled_lines(events["metrics"]["metrics_port"])).get(("Check", "http", "OK")) != 1:
            assert time.monotonic() < deadline, handled
            time.sleep(0.05)
        assert handled[("Recommend", "http", "OK")] == 3
        assert handled[("Recommend", "http", "INVALID_ARGUMENT")] == 2  # the engine's 400 and the schema's 422
        assert handled[("Recommend", "http", "NOT_FOUND")] == 1
        assert handled[("SimilarItems", "http", "OK")] == 1
        assert handled[("Check", "http", "OK")] == 1
        assert handled[("Recommend", "unary", "OK")] == 1  # the gRPC call, apart from the HTTP ones
        assert not [key for key in handled if key[1] == "http" and key[0] not in {"Recommend", "SimilarItems", "Check"}]
    finally:
        process.close()
