"""`recctl index add-items`: a movie nobody rated gets a vector from its features and is recommended at once."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import replace as dataclass_replace
from pathlib import Path

import grpc
import numpy as np
import pytest
from server_harness import ServerThread

from movierec.bundle import CSR, ItemMetadata, ModelBundle, VersionedStore, read_model_bundle, write_model_bundle
from movierec.clients.cli.main import main
from movierec.index import ServingIndex, build_index, open_index
from movierec.index.add_items import SHRINKAGE
from movierec.index.ranked import DEFAULT_DEPTH
from movierec.item_features import ItemEncoder, ItemFeatureModel, ItemTower
from movierec.server.app import ServerConfig
from movierec.server.interaction_log import InteractionLog
from movierec.v1 import recommender_pb2 as pb
from movierec.v1 import recommender_pb2_grpc as pb_grpc

GENRES = ("Action", "Comedy", "Drama", "Horror")
N_USERS, PER_GENRE, DIM = 16, 6, 8
NEW_ID = 1000  # between no existing ids: the new movie lands at the end of the id order
MIDDLE_ID = 7  # ... or in the middle (existing ids are even), so the CSR columns must be renumbered


def taste_bundle(seed: int = 0) -> ModelBundle:
    """User u likes genre u % 4: users and that genre's movies point the same way (unit vectors, like LightGCN)."""
    rng = np.random.default_rng(seed)
    n_items = PER_GENRE * len(GENRES)
    genre_of_item = np.arange(n_items) % len(GENRES)
    basis = np.eye(DIM, dtype=np.float32)[: len(GENRES)]
    items = basis[genre_of_item] + 0.1 * rng.standard_normal((n_items, DIM)).astype(np.float32)
    users = basis[np.arange(N_USERS) % len(GENRES)] + 0.1 * rng.standard_normal((N_USERS, DIM)).astype(np.float32)
    users_seen = [u for u in range(N_USERS) for _ in range(2)]
    items_seen = [int(np.flatnonzero(genre_of_item == u % 4)[j]) for u in range(N_USERS) for j in range(2)]
    seen = CSR.from_pairs(users_seen, items_seen, N_USERS, n_items)
    return ModelBundle(
        user_vectors=(users / np.linalg.norm(users, axis=1, keepdims=True)).astype(np.float32),
        item_vectors=(items / np.linalg.norm(items, axis=1, keepdims=True)).astype(np.float32),
        user_ids=np.arange(1, N_USERS + 1, dtype=np.int64),
        item_ids=np.arange(2, 2 * n_items + 2, 2, dtype=np.int64),
        items=ItemMetadata(
            [f"Movie {r}" for r in range(n_items)],
            [1980 + r for r in range(n_items)],
            [[GENRES[g]] for g in genre_of_item],
        ),
        seen=seen,
        train=seen,
        valid=CSR.from_pairs([], [], N_USERS, n_items),
        test=CSR.from_pairs([], [], N_USERS, n_items),
        config={"train": {"model": "lightgcn"}},
    )


def write_movies(path: Path, rows: list[tuple[int, str, str]]) -> Path:
    path.write_text("".join(f"{movie_id}::{title}::{genres}\n" for movie_id, title, genres in rows))
    return path


@pytest.fixture()
def store(tmp_path: Path) -> Path:
    write_model_bundle(taste_bundle(), tmp_path / "model")
    build_index(tmp_path / "model", tmp_path / "index")
    return tmp_path / "index"


@pytest.fixture()
def server(store: Path) -> Iterator[ServerThread]:
    thread = ServerThread(ServerConfig(index_path=store, poll_seconds=0.02))
    try:
        thread.start_loading().result(30)
        yield thread
    finally:
        thread.stop()


def _recommended(stub: pb_grpc.RecommenderServiceStub, user_id: int, k: int) -> tuple[str, list[int]]:
    answer = stub.Recommend(pb.RecommendRequest(user_id=user_id, k=k), timeout=10)
    return answer.index_version, [item.item_id for item in answer.items]


