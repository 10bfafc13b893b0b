"""The Redis-backed live event store against a real redis-server: same answers as the SQLite log, shared by
replicas within 100 ms, no acknowledged event lost to kill -9, unavailable (never silently lossy) while Redis
is down, and back on its own."""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import redis
from bundle_factory import item_id_of_row, make_model_bundle, user_id_of_row
from redis_harness import RedisServer, running_redis
from server_harness import RECCTL, ServeProcess

from movierec.index import build_index
from movierec.index.serving import open_index
from movierec.server.event_stores import open_server_store
from movierec.server.interaction_log import InteractionLog, InvalidInteractions, LiveEventCapExceeded
from movierec.server.live_events import ContinuityGap, LiveEventStore, check_continuity
from movierec.server.redis_events import (
    EventStoreUnavailable,
    InvalidEventsUrl,
    RedisEventStore,
    parse_events_url,
)
from movierec.v1 import recommender_pb2 as pb
from movierec.v1 import recommender_pb2_grpc as pb_grpc


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    with running_redis(tmp_path) as started:
        yield started


def _wait_until(condition: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.001)
    return True


def _shows(store: RedisEventStore, user: int, items: list[int], *, exactly: bool = False) -> Callable[[], bool]:
    """A condition: the store's view of ``user`` holds ``items`` (and nothing else, when ``exactly``)."""

    def check() -> bool:
        seen = store.extra_seen(user).tolist()
        return seen == items if exactly else set(items) <= set(seen)

    return check


def _random_calls(seed: int, n: int) -> list[tuple[int, list[int], list[float | None], list[int]]]:
    rng = np.random.default_rng(seed)
    calls = []
    for _ in range(n):
        size = int(rng.integers(1, 6))
        items = rng.integers(1, 40, size=size).tolist()  # few items: re-rated items and duplicates in one call
        ratings: list[float | None] = [None if r < 1 else float(r) for r in rng.integers(0, 6, size=size)]
        times = rng.integers(1_500_000_000, 1_600_000_000, size=size).tolist()
        calls.append((int(rng.integers(1, 12)), items, ratings, times))
    return calls


def _assert_same_state(sqlite: InteractionLog, shared: RedisEventStore, users: range) -> None:
    for user in users:
        assert shared.extra_seen(user).tolist() == sqlite.extra_seen(user).tolist(), f"user {user}"
        assert shared.liked(user).tolist() == sqlite.liked(user).tolist(), f"user {user}"
        assert not shared.extra_seen(user).flags.writeable
    expected, got = sqlite.export(), shared.export()
    for name in ("offsets", "user_ids", "item_ids", "times"):
        np.testing.assert_array_equal(getattr(got, name), getattr(expected, name), err_msg=name)
    np.testing.assert_array_equal(got.ratings, expected.ratings)  # NaN == NaN here
    assert shared.last_offset == sqlite.last_offset


def test_same_answers_as_the_sqlite_log_through_records_compaction_and_replay(
    server: RedisServer, tmp_path: Path
) -> None:
    users = range(0, 13)
    calls = _random_calls(seed=1, n=120)
    with InteractionLog(tmp_path / "events.sqlite3") as sqlite, RedisEventStore(server.url) as shared:
        for user, items, ratings, times in calls[:80]:
            assert shared.record(user, items, ratings, times) == sqlite.record(user, items, ratings, times)
        _assert_same_state(sqlite, shared, users)
        middle = int(sqlite.export().offsets[150])  # inside a call: compaction may split one
        assert shared.truncate_through(middle) == sqlite.truncate_through(middle)
        _assert_same_state(sqlite, shared, users)
        for user, items, ratings, times in calls[80:]:
            assert shared.record(user, items, ratings, times) == sqlite.record(user, items, ratings, times)
        _assert_same_state(sqlite, shared, users)
        assert shared.export(after=middle + 7).offsets.tolist() == sqlite.export(after=middle + 7).offsets.tolist()
    after = middle + 40
    with (
        InteractionLog(tmp_path / "events.sqlite3", replay_after=after) as sqlite,
        RedisEventStore(server.url, replay_after=after) as shared,
    ):
        for user in users:
            assert shared.extra_seen(user).tolist() == sqlite.extra_seen(user).tolist(), f"replayed user {user}"
            assert shared.liked(user).tolist() == sqlite.liked(user).tolist(), f"replayed user {user}"
        assert shared.last_offset == sqlite.last_offset


