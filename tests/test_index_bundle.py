"""Index versions: atomic builds, the CURRENT pointer, verification on open, rebuild from the newest model."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pytest
from bundle_factory import make_model_bundle
from bundle_tamper import read_json, reseal_version, rewrite_array, write_json

from movierec.bundle import VersionedStore, read_manifest
from movierec.errors import BundleError
from movierec.index import build_index, newest_model_bundle, open_index, prune_versions, rebuild_index
from movierec.index.events import SeenEvents
from movierec.index.faiss_index import hnsw_graph_problem
from movierec.index.info import describe_store


@pytest.fixture
def model(tmp_path: Path) -> Path:
    return make_model_bundle(tmp_path / "model", n_users=12, n_items=40, dim=4, seen_per_user=6, seed=1)


def test_build_writes_a_self_contained_version_and_moves_current(model: Path, tmp_path: Path) -> None:
    root = tmp_path / "index"
    first = build_index(model, root)
    second = build_index(model, root)
    assert (first.name, second.name) == ("v0001", "v0002")
    assert VersionedStore(root).current_version() == "v0002"
    manifest = read_manifest(second, "index")
    assert {"index.faiss", "model/item_vectors.npy"} <= set(manifest.files)
    assert manifest.meta["n_items"] == 40 and manifest.meta["dim"] == 4
    assert manifest.meta["source_model"]["path"] == str(model.resolve())
    # Self-contained: the version keeps serving after its source model is gone.
    for file in model.iterdir():
        file.unlink()
    model.rmdir()
    served = open_index(root)
    assert served.version == "v0002" and served.path == second
    assert len(served.recommend([0], 5)[0]) == 5


def test_no_switch_leaves_current_alone(model: Path, tmp_path: Path) -> None:
    root = tmp_path / "index"
    build_index(model, root)
    built = build_index(model, root, make_current=False)
    assert VersionedStore(root).current_version() == "v0001"
    assert open_index(root).version == "v0001"
    assert open_index(built).version == "v0002"


def test_opening_a_store_without_current_is_a_clear_error(model: Path, tmp_path: Path) -> None:
    build_index(model, tmp_path / "index", make_current=False)
    with pytest.raises(BundleError, match="CURRENT"):
        open_index(tmp_path / "index")


@pytest.mark.parametrize(
    ("target", "damage", "message"),
    [
        ("index.faiss", "flip", "checksum mismatch"),
        ("index.faiss", "truncate", "truncated"),
        ("model/item_vectors.npy", "flip", "checksum mismatch"),
        ("model/seen_indices.npy", "delete", "missing"),
        ("model/manifest.json", "append", "model manifest"),
        ("manifest.json", "truncate", "unreadable manifest"),
    ],
)
def test_open_refuses_any_corruption_naming_the_file(
    model: Path, tmp_path: Path, target: str, damage: str, message: str
) -> None:
    version = build_index(model, tmp_path / "index")
    path = version / target
    data = path.read_bytes()
    if damage == "flip":
        path.write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))
    elif damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "append":
        path.write_bytes(data + b" ")
    else:
        path.unlink()
    with pytest.raises(BundleError, match=message) as caught:
        open_index(tmp_path / "index")
    assert str(path) in str(caught.value) or str(path.parent) in str(caught.value)


def test_an_index_that_does_not_match_its_model_is_refused(model: Path, tmp_path: Path) -> None:
    """A consistent-looking bundle whose FAISS vectors are another model's must not serve."""
    other = make_model_bundle(tmp_path / "other", n_users=12, n_items=40, dim=4, seen_per_user=6, seed=2)
    version = build_index(model, tmp_path / "index")
    foreign = build_index(other, tmp_path / "foreign")
    (version / "index.faiss").write_bytes((foreign / "index.faiss").read_bytes())
    with pytest.raises(BundleError, match="differ from the model"):
        open_index(version, verify=False)


def test_a_bad_model_bundle_fails_the_build_and_leaves_the_store_untouched(model: Path, tmp_path: Path) -> None:
    root = tmp_path / "index"
    build_index(model, root)
    before = sorted(p.relative_to(root) for p in root.rglob("*"))
    vectors = model / "item_vectors.npy"
    vectors.write_bytes(vectors.read_bytes()[:-4])
    with pytest.raises(BundleError, match=r"item_vectors\.npy") as caught:
        build_index(model, root)
    assert str(tmp_path / "index") not in str(caught.value), "the error must name the source file, not a staging copy"
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == before
    assert VersionedStore(root).current_version() == "v0001"
    with pytest.raises(BundleError, match=r"manifest\.json is missing"):
        build_index(tmp_path, root)


