"""The live interaction log: durable before acknowledged, replayed exactly, cheap to read."""

from __future__ import annotations

import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from movierec.server.interaction_log import (
    LOG_FILE_NAME,
    InteractionLog,
    InteractionLogError,
    InvalidInteractions,
    LiveEventCapExceeded,
)

# The child appends one single-item event per call forever and prints each offset only after
# record() returned (= acknowledged); the parent SIGKILLs it mid-stream.
_WRITER = """
import sys
from pathlib import Path
from movierec.server.interaction_log import InteractionLog
log = InteractionLog(Path(sys.argv[1]))
n = 0
while True:
    n += 1
    offset = log.record(user_id=7, item_ids=[n], ratings=[5.0], times=[1_000_000 + n])
    print(offset, n, flush=True)
"""


@pytest.fixture
def log_path(tmp_path: Path) -> Path:
    return tmp_path / LOG_FILE_NAME


def test_recorded_items_are_seen_at_once_sorted_and_deduplicated(log_path: Path) -> None:
    with InteractionLog(log_path) as log:
        assert log.extra_seen(42).size == 0
        first = log.record(42, [30, 10])
        second = log.record(42, [20, 10])
        assert second > first
        assert log.extra_seen(42).tolist() == [10, 20, 30]
        assert log.extra_seen(43).size == 0
        assert log.last_offset == second


def test_hot_path_arrays_cannot_be_mutated_by_a_reader(log_path: Path) -> None:
    with InteractionLog(log_path) as log:
        log.record(1, [5])
        with pytest.raises(ValueError):
            log.extra_seen(1)[0] = 99
        assert not log.extra_seen(2).flags.writeable  # the shared empty answer too


def test_replay_after_reopen_equals_what_was_written(log_path: Path) -> None:
    rng = np.random.default_rng(0)
    expected: dict[int, set[int]] = {}
    with InteractionLog(log_path) as log:
        for _ in range(200):
            user = int(rng.integers(1, 20))
            items = rng.integers(1, 500, size=int(rng.integers(1, 6))).tolist()
            log.record(user, items)
            expected.setdefault(user, set()).update(items)
        written = log.export()
        last = log.last_offset
    with InteractionLog(log_path) as reopened:
        for user, items in expected.items():
            assert reopened.extra_seen(user).tolist() == sorted(items)
        assert reopened.last_offset == last
        replayed = reopened.export()
    for name in ("offsets", "user_ids", "item_ids", "times"):
        np.testing.assert_array_equal(getattr(replayed, name), getattr(written, name))
    np.testing.assert_array_equal(replayed.ratings, written.ratings)  # NaN == NaN here


def test_export_keeps_every_field_and_missing_ratings_are_nan(log_path: Path) -> None:
    with InteractionLog(log_path) as log:
        log.record(3, [100, 200], ratings=[4.5, None], times=[1_600_000_000, 1_600_000_001])
        log.record(4, [300])
        events = log.export()
        assert events.user_ids.tolist() == [3, 3, 4]
        assert events.item_ids.tolist() == [100, 200, 300]
        assert events.ratings[0] == 4.5 and np.isnan(events.ratings[1]) and np.isnan(events.ratings[2])
        assert events.times[:2].tolist() == [1_600_000_000, 1_600_000_001]
        assert events.times[2] > 1_600_000_001  # no time given: the server's clock
        assert events.offsets.tolist() == sorted(set(events.offsets.tolist()))
        assert log.export(after=int(events.offsets[1])).item_ids.tolist() == [300]


def test_liked_follows_the_latest_rating_of_each_item(log_path: Path) -> None:
    with InteractionLog(log_path, like_threshold=4.0) as log:
        log.record(9, [1, 2, 3, 4], ratings=[5.0, 2.0, None, 4.0])
        assert log.liked(9).tolist() == [1, 3, 4]
        log.record(9, [1, 2], ratings=[1.0, 4.5])  # re-rated: 1 falls out, 2 comes in
        assert log.liked(9).tolist() == [2, 3, 4]
        assert log.extra_seen(9).tolist() == [1, 2, 3, 4]
    with InteractionLog(log_path, like_threshold=4.0) as reopened:
        assert reopened.liked(9).tolist() == [2, 3, 4]


