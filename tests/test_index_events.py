"""Live events compacted into index versions stay excluded across rebuilds (issue 5 compaction)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from bundle_factory import item_id_of_row, make_model_bundle, user_id_of_row

from movierec.bundle import VersionedStore, read_manifest
from movierec.clients.cli import main as cli
from movierec.errors import BundleError
from movierec.index import build_index, open_index, rebuild_index
from movierec.index.events import CompactedEvents, SeenEvents
from movierec.server.interaction_log import InteractionLog


@pytest.fixture
def model(tmp_path: Path) -> Path:
    return make_model_bundle(tmp_path / "models" / "a", n_users=6, n_items=30, dim=4, seen_per_user=3, seed=0)


def best_unseen(index_root: Path, user_row: int, k: int) -> list[int]:
    return [int(r) for r in open_index(index_root).recommend([user_row], k)[0].item_rows]


def record(log_path: Path, user_row: int, item_rows: list[int]) -> int:
    with InteractionLog(log_path) as log:
        return log.record(user_id_of_row(user_row), [item_id_of_row(r) for r in item_rows])


def test_events_are_excluded_and_carried_into_every_later_version(model: Path, tmp_path: Path) -> None:
    root, log = tmp_path / "index", tmp_path / "events.sqlite"
    build_index(model, root)
    top = best_unseen(root, 2, 3)
    record(log, 2, top[:2])
    record(log, 99, [item_id_of_row(0)])  # a user the model never saw: kept, not merged
    with InteractionLog(log) as opened:
        first = rebuild_index(tmp_path / "models", root, new_events=opened.export())
    served = open_index(root)
    assert served.path == first and served.events_through == 3 and len(served.events) == 3
    assert not set(top[:2]) & set(best_unseen(root, 2, 10))
    assert set(top[:2]) <= set(served.model.seen.row(2).tolist())
    interactions = read_manifest(first, "index").meta["interactions"]
    assert interactions == {"through_offset": 3, "events": 3, "merged_into_seen": 2}
    # A later build from a different model carries the compacted events forward without the log.
    newer = make_model_bundle(tmp_path / "models" / "b", n_users=6, n_items=30, dim=4, seen_per_user=3, seed=1)
    build_index(newer, root)
    assert open_index(root).events_through == 3
    assert set(top[:2]) <= set(open_index(root).model.seen.row(2).tolist())


def test_events_already_compacted_are_not_added_twice(model: Path, tmp_path: Path) -> None:
    root, log = tmp_path / "index", tmp_path / "events.sqlite"
    record(log, 1, [4, 5])
    with InteractionLog(log) as opened:
        build_index(model, root, new_events=opened.export())
    record(log, 1, [6])
    with InteractionLog(log) as opened:
        build_index(model, root, new_events=opened.export())  # exports offsets 1..3; 1..2 are in v0001
    served = open_index(root)
    assert served.events_through == 3
    assert sorted(served.events.item_ids.tolist()) == [item_id_of_row(r) for r in (4, 5, 6)]


def test_extended_keeps_only_newer_offsets() -> None:
    old = CompactedEvents(np.array([1]), np.array([10]), through_offset=5)

    fresh = SeenEvents(
        offsets=np.array([4, 5, 6]),
        user_ids=np.array([1, 2, 3]),
        item_ids=np.array([20, 30, 40]),
        ratings=np.full(3, np.nan),
        times=np.zeros(3, dtype=np.int64),
    )
    grown = old.extended(fresh)
    assert grown.through_offset == 6 and grown.item_ids.tolist() == [10, 40]
    assert grown.extended(fresh) is grown  # nothing newer than offset 6


def test_rebuild_cli_compacts_the_log(
    model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(cli, "COMMAND_MODULES", ("movierec.clients.cli.index_cmd",))
    root, log = tmp_path / "index", tmp_path / "events.sqlite"
    record(log, 0, [1, 2, 3])
    args = ["index", "rebuild", "--models", str(tmp_path / "models"), "--out", str(root), "--events", str(log)]
    assert cli.main([*args, "--json"]) == 0
    built = json.loads(capsys.readouterr().out)
    assert built["events"] == 3 and built["events_through"] == 3
    assert cli.main([*args[:-1], str(tmp_path / "missing.sqlite")]) == 1
    assert "no such interaction log" in capsys.readouterr().err


def test_unreadable_compacted_events_block_the_next_build_instead_of_being_dropped(model: Path, tmp_path: Path) -> None:
    root, log = tmp_path / "index", tmp_path / "events.sqlite"
    record(log, 1, [4])
    with InteractionLog(log) as opened:
        build_index(model, root, new_events=opened.export())
    (root / "v0001" / "events_item_ids.npy").write_bytes(b"junk")
    with pytest.raises(BundleError, match="cannot carry live events forward"):
        build_index(model, root)
    assert VersionedStore(root).versions() == ["v0001"]
