"""The no-loss rule: rollbacks, prunes and log truncation never bring back a movie a user has watched."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from bundle_factory import item_id_of_row, make_model_bundle, user_id_of_row
from server_harness import ServerThread

from movierec.bundle import VersionedStore
from movierec.errors import BundleError
from movierec.index import build_index, prune_versions
from movierec.index.events import EVENT_USERS_FILE
from movierec.index.rollback import newest_events_holding, rollback, safe_truncation_offset
from movierec.server.app import ServerConfig
from movierec.server.interaction_log import LOG_FILE_NAME, InteractionLog
from movierec.server.live_events import ContinuityGap
from movierec.v1 import recommender_pb2 as pb
from movierec.v1 import recommender_pb2_grpc as pb_grpc

USER = user_id_of_row(0)  # user id 1
NEW_USER = 2  # the factory's user ids are odd: a user the model never saw
N_ITEMS = 40
Run = Callable[..., tuple[int, str, str]]


@pytest.fixture
def store(tmp_path: Path) -> Path:
    make_model_bundle(tmp_path / "model", n_users=10, n_items=N_ITEMS, dim=4, seen_per_user=3)
    build_index(tmp_path / "model", tmp_path / "index")
    return tmp_path / "index"


@pytest.fixture
def log_path(store: Path) -> Path:
    return store / LOG_FILE_NAME


def _serve(store: Path) -> ServerThread:
    thread = ServerThread(ServerConfig(index_path=store, poll_seconds=0.02))
    try:
        thread.start_loading().result(30)
    except BaseException:
        thread.stop()
        raise
    return thread


@pytest.fixture
def server(store: Path) -> Iterator[ServerThread]:
    thread = _serve(store)
    try:
        yield thread
    finally:
        thread.stop()


def _stub(channel: grpc.Channel) -> pb_grpc.RecommenderServiceStub:
    return pb_grpc.RecommenderServiceStub(channel)


def _all_recommended(stub: pb_grpc.RecommenderServiceStub, user: int) -> set[int]:
    """Every item the server would still recommend to ``user`` (k = the whole catalogue)."""
    answer = stub.Recommend(pb.RecommendRequest(user_id=user, k=N_ITEMS), timeout=5)
    return {item.item_id for item in answer.items}


def _wait_for_version(stub: pb_grpc.RecommenderServiceStub, version: str) -> None:
    deadline = time.monotonic() + 30
    while stub.GetInfo(pb.GetInfoRequest(), timeout=5).index_version != version:
        assert time.monotonic() < deadline, f"the server never swapped to {version}"
        time.sleep(0.02)


def test_a_rollback_after_a_compacting_rebuild_still_excludes_the_watched_movies(
    store: Path, log_path: Path, recctl: Run
) -> None:
    """The issue's scenario: record 3 movies, rebuild --events into v0002, swap, roll back to v0001."""
    server = _serve(store)
    try:
        _record_rebuild_roll_back(store, log_path, server, recctl)
    finally:
        server.stop()
    restarted = _serve(store)  # and after a restart on the rolled-back version
    try:
        with grpc.insecure_channel(restarted.target) as channel:
            assert _stub(channel).GetInfo(pb.GetInfoRequest(), timeout=5).index_version == "v0001"
            assert not _all_recommended(_stub(channel), USER) & _watched(log_path)
    finally:
        restarted.stop()


def _watched(log_path: Path) -> set[int]:
    with InteractionLog(log_path) as log:
        return set(log.extra_seen(USER).tolist())


def _record_rebuild_roll_back(store: Path, log_path: Path, server: ServerThread, recctl: Run) -> None:
    with grpc.insecure_channel(server.target) as channel:
        stub = _stub(channel)
        watched = [item.item_id for item in stub.Recommend(pb.RecommendRequest(user_id=USER, k=3), timeout=5).items]
        stub.RecordInteractions(pb.RecordInteractionsRequest(user_id=USER, item_ids=watched), timeout=5)
        assert not _all_recommended(stub, USER) & set(watched)

        code, out, err = recctl(
            "index", "rebuild", "--models", store.parent / "model", "--out", store, "--events", log_path, "--json"
        )
        assert code == 0, err
        assert json.loads(out)["events_through"] == 3
        _wait_for_version(stub, "v0002")
        assert not _all_recommended(stub, USER) & set(watched)

        code, out, err = recctl("index", "rollback", "--index", store, "--json")
        assert code == 0, err
        assert json.loads(out) == {"previous": "v0002", "current": "v0001", "events_through": 0}
        _wait_for_version(stub, "v0001")
        assert not _all_recommended(stub, USER) & set(watched), "a rollback brought watched movies back"
        assert _watched(log_path) == set(watched)


