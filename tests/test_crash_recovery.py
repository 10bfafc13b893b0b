"""kill -9 of a real ``recctl serve`` while a client records events, 20 times: no acknowledged event is ever lost.

Each round starts the server, checks that every event acknowledged in every
earlier round is still excluded (and that the log kept its offsets), lets a
client record events until a random number of them are acknowledged, and
SIGKILLs the server with calls in flight. In some rounds, while the client
records, the store changes the way operators change it (a compacting rebuild,
a rollback, a prune) and the server swaps before it is killed.
"""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from bundle_factory import item_id_of_row, make_model_bundle, user_id_of_row
from server_harness import ServeProcess

from movierec.index import build_index, prune_versions
from movierec.index.rollback import rollback
from movierec.server import read_logged_events
from movierec.server.interaction_log import LOG_FILE_NAME
from movierec.v1 import recommender_pb2 as pb
from movierec.v1 import recommender_pb2_grpc as pb_grpc

ROUNDS = 20
N_USERS, N_ITEMS = 6, 40


class _Recorder:
    """A client thread recording one (user, item) event per call until told to stop; keeps what was acknowledged."""

    def __init__(self, target: str, seed: int, wanted: int) -> None:
        self.acknowledged: list[tuple[int, int, int]] = []  # (offset, user, item)
        self.enough = threading.Event()
        self._stop = threading.Event()
        self._wanted = wanted
        self._thread = threading.Thread(target=self._run, args=(target, seed), daemon=True)
        self._thread.start()

    def _run(self, target: str, seed: int) -> None:
        rng = np.random.default_rng(seed)
        with grpc.insecure_channel(target) as channel:
            stub = pb_grpc.RecommenderServiceStub(channel)
            call = 0
            while not self._stop.is_set():
                user, item = user_id_of_row(int(rng.integers(N_USERS))), item_id_of_row(int(rng.integers(N_ITEMS)))
                call += 1
                request = pb.RecordInteractionsRequest(request_id=f"{seed}-{call}", user_id=user, item_ids=[item])
                try:
                    offset = stub.RecordInteractions(request, timeout=5).offset
                except grpc.RpcError:
                    return  # the server is gone: what was not acknowledged may or may not be stored
                self.acknowledged.append((offset, user, item))
                if len(self.acknowledged) >= self._wanted:
                    self.enough.set()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)


def _check_nothing_lost(target: str, acknowledged: list[tuple[int, int, int]]) -> None:
    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.RecommenderServiceStub(channel)
        info = stub.GetInfo(pb.GetInfoRequest(), timeout=10)
        if acknowledged:
            assert info.events_last_offset >= max(offset for offset, _, _ in acknowledged), "offsets went back"
        by_user: dict[int, set[int]] = {}
        for _, user, item in acknowledged:
            by_user.setdefault(user, set()).add(item)
        for user, items in by_user.items():
            answer = stub.Recommend(pb.RecommendRequest(user_id=user, k=N_ITEMS), timeout=10)
            shown = {item.item_id for item in answer.items} & items
            assert not shown, f"user {user}: acknowledged events lost after kill -9 ({sorted(shown)} recommended)"


def _operate(round_no: int, store: Path, target: str) -> None:
    """What operators do to the store while the server runs (compact, roll back, prune); waits for the swap."""
    if round_no == 6:
        version = build_index(store.parent / "model", store, new_events=read_logged_events(store / LOG_FILE_NAME))
    elif round_no == 11:
        version = store / rollback(store).current  # back to v0001: events compacted into v0002 stay excluded
    elif round_no == 15:
        version = build_index(store.parent / "model", store, new_events=read_logged_events(store / LOG_FILE_NAME))
        prune_versions(store, keep=1)  # the server may now truncate the log through what v0003 holds
    else:
        return
    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.RecommenderServiceStub(channel)
        deadline = time.monotonic() + 30
        while stub.GetInfo(pb.GetInfoRequest(), timeout=10).index_version != version.name:
            assert time.monotonic() < deadline, f"no swap to {version.name}"
            time.sleep(0.02)


@pytest.mark.slow
def test_kill_9_while_recording_never_loses_an_acknowledged_event(tmp_path: Path) -> None:
    make_model_bundle(tmp_path / "model", n_users=N_USERS, n_items=N_ITEMS, dim=4, seen_per_user=2)
    store = tmp_path / "index"
    build_index(tmp_path / "model", store)
    acknowledged: list[tuple[int, int, int]] = []
    rng = np.random.default_rng(0)
    for round_no in range(ROUNDS + 1):
        process = ServeProcess("--index", str(store), "--poll", "0.02")
        try:
            target = f"127.0.0.1:{process.wait_serving()['listening']['port']}"
            _check_nothing_lost(target, acknowledged)
            if round_no == ROUNDS:
                break
            recorder = _Recorder(target, seed=round_no, wanted=int(rng.integers(3, 20)))
            assert recorder.enough.wait(30), "the client got no acknowledgements"
            _operate(round_no, store, target)
            process.process.send_signal(signal.SIGKILL)  # calls are in flight: the client keeps sending
            process.process.wait(10)
            recorder.stop()
            acknowledged += recorder.acknowledged
        finally:
            process.close()
    assert len(acknowledged) >= 3 * ROUNDS
    assert len({offset for offset, _, _ in acknowledged}) == len(acknowledged), "two acknowledgements, one offset"