def test_it_is_a_live_event_store(server: RedisServer) -> None:
    store: LiveEventStore = RedisEventStore(server.url)  # mypy checks the protocol here
    try:
        assert store.record(5, [50]) == 1
        assert store.extra_seen(5).tolist() == [50]
    finally:
        store.close()


@pytest.mark.parametrize(
    ("call", "field"),
    [
        ({"user_id": 1, "item_ids": []}, "item_ids"),
        ({"user_id": True, "item_ids": [1]}, "user_id"),
        ({"user_id": 2**63, "item_ids": [1]}, "user_id"),
        ({"user_id": 1, "item_ids": [1.5]}, "item_ids"),
        ({"user_id": 1, "item_ids": [1, 2], "ratings": [4.0]}, "ratings"),
        ({"user_id": 1, "item_ids": [1], "ratings": [float("inf")]}, "ratings"),
        ({"user_id": 1, "item_ids": [1], "times": [-5]}, "times"),
        ({"user_id": 1, "item_ids": list(range(11))}, "item_ids"),
    ],
)
def test_bad_calls_are_refused_as_the_sqlite_log_refuses_them(
    server: RedisServer, tmp_path: Path, call: dict[str, object], field: str
) -> None:
    with (
        InteractionLog(tmp_path / "events.sqlite3", max_items_per_call=10) as sqlite,
        RedisEventStore(server.url, max_items_per_call=10) as shared,
    ):
        with pytest.raises(InvalidInteractions) as expected:
            sqlite.record(**call)  # type: ignore[arg-type]
        with pytest.raises(InvalidInteractions) as refused:
            shared.record(**call)  # type: ignore[arg-type]
        assert (refused.value.field, str(refused.value)) == (field, str(expected.value))
        assert len(shared.export()) == 0 and shared.last_offset == 0


def test_two_replicas_see_each_other_within_100_ms(server: RedisServer) -> None:
    lags: list[float] = []
    with RedisEventStore(server.url) as first, RedisEventStore(server.url) as second:
        for n in range(100):
            writer, reader = (first, second) if n % 2 == 0 else (second, first)
            item = 1000 + n
            started = time.perf_counter()
            writer.record(7, [item])
            assert item in writer.extra_seen(7)  # the writer at once
            assert _wait_until(_shows(reader, 7, [item]), timeout_s=2.0)
            lags.append(time.perf_counter() - started)
        assert first.extra_seen(7).tolist() == second.extra_seen(7).tolist() == list(range(1000, 1100))
        assert _wait_until(lambda: first.last_offset == second.last_offset == 100, timeout_s=1.0)
    lags.sort()
    assert lags[98] < 0.1, f"p99 lag {lags[98] * 1000:.1f} ms (median {lags[50] * 1000:.1f} ms)"