def test_new_movie_recommended_to_matching_tastes_after_hot_swap_and_excluded_once_watched(
    tmp_path: Path, store: Path, server: ServerThread, capsys: pytest.CaptureFixture[str]
) -> None:
    movies = write_movies(
        tmp_path / "movies.dat", [(NEW_ID, "Night Terror (2024)", "Horror"), (MIDDLE_ID, "Slapstick (1999)", "Comedy")]
    )
    assert main(["index", "add-items", "--index", str(store), "--movies", str(movies)]) == 0
    assert "vectors from the ridge" in capsys.readouterr().out
    assert VersionedStore(store).current_version() == "v0002"
    model = read_model_bundle(store / "v0002" / "model")
    old = read_model_bundle(store / "v0001" / "model")
    assert model.n_items == old.n_items + 2 and model.config["added_items"][0]["vectors_from"] == "ridge"
    # Every existing (user, movie) pair survives the renumbering of item rows.
    for name in ("seen", "train"):
        users, rows = getattr(model, name).to_pairs()
        old_users, old_rows = getattr(old, name).to_pairs()
        assert users.tolist() == old_users.tolist() and model.item_ids[rows].tolist() == old.item_ids[old_rows].tolist()

    horror_users = [u for u in range(1, N_USERS + 1) if (u - 1) % 4 == 3]
    other_users = [u for u in range(1, N_USERS + 1) if (u - 1) % 4 in (0, 2)]
    with grpc.insecure_channel(server.target) as channel:
        stub = pb_grpc.RecommenderServiceStub(channel)
        deadline = time.monotonic() + 30
        while _recommended(stub, horror_users[0], 3)[0] != "v0002":  # the server polls CURRENT and swaps
            assert time.monotonic() < deadline, "server never swapped to v0002"
            time.sleep(0.02)
        for user in horror_users:
            assert NEW_ID in _recommended(stub, user, 5)[1]  # 4 unseen Horror movies + the new one
        for user in other_users:
            assert NEW_ID not in _recommended(stub, user, 5)[1]
        # The exclusion contract holds for the new movie: once watched it is never recommended, K still answered.
        stub.RecordInteractions(
            pb.RecordInteractionsRequest(request_id="w1", user_id=horror_users[0], item_ids=[NEW_ID]), timeout=10
        )
        _, items = _recommended(stub, horror_users[0], model.n_items)
        assert NEW_ID not in items and len(items) == model.n_items - 2 - 1