def test_compaction_exports_then_truncates_and_offsets_are_never_reused(log_path: Path) -> None:
    with InteractionLog(log_path) as log:
        log.record(1, [10, 11])
        log.record(2, [20])
        merged_through = log.export().last_offset
        log.record(1, [12])
        assert log.truncate_through(merged_through) == 3
        remaining = log.export()
        assert remaining.item_ids.tolist() == [12]
        assert log.extra_seen(1).tolist() == [12]  # the rest now lives in the bundle's seen sets
        assert log.extra_seen(2).size == 0
        newest = log.record(3, [30])
        assert newest > int(remaining.offsets[-1])
    with InteractionLog(log_path, replay_after=newest - 1) as reopened:
        assert reopened.extra_seen(1).size == 0  # offset of item 12 <= replay_after: in the bundle already
        assert reopened.extra_seen(3).tolist() == [30]
        assert reopened.last_offset == newest


def test_rebuild_protocol_across_two_handles(log_path: Path) -> None:
    """The server keeps writing while ``recctl index rebuild`` (another handle) exports and truncates."""
    with InteractionLog(log_path) as server:
        server.record(1, [10])
        with InteractionLog(log_path) as rebuild:
            merged = rebuild.export()
            server.record(1, [11])  # arrives while the new bundle is being built
            assert rebuild.export(after=merged.last_offset).item_ids.tolist() == [11]
            rebuild.truncate_through(merged.last_offset)
        assert server.extra_seen(1).tolist() == [10, 11]  # still serving the old bundle: nothing forgotten
        assert server.record(2, [20]) > merged.last_offset
    with InteractionLog(log_path, replay_after=merged.last_offset) as restarted:  # now on the new bundle
        assert restarted.export().item_ids.tolist() == [11, 20]
        assert restarted.extra_seen(1).tolist() == [11]


def test_a_concurrent_reader_never_sees_a_live_event_vanish_during_compaction(log_path: Path) -> None:
    """Compaction rebuilds the in-memory views; a reader on another thread must never find them half-built."""
    with InteractionLog(log_path) as log:
        for user in range(300):  # compacted events: replay has real work to do between clear and rebuild
            log.record(user, [1, 2, 3])
        merged_through = log.last_offset
        live_users = range(1000, 1300)
        for user in live_users:
            log.record(user, [user])
        stop = threading.Event()
        vanished: list[int] = []

        def read() -> None:
            while not stop.is_set():
                for user in live_users:
                    if user not in log.extra_seen(user).tolist():
                        vanished.append(user)

        reader = threading.Thread(target=read)
        reader.start()
        try:
            for _ in range(20):
                log.truncate_through(merged_through)
        finally:
            stop.set()
            reader.join()
        assert vanished == []
        assert log.extra_seen(0).size == 0  # the compacted events are gone from the live views


def test_a_closed_log_reopens_with_an_empty_log_after_full_truncation(log_path: Path) -> None:
    with InteractionLog(log_path) as log:
        last = log.record(1, [1])
        log.truncate_through(last)
    with InteractionLog(log_path) as reopened:
        assert reopened.export().last_offset == 0
        assert reopened.last_offset == last  # the offset counter survives deletion
        assert reopened.record(1, [2]) == last + 1