def test_concurrent_writers_on_two_replicas_get_distinct_offsets_and_lose_nothing(server: RedisServer) -> None:
    per_thread = 25
    with RedisEventStore(server.url) as first, RedisEventStore(server.url) as second:
        offsets: list[list[int]] = [[] for _ in range(6)]

        def write(t: int) -> None:
            store = first if t % 2 == 0 else second
            for j in range(per_thread):
                offsets[t].append(store.record(user_id=t % 3, item_ids=[t * 1000 + j, t * 1000 + j + 500]))

        threads = [threading.Thread(target=write, args=(t,)) for t in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        flat = sorted(o for per in offsets for o in per)
        assert flat == list(range(2, 2 * 6 * per_thread + 1, 2))  # each call holds two offsets, none shared
        exported = first.export()
        assert exported.offsets.tolist() == list(range(1, 2 * 6 * per_thread + 1))
        for user in range(3):
            expected = sorted(exported.item_ids[exported.user_ids == user].tolist())
            assert _wait_until(_shows(first, user, expected, exactly=True), timeout_s=2.0)
            assert _wait_until(_shows(second, user, expected, exactly=True), timeout_s=2.0)


def test_kill_9_of_redis_loses_no_acknowledged_event(server: RedisServer) -> None:
    acknowledged: list[tuple[int, int]] = []
    refused = threading.Event()
    with RedisEventStore(server.url, follow=False) as store:

        def write() -> None:
            n = 0
            while not refused.is_set():
                n += 1
                try:
                    acknowledged.append((store.record(user_id=3, item_ids=[n]), n))
                except EventStoreUnavailable:
                    refused.set()

        writer = threading.Thread(target=write)
        writer.start()
        assert _wait_until(lambda: len(acknowledged) >= 200, timeout_s=10.0)
        server.kill()
        writer.join(timeout=10)
        assert refused.is_set() and not writer.is_alive()
    server.start()  # on the same AOF
    with RedisEventStore(server.url) as restarted:
        stored = restarted.export()
        stored_pairs = set(zip(stored.offsets.tolist(), stored.item_ids.tolist(), strict=True))
        assert set(acknowledged) <= stored_pairs, "an acknowledged event was lost"
        assert restarted.extra_seen(3).tolist()[: len(acknowledged)] == [n for _, n in acknowledged]
        assert restarted.record(3, [10**9]) > acknowledged[-1][0]


def test_while_redis_is_down_writes_fail_loudly_reads_go_on_and_recovery_is_automatic(server: RedisServer) -> None:
    with RedisEventStore(server.url) as first:
        first.record(1, [10, 11])
        assert first.healthy and first.last_error is None
        server.kill()
        started = time.monotonic()
        with pytest.raises(EventStoreUnavailable, match=r"could not store interactions: Redis at redis://127\.0\.0\.1"):
            first.record(1, [12])
        assert time.monotonic() - started < 3.0
        assert first.extra_seen(1).tolist() == [10, 11]  # stale reads go on; nothing unacknowledged shows
        assert not first.healthy and first.last_error is not None and str(server.port) in first.last_error
        assert _wait_until(lambda: not first.healthy, timeout_s=1.0)  # the follower keeps saying so
        time.sleep(0.3)  # the follower backs off for a while
        server.start()
        with RedisEventStore(server.url) as second:  # another replica writes while `first` may still back off
            written = [second.record(2, [20 + n]) for n in range(5)]
        assert _wait_until(lambda: first.extra_seen(2).tolist() == [20, 21, 22, 23, 24], timeout_s=3.0)
        assert first.healthy and first.last_error is None
        assert first.record(1, [12]) == written[-1] + 1
        assert first.extra_seen(1).tolist() == [10, 11, 12]


def test_a_request_id_is_stored_once_and_forgotten_after_its_ttl(server: RedisServer) -> None:
    with (
        RedisEventStore(server.url, request_id_ttl_s=0.3) as first,
        RedisEventStore(server.url, request_id_ttl_s=0.3, follow=False) as second,
    ):
        offset = first.record(1, [10, 11], request_id="call-1")
        assert first.record(1, [10, 11], request_id="call-1") == offset  # a retry
        assert second.record(1, [10, 11], request_id="call-1") == offset  # a retry through another replica
        assert second.extra_seen(1).tolist() == [10, 11]  # ...that shows the stored call there at once
        assert first.record(2, [10], request_id="call-1") != offset  # the id is per user
        assert first.record(1, [12]) != first.record(1, [12])  # no request id: no deduplication
        assert first.export().item_ids.tolist() == [10, 11, 10, 12, 12]
        time.sleep(0.4)
        assert first.record(1, [10, 11], request_id="call-1") > offset  # remembered for the TTL only


def test_compaction_by_another_handle_leaves_a_serving_replica_whole(server: RedisServer) -> None:
    with RedisEventStore(server.url) as serving:
        serving.record(1, [10, 11])
        serving.record(2, [20])
        with RedisEventStore(server.url, follow=False) as rebuild:  # what `recctl index rebuild --events` holds
            merged = rebuild.export()
            serving.record(1, [12])  # arrives while the new bundle is built
            assert rebuild.export(after=merged.last_offset).item_ids.tolist() == [12]
            assert rebuild.truncate_through(merged.last_offset) == 3
            assert rebuild.export().item_ids.tolist() == [12]
        # Every retained version holds what was trimmed: the serving replica's follower forgets it too.
        assert _wait_until(_shows(serving, 1, [12], exactly=True), timeout_s=0.1)
        assert serving.truncate_through(merged.last_offset) == 0  # its own swap: already trimmed in Redis
        assert serving.extra_seen(1).tolist() == [12] and serving.extra_seen(2).size == 0
    with RedisEventStore(server.url, replay_after=merged.last_offset) as restarted:
        assert restarted.extra_seen(1).tolist() == [12]
        last = restarted.last_offset
        assert restarted.truncate_through(last) == 1 and len(restarted.export()) == 0
    with RedisEventStore(server.url) as reopened:
        assert reopened.last_offset == last  # the counter survives compaction: offsets are never reused
        assert reopened.record(1, [13]) == last + 1
        reopened.truncate_through(last + 50)  # past the newest: no later write may land in the trimmed range
        assert reopened.record(1, [14]) == last + 51


def test_a_foreign_entry_in_the_stream_is_logged_and_skipped(server: RedisServer) -> None:
    with RedisEventStore(server.url) as store:
        store.record(1, [10])
        admin = redis.Redis(host="127.0.0.1", port=server.port)
        admin.xadd("{movierec}:events", {"hello": "world"}, id="5-0")
        admin.close()
        with RedisEventStore(server.url, follow=False) as writer:
            writer.record(1, [11])
        assert _wait_until(_shows(store, 1, [10, 11], exactly=True), timeout_s=2.0)
        assert store.healthy
        assert store.export().item_ids.tolist() == [10, 11]


def test_durability_settings_that_break_the_guarantee_are_reported(server: RedisServer) -> None:
    with RedisEventStore(server.url, follow=False) as store:
        assert store.durability_note is None
    admin = redis.Redis(host="127.0.0.1", port=server.port)
    admin.config_set("appendfsync", "everysec")
    admin.close()
    with RedisEventStore(server.url, follow=False) as store:
        assert store.durability_note is not None and "appendfsync everysec" in store.durability_note


def test_a_redis_that_cannot_be_reached_at_start_is_a_clear_error(server: RedisServer) -> None:
    server.kill()
    with pytest.raises(EventStoreUnavailable, match=r"cannot reach Redis: Redis at redis://127\.0\.0\.1:\d+/0"):
        RedisEventStore(server.url)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://localhost:6379/0", "unsupported scheme"),
        ("localhost:6379", "unsupported scheme"),
        ("redis://", "no host"),
        ("redis://:6379/0", "no host"),
        ("redis://localhost:notaport/0", "not a Redis URL"),
        ("redis://localhost:70000/0", "not a Redis URL"),
        ("redis://localhost:0/0", "port 0"),
        ("redis://localhost:6379/abc", "database 'abc' is not a number"),
        ("redis://localhost:6379/0/1", "is not a number"),
        ("redis://localhost:6379/-1", "is not a number"),
        ("redis://localhost:6379/0?timeout=1", "options after"),
    ],
)
def test_bad_urls_are_refused_with_the_reason(url: str, message: str) -> None:
    with pytest.raises(InvalidEventsUrl, match=message):
        parse_events_url(url)


