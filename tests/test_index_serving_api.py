"""The index's public face: IndexMeta parsed from the manifest, id -> row lookups, display data, new users."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from bundle_factory import item_id_of_row, user_id_of_row
from server_harness import make_index

from movierec.bundle import MANIFEST_NAME, read_manifest
from movierec.errors import BundleError
from movierec.index import ServingIndex, build_index, id_lookup, open_index
from movierec.index.meta import IndexMeta
from movierec.server.interaction_log import InteractionLog

N_ITEMS = 80


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_index(tmp_path_factory.mktemp("api"), n_users=15, n_items=N_ITEMS, dim=6, seen_per_user=5)


@pytest.fixture(scope="module")
def index(store: Path) -> ServingIndex:
    return open_index(store)


@pytest.mark.parametrize("dense_table", [True, False], ids=["dense-table", "binary-search"])
def test_item_ids_map_to_rows_in_order_dropping_unknown_ones(
    store: Path, dense_table: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not dense_table:
        monkeypatch.setattr(id_lookup, "MAX_LOOKUP_IDS", 0)
    index = open_index(store)
    assert (id_lookup.IdLookup(index.item_ids).table is not None) == dense_table
    known = [item_id_of_row(r) for r in (0, 7, N_ITEMS - 1, 7)]  # a duplicate stays a duplicate
    unknown = [-10, 0, 5, item_id_of_row(N_ITEMS), 10**12, 2**62]
    wanted = [unknown[0], known[0], unknown[1], known[1], unknown[2], known[2], unknown[3], known[3], *unknown[4:]]
    assert index.item_rows(wanted).tolist() == [0, 7, N_ITEMS - 1, 7]
    assert index.item_rows(np.array(wanted, dtype=np.int64)).tolist() == [0, 7, N_ITEMS - 1, 7]
    assert index.item_rows([]).size == 0
    assert index.unknown_item_ids(wanted).tolist() == unknown
    assert index.unknown_item_ids(known).size == 0


@pytest.mark.parametrize("dense_table", [True, False], ids=["dense-table", "binary-search"])
def test_user_ids_map_to_rows_or_none(store: Path, dense_table: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    if not dense_table:
        monkeypatch.setattr(id_lookup, "MAX_LOOKUP_IDS", 0)
    index = open_index(store)
    known = [user_id_of_row(r) for r in range(index.n_users)]
    unknown = [-10, -1, 0, 4, user_id_of_row(index.n_users), 10**12, 2**62]  # the factory's user ids are odd
    assert [index.user_row(u) for u in known] == list(range(index.n_users))
    assert [index.user_row(u) for u in unknown] == [None] * len(unknown)
    assert index.user_rows([unknown[2], known[3], unknown[-1], known[0]]).tolist() == [-1, 3, -1, 0]


def test_meta_and_versions_come_from_the_manifest(store: Path, index: ServingIndex) -> None:
    directory = index.path
    raw = read_manifest(directory, "index").meta
    assert index.meta == IndexMeta.from_manifest(read_manifest(directory, "index"), directory)
    assert (index.meta.kind, index.meta.dim, index.meta.n_items, index.meta.n_users) == ("flat", 6, N_ITEMS, 15)
    assert index.index_version == directory.name == (store / "CURRENT").read_text().strip()
    sha = raw["source_model"]["manifest_sha256"]
    assert index.model_version == f"{Path(raw['source_model']['path']).name}@{sha[:12]}"
    assert index.meta.events_through == index.events_through == 0
    assert (index.meta.ranked_depth, index.meta.ranked_bytes) == (raw["ranked"]["depth"], raw["ranked"]["bytes"])
    assert index.meta.ranked_depth > 0 and index.meta.ranked_bytes > 0
    with pytest.raises(TypeError):
        index.meta.params["m"] = 8  # type: ignore[index]  # frozen all the way down


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (("index",), None, "index is missing"),
        (("index", "kind"), "ivf", "unknown index kind 'ivf'"),
        (("source_model", "manifest_sha256"), 12, "source_model.manifest_sha256 is missing or not a str"),
        (("n_items",), True, "meta.n_items is missing or not an integer"),
        (("interactions", "through_offset"), "3", "interactions.through_offset is missing or not an integer"),
        (("ranked",), [], "ranked is missing or not an object"),
        (("ranked", "depth"), "16", "ranked.depth is missing or not an integer"),
        (("ranked", "bytes"), None, "ranked.bytes is missing or not an integer"),
        (("ranked", "depth"), 0, "ranked.depth must be >= 1"),
    ],
)
def test_an_ill_typed_manifest_field_is_a_bundle_error(
    store: Path, tmp_path: Path, path: tuple[str, ...], value: object, message: str
) -> None:
    manifest = read_manifest(open_index(store).path, "index")
    meta = json.loads(json.dumps(manifest.meta))
    block = meta
    for key in path[:-1]:
        block = block[key]
    if value is None:
        del block[path[-1]]
    else:
        block[path[-1]] = value
    broken = replace(manifest, meta=meta)
    with pytest.raises(BundleError, match=message) as caught:
        IndexMeta.from_manifest(broken, tmp_path)
    assert str(tmp_path / MANIFEST_NAME) in str(caught.value)


def test_catalog_lists_display_data_by_row(index: ServingIndex) -> None:
    catalog = index.catalog()
    assert [item.item_id for item in catalog] == index.item_ids.tolist() == [item_id_of_row(r) for r in range(N_ITEMS)]
    items = index.model.items
    for row in (0, N_ITEMS - 1):
        assert catalog[row].title == items.titles[row]
        assert catalog[row].genres == tuple(items.genres[row])
        assert catalog[row].year == items.years[row]


def test_new_users_keep_their_compacted_events_and_known_users_do_not(tmp_path: Path) -> None:
    root = make_index(tmp_path, n_users=6, n_items=30, dim=4, seen_per_user=2)
    known, new = user_id_of_row(1), 4  # the factory's user ids are odd: 4 is a user the model never saw
    with InteractionLog(tmp_path / "events.sqlite3") as log:
        log.record(known, [item_id_of_row(3)])
        log.record(new, [item_id_of_row(5), item_id_of_row(2), item_id_of_row(5)])
        build_index(tmp_path / "model", root, new_events=log.export())
    index = open_index(root)
    assert index.new_user_events(known) is None
    assert 3 in index.seen_rows(1).tolist()
    events = index.new_user_events(new)
    assert events is not None and events.tolist() == [item_id_of_row(2), item_id_of_row(5)]
    assert index.new_user_events(6) is None
    vector = index.fold_in_vector(index.item_rows(events))
    assert vector.shape == (index.dim,) and np.all(np.isfinite(vector))