@pytest.mark.parametrize(
    ("call", "message", "field"),
    [
        ({"user_id": 1, "item_ids": []}, "empty", "item_ids"),
        ({"user_id": True, "item_ids": [1]}, "user_id", "user_id"),
        ({"user_id": 2**63, "item_ids": [1]}, "user_id", "user_id"),
        ({"user_id": 1, "item_ids": [1.5]}, "64-bit", "item_ids"),
        ({"user_id": 1, "item_ids": [2**64 - 1]}, "64-bit", "item_ids"),
        ({"user_id": 1, "item_ids": [1, 2], "ratings": [4.0]}, "1 ratings for 2", "ratings"),
        ({"user_id": 1, "item_ids": [1], "ratings": [float("nan")]}, "finite", "ratings"),
        ({"user_id": 1, "item_ids": [1], "ratings": ["5"]}, "finite", "ratings"),
        ({"user_id": 1, "item_ids": [1], "times": [1, 2]}, "2 times for 1", "times"),
        ({"user_id": 1, "item_ids": [1], "times": [1.5]}, "64-bit", "times"),
        ({"user_id": 1, "item_ids": [1], "times": [-5]}, ">= 0", "times"),
        ({"user_id": 1, "item_ids": list(range(11))}, "limit is 10", "item_ids"),
    ],
)
def test_bad_calls_are_refused_and_store_nothing(
    log_path: Path, call: dict[str, object], message: str, field: str
) -> None:
    with InteractionLog(log_path, max_items_per_call=10) as log:
        with pytest.raises(InvalidInteractions, match=message) as refused:
            log.record(**call)  # type: ignore[arg-type]
        assert refused.value.field == field
        assert len(log.export()) == 0
        assert log.extra_seen(1).size == 0


def test_a_write_the_disk_refuses_is_an_error_and_publishes_nothing(log_path: Path) -> None:
    with InteractionLog(log_path) as log:
        first = log.record(1, [10])
        pages = log._conn.execute("PRAGMA page_count").fetchone()[0]
        log._conn.execute(f"PRAGMA max_page_count = {pages}")  # the database may not grow: "disk full"
        with pytest.raises(InteractionLogError, match=r"could not store interactions.*full"):
            log.record(1, list(range(100, 2100)))
        assert log.extra_seen(1).tolist() == [10]
        assert log.last_offset == first
        log._conn.execute("PRAGMA max_page_count = 1073741823")
        assert log.record(1, [11]) > first  # the log is still usable once there is room
    with InteractionLog(log_path) as reopened:
        assert reopened.export().item_ids.tolist() == [10, 11]


def test_concurrent_writers_lose_nothing_and_get_distinct_offsets(log_path: Path) -> None:
    n_threads, per_thread = 8, 40
    offsets: list[list[int]] = [[] for _ in range(n_threads)]
    with InteractionLog(log_path) as log:

        def write(t: int) -> None:
            for j in range(per_thread):
                offsets[t].append(log.record(user_id=t % 3, item_ids=[t * 1000 + j]))

        threads = [threading.Thread(target=write, args=(t,)) for t in range(n_threads)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        all_offsets = [o for per in offsets for o in per]
        assert len(set(all_offsets)) == n_threads * per_thread
        for per in offsets:
            assert per == sorted(per)  # one thread's calls are ordered
        for user in range(3):
            expected = sorted(t * 1000 + j for t in range(n_threads) if t % 3 == user for j in range(per_thread))
            assert log.extra_seen(user).tolist() == expected
    with InteractionLog(log_path) as reopened:
        assert len(reopened.export()) == n_threads * per_thread


def _kill_writer_after(log_path: Path, acknowledged: int) -> list[tuple[int, int]]:
    """Start the writer, read ``acknowledged`` acks, SIGKILL it at once; return the (offset, item) acks."""
    child = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(log_path)], stdout=subprocess.PIPE, text=True, bufsize=1
    )
    assert child.stdout is not None
    acks: list[tuple[int, int]] = []
    try:
        for line in child.stdout:
            offset, item = line.split()
            acks.append((int(offset), int(item)))
            if len(acks) == acknowledged:
                child.send_signal(signal.SIGKILL)
                break
    finally:
        child.kill()
        child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL
    assert len(acks) == acknowledged
    return acks


def test_kill_9_loses_no_acknowledged_event(log_path: Path) -> None:
    acks = _kill_writer_after(log_path, acknowledged=60)
    with InteractionLog(log_path) as reopened:
        stored = dict(zip(reopened.export().offsets.tolist(), reopened.export().item_ids.tolist(), strict=True))
        for offset, item in acks:
            assert stored.get(offset) == item
        assert set(range(1, 61)) <= set(reopened.extra_seen(7).tolist())
        assert reopened.record(7, [0]) > acks[-1][0]  # appending resumes after the crash


