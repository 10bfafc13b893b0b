r"""GraphSAGE (Hamilton et al., NeurIPS 2017) on the user–movie graph, with PyG's ``SAGEConv`` (mean aggregator).

Nodes are users then movies (as in :mod:`movierec.trainer.models.graph`). Layer-0 inputs:

    x_u = E_u + W_U f_u          (a learned embedding per user, plus its demographics when known)
    x_i = W_I f_i + b_I          (a movie is its features only: genres, year; no per-movie parameters)

then ``L`` SAGE layers with ReLU between them and none after the last:

    h_v^{(l+1)} = W_r^{(l)} h_v^{(l)} + W_n^{(l)} mean_{w ∈ N(v)} h_w^{(l)} + b^{(l)}

and the score is the cosine of the final user and movie rows. Because movies carry no free embedding, a
movie with no edges yet still has a vector: with ``N(i)`` empty the mean term is zero and the layers reduce
to the dense stack ``h^{(l+1)} = W_r^{(l)} h^{(l)} + b^{(l)}`` over ``x_i`` — :meth:`GraphSAGE.item_tower`
exports exactly that as numpy arrays, so the index scores new movies without torch. Training hides the
neighbourhood of a share of the batch's movies so that feature-only path is trained too.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.nn import SAGEConv

from movierec.item_features import ItemTower


class GraphSAGE(nn.Module):
    """Feature inputs (module docstring) plus ``layers`` ``SAGEConv`` layers of width ``dim``."""

    def __init__(
        self, n_users: int, user_features: Tensor, item_features: Tensor, dim: int, layers: int, init_std: float = 0.1
    ) -> None:
        super().__init__()
        self.n_users = n_users
        self.n_items = int(item_features.shape[0])
        self.register_buffer("user_x", user_features)
        self.register_buffer("item_x", item_features)
        self.user_embedding = nn.Embedding(n_users, dim)
        nn.init.normal_(self.user_embedding.weight, std=init_std)
        self.user_proj = nn.Linear(user_features.shape[1], dim, bias=False) if user_features.shape[1] else None
        self.item_proj = nn.Linear(item_features.shape[1], dim)
        self.convs = nn.ModuleList(SAGEConv(dim, dim, aggr="mean") for _ in range(layers))

    def inputs(self, nodes: Tensor) -> Tensor:
        """Layer-0 rows ``x_v`` of the given global node ids."""
        out = torch.empty(nodes.shape[0], self.item_proj.out_features)
        is_user = nodes < self.n_users
        users = nodes[is_user]
        user_rows = self.user_embedding(users)
        if self.user_proj is not None:
            user_rows = user_rows + self.user_proj(self.get_buffer("user_x")[users])
        out[is_user] = user_rows
        out[~is_user] = self.item_proj(self.get_buffer("item_x")[nodes[~is_user] - self.n_users])
        return out

    def forward(self, nodes: Tensor, edge_index: Tensor) -> Tensor:
        """Unit-length final rows of ``nodes`` over ``edge_index`` (local ids into ``nodes``; row 1 -> row 0)."""
        h = self.inputs(nodes)
        for layer, conv in enumerate(self.convs):
            h = conv(h, edge_index)
            if layer < len(self.convs) - 1:
                h = F.relu(h)
        return F.normalize(h, dim=1)

    def item_tower(self) -> ItemTower:
        """The forward pass of a movie without neighbours, as numpy dense layers (module docstring)."""
        with torch.no_grad():
            weights: list[Tensor] = [self.item_proj.weight.detach()]
            biases: list[Tensor] = [self.item_proj.bias.detach()]
            for layer, conv in enumerate(self.convs):
                root, bias = _root_and_bias(conv)
                if layer == 0:  # no activation between the input projection and the first layer: fuse them
                    weights[0], biases[0] = root @ weights[0], root @ biases[0] + bias
                else:
                    weights.append(root)
                    biases.append(bias)
        return ItemTower(
            tuple(np.ascontiguousarray(w.numpy(), dtype=np.float32) for w in weights),
            tuple(np.ascontiguousarray(b.numpy(), dtype=np.float32) for b in biases),
            normalize=True,
        )


def _root_and_bias(conv: Any) -> tuple[Tensor, Tensor]:
    """``SAGEConv``'s root weight ``W_r`` (``lin_r``, no bias) and the neighbour term's bias ``b`` (``lin_l``)."""
    return conv.lin_r.weight.detach().clone(), conv.lin_l.bias.detach().clone()
