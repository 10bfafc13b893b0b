"""NGCF (Wang et al., SIGIR 2019), the other GNN the accuracy benchmark compares.

With ``L = D^{-1/2} A D^{-1/2}`` over the user–item graph, each layer is

    E^{(l+1)} = LeakyReLU( (L + I) E^{(l)} W₁ + b₁ + (L E^{(l)} ⊙ E^{(l)}) W₂ + b₂ )

followed by message dropout and row-wise L2 normalisation (as in the authors'
code); the final representation concatenates all layers,
``e* = [E^{(0)} ‖ E^{(1)} ‖ … ‖ E^{(L)}]``, and the score is ``e*_u · e*_i`` —
still a dot product, so NGCF bundles are served like LightGCN ones.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from movierec.trainer.models.base import GraphRecommender


class NGCFLayer(nn.Module):
    """One NGCF propagation: the sum and element-wise-product messages with their own weights."""

    def __init__(self, in_dim: int, out_dim: int, dropout: float) -> None:
        super().__init__()
        self.sum_transform = nn.Linear(in_dim, out_dim)
        self.product_transform = nn.Linear(in_dim, out_dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, graph: Tensor) -> Tensor:
        neighbours = graph @ x
        mixed = self.sum_transform(neighbours + x) + self.product_transform(neighbours * x)
        return F.normalize(self.dropout(F.leaky_relu(mixed, negative_slope=0.2)), dim=1)


class NGCF(GraphRecommender):
    """Ego embeddings plus ``layers`` NGCF layers; output is the concatenation of every layer."""

    def __init__(
        self, n_users: int, n_items: int, dim: int, layers: int, *, dropout: float = 0.1, init_std: float = 0.1
    ) -> None:
        super().__init__()
        self.n_users = n_users
        self.n_items = n_items
        self.embedding = nn.Embedding(n_users + n_items, dim)
        nn.init.normal_(self.embedding.weight, std=init_std)
        self.layers = nn.ModuleList(NGCFLayer(dim, dim, dropout) for _ in range(layers))

    def propagate(self, graph: Tensor) -> tuple[Tensor, Tensor]:
        """Concatenated per-layer user and item representations over the normalised adjacency."""
        x = self.embedding.weight
        outputs = [x]
        for layer in self.layers:
            x = layer(x, graph)
            outputs.append(x)
        out = torch.cat(outputs, dim=1)
        return out[: self.n_users], out[self.n_users :]

    def ego(self, users: Tensor, items: Tensor) -> tuple[Tensor, Tensor]:
        weight = self.embedding.weight
        return weight[users], weight[self.n_users + items]
