"""Build index versions from model bundles: verified input, atomic output, then (optionally) switch CURRENT.

A build never touches an existing version: it stages ``vNNNN`` beside the
others and renames it into place only when complete, under a lock file so two
concurrent builds cannot claim the same number. CURRENT moves only after that,
with an atomic rename (:class:`movierec.bundle.VersionedStore`).
"""

from __future__ import annotations

import fcntl
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import faiss

from movierec.bundle import MANIFEST_NAME, VersionedStore, read_manifest, sha256_file, staged_directory, write_manifest
from movierec.bundle.model import MODEL_KIND, ModelBundle, read_model_bundle
from movierec.errors import BundleError
from movierec.index.events import CompactedEvents, SeenEvents, merge_into_seen, read_events, write_events
from movierec.index.faiss_index import KINDS, HnswParams, create_index, write_index
from movierec.index.layout import BUILD_LOCK, FAISS_FILE, INDEX_KIND, MODEL_DIR
from movierec.index.meta import IndexMeta
from movierec.index.ranked import DEFAULT_DEPTH, affordable_depth, write_prefixes
from movierec.index.serving import resolve_version_dir
from movierec.index.topk import ExactSearcher
from movierec.progress import progress_bar


@contextmanager
def build_lock(root: Path) -> Iterator[None]:
    """Serialise builds into one store (version numbering and CURRENT moves)."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / BUILD_LOCK, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _index_params(kind: str, options: dict[str, Any]) -> HnswParams:
    if kind not in KINDS:
        raise ValueError(f"unknown index kind {kind!r} (choose from {', '.join(KINDS)})")
    if kind == "flat" and options:
        raise ValueError(f"a flat index takes no parameters (got {', '.join(sorted(options))})")
    return HnswParams.from_options(options)


class _AnyCurrent:
    """The default of ``build_index(based_on=...)``: build whatever the current version is."""


ANY_CURRENT = _AnyCurrent()


def build_index(
    model_dir: Path,
    index_root: Path,
    *,
    kind: str = "flat",
    make_current: bool = True,
    progress: bool = False,
    new_events: SeenEvents | None = None,
    ranked_depth: int = DEFAULT_DEPTH,
    based_on: Path | _AnyCurrent | None = ANY_CURRENT,
    source: Path | None = None,
    **hnsw_params: Any,
) -> Path:
    """Write ``index_root/vNNNN`` from the model bundle at ``model_dir``; return the new version's path.

    The model bundle is copied into the version and verified *as copied*, so
    what is indexed and shipped is exactly what was checked. ``hnsw_params``
    (``m``, ``ef_construction``, ``ef_search``) apply to ``kind="hnsw"`` only.

    Live events already compacted into the store's current version are always
    carried forward (a watched movie must stay excluded whatever model is
    indexed next); ``new_events`` from the interaction log are added to them.

    A flat version also stores the first ``ranked_depth`` places of every user's ranking
    (:mod:`movierec.index.ranked`; fewer under its memory cap; 0: none), ranked against the seen sets with
    every compacted event merged in, exactly as a server loading the version sees them.

    ``based_on`` is for callers that made ``model_dir`` from the current version (``add-items``,
    ``refresh-items``, ``rebuild``'s carried movies): the version they read (None: there was none). If
    another command moved CURRENT since, nothing is written and a BundleError says so, instead of the new
    version silently dropping what that command added. ``source`` is the bundle recorded as the version's
    ``source_model.path`` (and so the name in its model version) when ``model_dir`` is a staged copy of it.
    """
    if ranked_depth < 0:
        raise ValueError(f"ranked_depth must be >= 0, got {ranked_depth}")
    params = _index_params(kind, hnsw_params)
    model_dir = Path(model_dir)
    read_manifest(model_dir, MODEL_KIND, verify=False)  # fail fast, before any work, on a non-bundle
    index_root = Path(index_root)
    with build_lock(index_root):
        store = VersionedStore(index_root)
        _check_still_current(store, based_on)
        events = _current_events(store)
        if new_events is not None:
            events = events.extended(new_events)
        version = store.next_version()
        final = store.path(version)
        with staged_directory(final) as stage:
            _write_version(model_dir, stage, kind, params, events, progress, ranked_depth, source or model_dir)
        if make_current:
            store.set_current(version)
    return final


def _check_still_current(store: VersionedStore, based_on: Path | _AnyCurrent | None) -> None:
    """Refuse a build made from a version that is no longer current (see ``build_index``'s ``based_on``)."""
    if isinstance(based_on, _AnyCurrent):
        return
    current = store.current()
    read, now = (version.name if version is not None else "none" for version in (based_on, current))
    if read != now:
        raise BundleError(
            f"the current version changed while this command worked (it read {read}, now {now}): "
            "nothing was written; run it again",
            path=store.root,
        )


def _current_events(store: VersionedStore) -> CompactedEvents:
    """The live events compacted into the current version, verified against its manifest entries; refusing (not
    dropping them) when unreadable or altered: the new version's manifest would otherwise vouch for them."""
    current = store.current()
    if current is None:
        return CompactedEvents.none()
    try:
        manifest = read_manifest(current, INDEX_KIND, verify=False)
        meta = IndexMeta.from_manifest(manifest, current)
        return read_events(current, meta.events_through, manifest, verify=True)
    except BundleError as exc:
        raise BundleError(f"cannot carry live events forward from the current version: {exc}") from None


def _write_version(
    model_dir: Path,
    stage: Path,
    kind: str,
    params: HnswParams,
    events: CompactedEvents,
    progress: bool,
    ranked_depth: int,
    source: Path,
) -> None:
    with progress_bar(total=5, desc="index build", unit="step", enabled=progress, leave=False) as steps:
        steps.set_postfix_str("copy + verify model")
        shutil.copytree(model_dir, stage / MODEL_DIR)
        try:
            model = read_model_bundle(stage / MODEL_DIR, verify=True)
        except BundleError as exc:
            raise BundleError(str(exc).replace(str(stage / MODEL_DIR), str(model_dir))) from None
        steps.update()
        steps.set_postfix_str(f"add {model.n_items} vectors ({kind})")
        with progress_bar(total=model.n_items, desc="add vectors", unit="item", enabled=progress, leave=False) as bar:
            index = create_index(kind, model.item_vectors, params, on_progress=bar.update)
        steps.update()
        steps.set_postfix_str("write index")
        write_index(index, stage / FAISS_FILE)
        write_events(stage, events)
        steps.update()
        steps.set_postfix_str("rank users")
        ranked = _write_ranked(stage, model, events, ranked_depth if kind == "flat" else 0, progress)
        steps.update()
        steps.set_postfix_str("checksum")
        write_manifest(stage, INDEX_KIND, _index_meta(source, stage, model, kind, params, events, ranked))
        steps.update()


def _write_ranked(
    stage: Path, model: ModelBundle, events: CompactedEvents, wanted: int, progress: bool
) -> dict[str, Any] | None:
    """Store the users' ranked prefixes (flat versions; none when the memory cap leaves too few places)."""
    depth = affordable_depth(model.n_users, model.n_items, wanted)
    if not depth:
        return None
    seen = merge_into_seen(model, events)[0]
    with progress_bar(total=model.n_users, desc="rank users", unit="user", enabled=progress, leave=False) as bar:
        return write_prefixes(
            stage, ExactSearcher(model.item_vectors), model.user_vectors, seen, depth, on_progress=bar.update
        )


def _index_meta(
    model_dir: Path,
    stage: Path,
    model: ModelBundle,
    kind: str,
    params: HnswParams,
    events: CompactedEvents,
    ranked: dict[str, Any] | None,
) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "index": {
            "kind": kind,
            "params": params.to_json() if kind == "hnsw" else {},
            "metric": "inner_product",
            "faiss_version": faiss.__version__,
        },
        "dim": model.dim,
        "n_items": model.n_items,
        "n_users": model.n_users,
        "source_model": {
            "path": str(model_dir.resolve()),
            "manifest_sha256": sha256_file(stage / MODEL_DIR / MANIFEST_NAME),
            "created_at": model.manifest.created_at if model.manifest is not None else None,
            "dataset": model.dataset,
        },
        "interactions": {
            "through_offset": events.through_offset,
            "events": len(events),
            "merged_into_seen": merge_into_seen(model, events)[1],
        },
    }
    if ranked is not None:
        meta["ranked"] = ranked
    return meta


def newest_model_bundle(models_root: Path) -> Path:
    """The model bundle under ``models_root`` with the latest manifest ``created_at`` (or the root itself).

    A directory with a manifest that cannot be read is an error, not skipped:
    silently indexing an older model would hide the broken newer one.
    """
    models_root = Path(models_root)
    if (models_root / MANIFEST_NAME).is_file():
        return models_root
    if not models_root.is_dir():
        raise BundleError("no such models directory", path=models_root)
    found: list[tuple[str, Path]] = []
    for child in sorted(models_root.iterdir()):
        if child.is_dir() and not child.name.startswith(".") and (child / MANIFEST_NAME).is_file():
            found.append((read_manifest(child, MODEL_KIND, verify=False).created_at, child))
    if not found:
        raise BundleError("no model bundle found here", path=models_root)
    return max(found)[1]


def rebuild_index(
    models_root: Path,
    index_root: Path,
    *,
    kind: str | None = None,
    make_current: bool = True,
    progress: bool = False,
    new_events: SeenEvents | None = None,
    ranked_depth: int = DEFAULT_DEPTH,
    **hnsw_params: Any,
) -> Path:
    """Build a new version from the newest model bundle; by default with the current version's kind/params.

    ``new_events`` (the interaction log's events) are compacted into it, see :func:`build_index`. Movies the
    current version holds from ``add-items`` that the new bundle lacks are carried forward into it
    (:func:`movierec.index.add_items.carried_bundle`; their ids are then in its config's ``added_items``).
    """
    from movierec.index.add_items import carried_bundle  # add_items builds through build_index: import late

    model_dir = newest_model_bundle(models_root)
    if kind is None:
        kind, hnsw_params = _current_settings(Path(index_root), hnsw_params)
    with tempfile.TemporaryDirectory(prefix="movierec-rebuild-") as scratch:
        current = VersionedStore(index_root).current()
        return build_index(
            carried_bundle(current, model_dir, Path(scratch)),
            index_root,
            kind=kind,
            make_current=make_current,
            progress=progress,
            new_events=new_events,
            ranked_depth=ranked_depth,
            based_on=current,
            source=model_dir,
            **hnsw_params,
        )


def _current_settings(index_root: Path, overrides: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The kind and parameters of the current version (flat when there is none), with ``overrides`` on top."""
    if VersionedStore(index_root).current_version() is None:
        return ("hnsw" if overrides else "flat"), overrides
    current = resolve_version_dir(index_root)
    meta = IndexMeta.from_manifest(read_manifest(current, INDEX_KIND, verify=False), current)
    params = dict(meta.params) if meta.kind == "hnsw" else {}
    return meta.kind, {**params, **overrides}
