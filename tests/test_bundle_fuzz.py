"""Fuzzing the loaders: a damaged bundle either loads (and then serves) or is a BundleError, never anything else.

Each example copies a small valid bundle (a model bundle, or an index version
with live events, flat or HNSW), damages it (truncated, flipped, re-typed,
re-shaped or re-ordered arrays, rewritten JSON, deleted files, symlinks leading
out, extra or missing manifest keys, paths leaving the bundle) and, most of the
time, re-seals the checksums so the damage reaches the loaders' structural
checks instead of stopping at the first checksum.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from bundle_factory import make_model_bundle
from bundle_tamper import read_json, reseal, reseal_version, write_json
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from movierec.bundle import MANIFEST_NAME, read_model_bundle
from movierec.errors import BundleError
from movierec.index import build_index, open_index
from movierec.index.events import SeenEvents
from movierec.v1 import recommender_pb2 as pb

EXAMPLES = int(os.environ.get("MOVIEREC_FUZZ_EXAMPLES", "120"))
"""Examples per test; raise it for a longer hunt (``MOVIEREC_FUZZ_EXAMPLES=5000``)."""
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**65), 2**65) | st.floats() | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)
array_values = st.sampled_from([np.nan, np.inf, -1, 0, 2**31 - 1, 2**62, -(2**40), 1e30])
DTYPES = ("<f8", "<f4", "<i4", "<i8", "|u1", "|b1", ">f4")
RESHAPES = ("ravel", "add_axis", "transpose", "drop_first", "repeat_first", "empty")
REORDERS = ("reverse", "swap_first_two", "roll", "sort_descending")
FILE_DAMAGES = ("truncate", "flip", "retype", "reshape", "reorder", "value", "delete", "json", "symlink", "extra")
FileDamage = Callable[[Path, str], None]
"""Damage to ``root / name``."""
TRAVERSALS = ("../outside.bin", "/etc/hostname", "model/../../outside.bin", "./x", "a//b", "", "a\\b")


@pytest.fixture(scope="module")
def templates() -> Iterator[dict[str, Path]]:
    """One small valid bundle of each kind, copied (never changed) by every example."""
    with tempfile.TemporaryDirectory(prefix="bundle-fuzz-") as tmp:
        root = Path(tmp)
        model = make_model_bundle(root / "model", n_users=6, n_items=12, dim=3, seen_per_user=3, seed=7)
        offsets = np.arange(1, 4, dtype=np.int64)
        events = SeenEvents(offsets, np.array([1, 3, 99], dtype=np.int64), offsets * 10, np.full(3, np.nan), offsets)
        flat = build_index(model, root / "flat", new_events=events)
        hnsw = build_index(model, root / "hnsw", kind="hnsw", m=4, new_events=events)
        yield {"model": model, "flat": flat, "hnsw": hnsw}


def _listed(directory: Path) -> list[str]:
    return sorted(read_json(directory / MANIFEST_NAME)["files"])


def _change_array(path: Path, change: Callable[[np.ndarray[Any, Any]], np.ndarray[Any, Any]]) -> None:
    try:
        array = np.load(path, allow_pickle=False)
    except Exception:  # an earlier step already broke it (numpy's header parser raises many kinds)
        return
    np.save(path, change(array))


def _reshape(array: np.ndarray[Any, Any], how: str) -> np.ndarray[Any, Any]:
    if how == "ravel":
        return array.ravel()
    if how == "add_axis":
        return array[None]
    if how == "transpose":
        return array.T.copy()
    if how == "drop_first":
        return array[1:]
    if how == "repeat_first":
        return np.concatenate([array[:1], array])
    return array[:0]


def _reorder(array: np.ndarray[Any, Any], how: str) -> np.ndarray[Any, Any]:
    if how == "reverse":
        return array[::-1].copy()
    if how == "swap_first_two" and array.shape[0] > 1:
        order = np.arange(array.shape[0])
        order[[0, 1]] = order[[1, 0]]
        return array[order]
    if how == "roll":
        return np.roll(array, 1, axis=0)
    return np.sort(array, axis=0)[::-1].copy()


def _set_value(array: np.ndarray[Any, Any], position: float, value: float) -> np.ndarray[Any, Any]:
    if array.size == 0:
        return array
    changed = array.astype(np.float64) if array.dtype.kind != "f" else array.copy()
    changed.flat[int(position * array.size) % array.size] = value
    return changed.astype(array.dtype) if np.isfinite(value) and abs(value) < 2**31 else changed


@st.composite
def file_damage(draw: st.DrawFn) -> tuple[int, FileDamage]:
    """One change to one listed file (or next to them): which file (by position in the listing), and how."""
    pick = draw(st.integers(0, 10_000))
    kind = draw(st.sampled_from(FILE_DAMAGES))
    fraction = draw(st.floats(0, 1, exclude_max=True))
    if kind == "truncate":

        def truncate(root: Path, name: str) -> None:
            data = (root / name).read_bytes()
            (root / name).write_bytes(data[: int(fraction * len(data))])

        return pick, truncate
    if kind == "flip":
        mask = draw(st.integers(1, 255))

        def flip(root: Path, name: str) -> None:
            data = bytearray((root / name).read_bytes())
            if data:
                data[int(fraction * len(data))] ^= mask
                (root / name).write_bytes(bytes(data))

        return pick, flip
    if kind == "delete":
        return pick, lambda root, name: (root / name).unlink()
    if kind == "symlink":

        def leave(root: Path, name: str) -> None:
            if (root / name).is_symlink():
                return
            outside = root.parent / f"outside-{name.replace('/', '_')}"
            shutil.copyfile(root / name, outside)
            (root / name).unlink()
            (root / name).symlink_to(outside)

        return pick, leave
    if kind == "extra":
        extra = draw(st.sampled_from(["events_user_ids.npy", "events_item_ids.npy", "model/extra.npy", "zz.json"]))

        def add(root: Path, _name: str) -> None:
            if (root / extra).parent.is_dir():
                np.save(root / extra, np.arange(3, dtype=np.int64))

        return pick, add
    if kind == "json":
        value = draw(json_values)
        key = draw(st.sampled_from(["titles", "years", "genres", "recall@10", "model"]))
        mode = draw(st.sampled_from(["whole", "key", "element"]))
        text = draw(st.text(max_size=4) | st.just("\ud800"))  # JSON may carry a lone surrogate

        def rewrite(root: Path, name: str) -> None:
            try:
                current = read_json(root / name)
            except ValueError:
                current = None
            if mode == "whole" or not isinstance(current, dict):
                current = value
            elif mode == "key":
                current[key] = value
            elif isinstance(current.get(key), list) and current[key]:  # one entry of titles/years/genres
                entries = current[key]
                entries[int(fraction * len(entries))] = draw_like(entries[0], value, text)
            write_json(root / name, current)

        return pick, rewrite
    if kind == "retype":
        dtype = draw(st.sampled_from(DTYPES))
        return pick, lambda root, name: _change_array(root / name, lambda a: a.astype(dtype))
    if kind == "reshape":
        how = draw(st.sampled_from(RESHAPES))
        return pick, lambda root, name: _change_array(root / name, lambda a: _reshape(a, how))
    if kind == "reorder":
        how = draw(st.sampled_from(REORDERS))
        return pick, lambda root, name: _change_array(root / name, lambda a: _reorder(a, how) if a.ndim else a)
    value = draw(array_values)
    return pick, lambda root, name: _change_array(root / name, lambda a: _set_value(a, fraction, value))


def draw_like(example: Any, value: Any, text: str) -> Any:
    """A replacement for one list entry: odd text where text was, a large year where one was, else ``value``."""
    if isinstance(example, str):
        return text
    if isinstance(example, int) and isinstance(value, int):
        return value * 2**32
    if isinstance(example, list):
        return [text]
    return value


@st.composite
def manifest_damage(draw: st.DrawFn) -> Callable[[dict[str, Any]], None]:
    """One change to a parsed manifest: a key dropped or retyped, a listed path removed or leaving the bundle."""
    kind = draw(st.sampled_from(["drop_top", "retype_top", "drop_meta", "retype_meta", "drop_file", "traversal"]))
    value = draw(json_values)
    pick = draw(st.integers(0, 1000))

    def damage(raw: dict[str, Any]) -> None:
        if kind in ("drop_top", "retype_top"):
            key = sorted(raw)[pick % len(raw)]
            raw.pop(key) if kind == "drop_top" else raw.__setitem__(key, value)
        elif kind in ("drop_meta", "retype_meta"):
            meta = raw["meta"]
            block = meta
            nested = [k for k in sorted(meta) if isinstance(meta[k], dict) and meta[k]]
            if nested and pick % 2:
                block = meta[nested[pick % len(nested)]]
            key = sorted(block)[pick % len(block)]
            block.pop(key) if kind == "drop_meta" else block.__setitem__(key, value)
        elif kind == "drop_file":
            raw["files"].pop(sorted(raw["files"])[pick % len(raw["files"])])
        else:
            raw["files"][TRAVERSALS[pick % len(TRAVERSALS)]] = {"sha256": "0" * 64, "bytes": 0}

    return damage


@st.composite
def damage_plans(draw: st.DrawFn, manifests: list[str]) -> tuple[list[Any], bool, list[Any]]:
    files = draw(st.lists(file_damage(), max_size=3))
    manifest_changes = draw(st.lists(st.tuples(st.sampled_from(manifests), manifest_damage()), max_size=2))
    return files, draw(st.booleans() | st.just(True)), manifest_changes


def _apply(root: Path, plan: tuple[list[Any], bool, list[Any]], seal: Callable[[Path], None]) -> None:
    files, resealed, manifest_changes = plan
    names = _listed(root)  # every file the manifest lists (for an index version, its model's files too)
    for pick, change in files:
        with contextlib.suppress(FileNotFoundError):  # an earlier step deleted the file
            change(root, names[pick % len(names)])
    if resealed:
        seal(root)
    for manifest, change in manifest_changes:
        path = root / manifest
        raw = read_json(path)
        with contextlib.suppress(LookupError, TypeError, AttributeError, ZeroDivisionError):
            change(raw)  # an earlier step may have left nothing of the kind to change
        write_json(path, raw)


def _reason(exc: BundleError, root: Path) -> str:
    """The error without paths or numbers: what ``--hypothesis-show-statistics`` tallies."""
    text = str(exc).replace(str(root.parent), "")
    return "refused: " + re.sub(r"[\d/]+", "#", text.split(": ", 1)[-1])[:60]


@FUZZ
@given(plan=damage_plans([MANIFEST_NAME]))
def test_a_damaged_model_bundle_loads_or_is_a_bundle_error(
    templates: dict[str, Path], plan: tuple[list[Any], bool, list[Any]]
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "bundle"
        shutil.copytree(templates["model"], root)
        _apply(root, plan, reseal)
        try:
            bundle = read_model_bundle(root)
        except BundleError as exc:
            event(_reason(exc, root))
            return
        event("loaded")
        bundle.check()  # what loaded is consistent


@FUZZ
@given(kind=st.sampled_from(["flat", "hnsw"]), plan=damage_plans([MANIFEST_NAME, f"model/{MANIFEST_NAME}"]))
def test_a_damaged_index_version_opens_and_serves_or_is_a_bundle_error(
    templates: dict[str, Path], kind: str, plan: tuple[list[Any], bool, list[Any]]
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "v0001"
        shutil.copytree(templates[kind], root, symlinks=True)
        _apply(root, plan, reseal_version)
        try:
            served = open_index(root)
        except BundleError as exc:
            event(_reason(exc, root))
            return
        event("loaded")
        served.warm_up()  # whatever opens must answer every kind of query
        for item in served.catalog():  # ... and each of its items must fit in an answer on the wire
            pb.RecommendedItem(
                item_id=item.item_id, title=item.title, genres=item.genres, year=item.year
            ).SerializeToString()
        if served.n_users:
            assert len(served.recommend([0], 3)[0]) == min(3, served.n_items - served.seen_rows(0).size)