def test_duplicate_or_unknown_input_refused_with_one_line_and_nothing_written(
    tmp_path: Path, store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    taken = write_movies(tmp_path / "taken.dat", [(NEW_ID, "Fine (2001)", "Drama"), (4, "Old One (1990)", "Drama")])
    assert main(["index", "add-items", "--index", str(store), "--movies", str(taken)]) != 0
    assert "movie 4 ('Old One') is already in the index" in capsys.readouterr().err
    twice = write_movies(tmp_path / "twice.dat", [(NEW_ID, "A (2001)", "Drama"), (NEW_ID, "B (2002)", "Drama")])
    assert main(["index", "add-items", "--index", str(store), "--movies", str(twice)]) != 0
    assert "twice.dat:2: movie id 1000 already given on line 1" in capsys.readouterr().err
    assert main(["index", "add-items", "--index", str(tmp_path / "nowhere"), "--movies", str(taken)]) != 0
    assert "no current index version" in capsys.readouterr().err
    assert VersionedStore(store).versions() == ["v0001"]


def test_graphsage_bundle_uses_its_own_item_tower(tmp_path: Path, store: Path) -> None:
    encoder = ItemEncoder.fit([[g] for g in GENRES], [1990, 2000])
    rng = np.random.default_rng(1)
    weight = rng.standard_normal((DIM, encoder.width)).astype(np.float32)
    tower = ItemFeatureModel(encoder, ItemTower((weight,), (np.zeros(DIM, np.float32),), normalize=True), "graphsage")
    (tmp_path / "tower").mkdir()
    files = tower.write(tmp_path / "tower")
    write_model_bundle(taste_bundle(), tmp_path / "sage", attachments={p.name: p for p in files})
    build_index(tmp_path / "sage", tmp_path / "sage_index")
    movies = write_movies(tmp_path / "m.dat", [(NEW_ID, "Night Terror (2024)", "Horror")])
    assert main(["index", "add-items", "--index", str(tmp_path / "sage_index"), "--movies", str(movies)]) == 0
    index = open_index(tmp_path / "sage_index")
    row = int(np.searchsorted(index.model.item_ids, NEW_ID))
    np.testing.assert_allclose(index.model.item_vectors[row], tower.vectors([["Horror"]], [2024])[0], rtol=1e-6)


def _rank(index: ServingIndex, user_id: int, item_id: int) -> int | None:
    """Place (0 = best) of ``item_id`` in the user's full served ranking; None when it is excluded."""
    row = int(np.searchsorted(index.model.user_ids, user_id))
    ranking = index.recommend([row], index.n_items)[0]
    places = np.flatnonzero(index.model.item_ids[ranking.item_rows] == item_id)
    return int(places[0]) if places.size else None


def test_refresh_items_moves_an_added_movie_toward_its_first_users_only(
    tmp_path: Path, store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A Drama movie by its features; two Horror fans (users 4 and 8) like it, Horror fans 12 and 16 have not seen it.
    movies = write_movies(
        tmp_path / "movies.dat", [(NEW_ID, "Quiet Dread (2024)", "Drama"), (MIDDLE_ID, "Slapstick (1999)", "Comedy")]
    )
    assert main(["index", "add-items", "--index", str(store), "--movies", str(movies)]) == 0
    before = open_index(store / "v0002", ranked_depth=DEFAULT_DEPTH)  # served from stored prefixes, as servers do
    log_path = tmp_path / "events.sqlite"
    with InteractionLog(log_path) as log:
        for user in (4, 8):
            log.record(user, [NEW_ID])
    capsys.readouterr()
    assert main(["index", "refresh-items", "--index", str(store), "--events", str(log_path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["users_blended"] == {str(NEW_ID): 2, str(MIDDLE_ID): 0} and report["past_cap"] == []
    assert VersionedStore(store).current_version() == "v0003"
    after = open_index(store / "v0003", ranked_depth=DEFAULT_DEPTH)
    assert after.ranked is not None  # the build stored ranked prefixes for the new vectors

    for user in (12, 16):  # same taste as the raters, did not interact: the movie rises
        old, new = _rank(before, user, NEW_ID), _rank(after, user, NEW_ID)
        assert old is not None and new is not None and new < old
    for user in (3, 7, 11, 15):  # Drama fans, whom its features alone served best: it falls or stays
        old, new = _rank(before, user, NEW_ID), _rank(after, user, NEW_ID)
        assert old is not None and new is not None and new >= old
    for user in (4, 8):  # the raters: compacted into the seen sets, never recommended
        assert _rank(before, user, NEW_ID) is not None and _rank(after, user, NEW_ID) is None

    # The blend is exactly the documented formula; every other movie keeps its vector bit for bit.
    new_row = int(np.searchsorted(after.model.item_ids, NEW_ID))
    raters = after.model.user_vectors[np.searchsorted(after.model.user_ids, [4, 8])]
    feature_vector = before.model.item_vectors[new_row].astype(np.float64)
    expected = SHRINKAGE * feature_vector + 2 * raters.astype(np.float64).mean(axis=0)
    np.testing.assert_allclose(after.model.item_vectors[new_row], expected / np.linalg.norm(expected), rtol=1e-5)
    others = np.arange(after.n_items) != new_row
    assert np.array_equal(after.model.item_vectors[others], before.model.item_vectors[others])
    assert after.model.config["refreshed_items"]["users_blended"][str(NEW_ID)] == 2

    # The log was truncated (v0003 holds its events); a second refresh starts from the features again: same vector.
    assert main(["index", "refresh-items", "--index", str(store), "--events", str(log_path)]) == 0
    again = open_index(store / "v0004")
    assert np.array_equal(again.model.item_vectors, after.model.item_vectors)


def test_refresh_items_refused_without_added_movies(
    tmp_path: Path, store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with InteractionLog(tmp_path / "events.sqlite") as log:
        log.record(4, [2])
    assert main(["index", "refresh-items", "--index", str(store), "--events", str(tmp_path / "events.sqlite")]) != 0
    assert "no movie added by add-items" in capsys.readouterr().err
    assert VersionedStore(store).versions() == ["v0001"]


def _retrained(model: ModelBundle, extra_id: int | None = None) -> ModelBundle:
    """A "newly trained" bundle: same users and movies, rotated vectors (a different embedding space); with
    ``extra_id`` it also holds that movie (trained on its ratings), its vector distinct from any feature vector."""
    rotation = np.linalg.qr(np.random.default_rng(7).standard_normal((DIM, DIM)))[0].astype(np.float32)
    bundle = dataclass_replace(
        model,
        user_vectors=np.ascontiguousarray(model.user_vectors @ rotation),
        item_vectors=np.ascontiguousarray(model.item_vectors @ rotation),
    )
    if extra_id is None:
        return bundle
    from movierec.index.add_items import NewMovies, merged_bundle

    movie = NewMovies([extra_id], ["Night Terror"], [2024], [["Horror"]])
    trained = merged_bundle(bundle, movie, np.full((1, DIM), DIM**-0.5, np.float32), "trained")
    return dataclass_replace(trained, config={"train": {"model": "lightgcn"}})


def test_rebuild_carries_added_movies_the_new_bundle_lacks_and_takes_trained_vectors_for_the_rest(
    tmp_path: Path, store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    movies = write_movies(
        tmp_path / "movies.dat", [(NEW_ID, "Night Terror (2024)", "Horror"), (MIDDLE_ID, "Slapstick (1999)", "Comedy")]
    )
    assert main(["index", "add-items", "--index", str(store), "--movies", str(movies)]) == 0
    added = read_model_bundle(store / "v0002" / "model")
    write_model_bundle(_retrained(taste_bundle()), tmp_path / "models" / "new")
    capsys.readouterr()
    assert main(["index", "rebuild", "--models", str(tmp_path / "models"), "--out", str(store), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["carried_items"] == 2
    assert VersionedStore(store).current_version() == "v0003"
    index = open_index(store)
    model = index.model
    assert model.n_items == added.n_items and model.item_ids.tolist() == added.item_ids.tolist()
    for item_id in (NEW_ID, MIDDLE_ID):  # metadata intact
        old_row, row = (int(np.searchsorted(m.item_ids, item_id)) for m in (added, model))
        assert (model.items.titles[row], model.items.years[row]) == (
            added.items.titles[old_row],
            added.items.years[old_row],
        )
        assert list(model.items.genres[row]) == list(added.items.genres[old_row])
    record = model.config["added_items"][-1]
    assert sorted(record["item_ids"]) == [MIDDLE_ID, NEW_ID]
    assert record["carried_from"] == "v0002" and record["vectors_from"] == "ridge"
    # Vectors in the new model's space (the ridge refitted on the new bundle), not the old version's copies.
    row = int(np.searchsorted(model.item_ids, NEW_ID))
    assert not np.allclose(model.item_vectors[row], added.item_vectors[row], atol=1e-3)
    horror_users = [u for u in range(1, N_USERS + 1) if (u - 1) % 4 == 3]
    for user in horror_users:  # still recommendable: the Horror fans still get it near the top
        rank = _rank(index, user, NEW_ID)
        assert rank is not None and rank < 5
    # A later rebuild without add-items in between carries them again (their record travels).
    assert main(["index", "rebuild", "--models", str(tmp_path / "models"), "--out", str(store)]) == 0
    assert "carried forward (not in the new bundle): 2" in capsys.readouterr().out
    assert open_index(store).model.item_ids.tolist() == added.item_ids.tolist()

    # A bundle retrained with NEW_ID's ratings holds it: its trained vector wins, only MIDDLE_ID is carried.
    write_model_bundle(_retrained(taste_bundle(), NEW_ID), tmp_path / "models" / "newer")
    assert main(["index", "rebuild", "--models", str(tmp_path / "models"), "--out", str(store), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["carried_items"] == 1
    model = open_index(store).model
    row = int(np.searchsorted(model.item_ids, NEW_ID))
    np.testing.assert_array_equal(model.item_vectors[row], np.full(DIM, DIM**-0.5, np.float32))
    assert [r["item_ids"] for r in model.config["added_items"]] == [[MIDDLE_ID]]


def test_rebuild_without_added_movies_indexes_the_new_bundle_bit_for_bit(
    tmp_path: Path, store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_model_bundle(_retrained(taste_bundle()), tmp_path / "models" / "new")
    assert main(["index", "rebuild", "--models", str(tmp_path / "models"), "--out", str(store), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["carried_items"] == 0
    names = ("manifest.json", "item_vectors.npy", "user_vectors.npy", "item_ids.npy", "items.json", "config.json")
    for name in names:  # the manifest too: its created_at shows the bundle was copied, not rewritten
        assert (store / "v0002" / "model" / name).read_bytes() == (tmp_path / "models" / "new" / name).read_bytes()


def _sage_bundle(directory: Path, seed: int) -> ItemFeatureModel:
    """A GraphSAGE-like bundle at ``directory``: the taste bundle plus an item tower drawn from ``seed``."""
    encoder = ItemEncoder.fit([[g] for g in GENRES], [1990, 2000])
    weight = np.random.default_rng(seed).standard_normal((DIM, encoder.width)).astype(np.float32)
    tower = ItemFeatureModel(encoder, ItemTower((weight,), (np.zeros(DIM, np.float32),), normalize=True), "graphsage")
    (directory.parent / f"tower{seed}").mkdir()
    files = tower.write(directory.parent / f"tower{seed}")
    write_model_bundle(taste_bundle(), directory, attachments={p.name: p for p in files})
    return tower


def test_rebuild_from_a_graphsage_bundle_carries_added_movies_through_its_own_tower(tmp_path: Path) -> None:
    _sage_bundle(tmp_path / "sage", seed=1)
    build_index(tmp_path / "sage", tmp_path / "index")
    movies = write_movies(tmp_path / "m.dat", [(NEW_ID, "Night Terror (2024)", "Horror")])
    assert main(["index", "add-items", "--index", str(tmp_path / "index"), "--movies", str(movies)]) == 0
    (tmp_path / "models").mkdir()
    retrained = _sage_bundle(tmp_path / "models" / "sage2", seed=2)
    assert main(["index", "rebuild", "--models", str(tmp_path / "models"), "--out", str(tmp_path / "index")]) == 0
    model = open_index(tmp_path / "index").model
    row = int(np.searchsorted(model.item_ids, NEW_ID))
    np.testing.assert_allclose(model.item_vectors[row], retrained.vectors([["Horror"]], [2024])[0], rtol=1e-6)
    assert model.config["added_items"][-1]["vectors_from"] == "graphsage"
    assert "item_tower_w0.npy" in (model.manifest.files if model.manifest else {})  # the tower travels on


def test_add_items_refuses_when_another_command_moved_current_meanwhile(
    tmp_path: Path, store: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A build that lands between add-items reading CURRENT and writing its version: refused, nothing lost."""
    from movierec.index import add_items as add_items_module

    real_merge = add_items_module.merged_bundle

    def merge_while_another_build_lands(*args: object, **kwargs: object) -> ModelBundle:
        build_index(tmp_path / "model", store)  # the other command: v0002 becomes CURRENT
        return real_merge(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(add_items_module, "merged_bundle", merge_while_another_build_lands)
    movies = write_movies(tmp_path / "movies.dat", [(NEW_ID, "Night Terror (2024)", "Horror")])
    assert main(["index", "add-items", "--index", str(store), "--movies", str(movies)]) != 0
    assert "the current version changed while this command worked (it read v0001, now v0002)" in capsys.readouterr().err
    assert VersionedStore(store).versions() == ["v0001", "v0002"]
    assert VersionedStore(store).current_version() == "v0002"
    monkeypatch.setattr(add_items_module, "merged_bundle", real_merge)
    assert main(["index", "add-items", "--index", str(store), "--movies", str(movies)]) == 0  # run again: it works
    added = open_index(store)
    assert NEW_ID in added.model.item_ids.tolist()
    # The version names the trained bundle it grew from, not the command's scratch copy of it.
    assert added.meta.source_model_path == str((tmp_path / "model").resolve())


def test_rebuild_refuses_to_drop_movies_added_while_it_worked(
    tmp_path: Path, store: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from movierec.index import add_items as add_items_module

    real_carry = add_items_module.carried_bundle
    movies = write_movies(tmp_path / "movies.dat", [(NEW_ID, "Night Terror (2024)", "Horror")])

    def carry_while_add_items_lands(*args: object, **kwargs: object) -> Path:
        assert main(["index", "add-items", "--index", str(store), "--movies", str(movies)]) == 0  # v0002
        return real_carry(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(add_items_module, "carried_bundle", carry_while_add_items_lands)
    write_model_bundle(_retrained(taste_bundle()), tmp_path / "models" / "new")
    capsys.readouterr()
    assert main(["index", "rebuild", "--models", str(tmp_path / "models"), "--out", str(store)]) != 0
    assert "it read v0001, now v0002" in capsys.readouterr().err
    assert VersionedStore(store).current_version() == "v0002"
    assert NEW_ID in open_index(store).model.item_ids.tolist()  # the added movie is still served


def test_a_build_based_on_a_stale_version_writes_nothing(tmp_path: Path, store: Path) -> None:
    from movierec.errors import BundleError

    stale = VersionedStore(store).current()
    build_index(tmp_path / "model", store)
    with pytest.raises(BundleError, match="it read v0001, now v0002"):
        build_index(tmp_path / "model", store, based_on=stale)
    with pytest.raises(BundleError, match="it read none, now v0002"):
        build_index(tmp_path / "model", store, based_on=None)
    assert VersionedStore(store).versions() == ["v0001", "v0002"]
    assert build_index(tmp_path / "model", store, based_on=VersionedStore(store).current()).name == "v0003"