def test_bad_parameters_are_value_errors(model: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown index kind"):
        build_index(model, tmp_path / "index", kind="ivf")
    with pytest.raises(ValueError, match="takes no parameters"):
        build_index(model, tmp_path / "index", m=8)
    with pytest.raises(ValueError, match="unknown HNSW parameter"):
        build_index(model, tmp_path / "index", kind="hnsw", ef=8)
    assert VersionedStore(tmp_path / "index").versions() == []


def test_concurrent_builds_get_distinct_versions(model: Path, tmp_path: Path) -> None:
    root = tmp_path / "index"
    built: list[Path] = []
    errors: list[BaseException] = []

    def build() -> None:
        try:
            built.append(build_index(model, root))
        except BaseException as exc:  # surfaced by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=build) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert sorted(p.name for p in built) == ["v0001", "v0002", "v0003", "v0004"]
    assert all(open_index(p).version == p.name for p in built)


def test_rebuild_uses_the_newest_model_and_keeps_the_current_kind(tmp_path: Path) -> None:
    models = tmp_path / "models"
    make_model_bundle(models / "b-old", n_users=5, n_items=20, dim=3, seen_per_user=2, seed=1)
    make_model_bundle(models / "a-new", n_users=5, n_items=30, dim=3, seen_per_user=2, seed=2)
    assert newest_model_bundle(models) == models / "a-new"  # by created time, not by name
    root = tmp_path / "index"
    build_index(models / "b-old", root, kind="hnsw", m=8, ef_search=32)
    rebuilt = rebuild_index(models, root)
    served = open_index(root)
    assert served.path == rebuilt and served.n_items == 30
    assert served.kind == "hnsw"
    assert served.meta.params["ef_search"] == 32
    assert open_index(rebuild_index(models, root, kind="flat")).kind == "flat"


def test_rebuild_refuses_an_unreadable_newer_model(tmp_path: Path) -> None:
    models = tmp_path / "models"
    make_model_bundle(models / "good", n_users=5, n_items=20, dim=3, seen_per_user=2, seed=1)
    (models / "broken").mkdir()
    (models / "broken" / "manifest.json").write_text("{not json")
    with pytest.raises(BundleError, match="broken"):
        rebuild_index(models, tmp_path / "index")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BundleError, match="no model bundle"):
        rebuild_index(tmp_path / "empty", tmp_path / "index")
    with pytest.raises(BundleError, match="no such models directory"):
        rebuild_index(tmp_path / "absent", tmp_path / "index")
    assert not (tmp_path / "index").exists()


def test_describe_store_reports_corrupt_versions_instead_of_failing(model: Path, tmp_path: Path) -> None:
    root = tmp_path / "index"
    build_index(model, root)
    build_index(model, root, kind="hnsw", m=8)
    (root / "v0001" / "index.faiss").write_bytes(b"garbage")
    info = describe_store(root)
    assert info.current == "v0002"
    first, second = info.versions
    assert not first.ok and first.problem is not None and "index.faiss" in first.problem
    assert second.ok and second.current and second.kind == "hnsw" and second.n_users == 12
    assert second.metrics == json.loads((model / "metrics.json").read_text())
    (root / "CURRENT").write_text("v0009\n")
    pointer_broken = describe_store(root)
    assert pointer_broken.current is None and pointer_broken.current_problem is not None


def test_open_index_serves_the_version_current_names_at_open_time(model: Path, tmp_path: Path) -> None:
    """The hot-swap contract: an opened index is immutable; moving CURRENT affects only later opens."""
    root = tmp_path / "index"
    build_index(model, root)
    served = open_index(root)
    before = served.recommend([0, 1], 5)
    build_index(model, root)
    assert served.version == "v0001" and open_index(root).version == "v0002"
    after = served.recommend([0, 1], 5)
    assert all(np.array_equal(a.item_rows, b.item_rows) for a, b in zip(before, after, strict=True))


def test_prune_keeps_the_newest_and_the_current_version(model: Path, tmp_path: Path) -> None:
    root = tmp_path / "index"
    for _ in range(3):
        build_index(model, root)
    build_index(model, root, make_current=False)
    build_index(model, root, make_current=False)
    assert prune_versions(root, keep=2) == ["v0001", "v0002"]  # v0003 is current, so it stays
    assert VersionedStore(root).versions() == ["v0003", "v0004", "v0005"]
    assert open_index(root).version == "v0003"
    assert [p.name for p in root.iterdir() if p.name.startswith(".v")] == []  # no leftovers
    assert prune_versions(root, keep=2) == []
    with pytest.raises(ValueError, match="keep"):
        prune_versions(root, keep=0)


# --- hostile versions: re-sealed after the damage, so only open_index's own checks can refuse them ---


