"""RecommendBatch: every entry equals the unary Recommend's answer, bad entries carry their own error, the cap holds;
the client method and ``recctl recommend --users-file`` on top of it."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from bundle_factory import item_id_of_row, user_id_of_row
from server_harness import RECCTL, ServerThread, make_index, serving

from movierec.clients.client import (
    InvalidArgumentError,
    ItemFilter,
    NotFoundError,
    Recommendations,
    RecommenderClient,
    RecommenderError,
    StreamQuery,
)
from movierec.server.app import ServerConfig
from movierec.server.limits import Limits
from movierec.v1 import recommender_pb2 as pb
from movierec.v1 import recommender_pb2_grpc as pb_grpc

N_USERS, N_ITEMS = 40, 150
MAX_K, MAX_BATCH = 60, 25
UNKNOWN_USER = 2  # the factory gives users odd ids


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    root = make_index(tmp_path_factory.mktemp("batch"), n_users=N_USERS, n_items=N_ITEMS, dim=8, seen_per_user=10)
    config = ServerConfig(root, limits=Limits(max_k=MAX_K, max_exclude_item_ids=20), max_batch_size=MAX_BATCH)
    with serving(config) as running:
        yield running


@pytest.fixture(scope="module")
def client(server: ServerThread) -> Iterator[RecommenderClient]:
    with RecommenderClient(server.target) as connected:
        yield connected


def mixed_queries() -> list[StreamQuery]:
    """Different k, exclusions, filters and explain in one batch, plus requests the server must refuse."""
    genre_filter = ItemFilter(include_genres=("Drama",))
    queries = [
        StreamQuery(f"u{row}", user_id_of_row(row), k=1 + row % 7 * 9, explain=row % 2 == 0)
        for row in range(N_USERS)
        if row % 3
    ][:12]
    queries += [
        StreamQuery("excl", user_id_of_row(4), k=10, exclude_item_ids=(item_id_of_row(0), item_id_of_row(3))),
        StreamQuery("filtered", user_id_of_row(5), k=5, item_filter=genre_filter),
        StreamQuery("unknown-user", UNKNOWN_USER, k=5),
        StreamQuery("bad-k", user_id_of_row(6), k=MAX_K + 1),
        StreamQuery("bad-genre", user_id_of_row(7), k=5, item_filter=ItemFilter(include_genres=("NoSuchGenre",))),
        StreamQuery("zero-k", user_id_of_row(8), k=0),
    ]
    return queries


def unary(client: RecommenderClient, query: StreamQuery) -> Recommendations | RecommenderError:
    try:
        return client.recommend(
            query.user_id,
            query.k,
            query.exclude_item_ids,
            item_filter=query.item_filter,
            explain=query.explain,
            request_id=query.request_id,
        )
    except RecommenderError as error:
        return error


def test_every_entry_equals_the_unary_answer(client: RecommenderClient) -> None:
    queries = mixed_queries()
    batch = client.recommend_batch(queries)
    assert [result.request_id for result in batch] == [query.request_id for query in queries]
    errors = 0
    for query, got in zip(queries, batch, strict=True):
        expected = unary(client, query)
        if isinstance(expected, RecommenderError):
            errors += 1
            assert isinstance(got, RecommenderError), query
            assert (got.code, got.message, got.field) == (expected.code, expected.message, expected.field)
        else:
            assert got == expected, query
            assert len(got.items) == query.k
    assert errors == 4


def test_bad_entries_carry_their_own_status(client: RecommenderClient) -> None:
    results = {result.request_id: result for result in client.recommend_batch(mixed_queries())}
    assert isinstance(results["unknown-user"], NotFoundError)
    assert isinstance(results["bad-k"], InvalidArgumentError)
    assert results["bad-k"].field == "k"
    assert isinstance(results["bad-genre"], InvalidArgumentError)
    assert results["bad-genre"].field == "filter"
    assert isinstance(results["excl"], Recommendations)
    assert {item_id_of_row(0), item_id_of_row(3)}.isdisjoint(item.item_id for item in results["excl"].items)


def test_the_batch_size_is_capped(client: RecommenderClient, server: ServerThread) -> None:
    assert client.info().max_batch_size == MAX_BATCH
    full = [StreamQuery(str(n), user_id_of_row(n % N_USERS), k=3) for n in range(MAX_BATCH)]
    assert len(client.recommend_batch(full)) == MAX_BATCH
    with pytest.raises(InvalidArgumentError) as refused:
        client.recommend_batch([*full, full[0]])
    assert refused.value.field == "requests"
    assert str(MAX_BATCH) in refused.value.message
    assert client.recommend_batch([]) == []


def test_one_version_answers_the_whole_batch(server: ServerThread) -> None:
    with grpc.insecure_channel(server.target) as channel:
        stub = pb_grpc.RecommenderServiceStub(channel)
        request = pb.RecommendBatchRequest(
            requests=[pb.RecommendRequest(user_id=user_id_of_row(row), k=4) for row in range(3)]
        )
        response = stub.RecommendBatch(request, timeout=5)
        single = stub.Recommend(request.requests[0], timeout=5)
    assert (response.model_version, response.index_version) == (single.model_version, single.index_version)
    assert [item.item_id for item in response.results[0].items] == [item.item_id for item in single.items]


def test_users_file_prints_one_json_line_per_user(
    server: ServerThread, client: RecommenderClient, tmp_path: Path
) -> None:
    users = [user_id_of_row(row) for row in range(7)] + [UNKNOWN_USER, user_id_of_row(8)]
    users_file = tmp_path / "users.txt"
    users_file.write_text("\n".join(map(str, users[:4])) + "\n\n" + "\n".join(map(str, users[4:])) + "\n")
    result = subprocess.run(
        [
            RECCTL,
            "recommend",
            "--server",
            server.target,
            "--users-file",
            str(users_file),
            "-k",
            "3",
            "--batch-size",
            "4",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["user_id"] for line in lines] == users
    for line in lines:
        if line["user_id"] == UNKNOWN_USER:
            assert line["error"]["code"] == "NOT_FOUND"
            continue
        expected = client.recommend(line["user_id"], 3)
        assert [item["item_id"] for item in line["items"]] == [item.item_id for item in expected.items]
        assert line["index_version"] == expected.index_version
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "recctl: error: 1 of 9 users got an error instead of recommendations (see 'error')"
    )


def test_users_file_names_a_bad_line(server: ServerThread, tmp_path: Path) -> None:
    users_file = tmp_path / "users.txt"
    users_file.write_text("1\n3\nabc\n")
    result = subprocess.run(
        [RECCTL, "recommend", "--server", server.target, "--users-file", str(users_file)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert result.stdout == ""
    assert "line 3: 'abc' is not a user id" in result.stderr
    assert "Traceback" not in result.stderr
