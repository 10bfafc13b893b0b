"""FAISS index bundles and exact top-K serving with seen-item exclusion.

An index store is a directory of immutable versions and a ``CURRENT`` pointer
(:class:`movierec.bundle.VersionedStore`)::

    ROOT/
      CURRENT              one line, e.g. "v0003", replaced atomically
      .build.lock          serialises builds into this store
      v0003/
        manifest.json      kind "index": SHA-256 + size of every file below (model/ included),
                           meta.index {kind flat|hnsw, params, metric, faiss_version},
                           dim, n_items, n_users,
                           meta.source_model {path, manifest_sha256, created_at, dataset},
                           meta.interactions {through_offset, events, merged_into_seen},
                           meta.ranked {depth, rule, bytes, seconds} (only with stored prefixes)
        index.faiss        faiss.write_index of IndexFlatIP or IndexHNSWFlat (inner product),
                           vector i = item row i
        model/             a verified copy of the model bundle it was built from (its own
                           manifest.json is pinned by source_model.manifest_sha256)
        events_user_ids.npy, events_item_ids.npy
                           every live "watched" event compacted so far (dataset ids), merged
                           into the seen sets at load; see movierec.index.events
        ranked_rows.npy, ranked_scores.npy, ranked_lengths.npy
                           a flat version's stored ranked prefixes (int32 item rows, float32
                           scores, int32 places per user: n_users x depth), memory-mapped at
                           load instead of computed; see movierec.index.ranked

so a version is self-contained: deleting or retraining the source model never
changes what a version serves. :func:`open_index` verifies both manifests and
that the FAISS vectors equal the model's; any corruption is a
:class:`~movierec.errors.BundleError` naming the file. The manifest's ``meta``
is parsed once into a typed :class:`IndexMeta` (:mod:`movierec.index.meta`).

:class:`ServingIndex` is the index's one public face for a server: versions,
meta, id -> row lookups (dense tables, :mod:`movierec.index.id_lookup`), the
catalog's display data, the compacted events of users the model never saw,
fold-in, and the queries.

Exactness (README: "The exclusion contract") and the ranking rule are documented in
:mod:`movierec.index.topk`; the HNSW path in :mod:`movierec.index.faiss_index`;
genre and year filters (exact, applied inside the search) in
:mod:`movierec.index.filters`; the per-user ranked prefixes a version stores (or a server
computes at load) so most requests skip the scan in :mod:`movierec.index.ranked`; the
``because`` item of a recommendation in :mod:`movierec.index.because`.
:func:`prune_versions` deletes old versions (never the current one). A serving
process calls :func:`limit_serving_threads` once (see :mod:`movierec.index.threads`).
"""

from movierec.index.because import BecauseExplainer
from movierec.index.build import build_index, newest_model_bundle, rebuild_index
from movierec.index.filters import FilterError, ItemFilter
from movierec.index.meta import IndexMeta
from movierec.index.prune import prune_versions
from movierec.index.serving import CatalogItem, ServingIndex, open_index
from movierec.index.threads import limit_serving_threads
from movierec.index.topk import Recommendation

__all__ = [
    "BecauseExplainer",
    "CatalogItem",
    "FilterError",
    "IndexMeta",
    "ItemFilter",
    "Recommendation",
    "ServingIndex",
    "build_index",
    "limit_serving_threads",
    "newest_model_bundle",
    "open_index",
    "prune_versions",
    "rebuild_index",
]
