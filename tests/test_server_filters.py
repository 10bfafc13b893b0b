"""Genre/year filters and the ``because`` item over gRPC: exact answers, precise errors."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from bundle_factory import user_id_of_row
from server_harness import make_index, serving

from movierec.index import ItemFilter, ServingIndex, open_index
from movierec.server.app import ServerConfig
from movierec.v1 import recommender_pb2 as pb
from movierec.v1 import recommender_pb2_grpc as pb_grpc

K = 6


@pytest.fixture(scope="module")
def index_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_index(tmp_path_factory.mktemp("filters"), n_users=10, n_items=80, dim=4, seen_per_user=5)


@pytest.fixture(scope="module")
def index(index_root: Path) -> ServingIndex:
    return open_index(index_root)


@pytest.fixture(scope="module")
def stub(index_root: Path) -> Iterator[pb_grpc.RecommenderServiceStub]:
    with (
        serving(ServerConfig(index_path=index_root, poll_seconds=0)) as server,
        grpc.insecure_channel(server.target) as channel,
    ):
        yield pb_grpc.RecommenderServiceStub(channel)


def test_filtered_answers_equal_the_index_reference(index: ServingIndex, stub: pb_grpc.RecommenderServiceStub) -> None:
    genre = index.genres[0]
    wire = pb.ItemFilter(exclude_genres=[genre], min_year=1990, max_year=2010)
    reference = ItemFilter(exclude_genres=frozenset([genre]), min_year=1990, max_year=2010)
    for row in range(3):
        answer = stub.Recommend(pb.RecommendRequest(user_id=user_id_of_row(row), k=K, filter=wire), timeout=5)
        (expected,) = index.recommend([row], K, item_filter=reference)
        assert [item.item_id for item in answer.items] == index.model.item_ids[expected.item_rows].tolist()
        assert all(genre not in item.genres and 1990 <= item.year <= 2010 for item in answer.items)
    (streamed,) = stub.RecommendStream(iter([pb.RecommendStreamRequest(user_id=user_id_of_row(0), k=K, filter=wire)]))
    (expected,) = index.recommend([0], K, item_filter=reference)
    assert [item.item_id for item in streamed.items] == index.model.item_ids[expected.item_rows].tolist()


def test_bad_filters_are_invalid_argument_and_the_stream_goes_on(stub: pb_grpc.RecommenderServiceStub) -> None:
    user = user_id_of_row(0)
    for impossible in (pb.ItemFilter(include_genres=["NoSuchGenre"]), pb.ItemFilter(min_year=2000, max_year=1990)):
        with pytest.raises(grpc.RpcError) as refused:
            stub.Recommend(pb.RecommendRequest(user_id=user, k=K, filter=impossible), timeout=5)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    requests = [
        pb.RecommendStreamRequest(request_id="bad", user_id=user, k=K, filter=pb.ItemFilter(exclude_genres=["x"])),
        pb.RecommendStreamRequest(request_id="good", user_id=user, k=K),
    ]
    bad, good = stub.RecommendStream(iter(requests), timeout=5)
    assert bad.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0] and "x" in bad.error.message
    assert good.error.code == 0 and len(good.items) == K


def test_because_names_the_users_own_item_as_the_index_explains_it(
    index: ServingIndex, stub: pb_grpc.RecommenderServiceStub
) -> None:
    for row in range(4):
        answer = stub.Recommend(pb.RecommendRequest(user_id=user_id_of_row(row), k=K, explain=True), timeout=5)
        rows = index.item_rows([item.item_id for item in answer.items])
        expected = index.model.item_ids[index.because(row, rows)].tolist()
        assert [item.because_item_id for item in answer.items] == expected
        seen = set(index.model.item_ids[index.seen_rows(row)].tolist())
        assert {item.because_item_id for item in answer.items} <= seen
    unasked = stub.Recommend(pb.RecommendRequest(user_id=user_id_of_row(0), k=K), timeout=5)
    assert not any(item.HasField("because_item_id") for item in unasked.items)
    similar = stub.SimilarItems(pb.SimilarItemsRequest(item_id=int(index.model.item_ids[0]), k=K), timeout=5)
    assert not any(item.HasField("because_item_id") for item in similar.items)


def test_get_info_lists_genres_for_filters(index: ServingIndex, stub: pb_grpc.RecommenderServiceStub) -> None:
    info = stub.GetInfo(pb.GetInfoRequest())
    assert list(info.genres) == index.genres and info.swap_count == 0
