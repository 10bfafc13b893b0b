"""RecommenderClient and ``recctl record | recommend --liked | reload`` and filter flags against a real server."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from bundle_factory import item_id_of_row, user_id_of_row
from server_harness import ServerThread, make_index, serving

from movierec.clients import InvalidArgumentError, ItemFilter, NotFoundError, RecommenderClient, StreamQuery
from movierec.clients.cli.main import main
from movierec.index import ItemFilter as IndexFilter
from movierec.index import build_index, open_index
from movierec.server.app import ServerConfig

K = 4


@pytest.fixture()
def index_root(tmp_path: Path) -> Path:
    return make_index(tmp_path, n_users=8, n_items=50, dim=4, seen_per_user=4)


@pytest.fixture()
def server(index_root: Path) -> Iterator[ServerThread]:
    with serving(ServerConfig(index_root, poll_seconds=0)) as running:
        yield running


@pytest.fixture()
def client(server: ServerThread) -> Iterator[RecommenderClient]:
    with RecommenderClient(server.target, timeout=5) as client:
        yield client


def test_client_records_then_recommends_without_the_watched_items(client: RecommenderClient) -> None:
    user = user_id_of_row(3)
    before = [item.item_id for item in client.recommend(user, K + 1).items]
    recorded = client.record_interactions(user, before[:1], ratings=[5.0])
    assert recorded.recorded == 1 and recorded.offset >= 1
    after = client.recommend(user, K, explain=True)
    assert [item.item_id for item in after.items] == before[1:]
    assert all(item.because_item_id is not None for item in after.items)
    (streamed,) = client.recommend_stream([StreamQuery("s", user, K)])
    assert not isinstance(streamed, Exception) and [i.item_id for i in streamed.items] == before[1:]
    with pytest.raises(InvalidArgumentError) as bad:
        client.record_interactions(user, [1, 3], ratings=[4.0])
    assert bad.value.field == "ratings"  # the call's shape is checked before its movies are looked up
    with pytest.raises(InvalidArgumentError) as unknown:
        client.record_interactions(user, [before[1], 2])  # even ids: no such movie in the catalogue
    assert unknown.value.field == "item_ids" and "not in the served catalogue" in str(unknown.value)
    assert [item.item_id for item in client.recommend(user, K).items] == before[1:]  # nothing of it was stored


def test_client_cold_start_and_filters(client: RecommenderClient, index_root: Path) -> None:
    liked = [item_id_of_row(1), item_id_of_row(2)]
    cold = client.recommend_for_items(liked, K)
    assert len(cold.items) == K and not {item.item_id for item in cold.items} & set(liked)
    with pytest.raises(NotFoundError):
        client.recommend_for_items([2, 4], K)  # even ids: no such movie
    genre = client.info().genres[0]
    filtered = client.recommend(user_id_of_row(0), K, item_filter=ItemFilter(include_genres=[genre], min_year=1990))
    assert filtered.items and all(genre in item.genres and (item.year or 0) >= 1990 for item in filtered.items)
    with pytest.raises(InvalidArgumentError) as bad:
        client.recommend(user_id_of_row(0), K, item_filter=ItemFilter(include_genres=["Nope"]))
    assert bad.value.field == "filter"
    index = open_index(index_root)
    similar = client.similar_items(item_id_of_row(0), K, item_filter=ItemFilter(exclude_genres=[genre]))
    expected = index.similar_items(0, K, item_filter=IndexFilter(exclude_genres=frozenset([genre])))
    assert [item.item_id for item in similar.items] == index.model.item_ids[expected.item_rows].tolist()


def test_recctl_record_recommend_liked_and_reload(
    server: ServerThread, index_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = ["--server", server.target, "--json"]
    user = user_id_of_row(5)
    assert main(["recommend", *target, "--user", str(user), "-k", str(K)]) == 0
    top = json.loads(capsys.readouterr().out)["items"][0]["item_id"]
    assert main(["record", *target, "--user", str(user), "--items", str(top)]) == 0
    assert json.loads(capsys.readouterr().out) == {"offset": 1, "recorded": 1}
    assert main(["recommend", *target, "--user", str(user), "-k", str(K)]) == 0
    assert top not in [item["item_id"] for item in json.loads(capsys.readouterr().out)["items"]]

    liked = [str(item_id_of_row(0)), str(item_id_of_row(9))]
    assert main(["recommend", *target, "--liked", *liked, "-k", str(K), "--genre", "Drama", "Comedy"]) == 0
    items = json.loads(capsys.readouterr().out)["items"]
    assert items and all({"Drama", "Comedy"} & set(item["genres"]) for item in items)
    assert all(str(item["because_item_id"]) in liked for item in items)

    assert main(["reload", *target]) == 0
    assert json.loads(capsys.readouterr().out)["swapped"] is False
    build_index(index_root.parent / "model", index_root)
    assert main(["reload", *target]) == 0
    assert json.loads(capsys.readouterr().out) | {"model_version": ""} == {
        "swapped": True, "index_version": "v0002", "model_version": "", "error": ""
    }  # fmt: skip
    assert main(["info", *target]) == 0
    assert json.loads(capsys.readouterr().out)["swap_count"] == 1


def test_recctl_errors_are_one_line(server: ServerThread, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["--server", server.target]
    assert main(["record", *base, "--user", "1", "--items", "1", "3", "--ratings", "4"]) == 1
    # an empty year range is refused by the client itself, before any call
    assert main(["recommend", *base, "--user", str(user_id_of_row(0)), "--min-year", "2000", "--max-year", "1990"]) == 1
    assert main(["recommend", *base, "--liked", "2", "4"]) == 1
    assert main(["record", *base, "--user", str(user_id_of_row(0)), "--items", "2"]) == 1  # not in the catalogue
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 4 and all(line.startswith("recctl: error: ") for line in errors)
    assert "INVALID_ARGUMENT" in errors[0] and "NOT_FOUND" in errors[2]
    assert "min_year 2000 is after max_year 1990" in errors[1] and "refused the request" not in errors[1]
    assert "INVALID_ARGUMENT" in errors[3] and "not in the served catalogue" in errors[3]
    with pytest.raises(SystemExit) as usage:
        main(["recommend", *base, "--user", "1", "--liked", "3"])
    assert usage.value.code == 2
