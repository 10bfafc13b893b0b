"""LightGCN (He et al., SIGIR 2020) on PyTorch Geometric's ``LGConv``.

Propagation over the normalised user–item graph ``Â = D^{-1/2} A D^{-1/2}``
without weights or non-linearities:

    E^{(l+1)} = Â E^{(l)},        E^{(0)} = the ego (free) embeddings,
    E_final   = Σ_{l=0..L} α_l E^{(l)}            (α_l = 1/(L+1) in the paper)

and a user's score for an item is the dot product ``e_u · e_i`` of the final
embeddings, so the trained model is served as two plain matrices.

Two propagation back ends share that formula:

* :class:`LightGCN` (ours): ``LGConv`` layers over a *pre-normalised* sparse
  CSR adjacency built once. Because ``Â`` is symmetric, the gradient of
  ``Â x`` is ``Â g``; :class:`SymmetricLGConv` uses that instead of letting
  autograd transpose the sparse matrix on every backward pass.
* :class:`StockLightGCN`: PyG's ready-made ``torch_geometric.nn.models.LightGCN``
  driven by an edge index (``gcn_norm`` and scatter on every call), i.e. the
  stock recipe the speed benchmark compares against.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch_geometric.nn import LGConv
from torch_geometric.nn.models import LightGCN as PygLightGCN

from movierec.trainer.models.base import GraphRecommender


class _SymmetricSpmm(torch.autograd.Function):
    """``y = Â x`` for a constant symmetric sparse ``Â``; backward is ``Â g`` (no transpose needed)."""

    @staticmethod
    def forward(ctx: Any, adjacency: Tensor, features: Tensor) -> Tensor:
        ctx.adjacency = adjacency
        return adjacency @ features

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[None, Tensor]:
        return None, ctx.adjacency @ grad_output


class SymmetricLGConv(LGConv):  # type: ignore[misc]
    """``LGConv`` for a symmetric, already normalised sparse adjacency (see the module docstring)."""

    def __init__(self) -> None:
        super().__init__(normalize=False)

    def message_and_aggregate(self, adj_t: Tensor, x: Tensor) -> Tensor:
        result: Tensor = _SymmetricSpmm.apply(adj_t, x)  # type: ignore[no-untyped-call]
        return result


def layer_weights(layers: int, weights: Sequence[float] | None) -> Tensor:
    """α_0..α_L; the paper's uniform 1/(L+1) unless given (normalised to sum to 1)."""
    if weights is None:
        return torch.full((layers + 1,), 1.0 / (layers + 1))
    if len(weights) != layers + 1 or min(weights) < 0 or sum(weights) <= 0:
        raise ValueError(f"need {layers + 1} non-negative layer weights, got {list(weights)}")
    alpha = torch.tensor(list(weights), dtype=torch.float32)
    return alpha / alpha.sum()


class LightGCN(GraphRecommender):
    """Ego embeddings for every user and item plus ``layers`` symmetric ``LGConv`` propagations."""

    def __init__(
        self,
        n_users: int,
        n_items: int,
        dim: int,
        layers: int,
        *,
        alpha: Sequence[float] | None = None,
        init_std: float = 0.1,
    ) -> None:
        super().__init__()
        self.n_users = n_users
        self.n_items = n_items
        self.embedding = nn.Embedding(n_users + n_items, dim)
        nn.init.normal_(self.embedding.weight, std=init_std)
        self.convs = nn.ModuleList(SymmetricLGConv() for _ in range(layers))
        self.register_buffer("alpha", layer_weights(layers, alpha))

    def propagate(self, graph: Tensor) -> tuple[Tensor, Tensor]:
        """Final (layer-combined) user and item embeddings over ``graph`` = the normalised adjacency."""
        x = self.embedding.weight
        alpha = self.get_buffer("alpha")
        out = x * alpha[0]
        for layer, conv in enumerate(self.convs, start=1):
            x = conv(x, graph)
            out = out + x * alpha[layer]
        return out[: self.n_users], out[self.n_users :]

    def ego(self, users: Tensor, items: Tensor) -> tuple[Tensor, Tensor]:
        """Layer-0 embeddings of the given user rows and item rows (what L2 regularisation acts on)."""
        weight = self.embedding.weight
        return weight[users], weight[self.n_users + items]


class StockLightGCN(GraphRecommender):
    """PyG's stock ``LightGCN`` over an edge index, with the same interface as :class:`LightGCN`."""

    def __init__(self, n_users: int, n_items: int, dim: int, layers: int) -> None:
        super().__init__()
        self.n_users = n_users
        self.n_items = n_items
        self.model = PygLightGCN(num_nodes=n_users + n_items, embedding_dim=dim, num_layers=layers)

    def propagate(self, graph: Tensor) -> tuple[Tensor, Tensor]:
        """``graph`` is the ``[2, E]`` edge index; PyG normalises it again on every call."""
        out: Tensor = self.model.get_embedding(graph)
        return out[: self.n_users], out[self.n_users :]

    def ego(self, users: Tensor, items: Tensor) -> tuple[Tensor, Tensor]:
        weight = self.model.embedding.weight
        return weight[users], weight[self.n_users + items]
