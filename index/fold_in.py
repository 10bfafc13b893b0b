r"""Fold a user the model never saw into its vector space, from the items that user liked.

LightGCN (He et al., SIGIR 2020) propagates embeddings over the user-item graph

.. math::

    e_u^{(k+1)} = \sum_{i \in N_u} \frac{e_i^{(k)}}{\sqrt{|N_u|}\sqrt{|N_i|}}, \qquad
    e_u = \frac{1}{K+1} \sum_{k=0}^{K} e_u^{(k)}, \qquad
    v_i = \frac{1}{K+1} \sum_{k=0}^{K} e_i^{(k)}

and scores ``e_u · v_i``. For a new user, substitute the propagation rule into
the layer sum:

.. math::

    e_u = \frac{e_u^{(0)}}{K+1} + \sum_{i \in N_u} \frac{1}{\sqrt{|N_u| |N_i|}}
          \cdot \frac{1}{K+1} \sum_{k=0}^{K-1} e_i^{(k)}

The bundle holds only the final item vectors ``v_i`` (the layer mean over
``k = 0..K``), and a new user has no trained layer-0 embedding (``e_u^(0) = 0``),
so the best estimate available from the bundle is

.. math::

    \hat e_u = \sum_{i \in N_u} \frac{v_i}{\sqrt{|N_u|}\sqrt{|N_i| + 1}}

which differs from the rule only by using item layers ``0..K`` instead of
``0..K-1`` (the deepest, smoothest layer) and by the missing ``e_u^(0)`` term.
``|N_i| + 1`` is the item's degree once the new user's edge is added (so an
item with no training edges is weighted as a graph with that one edge would
weight it, instead of dividing by zero); ``|N_u|`` counts distinct liked items.
The number of layers and the layer weights drop out: nothing from the
training config is needed, only item vectors and training-graph degrees.

A bundle trained with cosine scores (the default recipe) serves unit-length
vectors ``v_i / ‖v_i‖``; the rule is applied to those as they are, so each
liked item contributes its direction, weighted by degree.

A user's ranking is invariant to scaling their vector, so ``1/sqrt(|N_u|)``
does not change which items come first; what distinguishes the rule from a
plain mean of the liked vectors is the ``1/sqrt(|N_i|)`` weight, which
discounts popular items. ``benchmarks/cold_start.py --bundle B`` measures both
on a bundle. On a cosine bundle (the default recipe) the served vectors carry
no popularity in their norms, the extra discount overshoots, and the mean wins
in every fold (``benchmarks/results/cold_start.md``); on dot-product bundles,
whose norms do carry popularity, the rule's discount is the point of it.
So the default follows the bundle: ``mean`` for cosine-scored bundles,
``propagation`` otherwise (:meth:`FoldIn.from_model`).
"""

from __future__ import annotations

from typing import Literal, get_args

import numpy as np
import numpy.typing as npt

from movierec.bundle import CSR, ModelBundle
from movierec.errors import MovierecError

FoldInMethod = Literal["propagation", "mean"]
FOLD_IN_METHODS: tuple[FoldInMethod, ...] = get_args(FoldInMethod)


class FoldInError(MovierecError):
    """A liked list that cannot be folded in (no item known to the model, an item row out of range)."""


