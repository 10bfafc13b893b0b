"""The model bundle round-trips and refuses anything missing, truncated or tampered with."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from bundle_tamper import read_json, reseal, rewrite_array, write_json

from movierec.bundle import (
    CSR,
    ItemMetadata,
    ModelBundle,
    VersionedStore,
    read_model_bundle,
    staged_directory,
    write_model_bundle,
)
from movierec.errors import BundleError


def _bundle(n_users: int = 5, n_items: int = 7, dim: int = 3, seed: int = 0) -> ModelBundle:
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, n_users, 20)
    cols = rng.integers(0, n_items, 20)
    seen = CSR.from_pairs(rows, cols, n_users, n_items)
    train = CSR.from_pairs(rows[:12], cols[:12], n_users, n_items)
    valid = CSR.from_pairs(rows[:3], cols[:3], n_users, n_items)
    test = CSR.from_pairs(rows[12:], cols[12:], n_users, n_items)
    return ModelBundle(
        user_vectors=rng.standard_normal((n_users, dim)).astype(np.float32),
        item_vectors=rng.standard_normal((n_items, dim)).astype(np.float32),
        user_ids=np.arange(1, n_users + 1, dtype=np.int64) * 10,
        item_ids=np.arange(1, n_items + 1, dtype=np.int64) * 100,
        items=ItemMetadata(
            titles=[f"Film {i} — café" for i in range(n_items)],
            years=[1990 + i if i % 2 else None for i in range(n_items)],
            genres=[["Drama", "Comedy"][: i % 3] for i in range(n_items)],
        ),
        seen=seen,
        train=train,
        valid=valid,
        test=test,
        config={"model": "lightgcn", "dim": dim},
        metrics={"recall@20": 0.5},
        dataset={"name": "tiny", "sha256": "ab" * 32},
    )


def test_round_trip_preserves_every_field(tmp_path: Path) -> None:
    original = _bundle()
    write_model_bundle(original, tmp_path / "b")
    loaded = read_model_bundle(tmp_path / "b")
    np.testing.assert_array_equal(loaded.user_vectors, original.user_vectors)
    np.testing.assert_array_equal(loaded.item_vectors, original.item_vectors)
    np.testing.assert_array_equal(loaded.user_ids, original.user_ids)
    np.testing.assert_array_equal(loaded.item_ids, original.item_ids)
    for name in ("seen", "train", "valid", "test"):
        np.testing.assert_array_equal(getattr(loaded, name).indptr, getattr(original, name).indptr)
        np.testing.assert_array_equal(getattr(loaded, name).indices, getattr(original, name).indices)
    assert loaded.items == original.items
    assert loaded.config == original.config
    assert loaded.metrics == original.metrics
    assert loaded.dataset == original.dataset
    assert loaded.manifest is not None and loaded.manifest.meta["n_items"] == original.n_items


def test_attachments_are_checksummed(tmp_path: Path) -> None:
    png = tmp_path / "curve.png"
    png.write_bytes(b"\x89PNG fake")
    write_model_bundle(_bundle(), tmp_path / "b", attachments={"training_curve.png": png})
    (tmp_path / "b" / "training_curve.png").write_bytes(b"\x89PNG other")
    with pytest.raises(BundleError, match=r"training_curve\.png"):
        read_model_bundle(tmp_path / "b")


@pytest.mark.parametrize("victim", ["item_vectors.npy", "seen_indices.npy", "items.json"])
def test_missing_file_is_named(tmp_path: Path, victim: str) -> None:
    write_model_bundle(_bundle(), tmp_path / "b")
    (tmp_path / "b" / victim).unlink()
    with pytest.raises(BundleError, match=victim):
        read_model_bundle(tmp_path / "b")


def test_truncated_file_is_named(tmp_path: Path) -> None:
    write_model_bundle(_bundle(), tmp_path / "b")
    path = tmp_path / "b" / "user_vectors.npy"
    path.write_bytes(path.read_bytes()[:-8])
    with pytest.raises(BundleError, match=r"user_vectors\.npy.*truncated"):
        read_model_bundle(tmp_path / "b")


def test_same_size_tampering_is_caught(tmp_path: Path) -> None:
    write_model_bundle(_bundle(), tmp_path / "b")
    path = tmp_path / "b" / "item_vectors.npy"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"item_vectors\.npy.*checksum"):
        read_model_bundle(tmp_path / "b")


def test_manifest_missing_or_wrong_kind(tmp_path: Path) -> None:
    write_model_bundle(_bundle(), tmp_path / "b")
    manifest = tmp_path / "b" / "manifest.json"
    raw = json.loads(manifest.read_text())
    raw["kind"] = "index"
    manifest.write_text(json.dumps(raw))
    with pytest.raises(BundleError, match="expected 'model'"):
        read_model_bundle(tmp_path / "b")
    manifest.unlink()
    with pytest.raises(BundleError, match=r"manifest\.json is missing"):
        read_model_bundle(tmp_path / "b")


def test_future_format_version_is_refused(tmp_path: Path) -> None:
    write_model_bundle(_bundle(), tmp_path / "b")
    manifest = tmp_path / "b" / "manifest.json"
    raw = json.loads(manifest.read_text())
    raw["format_version"] = 99
    manifest.write_text(json.dumps(raw))
    with pytest.raises(BundleError, match="format version 99"):
        read_model_bundle(tmp_path / "b")


def test_inconsistent_bundle_is_refused_at_write(tmp_path: Path) -> None:
    bad = _bundle()
    bad = ModelBundle(**{**bad.__dict__, "item_ids": bad.item_ids[:-1]})
    with pytest.raises(BundleError, match="item_vectors rows != item_ids"):
        write_model_bundle(bad, tmp_path / "b")
    assert not (tmp_path / "b").exists()


def test_existing_bundle_is_kept_without_force(tmp_path: Path) -> None:
    write_model_bundle(_bundle(seed=1), tmp_path / "b")
    before = (tmp_path / "b" / "manifest.json").read_bytes()
    with pytest.raises(BundleError, match="already exists"):
        write_model_bundle(_bundle(seed=2), tmp_path / "b")
    assert (tmp_path / "b" / "manifest.json").read_bytes() == before
    write_model_bundle(_bundle(seed=2), tmp_path / "b", force=True)
    np.testing.assert_array_equal(read_model_bundle(tmp_path / "b").user_vectors, _bundle(seed=2).user_vectors)


def test_interrupted_write_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), staged_directory(tmp_path / "b") as stage:
        (stage / "partial.npy").write_bytes(b"x")
        raise RuntimeError("crash mid-write")
    assert list(tmp_path.iterdir()) == []


def test_csr_from_pairs_dedups_and_sorts() -> None:
    csr = CSR.from_pairs([2, 0, 2, 2], [3, 1, 0, 3], n_rows=3, n_cols=4)
    assert csr.row(0).tolist() == [1]
    assert csr.row(1).tolist() == []
    assert csr.row(2).tolist() == [0, 3]
    assert csr.validate() is None
    with pytest.raises(ValueError, match="outside"):
        CSR.from_pairs([0], [4], n_rows=1, n_cols=4)


def test_store_versions_and_atomic_pointer(tmp_path: Path) -> None:
    store = VersionedStore(tmp_path)
    assert store.versions() == [] and store.current() is None
    assert store.next_version() == "v0001"
    (tmp_path / "v0001").mkdir()
    (tmp_path / "v0010").mkdir()
    (tmp_path / ".v0011.staging-x").mkdir()
    assert store.versions() == ["v0001", "v0010"]
    assert store.next_version() == "v0011"
    store.set_current("v0010")
    assert store.current() == tmp_path / "v0010"
    with pytest.raises(BundleError, match="does not exist"):
        store.set_current("v0002")
    assert store.current_version() == "v0010"
    (tmp_path / "CURRENT").write_text("v0042\n")
    with pytest.raises(BundleError, match="v0042"):
        store.current()


# --- hostile bundles: every check runs after a re-seal, so the checksums cannot be what catches them ---


def _written(tmp_path: Path) -> Path:
    write_model_bundle(_bundle(), tmp_path / "b")
    return tmp_path / "b"


def _refused(directory: Path, message: str) -> BundleError:
    with pytest.raises(BundleError, match=message) as caught:
        read_model_bundle(directory)
    assert "\n" not in str(caught.value)
    return caught.value


@pytest.mark.parametrize(
    "listed", ["../outside.npy", "/etc/passwd", "model/../../x", "./items.json", "a//b", "a\\b", ""]
)
def test_manifest_paths_must_stay_inside_the_bundle(tmp_path: Path, listed: str) -> None:
    bundle = _written(tmp_path)
    (tmp_path / "outside.npy").write_bytes(b"secret")
    raw = read_json(bundle / "manifest.json")
    raw["files"][listed] = {"sha256": "0" * 64, "bytes": 6}
    write_json(bundle / "manifest.json", raw)
    _refused(bundle, "leaves the bundle|empty or non-string path")


def test_a_listed_symlink_leading_out_is_refused(tmp_path: Path) -> None:
    bundle = _written(tmp_path)
    outside = tmp_path / "elsewhere.json"
    outside.write_text('{"recall@20": 1.0}')
    (bundle / "metrics.json").unlink()
    (bundle / "metrics.json").symlink_to(outside)
    reseal(bundle)
    _refused(bundle, r"metrics\.json: a symlink leads outside the bundle")


def test_a_file_the_manifest_does_not_list_is_never_read(tmp_path: Path) -> None:
    bundle = _written(tmp_path)
    raw = read_json(bundle / "manifest.json")
    del raw["files"]["item_ids.npy"]
    write_json(bundle / "manifest.json", raw)
    _refused(bundle, r"item_ids\.npy is not listed in the manifest")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda raw: raw.pop("files"), "'files' is missing"),
        (lambda raw: raw.pop("kind"), "'kind' is missing"),
        (lambda raw: raw.update(format_version="1"), "'format_version' is missing or not an integer"),
        (lambda raw: raw.update(format_version=True), "'format_version' is missing or not an integer"),
        (lambda raw: raw.update(meta=[]), "'meta' is not an object"),
        (lambda raw: raw["files"]["items.json"].pop("sha256"), "no valid sha256"),
        (lambda raw: raw["files"]["items.json"].update(bytes=-1), "no valid byte count"),
        (lambda raw: raw["files"].update({"items.json": "abc"}), "is not an object"),
        (lambda raw: raw["meta"].pop("n_items"), "meta.n_items is missing"),
        (lambda raw: raw["meta"].update(dim="3"), "meta.dim is missing"),
        (lambda raw: raw["meta"].update(dataset=7), "meta.dataset is not an object"),
        (lambda raw: raw["meta"].update(n_users=4), "manifest says 4 users"),
    ],
)
def test_a_missing_or_ill_typed_manifest_field_is_a_bundle_error(tmp_path: Path, change: Any, message: str) -> None:
    bundle = _written(tmp_path)
    raw = read_json(bundle / "manifest.json")
    change(raw)
    write_json(bundle / "manifest.json", raw)
    _refused(bundle, message)


def test_a_manifest_that_is_not_an_object_is_a_bundle_error(tmp_path: Path) -> None:
    bundle = _written(tmp_path)
    write_json(bundle / "manifest.json", ["kind", "model"])
    _refused(bundle, "not a JSON object")


@pytest.mark.parametrize(
    ("name", "change", "message"),
    [
        ("user_vectors.npy", lambda a: a.astype(np.float64), r"user_vectors\.npy: holds <f8 values, expected <f4"),
        ("item_ids.npy", lambda a: a.astype(np.int32), r"item_ids\.npy: holds <i4 values"),
        ("seen_indices.npy", lambda a: a.astype(np.int64), r"seen_indices\.npy: holds <i8 values"),
        ("item_vectors.npy", lambda a: a.ravel(), r"has 1 dimension\(s\)"),
        ("user_ids.npy", lambda a: a[::-1].copy(), "user_ids are not strictly ascending"),
        ("item_ids.npy", lambda a: np.concatenate([a[:1], a[:-1]]), "item_ids are not strictly ascending"),
        ("user_vectors.npy", lambda a: a[:-1], "user_vectors rows != user_ids"),
        ("item_vectors.npy", lambda a: np.where(np.arange(a.size).reshape(a.shape) == 0, np.nan, a).astype(np.float32),
         "NaN or infinity"),
        ("seen_indptr.npy", lambda a: np.concatenate([a[:1], a[2:3], a[1:2], a[3:]]), "indptr is not monotone"),
        ("seen_indices.npy", lambda a: np.where(np.arange(a.size) == 0, 99, a).astype(np.int32),
         "column index outside"),
        ("seen_indices.npy", lambda a: a[::-1].copy(), "not sorted and unique"),
        ("train_indptr.npy", lambda a: a[:-1], "train CSR shape does not match"),
    ],
)  # fmt: skip
def test_dtypes_shapes_order_and_csr_structure_are_checked_at_load(
    tmp_path: Path, name: str, change: Any, message: str
) -> None:
    bundle = _written(tmp_path)
    rewrite_array(bundle / name, change)
    reseal(bundle)
    _refused(bundle, message)


def test_a_truncated_array_is_refused_from_its_header_even_when_resealed(tmp_path: Path) -> None:
    bundle = _written(tmp_path)
    path = bundle / "item_vectors.npy"
    path.write_bytes(path.read_bytes()[:-4])
    reseal(bundle)
    _refused(bundle, r"item_vectors\.npy: truncated or padded")
    path.write_bytes(b"\x93NUMPY")
    reseal(bundle)
    _refused(bundle, r"item_vectors\.npy: not a readable \.npy file")


@pytest.mark.parametrize(
    ("items", "message"),
    [
        ({"titles": [], "years": []}, "lacks titles/years/genres"),
        ({"titles": "abc", "years": [], "genres": []}, "lacks titles/years/genres"),
        (["titles"], "lacks titles/years/genres"),
        ({"titles": ["a"] * 7, "years": [1.5] * 7, "genres": [[]] * 7}, "a year is neither null nor an integer"),
        ({"titles": ["a"] * 7, "years": [2**31] * 7, "genres": [[]] * 7}, "a year is neither null nor an integer"),
        ({"titles": ["\ud800"] * 7, "years": [None] * 7, "genres": [[]] * 7}, "not valid Unicode text"),
        ({"titles": ["a"] * 7, "years": [None] * 7, "genres": [["\udfff"]] * 7}, "not valid Unicode text"),
        ({"titles": [1] * 7, "years": [None] * 7, "genres": [[]] * 7}, "a title is not a string"),
        ({"titles": ["a"] * 7, "years": [None] * 7, "genres": ["Drama"] * 7}, "genres are not lists of strings"),
        ({"titles": ["a"] * 6, "years": [None] * 6, "genres": [[]] * 6}, "one entry per item"),
    ],
)
def test_items_metadata_is_checked_at_load(tmp_path: Path, items: Any, message: str) -> None:
    bundle = _written(tmp_path)
    write_json(bundle / "items.json", items)
    reseal(bundle)
    _refused(bundle, message)


@pytest.mark.parametrize("name", ["config.json", "metrics.json"])
def test_config_and_metrics_must_be_objects(tmp_path: Path, name: str) -> None:
    bundle = _written(tmp_path)
    write_json(bundle / name, [1, 2])
    reseal(bundle)
    _refused(bundle, f"{name.removesuffix('.json')} is not a JSON object")


@pytest.mark.parametrize("content", [b"v0001\xff\n", b"\x00" * 100, b"v" + b"1" * 200])
def test_an_unreadable_current_pointer_is_a_bundle_error(tmp_path: Path, content: bytes) -> None:
    store = VersionedStore(tmp_path)
    write_model_bundle(_bundle(), store.path("v0001"))
    (tmp_path / "CURRENT").write_bytes(content)
    with pytest.raises(BundleError, match="CURRENT"):
        store.current()


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("manifest.json", "[" * 100_000 + "]" * 100_000, "unreadable manifest \\(RecursionError"),
        ("metrics.json", "[" * 100_000 + "]" * 100_000, "metrics.json: not valid JSON \\(RecursionError"),
        ("metrics.json", '{"a": ' + "[" * 40 + "]" * 40 + "}", "metrics holds nested deeper than 32 levels"),
        ("metrics.json", '{"recall@20": 1' + "0" * 400 + "}", "metrics holds an integer beyond the range of a float"),
        ("config.json", '{"model": "\\ud800"}', "config holds text that is not valid Unicode"),
    ],
)
def test_json_that_could_not_be_sent_or_printed_is_refused(tmp_path: Path, name: str, text: str, message: str) -> None:
    bundle = _written(tmp_path)
    (bundle / name).write_text(text)
    reseal(bundle)
    _refused(bundle, message)


def test_a_manifest_with_a_lone_surrogate_is_refused(tmp_path: Path) -> None:
    bundle = _written(tmp_path)
    raw = read_json(bundle / "manifest.json")
    raw["meta"]["dataset"]["name"] = "\ud800"
    write_json(bundle / "manifest.json", raw)
    _refused(bundle, "unreadable manifest \\(text that is not valid Unicode")


@pytest.mark.parametrize("name", ["v١٢٣٤", "v0001\n", "v" + "1" * 200, "v12"])
def test_only_plain_version_names_are_versions(tmp_path: Path, name: str) -> None:
    store = VersionedStore(tmp_path)
    write_model_bundle(_bundle(), store.path("v0001"))
    (tmp_path / name).mkdir()
    assert store.versions() == ["v0001"] and store.next_version() == "v0002"
    with pytest.raises(BundleError, match="not a version name"):
        store.path(name)