def test_urls_parse_with_defaults_and_never_show_a_password() -> None:
    target = parse_events_url("redis://localhost")
    assert (target.host, target.port, target.db, target.tls) == ("localhost", 6379, 0, False)
    secret = parse_events_url("rediss://app:s3cret@cache.internal:6380/2")
    assert (secret.username, secret.password, secret.port, secret.db, secret.tls) == ("app", "s3cret", 6380, 2, True)
    assert secret.display == "rediss://app:***@cache.internal:6380/2"
    assert parse_events_url("redis://[::1]:7000/3").display == "redis://[::1]:7000/3"


def test_the_per_user_cap_refuses_a_call_whole_as_the_sqlite_log_does(server: RedisServer, tmp_path: Path) -> None:
    with (
        InteractionLog(tmp_path / "events.sqlite3", max_live_items_per_user=3) as sqlite,
        RedisEventStore(server.url, max_live_items_per_user=3) as shared,
    ):
        for store in (sqlite, shared):
            store.record(1, [10, 20], request_id="first")
            store.record(1, [10, 20, 20])  # items already live take no room
            with pytest.raises(LiveEventCapExceeded) as refused:
                store.record(1, [30, 40])
            assert "limit is 3" in str(refused.value)
            store.record(2, [10, 20, 30])  # another user's room is their own
        assert shared.extra_seen(1).tolist() == sqlite.extra_seen(1).tolist() == [10, 20]
        assert len(shared.export()) == len(sqlite.export()) == 8, "a refused call stored something"
        last = shared.record(1, [30])
        with pytest.raises(LiveEventCapExceeded):
            shared.record(1, [50])
        shared.truncate_through(last)  # compacted into every retained version: room again
        assert shared.record(1, [50]) > last
        assert shared.record(1, [10, 20], request_id="first") == 2, "a retry is answered before the cap"