def _events(n: int) -> SeenEvents:
    offsets = np.arange(1, n + 1, dtype=np.int64)
    return SeenEvents(offsets, offsets * 2 + 1, offsets * 10, np.full(n, np.nan), offsets)


def _refused(version: Path, message: str) -> None:
    with pytest.raises(BundleError, match=message) as caught:
        open_index(version)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(("kind", "params"), [("flat", {}), ("hnsw", {"m": 4})])
def test_a_well_formed_version_still_opens_and_serves(model: Path, tmp_path: Path, kind: str, params: Any) -> None:
    version = build_index(model, tmp_path / "index", kind=kind, new_events=_events(3), **params)
    served = open_index(version)
    assert len(served.events) == 3 and len(served.recommend([0], 5)[0]) == 5


def test_model_files_must_be_covered_by_the_index_manifest(model: Path, tmp_path: Path) -> None:
    version = build_index(model, tmp_path / "index")
    raw = read_json(version / "manifest.json")
    del raw["files"]["model/item_vectors.npy"]
    write_json(version / "manifest.json", raw)
    _refused(version, r"model/item_vectors\.npy is not covered by the index manifest")


def test_the_faiss_file_must_be_listed(model: Path, tmp_path: Path) -> None:
    version = build_index(model, tmp_path / "index")
    raw = read_json(version / "manifest.json")
    del raw["files"]["index.faiss"]
    write_json(version / "manifest.json", raw)
    _refused(version, r"index\.faiss is not listed in the manifest")


def test_event_files_must_be_listed_together_and_hold_int64_vectors(model: Path, tmp_path: Path) -> None:
    version = build_index(model, tmp_path / "index", new_events=_events(3))
    manifest_path = version / "manifest.json"
    original = manifest_path.read_text()
    raw = read_json(manifest_path)
    del raw["files"]["events_item_ids.npy"]
    write_json(manifest_path, raw)
    _refused(version, "lists only some of")
    del raw["files"]["events_user_ids.npy"]
    write_json(manifest_path, raw)
    _refused(version, "present but not listed in the manifest")
    manifest_path.write_text(original)
    rewrite_array(version / "events_user_ids.npy", lambda a: a.astype(np.float64))
    reseal_version(version)
    _refused(version, r"events_user_ids\.npy: holds <f8 values, expected <i8")
    rewrite_array(version / "events_user_ids.npy", lambda a: a.astype(np.int64)[:2])
    reseal_version(version)
    _refused(version, "differ in shape")


def test_compacted_event_count_must_match_the_manifest(model: Path, tmp_path: Path) -> None:
    version = build_index(model, tmp_path / "index", new_events=_events(3))
    for name in ("events_user_ids.npy", "events_item_ids.npy"):
        rewrite_array(version / name, lambda a: a[:2])
    reseal_version(version)
    _refused(version, "says 3 compacted events, the version holds 2")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda meta: meta.update(n_items=41), "index manifest says 12 users, 41 items"),
        (lambda meta: meta["index"].update(params={"m": "many"}), "bad HNSW parameters"),
        (lambda meta: meta["index"].update(params={"m": None}), "bad HNSW parameters"),
        (lambda meta: meta["index"].update(params={"ef": 3}), "bad HNSW parameters"),
        (lambda meta: meta.pop("source_model"), "source_model is missing"),
    ],
)
def test_index_meta_that_disagrees_with_the_files_is_refused(
    model: Path, tmp_path: Path, change: Any, message: str
) -> None:
    version = build_index(model, tmp_path / "index", kind="hnsw", m=4)
    raw = read_json(version / "manifest.json")
    change(raw["meta"])
    write_json(version / "manifest.json", raw)
    with pytest.raises(BundleError, match=message):
        open_index(version, verify=False)


def test_a_faiss_file_of_another_kind_is_refused(model: Path, tmp_path: Path) -> None:
    version = build_index(model, tmp_path / "index")
    vectors = np.load(version / "model" / "item_vectors.npy")
    faiss.write_index(faiss.IndexLSH(vectors.shape[1], 8), str(version / "index.faiss"))
    reseal_version(version)
    _refused(version, r"index\.faiss: holds a IndexLSH")
    faiss.write_index(faiss.IndexFlatL2(vectors.shape[1]), str(version / "index.faiss"))
    reseal_version(version)
    _refused(version, "not one of the kinds built here")


