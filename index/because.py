r"""The ``because`` item of a personal recommendation: the user's item that contributes most to its score.

LightGCN (He et al., SIGIR 2020; see :mod:`movierec.index.fold_in` for the
notation) builds every layer of a user's embedding after the first from the
user's training items only, ``e_u^{(k+1)} = \sum_{j \in N_u} e_j^{(k)} / \sqrt{|N_u||N_j|}``,
so the score splits into one term per item the user trained on:

.. math::

    s_{ui} = e_u \cdot v_i = \frac{e_u^{(0)} \cdot v_i}{K+1}
             + \sum_{j \in N_u} \underbrace{\frac{1}{\sqrt{|N_u|}\sqrt{|N_j|}}
               \Big(\frac{1}{K+1}\sum_{k=0}^{K-1} e_j^{(k)}\Big) \cdot v_i}_{c_j}

The bundle holds only the final item vectors ``v_j`` (the layer mean over
``0..K``), the same stand-in :mod:`movierec.index.fold_in` uses for the inner
sum, so the contribution of item ``j`` to the recommendation of ``i`` is
estimated as

.. math::

    c_j \propto \frac{v_i \cdot v_j}{\sqrt{|N_j|}}

(``1/\sqrt{|N_u|}`` is the same for every ``j`` and drops out of the argmax).
``|N_j|`` is item ``j``'s degree in the training graph, clamped to at least 1
exactly as the trainer's adjacency does (``movierec.trainer.models.graph``).
The degree weight is the difference from a plain "most similar seen item":
the model itself discounts a popular item's pull on its users, so an
explanation that ignored it would name an item the score depends on less.

``because(u, i) = argmax_{j in N_u} c_j``, ties to the lower item row; ``N_u``
are the user's training positives (``model.train``), which are what the
propagation sums over, or their seen items when they have none (a user known
only through compacted live events). A user with neither gets -1.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from movierec.bundle import ModelBundle

NO_ITEM = -1


class BecauseExplainer:
    """Vectorised ``because`` lookups over one model's item vectors and training degrees; immutable, thread-safe."""

    def __init__(self, item_vectors: npt.NDArray[np.float32], item_degrees: npt.NDArray[np.integer]) -> None:
        vectors = np.asarray(item_vectors)
        degrees = np.asarray(item_degrees)
        if vectors.ndim != 2 or degrees.shape != (vectors.shape[0],):
            raise ValueError(f"item_vectors {vectors.shape} and item_degrees {degrees.shape} do not match")
        self._vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        self._weights = (1.0 / np.sqrt(np.maximum(degrees, 1).astype(np.float64))).astype(np.float32)

    @classmethod
    def from_model(cls, model: ModelBundle) -> BecauseExplainer:
        """Degrees counted in ``model.train``: the graph the model propagated over."""
        degrees = np.bincount(np.asarray(model.train.indices, dtype=np.int64), minlength=model.n_items)
        return cls(model.item_vectors, degrees)

    @property
    def n_items(self) -> int:
        return int(self._vectors.shape[0])

    def because(self, positives: npt.ArrayLike, item_rows: npt.ArrayLike) -> npt.NDArray[np.int32]:
        """For each of ``item_rows``, the row in ``positives`` with the largest contribution; -1 if none.

        One ``[len(item_rows), d] x [d, len(positives)]`` product. ``positives``
        may be unsorted or repeated: they are deduplicated and sorted first, so
        ``argmax`` (first maximum) breaks ties by the lower row.
        """
        items = self._rows(item_rows, "item_rows")
        liked = np.unique(self._rows(positives, "positives"))
        if liked.size == 0:
            return np.full(items.size, NO_ITEM, dtype=np.int32)
        with np.errstate(over="ignore", invalid="ignore"):
            contributions = (self._vectors[items] @ self._vectors[liked].T) * self._weights[liked]
        contributions[np.isnan(contributions)] = -np.inf  # overflow ranks last, as in the search
        best: npt.NDArray[np.int32] = liked[np.argmax(contributions, axis=1)].astype(np.int32)
        return best

    def _rows(self, rows: npt.ArrayLike, name: str) -> npt.NDArray[np.int64]:
        array = np.asarray(rows)
        if array.size == 0:
            return np.empty(0, dtype=np.int64)
        if array.ndim != 1 or not np.issubdtype(array.dtype, np.integer):
            raise ValueError(f"{name} must be a 1-d array of integer item rows")
        if array.min() < 0 or array.max() >= self.n_items:
            raise ValueError(f"{name} must be item rows in [0, {self.n_items})")
        return array.astype(np.int64, copy=False)
