"""A bad index version never replaces a good one: each kind of damage is a BundleError, and a serving server
that is pointed at it keeps answering from the version it has.

Most damage is re-sealed (checksums rewritten) so that what refuses it is the
loaders' own checks of paths, fields, dtypes, order and structure.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import faiss
import grpc
import numpy as np
import pytest
from bundle_factory import make_model_bundle, user_id_of_row
from bundle_tamper import read_json, reseal_version, rewrite_array, write_json
from grpc_health.v1 import health_pb2, health_pb2_grpc
from server_harness import ServerThread, serving

from movierec.bundle import VersionedStore
from movierec.errors import BundleError
from movierec.index import build_index, open_index
from movierec.index.events import SeenEvents
from movierec.server.app import ServerConfig
from movierec.v1 import recommender_pb2 as pb
from movierec.v1 import recommender_pb2_grpc as pb_grpc

N_USERS = 10
N_ITEMS = 30
K = 4
POLL_SECONDS = 0.02
WAIT_SECONDS = 30.0


def _resealed(damage: Callable[[Path], None]) -> Callable[[Path], None]:
    def apply(version: Path) -> None:
        damage(version)
        reseal_version(version)

    return apply


def _edit_manifest(relative: str, change: Callable[[dict[str, Any]], object]) -> Callable[[Path], None]:
    def apply(version: Path) -> None:
        raw = read_json(version / relative)
        change(raw)
        write_json(version / relative, raw)

    return apply


def _truncate(version: Path) -> None:
    path = version / "model" / "item_vectors.npy"
    path.write_bytes(path.read_bytes()[:-4])


def _flip(version: Path) -> None:
    path = version / "index.faiss"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


def _symlink_out(version: Path) -> None:
    metrics = version / "model" / "metrics.json"
    outside = version.parent.parent / "planted-metrics.json"
    outside.write_text('{"recall@10": 1.0}')
    metrics.unlink()
    metrics.symlink_to(outside)


def _foreign_faiss(version: Path) -> None:
    faiss.write_index(faiss.IndexLSH(6, 8), str(version / "index.faiss"))


def _list_outside(name: str) -> Callable[[Path], None]:
    return _edit_manifest("manifest.json", lambda raw: raw["files"].__setitem__(name, {"sha256": "0" * 64, "bytes": 1}))


def _unlist_events(raw: dict[str, Any]) -> None:
    for name in ("events_user_ids.npy", "events_item_ids.npy"):
        raw["files"].pop(name)


DAMAGES: dict[str, Callable[[Path], None]] = {
    "checksum mismatch": _flip,
    "truncated array, re-sealed": _resealed(_truncate),
    "float64 user vectors": _resealed(
        lambda v: rewrite_array(v / "model/user_vectors.npy", lambda a: a.astype(np.float64))
    ),
    "item ids not ascending": _resealed(lambda v: rewrite_array(v / "model/item_ids.npy", lambda a: a[::-1].copy())),
    "CSR index out of range": _resealed(
        lambda v: rewrite_array(v / "model/seen_indices.npy", lambda a: np.full_like(a, N_ITEMS))
    ),
    "CSR indptr not monotone": _resealed(
        lambda v: rewrite_array(v / "model/seen_indptr.npy", lambda a: np.concatenate([a[:1], a[2:3], a[1:2], a[3:]]))
    ),
    "NaN item vectors": _resealed(
        lambda v: rewrite_array(v / "model/item_vectors.npy", lambda a: np.full_like(a, np.nan))
    ),
    "path traversal in the manifest": _list_outside("../planted.bin"),
    "absolute path in the manifest": _list_outside("/etc/hostname"),
    "symlink leading out": _resealed(_symlink_out),
    "model file the index manifest does not list": _edit_manifest(
        "manifest.json", lambda raw: raw["files"].pop("model/items.json")
    ),
    "missing model manifest field": _resealed(
        _edit_manifest("model/manifest.json", lambda raw: raw["meta"].pop("n_items"))
    ),
    "manifest not an object": lambda v: write_json(v / "manifest.json", ["kind", "index"]),
    "FAISS index of another kind": _resealed(_foreign_faiss),
    "float compacted events": _resealed(
        lambda v: rewrite_array(v / "events_user_ids.npy", lambda a: a.astype(np.float64))
    ),
    "unlisted compacted events": _edit_manifest("manifest.json", _unlist_events),
    "years that are strings": _resealed(
        lambda v: write_json(
            v / "model/items.json", {**read_json(v / "model/items.json"), "years": ["1999"] * N_ITEMS}
        )
    ),
    "index meta disagreeing with the model": _edit_manifest(
        "manifest.json", lambda raw: raw["meta"].__setitem__("n_items", N_ITEMS + 1)
    ),
}  # fmt: skip


def _events() -> SeenEvents:
    offsets = np.arange(1, 4, dtype=np.int64)
    return SeenEvents(offsets, offsets * 2 + 1, offsets * 10, np.full(3, np.nan), offsets)


@pytest.fixture()
def store(tmp_path: Path) -> Path:
    """A store serving v0001, and a second model to build damaged versions from."""
    for seed in range(2):
        make_model_bundle(tmp_path / f"model{seed}", n_users=N_USERS, n_items=N_ITEMS, dim=6, seed=seed)
    build_index(tmp_path / "model0", tmp_path / "index", new_events=_events())
    return tmp_path / "index"


def _damaged_version(store: Path, damage: str) -> Path:
    version = build_index(store.parent / "model1", store, make_current=False, new_events=_events())
    open_index(version)  # sound before the damage: what refuses it below is the damage
    DAMAGES[damage](version)
    return version


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_each_kind_of_damage_is_a_one_line_bundle_error_and_the_old_version_stays(store: Path, damage: str) -> None:
    serving = open_index(store)
    expected = serving.recommend([0], K)[0].item_rows.tolist()
    broken = _damaged_version(store, damage)
    VersionedStore(store).set_current(broken.name)
    with pytest.raises(BundleError) as refused:
        open_index(store)
    message = str(refused.value)
    assert "\n" not in message and str(broken) in message
    assert serving.recommend([0], K)[0].item_rows.tolist() == expected
    VersionedStore(store).set_current("v0001")
    assert open_index(store).version == "v0001"


@pytest.fixture()
def server(store: Path) -> Iterator[ServerThread]:
    with serving(ServerConfig(index_path=store, poll_seconds=POLL_SECONDS)) as thread:
        yield thread


def _wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(POLL_SECONDS)


@pytest.mark.slow
def test_a_server_pointed_at_each_bad_version_refuses_it_and_keeps_serving(store: Path, server: ServerThread) -> None:
    versions = VersionedStore(store)
    with grpc.insecure_channel(server.target) as channel:
        stub = pb_grpc.RecommenderServiceStub(channel)
        health = health_pb2_grpc.HealthStub(channel)
        before = stub.Recommend(pb.RecommendRequest(user_id=user_id_of_row(0), k=K), timeout=5)
        assert before.index_version == "v0001"

        def still_serving(why: str) -> None:
            info = stub.GetInfo(pb.GetInfoRequest(), timeout=5)
            assert info.index_version == "v0001" and info.swap_count == 0, why
            answer = stub.Recommend(pb.RecommendRequest(user_id=user_id_of_row(0), k=K), timeout=5)
            assert answer.index_version == "v0001" and list(answer.items) == list(before.items), why
            serving = health_pb2.HealthCheckResponse.SERVING
            assert health.Check(health_pb2.HealthCheckRequest(), timeout=5).status == serving, why

        for damage in sorted(DAMAGES):
            broken = _damaged_version(store, damage)
            versions.set_current(broken.name)
            refused = lambda v=broken.name: stub.GetInfo(pb.GetInfoRequest()).last_refused_version == v  # noqa: E731
            _wait_for(refused, f"the refusal of {damage}")
            still_serving(damage)
            versions.set_current("v0001")  # a build carries CURRENT's events forward: it must be readable

        (store / "CURRENT").write_bytes(b"\xff\xfe not a version")
        _wait_for(lambda: stub.GetInfo(pb.GetInfoRequest()).last_refused_version == "CURRENT", "a refused CURRENT")
        still_serving("unreadable CURRENT")

        versions.set_current("v0001")  # what an operator does; a build also needs a readable CURRENT
        good = build_index(store.parent / "model1", store, new_events=_events()).name
        _wait_for(lambda: stub.GetInfo(pb.GetInfoRequest()).index_version == good, "the swap to a good version")
        assert stub.GetInfo(pb.GetInfoRequest()).last_refused_version == ""