def test_a_replica_counts_the_other_replicas_events_towards_the_cap(server: RedisServer) -> None:
    with (
        RedisEventStore(server.url, max_live_items_per_user=3) as first,
        RedisEventStore(server.url, max_live_items_per_user=3) as second,
    ):
        first.record(1, [10, 20, 30])
        assert _wait_until(_shows(second, 1, [10, 20, 30]), timeout_s=2.0)
        with pytest.raises(LiveEventCapExceeded):
            second.record(1, [40])
        assert len(first.export()) == 3


def test_a_truncation_by_another_replica_is_forgotten_within_100_ms_and_frees_the_cap(server: RedisServer) -> None:
    """Replica A truncates after its swap; replica B never calls truncate_through (truncate_safely skips it, the
    trim point being already past), yet its follower sees ``{ns}:trimmed`` move and forgets the compacted events
    within 100 ms, with no new entry to wake it: B's views and per-user cap hold what Redis holds."""
    with (
        RedisEventStore(server.url, max_live_items_per_user=3) as first,
        RedisEventStore(server.url, max_live_items_per_user=3) as second,
    ):
        first.record(1, [10])
        straddling = first.record(1, [20, 30])  # one entry: the trim point falls inside it
        first.record(2, [40])
        assert _wait_until(_shows(second, 1, [10, 20, 30], exactly=True), timeout_s=2.0)
        assert _wait_until(_shows(second, 2, [40], exactly=True), timeout_s=2.0)
        with pytest.raises(LiveEventCapExceeded):
            second.record(1, [50])
        time.sleep(0.3)  # B's follower is idle, blocked in XREAD
        started = time.perf_counter()
        assert first.truncate_through(straddling - 1) == 2
        assert _wait_until(_shows(second, 1, [30], exactly=True), timeout_s=1.0), "B kept compacted events"
        lag = time.perf_counter() - started
        assert lag < 0.1, f"B forgot {lag * 1000:.1f} ms after A truncated"
        assert second.extra_seen(2).tolist() == [40], "an event after the trim point was forgotten"
        assert second.record(1, [50, 60]) > straddling  # room again: 30, 50, 60
        with pytest.raises(LiveEventCapExceeded):
            second.record(1, [70])
        assert _wait_until(_shows(first, 1, [30, 50, 60], exactly=True), timeout_s=2.0)


def test_the_truncation_point_is_shared_and_read_by_the_continuity_check(server: RedisServer) -> None:
    with RedisEventStore(server.url) as serving, RedisEventStore(server.url, follow=False) as rebuild:
        assert serving.truncated_through == 0
        serving.record(1, [10, 11, 12])
        rebuild.truncate_through(2)
        assert serving.truncated_through == 2, "another handle's trim point is Redis's, not the handle's"
        continuity = check_continuity(serving, "v0001", 1)
        assert continuity.gap and continuity.truncated_through == 2
        assert not check_continuity(serving, "v0002", 3).gap


@pytest.fixture
def index_store(tmp_path: Path) -> Path:
    make_model_bundle(tmp_path / "model", n_users=10, n_items=40, dim=4, seen_per_user=3)
    build_index(tmp_path / "model", tmp_path / "index")
    return tmp_path / "index"


def _compact_and_trim(url: str, index_store: Path) -> int:
    """Record for a known and a new user, compact into v0002 (not CURRENT), then trim Redis through it, as a
    build before the no-loss rule did: v0001 (CURRENT) now lacks events that Redis no longer holds."""
    with RedisEventStore(url, follow=False) as store:
        store.record(user_id_of_row(0), [item_id_of_row(1), item_id_of_row(2)])
        store.record(2, [item_id_of_row(3)])
        through = store.last_offset
        build_index(index_store.parent / "model", index_store, new_events=store.export(), make_current=False)
        store.truncate_through(through)
    return through