def test_rollback_moves_current_only_to_a_version_that_verifies(store: Path, recctl: Run) -> None:
    code, _, err = recctl("index", "rollback", "--index", store)
    assert code == 1 and "no version older than the current v0001" in err and err.count("\n") == 1
    build_index(store.parent / "model", store)
    build_index(store.parent / "model", store)
    (store / "v0002" / EVENT_USERS_FILE).write_bytes(b"tampered")
    code, _, err = recctl("index", "rollback", "--index", store)
    assert code == 1 and "refusing to roll back to v0002" in err and "altered" in err
    assert VersionedStore(store).current_version() == "v0003", "a refused rollback moved CURRENT"
    code, out, err = recctl("index", "rollback", "--index", store, "--to", "v0001")
    assert code == 0 and "v0003 -> v0001" in out, err
    code, _, err = recctl("index", "rollback", "--index", store, "--to", "v0009")
    assert code == 1 and "no version v0009" in err
    code, _, err = recctl("index", "rollback", "--index", store, "--to", "latest")
    assert code == 1 and "not a version name" in err
    code, _, err = recctl("index", "rollback", "--index", store / "v0001")
    assert code == 1 and "a single bundle, not an index store" in err
    assert VersionedStore(store).current_version() == "v0001"


def _compact(store: Path, log_path: Path) -> int:
    """Record events for a known and a new user, compact them into a new version (not CURRENT); the offset."""
    with InteractionLog(log_path) as log:
        log.record(USER, [item_id_of_row(1), item_id_of_row(2)])
        log.record(NEW_USER, [item_id_of_row(3)])
        build_index(store.parent / "model", store, new_events=log.export(), make_current=False)
        return log.last_offset


def _truncate_past_everything(log_path: Path, through: int) -> None:
    """What a build before the no-loss rule did: truncate through the newest version's offset."""
    with InteractionLog(log_path) as log:
        log.truncate_through(through)


def test_a_log_truncated_past_the_served_version_is_repaired_from_a_newer_version(store: Path, log_path: Path) -> None:
    through = _compact(store, log_path)
    _truncate_past_everything(log_path, through)  # v0001 (CURRENT) now lacks events 1..3, the log too
    for _ in range(2):  # the second start finds the repair done and records nothing more
        server = _serve(store)
        try:
            with grpc.insecure_channel(server.target) as channel:
                stub = _stub(channel)
                assert stub.GetInfo(pb.GetInfoRequest(), timeout=5).index_version == "v0001"
                assert not _all_recommended(stub, USER) & {item_id_of_row(1), item_id_of_row(2)}
                assert item_id_of_row(3) not in _all_recommended(stub, NEW_USER)
        finally:
            server.stop()
        with InteractionLog(log_path, replay=False) as log:
            repaired = log.export()
        assert sorted(zip(repaired.user_ids.tolist(), repaired.item_ids.tolist(), strict=True)) == [
            (USER, item_id_of_row(1)),
            (USER, item_id_of_row(2)),
            (NEW_USER, item_id_of_row(3)),
        ]
        assert int(repaired.offsets.min()) > through, "repaired events reused compacted offsets"


def test_a_gap_no_retained_version_can_fill_stops_the_server_with_the_reason(store: Path, log_path: Path) -> None:
    through = _compact(store, log_path)
    _truncate_past_everything(log_path, through)
    shutil.rmtree(store / "v0002")  # the only version holding events 1..3 is gone
    with pytest.raises(ContinuityGap, match=r"index v0001 holds live events through offset 0.*truncated through"):
        _serve(store)