class FoldIn:
    """User vectors for unseen users, from item vectors and the training graph's item degrees.

    Immutable after construction and thread-safe; one instance per served bundle.
    """

    def __init__(
        self,
        item_vectors: npt.NDArray[np.floating],
        item_degrees: npt.NDArray[np.integer],
        default_method: FoldInMethod = "propagation",
    ) -> None:
        vectors = np.asarray(item_vectors)
        degrees = np.asarray(item_degrees)
        if vectors.ndim != 2 or degrees.shape != (vectors.shape[0],):
            raise ValueError(f"item_vectors {vectors.shape} and item_degrees {degrees.shape} do not match")
        if degrees.size and degrees.min() < 0:
            raise ValueError("item degrees must be >= 0")
        self._vectors = np.ascontiguousarray(vectors, dtype=np.float64)
        self._item_weights = 1.0 / np.sqrt(degrees.astype(np.float64) + 1.0)
        _check_method(default_method)
        self.default_method: FoldInMethod = default_method

    @classmethod
    def from_model(cls, model: ModelBundle) -> FoldIn:
        """Degrees are counted in ``model.train``: the graph the model was trained on; the default method
        is ``mean`` when the bundle was trained on cosine scores (see the module docstring)."""
        degrees = np.bincount(np.asarray(model.train.indices, dtype=np.int64), minlength=model.n_items)
        cosine = bool(model.config.get("train", {}).get("cosine", False))
        return cls(model.item_vectors, degrees, "mean" if cosine else "propagation")

    @property
    def n_items(self) -> int:
        return int(self._vectors.shape[0])

    @property
    def dim(self) -> int:
        return int(self._vectors.shape[1])

    def user_vector(self, liked_rows: npt.ArrayLike, method: FoldInMethod | None = None) -> npt.NDArray[np.float32]:
        """The vector of one user who liked the item rows ``liked_rows`` (duplicates count once); ``method``
        defaults to :attr:`default_method`.

        The same arithmetic as :meth:`user_vectors`, without building a CSR, so
        the serving path pays a few numpy calls and both give identical bits.
        """
        method = self.default_method if method is None else method
        _check_method(method)
        items = np.unique(np.asarray(liked_rows, dtype=np.int64).reshape(-1))
        if items.size == 0:
            raise FoldInError("no liked item known to the model")
        self._check_rows(items)
        total: npt.NDArray[np.float64] = np.add.reduce(self._weighted(items, method), axis=0)
        return (total * float(_scale(method, np.array([items.size]))[0])).astype(np.float32)

    def user_vectors(self, liked: CSR, method: FoldInMethod | None = None) -> npt.NDArray[np.float32]:
        """One vector per row of ``liked`` (sorted, unique item rows per row, as CSR guarantees)."""
        method = self.default_method if method is None else method
        _check_method(method)
        if liked.n_cols != self.n_items:
            raise FoldInError(f"liked items span {liked.n_cols} columns, the model has {self.n_items} items")
        counts = liked.row_lengths()
        if counts.size and counts.min() == 0:
            raise FoldInError(f"{int((counts == 0).sum())} user(s) have no liked item known to the model")
        items = np.asarray(liked.indices, dtype=np.int64)
        self._check_rows(items)
        sums = _segment_sums(self._weighted(items, method), liked.indptr)
        return (sums * _scale(method, counts)[:, None]).astype(np.float32)

    def _check_rows(self, items: npt.NDArray[np.int64]) -> None:
        if items.size and (items.min() < 0 or items.max() >= self.n_items):
            raise FoldInError(f"liked item rows must be in [0, {self.n_items})")

    def _weighted(self, items: npt.NDArray[np.int64], method: FoldInMethod) -> npt.NDArray[np.float64]:
        """Each liked item's vector times its weight: 1 for the mean, 1/sqrt(|N_i| + 1) for propagation."""
        if method == "mean":
            return self._vectors[items]
        return self._vectors[items] * self._item_weights[items, None]


def _check_method(method: str) -> None:
    if method not in FOLD_IN_METHODS:
        raise FoldInError(f"unknown fold-in method {method!r}; choose one of {', '.join(FOLD_IN_METHODS)}")


def _scale(method: FoldInMethod, liked_counts: npt.NDArray[np.int64]) -> npt.NDArray[np.float64]:
    """1/|N_u| for the mean, 1/sqrt(|N_u|) for propagation (ranking ignores it; scores stay comparable)."""
    counts = liked_counts.astype(np.float64)
    return 1.0 / counts if method == "mean" else 1.0 / np.sqrt(counts)


def _segment_sums(values: npt.NDArray[np.float64], indptr: npt.NDArray[np.int64]) -> npt.NDArray[np.float64]:
    """Row sums of CSR-ordered values (every row non-empty); each row is summed on its own, so a user's
    vector does not depend on which other users share the batch."""
    if indptr.shape[0] == 1:
        return np.zeros((0, values.shape[1]))
    return np.add.reduceat(values, indptr[:-1], axis=0)