def _copy_crashed_log(log_path: Path, folder: Path) -> Path:
    """Copy a log and its WAL as a crash left them (opening the copy checkpoints it, not the original)."""
    folder.mkdir()
    copy = folder / LOG_FILE_NAME
    shutil.copyfile(log_path, copy)
    shutil.copyfile(f"{log_path}-wal", f"{copy}-wal")
    return copy


def _end_of_last_commit(wal: Path) -> int:
    """Byte offset where the WAL's last committed transaction ends (SQLite's WAL format: a 32-byte header with the
    page size at bytes 8-12, then frames of a 24-byte header and one page; a commit frame's bytes 4-8 are non-zero).

    The killed writer may have left frames of a transaction it never committed after it.
    """
    data = wal.read_bytes()
    frame = 24 + int.from_bytes(data[8:12], "big")
    ends = [
        start + frame
        for start in range(32, len(data) - frame + 1, frame)
        if int.from_bytes(data[start + 4 : start + 8], "big") != 0
    ]
    assert ends, "the WAL holds no committed transaction"
    return ends[-1]


def test_a_torn_wal_tail_drops_only_the_torn_transaction(log_path: Path, tmp_path: Path) -> None:
    acks = _kill_writer_after(log_path, acknowledged=30)
    assert Path(f"{log_path}-wal").stat().st_size > 0, "the killed writer should leave its WAL un-checkpointed"
    intact = _copy_crashed_log(log_path, tmp_path / "intact")
    torn = _copy_crashed_log(log_path, tmp_path / "torn")
    with open(f"{torn}-wal", "r+b") as handle:  # tear the newest commit's last frame, as a power cut mid-write would
        handle.truncate(_end_of_last_commit(Path(f"{torn}-wal")) - 100)
    with InteractionLog(intact) as log:
        committed = log.export().item_ids.tolist()
    assert committed[: len(acks)] == [item for _, item in acks]
    with InteractionLog(torn) as log:
        assert log.export().item_ids.tolist() == committed[:-1]
        assert log.extra_seen(7).tolist() == sorted(committed[:-1])