@pytest.mark.parametrize("damage", ["link", "entry", "level"])
def test_a_damaged_hnsw_graph_is_refused_before_any_walk(model: Path, tmp_path: Path, damage: str) -> None:
    version = build_index(model, tmp_path / "index", kind="hnsw", m=4)
    index: Any = faiss.read_index(str(version / "index.faiss"))
    graph = index.hnsw
    if damage == "link":
        neighbors = faiss.vector_to_array(graph.neighbors)
        neighbors[0] = 10_000
        faiss.copy_array_to_vector(neighbors, graph.neighbors)
    elif damage == "entry":
        graph.entry_point = 10_000
    else:
        levels = faiss.vector_to_array(graph.levels)
        levels[0] = 99
        faiss.copy_array_to_vector(levels, graph.levels)
    assert hnsw_graph_problem(index) is not None  # what an older FAISS, which reads it as it is, would be told
    faiss.write_index(index, str(version / "index.faiss"))
    reseal_version(version)
    _refused(version, "HNSW graph is damaged|not a readable FAISS index .*out of range")


def test_a_store_path_that_is_not_there_is_a_bundle_error(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="no such index version or store"):
        open_index(tmp_path / "nowhere")


# --- what a rebuild carries forward, and what operators are shown: read through the manifest ---


def _refused_rebuild(model: Path, root: Path, message: str) -> None:
    """The build refuses with a one-line BundleError, and the store gains no version."""
    before = VersionedStore(root).versions()
    with pytest.raises(BundleError, match=message) as caught:
        build_index(model, root, new_events=_events(1))
    assert "\n" not in str(caught.value)
    assert str(caught.value).startswith("cannot carry live events forward from the current version")
    assert VersionedStore(root).versions() == before and VersionedStore(root).current_version() == before[-1]


def test_a_rebuild_never_carries_altered_event_files_into_a_new_version(model: Path, tmp_path: Path) -> None:
    root = tmp_path / "index"
    version = build_index(model, root, new_events=_events(3))
    users = version / "events_user_ids.npy"
    pristine = users.read_bytes()
    rewrite_array(users, lambda a: a + 2)  # same size, other users: nothing re-sealed
    _refused_rebuild(model, root, r"events_user_ids\.npy: checksum mismatch")
    rewrite_array(users, lambda a: a[:2])
    _refused_rebuild(model, root, r"events_user_ids\.npy: truncated or altered")
    users.unlink()
    _refused_rebuild(model, root, r"events_user_ids\.npy: listed in the manifest but missing")
    users.write_bytes(pristine)
    carried = open_index(build_index(model, root, new_events=_events(4)))
    assert len(carried.events) == 4 and carried.events.user_ids.tolist() == _events(4).user_ids.tolist()


def test_a_rebuild_decides_by_the_manifest_not_by_the_files_present(model: Path, tmp_path: Path) -> None:
    root = tmp_path / "index"
    version = build_index(model, root)  # no events: the files are written empty and listed
    raw = read_json(version / "manifest.json")
    for name in ("events_user_ids.npy", "events_item_ids.npy"):
        del raw["files"][name]
    write_json(version / "manifest.json", raw)
    _refused_rebuild(model, root, "present but not listed in the manifest")
    for name in ("events_user_ids.npy", "events_item_ids.npy"):
        (version / name).unlink()
    assert len(open_index(build_index(model, root, new_events=_events(2))).events) == 2  # listed neither: none


def test_rebuild_reads_the_current_settings_through_the_checked_meta(tmp_path: Path) -> None:
    models = tmp_path / "models"
    make_model_bundle(models / "only", n_users=5, n_items=20, dim=3, seen_per_user=2, seed=1)
    root = tmp_path / "index"
    version = build_index(models / "only", root, kind="hnsw", m=8)
    raw = read_json(version / "manifest.json")
    raw["meta"]["index"]["kind"] = ["hnsw"]
    write_json(version / "manifest.json", raw)
    with pytest.raises(BundleError, match=r"index\.kind is missing or not a str") as caught:
        rebuild_index(models, root)
    assert "\n" not in str(caught.value) and VersionedStore(root).versions() == ["v0001"]


def test_describe_version_reads_checked_meta_and_only_listed_metrics(model: Path, tmp_path: Path) -> None:
    root = tmp_path / "index"
    version = build_index(model, root, new_events=_events(3))
    shown = describe_store(root).versions[0]
    assert (shown.ok, shown.events, shown.events_through, shown.dim) == (True, 3, 3, 4)
    assert shown.model_created_at == read_manifest(model, "model", verify=False).created_at
    raw = read_json(version / "manifest.json")
    original = json.dumps(raw)
    del raw["files"]["model/metrics.json"]
    write_json(version / "manifest.json", raw)
    assert describe_store(root).versions[0].metrics == {}, "an unlisted metrics file was read"
    raw = json.loads(original)
    raw["meta"]["n_users"] = "twelve"
    write_json(version / "manifest.json", raw)
    broken = describe_store(root, verify=False).versions[0]
    assert not broken.ok and broken.problem is not None and "n_users is missing or not an integer" in broken.problem
