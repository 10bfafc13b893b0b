"""RecommenderClient and ``recctl recommend | similar | info`` against a real server on 127.0.0.1."""

from __future__ import annotations

import dataclasses
import json
import socket
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from bundle_factory import item_id_of_row, user_id_of_row
from server_harness import ServerThread, make_index, serving

from movierec.clients import (
    InvalidArgumentError,
    NotFoundError,
    RecommenderClient,
    RecommenderError,
    ServerUnavailableError,
    StreamQuery,
)
from movierec.clients.cli.main import main
from movierec.index import ServingIndex, open_index
from movierec.server.app import ServerConfig
from movierec.server.limits import Limits

MAX_K = 40


@pytest.fixture(scope="module")
def index_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_index(tmp_path_factory.mktemp("client"), n_users=12, n_items=60, dim=4, seen_per_user=6)


@pytest.fixture(scope="module")
def index(index_root: Path) -> ServingIndex:
    return open_index(index_root)


@pytest.fixture(scope="module")
def server(index_root: Path) -> Iterator[ServerThread]:
    with serving(ServerConfig(index_root, limits=Limits(max_k=MAX_K, max_exclude_item_ids=5))) as running:
        yield running


@pytest.fixture()
def client(server: ServerThread) -> Iterator[RecommenderClient]:
    with RecommenderClient(server.target, timeout=5) as client:
        yield client


def closed_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_recommend_returns_frozen_dataclasses_equal_to_the_index(
    client: RecommenderClient, index: ServingIndex
) -> None:
    result = client.recommend(user_id_of_row(3), k=5, exclude_item_ids=[item_id_of_row(0)], request_id="abc")
    (expected,) = index.recommend([3], 5, extra_exclude=[index.item_rows([item_id_of_row(0)])])
    assert [item.item_id for item in result.items] == index.model.item_ids[expected.item_rows].tolist()
    assert [item.score for item in result.items] == expected.scores.tolist()
    assert [item.rank for item in result.items] == [1, 2, 3, 4, 5]
    first_row = int(expected.item_rows[0])
    assert result.items[0].title == index.model.items.titles[first_row]
    assert result.items[0].genres == tuple(index.model.items.genres[first_row])
    assert result.items[0].year == index.model.items.years[first_row]
    assert (result.request_id, result.index_version) == ("abc", index.version)
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.items[0].rank = 9  # type: ignore[misc]


def test_errors_are_typed_and_carry_code_and_field(client: RecommenderClient) -> None:
    with pytest.raises(InvalidArgumentError) as bad_k:
        client.recommend(1, k=MAX_K + 1)
    assert (bad_k.value.code, bad_k.value.field) == (grpc.StatusCode.INVALID_ARGUMENT, "k")
    with pytest.raises(InvalidArgumentError) as too_many:
        client.recommend(1, k=3, exclude_item_ids=range(6))
    assert too_many.value.field == "exclude_item_ids"
    with pytest.raises(NotFoundError) as unknown:
        client.recommend(2, k=3)
    assert unknown.value.code == grpc.StatusCode.NOT_FOUND


def test_unreachable_server_is_server_unavailable() -> None:
    with RecommenderClient(f"127.0.0.1:{closed_port()}", timeout=2) as client, pytest.raises(ServerUnavailableError):
        client.recommend(1, k=3)


def test_stream_helper_yields_results_and_errors_in_order(client: RecommenderClient, index: ServingIndex) -> None:
    queries = [
        StreamQuery("a", user_id_of_row(0), 3),
        StreamQuery("b", 2, 3),  # unknown user
        StreamQuery("c", user_id_of_row(1), 4, exclude_item_ids=[item_id_of_row(5)]),
        StreamQuery("d", user_id_of_row(1), 0),  # bad k
    ]
    results = list(client.recommend_stream(queries))
    assert [r.request_id for r in results] == ["a", "b", "c", "d"]
    assert isinstance(results[1], NotFoundError)
    assert isinstance(results[3], InvalidArgumentError) and results[3].field == "k"
    third = results[2]
    assert not isinstance(third, RecommenderError)
    unary = client.recommend(user_id_of_row(1), 4, [item_id_of_row(5)])
    assert [i.item_id for i in third.items] == [i.item_id for i in unary.items]
    assert [i.score for i in third.items] == pytest.approx([i.score for i in unary.items], rel=1e-5)


def test_info_and_health(client: RecommenderClient, index: ServingIndex) -> None:
    info = client.info()
    assert (info.user_count, info.item_count, info.dimension, info.max_k) == (12, 60, 4, MAX_K)
    assert info.training_metrics == index.model.metrics
    assert client.is_serving()
    client.wait_until_serving(timeout=1)


def test_wait_until_serving_gives_up_on_a_dead_server() -> None:
    with RecommenderClient(f"127.0.0.1:{closed_port()}") as client, pytest.raises(ServerUnavailableError):
        client.wait_until_serving(timeout=0.3)


def test_recctl_recommend_prints_a_table_of_titles(
    server: ServerThread, index: ServingIndex, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["recommend", "--server", server.target, "--user", str(user_id_of_row(2)), "-k", "3"]) == 0
    out = capsys.readouterr().out
    (expected,) = index.recommend([2], 3)
    for row in expected.item_rows.tolist():
        assert index.model.items.titles[row] in out
    assert "rank" in out.splitlines()[1]


def test_recctl_recommend_json(server: ServerThread, index: ServingIndex, capsys: pytest.CaptureFixture[str]) -> None:
    excluded = item_id_of_row(7)
    argv = ["recommend", "--server", server.target, "--user", "1", "-k", "4", "--exclude", str(excluded), "--json"]
    assert main(argv) == 0
    payload = json.loads(capsys.readouterr().out)
    ids = [item["item_id"] for item in payload["items"]]
    assert len(ids) == 4 and excluded not in ids
    assert payload["index_version"] == index.version


@pytest.mark.parametrize(
    ("argv_tail", "message"),
    [
        (["--user", "2"], "NOT_FOUND: unknown user id 2"),
        (["--user", "1", "-k", "0"], "INVALID_ARGUMENT: k must be between 1 and"),
    ],
)
def test_recctl_recommend_errors_are_one_line(
    server: ServerThread, argv_tail: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["recommend", "--server", server.target, *argv_tail]) == 1
    err = capsys.readouterr().err
    assert message in err
    assert len(err.strip().splitlines()) == 1


def test_recctl_recommend_unreachable_server(capsys: pytest.CaptureFixture[str]) -> None:
    target = f"127.0.0.1:{closed_port()}"
    assert main(["recommend", "--server", target, "--user", "1", "--timeout", "2"]) == 1
    err = capsys.readouterr().err
    assert f"cannot reach server at {target}" in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("address", ["127.0.0.1", "127.0.0.1:", "127.0.0.1:http", ":50051", "127.0.0.1:70000"])
def test_recctl_rejects_a_malformed_server_address(address: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["recommend", "--server", address, "--user", "1"])
    assert caught.value.code == 2
    assert "expected HOST:PORT" in capsys.readouterr().err


def test_recctl_similar_and_info(server: ServerThread, index: ServingIndex, capsys: pytest.CaptureFixture[str]) -> None:
    item = item_id_of_row(4)
    assert main(["similar", "--server", server.target, "--item", str(item), "-k", "3", "--json"]) == 0
    similar = json.loads(capsys.readouterr().out)
    expected = index.similar_items(4, 3)
    assert [i["item_id"] for i in similar["items"]] == index.model.item_ids[expected.item_rows].tolist()
    assert main(["info", "--server", server.target, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert (info["item_count"], info["index_version"]) == (60, index.version)