def test_a_file_that_is_not_a_log_is_refused_with_its_path(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.sqlite3"
    garbage.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(InteractionLogError, match=str(garbage)):
        InteractionLog(garbage)
    assert garbage.read_bytes() == b"this is not sqlite" * 100  # nothing stored is touched


def test_another_sqlite_database_is_refused(tmp_path: Path) -> None:
    other = tmp_path / "other.sqlite3"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE notes (body TEXT)")
    with pytest.raises(InteractionLogError, match="not an interaction log"):
        InteractionLog(other)


def test_a_missing_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(InteractionLogError, match="folder does not exist"):
        InteractionLog(tmp_path / "nowhere" / LOG_FILE_NAME)


def test_a_retried_request_id_is_stored_once_and_gets_the_first_acknowledgement(log_path: Path) -> None:
    with InteractionLog(log_path) as log:
        first = log.record(5, [10, 20], request_id="call-1")
        assert log.record(5, [10, 20], request_id="call-1") == first
        assert log.record(5, [30], request_id="call-1") == first, "a retry is answered, never stored, whatever it holds"
        assert log.record(6, [10], request_id="call-1") > first, "request ids are per user"
        assert log.record(5, [40]) > first and log.record(5, [40]) > first, "without an id every call is stored"
        assert log.extra_seen(5).tolist() == [10, 20, 40]
        stored = len(log.export())
    with InteractionLog(log_path) as reopened:  # remembered in the log file: a restart forgets no id
        assert reopened.record(5, [10, 20], request_id="call-1") == first
        assert len(reopened.export()) == stored


def test_request_ids_are_forgotten_after_their_time_to_live(log_path: Path) -> None:
    with InteractionLog(log_path, request_id_ttl_s=0.05) as log:
        first = log.record(5, [10], request_id="call-1")
        time.sleep(0.1)
        assert log.record(5, [10], request_id="call-1") > first


def test_the_per_user_cap_refuses_a_call_whole_and_counts_distinct_live_items(log_path: Path) -> None:
    with InteractionLog(log_path, max_live_items_per_user=3) as log:
        log.record(1, [10, 20])
        log.record(1, [10, 20, 20])  # items already live take no room
        with pytest.raises(LiveEventCapExceeded, match="limit is 3"):
            log.record(1, [30, 40])
        assert log.extra_seen(1).tolist() == [10, 20] and len(log.export()) == 5
        last = log.record(1, [30])
        log.record(2, [10, 20, 30])  # another user's room is their own
        with pytest.raises(LiveEventCapExceeded):
            log.record(1, [50])
        log.truncate_through(last)  # compacted into every retained version: room again
        assert log.record(1, [50]) > last


def test_a_write_merges_into_the_view_exactly_as_a_full_replay_builds_it(log_path: Path) -> None:
    rng = np.random.default_rng(3)
    with InteractionLog(log_path) as log:
        for _ in range(400):
            n = int(rng.integers(1, 8))
            items = rng.integers(1, 60, size=n).tolist()
            ratings = [None if r < 1 else float(r) for r in rng.integers(0, 6, size=n)]
            log.record(int(rng.integers(1, 6)), items, ratings)
        live = {user: (log.extra_seen(user).tolist(), log.liked(user).tolist()) for user in range(1, 6)}
    with InteractionLog(log_path) as replayed:
        for user, (seen, liked) in live.items():
            assert replayed.extra_seen(user).tolist() == seen
            assert replayed.liked(user).tolist() == liked


def test_truncation_is_remembered_never_moves_back_and_keeps_items_with_newer_events(log_path: Path) -> None:
    with InteractionLog(log_path) as log:
        assert log.truncated_through == 0
        log.record(1, [10, 20])
        through = log.record(1, [30])
        log.record(1, [10])  # item 10 has a newer event than the truncation point
        assert log.truncate_through(through) == 3
        assert log.extra_seen(1).tolist() == [10]
        assert log.truncate_through(1) == 0 and log.truncated_through == through
    with InteractionLog(log_path) as reopened:
        assert reopened.truncated_through == through
        assert reopened.extra_seen(1).tolist() == [10]


def test_offsets_can_be_moved_past_what_an_index_already_holds(log_path: Path) -> None:
    """A fresh log beside versions that compacted offsets 1..50 must not number new events 1, 2, ..."""
    with InteractionLog(log_path) as log:
        log.ensure_offsets_after(50)
        assert log.record(1, [10]) == 51
        log.ensure_offsets_after(10)  # never backwards
        assert log.record(1, [20]) == 52
    with InteractionLog(log_path) as reopened:
        assert reopened.last_offset == 52


def test_a_version_1_log_is_upgraded_in_place_with_its_truncation_point(log_path: Path) -> None:
    with sqlite3.connect(log_path) as conn:
        conn.execute(
            "CREATE TABLE interactions (seq INTEGER PRIMARY KEY AUTOINCREMENT, user_id INTEGER NOT NULL,"
            " item_id INTEGER NOT NULL, rating REAL, event_time INTEGER NOT NULL, recorded_at REAL NOT NULL)"
        )
        conn.executemany(
            "INSERT INTO interactions (user_id, item_id, rating, event_time, recorded_at) VALUES (?, ?, NULL, 1, 1.0)",
            [(1, item) for item in range(10, 60, 10)],
        )
        conn.execute("DELETE FROM interactions WHERE seq <= 2")  # what version 1's truncate_through did
        conn.execute("PRAGMA user_version = 1")
    with InteractionLog(log_path) as log:
        assert log.truncated_through == 2
        assert log.extra_seen(1).tolist() == [30, 40, 50]
        assert log.record(1, [60], request_id="r") == 6


def test_refresh_applies_other_processes_events_once_and_keeps_each_items_newest(log_path: Path) -> None:
    with InteractionLog(log_path) as first, InteractionLog(log_path) as second:
        first.record(1, [10, 20], ratings=[5.0, 5.0])
        second.record(1, [20], ratings=[1.0])  # newer: 20 is no longer liked
        assert first.refresh() == 3 and second.refresh() == 3  # own events come back and change nothing
        assert first.refresh() == 0
        for log in (first, second):
            assert log.extra_seen(1).tolist() == [10, 20]
            assert log.liked(1).tolist() == [10]
        first.record(2, [30])
        second.refresh()
        assert second.extra_seen(2).tolist() == [30] and second.last_offset == first.last_offset


def test_refresh_reads_the_file_only_after_another_connection_committed(
    log_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server alone on its file polls it every 20 ms: with no other writer, a poll reads no rows at all."""
    from movierec.server import interaction_log as log_module

    reads: list[int] = []
    real_read = log_module._read_columns

    def counted_read(conn: sqlite3.Connection, after: int) -> Any:
        reads.append(after)
        return real_read(conn, after)

    monkeypatch.setattr(log_module, "_read_columns", counted_read)
    with InteractionLog(log_path) as alone, InteractionLog(log_path) as other:
        alone.refresh()
        reads.clear()
        alone.record(1, [10])  # its own write: already in its views
        assert [alone.refresh() for _ in range(5)] == [0] * 5 and reads == []
        other.record(2, [20])
        reads.clear()
        assert alone.refresh() == 2 and len(reads) == 1  # its own event comes back beside the other's
        assert alone.extra_seen(2).tolist() == [20]
        other.truncate_through(other.last_offset)  # a commit too: the truncation is forgotten here
        assert alone.refresh() == 0 and alone.extra_seen(2).tolist() == []


def test_a_truncation_by_another_process_is_forgotten_here_and_frees_the_per_user_cap(log_path: Path) -> None:
    """Worker A truncates the shared file; worker B (its own handle) forgets those events on its next refresh, or
    when it asks to truncate through a point the file is already past, so B's cap counts only live events."""
    with (
        InteractionLog(log_path, max_live_items_per_user=3) as first,
        InteractionLog(log_path, max_live_items_per_user=3) as second,
        InteractionLog(log_path, max_live_items_per_user=3) as third,
    ):
        compacted = first.record(1, [10, 20, 30])
        for other in (second, third):
            other.refresh()
            assert other.extra_seen(1).tolist() == [10, 20, 30]
            with pytest.raises(LiveEventCapExceeded):
                other.record(1, [40])
        assert first.truncate_through(compacted) == 3 and first.extra_seen(1).tolist() == []
        assert second.refresh() == 0  # nothing new to read, yet the truncation point moved
        assert second.extra_seen(1).tolist() == [] and second.users == 0
        assert third.truncate_through(compacted) == 0  # already done by the first handle: nothing deleted here
        assert third.extra_seen(1).tolist() == [] and third.users == 0
        second.record(1, [40, 50, 60])  # room again: the cap counts only what the file still holds
        third.refresh()
        assert third.extra_seen(1).tolist() == [40, 50, 60]


_OPEN_AT_ONCE = """
import sys, time
from pathlib import Path
from movierec.server.interaction_log import InteractionLog
start = float(sys.argv[2])
while time.time() < start:
    pass
with InteractionLog(Path(sys.argv[1])):
    pass
"""


def test_processes_opening_a_new_log_at_the_same_moment_all_succeed(tmp_path: Path) -> None:
    """Worker processes open one new log together: switching it to WAL must wait for the lock, not fail."""
    for attempt in range(5):
        path = tmp_path / f"log{attempt}.sqlite3"
        start = time.time() + 1.0
        children = [
            subprocess.Popen(
                [sys.executable, "-c", _OPEN_AT_ONCE, str(path), str(start)], stderr=subprocess.PIPE, text=True
            )
            for _ in range(6)
        ]
        for child in children:
            _, stderr = child.communicate(timeout=60)
            assert child.returncode == 0, stderr