def test_a_swap_repairs_a_gap_or_is_refused_while_the_old_version_keeps_serving(
    store: Path, log_path: Path, server: ServerThread
) -> None:
    through = _compact(store, log_path)
    with grpc.insecure_channel(server.target) as channel:
        stub = _stub(channel)
        rollback(store, "v0002")
        _wait_for_version(stub, "v0002")
        assert server.server.log is not None
        server.server.log.truncate_through(through)  # as an old build would have done
        rollback(store, "v0001")
        _wait_for_version(stub, "v0001")  # repaired from v0002 on the way
        assert not _all_recommended(stub, USER) & {item_id_of_row(1), item_id_of_row(2)}

        rollback(store, "v0002")
        _wait_for_version(stub, "v0002")
        live = server.server.log.export()
        build_index(store.parent / "model", store, new_events=live, make_current=False)  # v0003: all of them
        server.server.log.truncate_through(live.last_offset)
        (store / "v0003" / EVENT_USERS_FILE).write_bytes(b"tampered")  # the only holder no longer verifies
        shutil.rmtree(store / "v0002")
        VersionedStore(store).set_current("v0001")
        deadline = time.monotonic() + 30
        while "no retained index version that verifies" not in stub.GetInfo(pb.GetInfoRequest()).last_reload_error:
            assert time.monotonic() < deadline, "the gap was not reported"
            time.sleep(0.02)
        info = stub.GetInfo(pb.GetInfoRequest(), timeout=5)
        assert info.index_version == "v0002" and info.last_refused_version == "v0001"
        assert not _all_recommended(stub, USER) & {item_id_of_row(1), item_id_of_row(2)}


def test_prune_lets_the_log_shrink_only_to_what_every_remaining_version_holds(
    store: Path, log_path: Path, recctl: Run
) -> None:
    first = _compact(store, log_path)  # v0002 holds 1..3; v0001 none
    with InteractionLog(log_path) as log:
        log.record(USER, [item_id_of_row(4)])
        build_index(store.parent / "model", store, new_events=log.export())  # v0003 holds 1..4
    assert safe_truncation_offset(store) == 0
    code, out, err = recctl("index", "prune", "--index", store, "--keep", "2", "--events", log_path, "--json")
    assert code == 0, err
    assert json.loads(out) == {"removed": ["v0001"], "events_truncated": first}
    with InteractionLog(log_path) as log:
        assert log.truncated_through == first
        assert log.extra_seen(USER).tolist() == [item_id_of_row(4)], "event 4 is not in v0002: it must stay"
    assert safe_truncation_offset(store, serving_through=1) == 1, "a served (maybe pruned) version counts too"


def test_unreadable_versions_do_not_count_and_a_missing_store_is_an_error(store: Path, tmp_path: Path) -> None:
    build_index(store.parent / "model", store)
    (store / "v0001" / "manifest.json").write_text("{")
    assert safe_truncation_offset(store) == 0
    prune_versions(store, keep=1)
    assert safe_truncation_offset(store) == 0
    with pytest.raises(BundleError, match="no such index store"):
        rollback(tmp_path / "nowhere")
    assert np.array_equal(np.load(store / "v0002" / EVENT_USERS_FILE), np.zeros(0, dtype=np.int64))


def test_recctl_rebuild_refuses_altered_compacted_events_and_the_log_keeps_them(
    store: Path, log_path: Path, recctl: Run
) -> None:
    through = _compact(store, log_path)
    VersionedStore(store).set_current("v0002")
    users = store / "v0002" / EVENT_USERS_FILE
    np.save(users, np.load(users) + 2)  # other users, same size; the manifest is left as it was
    code, _, err = recctl("index", "rebuild", "--models", store.parent / "model", "--out", store, "--events", log_path)
    assert code == 1 and err.count("\n") == 1
    assert "cannot carry live events forward" in err and "checksum mismatch" in err and EVENT_USERS_FILE in err
    assert VersionedStore(store).versions() == ["v0001", "v0002"]
    with InteractionLog(log_path, replay=False) as log:
        assert log.truncated_through == 0 and len(log.export()) == through, "a refused rebuild truncated the log"


def test_the_repair_source_is_read_through_its_verified_manifest(store: Path, log_path: Path) -> None:
    through = _compact(store, log_path)
    found = newest_events_holding(store, through)
    assert found is not None and found[0] == "v0002"
    assert sorted(zip(found[1].user_ids.tolist(), found[1].item_ids.tolist(), strict=True)) == sorted(
        [(USER, item_id_of_row(1)), (USER, item_id_of_row(2)), (NEW_USER, item_id_of_row(3))]
    )
    assert found[1].through_offset == through
    raw = json.loads((store / "v0002" / "manifest.json").read_text())
    del raw["files"][EVENT_USERS_FILE]  # half a version: the holder no longer counts
    (store / "v0002" / "manifest.json").write_text(json.dumps(raw))
    assert newest_events_holding(store, through) is None