def test_a_version_behind_the_redis_trim_point_is_repaired_from_a_newer_version(
    server: RedisServer, index_store: Path
) -> None:
    through = _compact_and_trim(server.url, index_store)
    v1 = open_index(index_store / "v0001")
    for _ in range(2):  # the second start finds the repair done and records nothing more
        store = open_server_store(server.url, index_store, "v0001", v1.events)
        try:
            assert store.extra_seen(user_id_of_row(0)).tolist() == [item_id_of_row(1), item_id_of_row(2)]
            assert store.extra_seen(2).tolist() == [item_id_of_row(3)]
            repaired = store.export()
        finally:
            store.close()
        assert sorted(zip(repaired.user_ids.tolist(), repaired.item_ids.tolist(), strict=True)) == sorted(
            [(user_id_of_row(0), item_id_of_row(1)), (user_id_of_row(0), item_id_of_row(2)), (2, item_id_of_row(3))]
        )
        assert int(repaired.offsets.min()) > through, "repaired events reused compacted offsets"


def test_a_gap_in_redis_no_retained_version_can_fill_refuses_the_version(
    server: RedisServer, index_store: Path
) -> None:
    _compact_and_trim(server.url, index_store)
    v1 = open_index(index_store / "v0001")
    shutil.rmtree(index_store / "v0002")  # the only version holding the trimmed events is gone
    with pytest.raises(ContinuityGap, match=r"v0001 holds live events through offset 0.*truncated through offset 3"):
        open_server_store(server.url, index_store, "v0001", v1.events)


def test_offsets_are_never_reused_after_redis_is_reset(server: RedisServer, index_store: Path) -> None:
    """A new or flushed Redis beside versions that compacted offsets 1..N must not number new events 1, 2, ..."""
    with RedisEventStore(server.url, follow=False) as store:
        store.record(1, [10, 11])
        store.record(3, [12])
        build_index(index_store.parent / "model", index_store, new_events=store.export())  # v0002 holds 1..3
    admin = redis.Redis(host="127.0.0.1", port=server.port)
    admin.flushall()
    with RedisEventStore(server.url, follow=False) as reset:
        reset.ensure_offsets_after(50)
        assert reset.last_offset == 50 and reset.record(1, [20]) == 51
        reset.ensure_offsets_after(10)  # never backwards
        assert reset.record(1, [21]) == 52
    admin.flushall()
    admin.close()
    v2 = open_index(index_store / "v0002")
    served = open_server_store(server.url, index_store, "v0002", v2.events)  # what a server does at start
    try:
        assert served.record(1, [22]) == 4, "the server's store numbered events inside what v0002 holds"
    finally:
        served.close()


def test_recctl_serve_shows_the_live_event_cap_and_its_default() -> None:
    shown = subprocess.run([RECCTL, "serve", "--help"], capture_output=True, text=True, timeout=60, check=True)
    assert "--max-live-events-per-user N" in shown.stdout and "(default 10000)" in " ".join(shown.stdout.split())


@pytest.mark.parametrize("events", ["sqlite", "redis"])
def test_recctl_serve_caps_live_events_per_user_over_the_wire(
    index_store: Path, tmp_path: Path, request: pytest.FixtureRequest, events: str
) -> None:
    spec = request.getfixturevalue("server").url if events == "redis" else str(tmp_path / "events.sqlite3")
    serve = ServeProcess("--index", str(index_store), "--events", spec, "--max-live-events-per-user", "2")
    try:
        port = serve.wait_serving()["listening"]["port"]
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.RecommenderServiceStub(channel)
            user = user_id_of_row(0)

            def record(*rows: int) -> object:
                items = [item_id_of_row(row) for row in rows]
                return stub.RecordInteractions(pb.RecordInteractionsRequest(user_id=user, item_ids=items), timeout=5)

            record(1, 2)
            record(2)  # already live: takes no room
            with pytest.raises(grpc.RpcError) as refused:
                record(3)
            assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "limit is 2" in str(refused.value.details())
            answer = stub.Recommend(pb.RecommendRequest(user_id=user, k=40), timeout=5)
            assert item_id_of_row(3) in {item.item_id for item in answer.items}, "a refused event was stored"
            assert {item_id_of_row(1), item_id_of_row(2)}.isdisjoint(item.item_id for item in answer.items)
            stub.RecordInteractions(pb.RecordInteractionsRequest(user_id=user + 2, item_ids=[item_id_of_row(3)]))
    finally:
        serve.close()
