"""The user–item bipartite graph LightGCN and NGCF propagate over.

Nodes are numbered users first (``0 .. n_users-1``), then items
(``n_users .. n_users+n_items-1``); every training positive (u, i) gives the
two directed edges u→i and i→u, so the adjacency ``A`` is symmetric.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

from movierec.bundle.csr import CSR


def bipartite_edge_index(positives: CSR) -> torch.Tensor:
    """``[2, 2·nnz]`` edge index (both directions) of the user–item graph, as PyG expects."""
    users, items = positives.to_pairs()
    user_nodes = torch.from_numpy(users)
    item_nodes = torch.from_numpy(items.astype(np.int64)) + positives.n_rows
    return torch.stack([torch.cat([user_nodes, item_nodes]), torch.cat([item_nodes, user_nodes])])


def normalized_adjacency(positives: CSR) -> torch.Tensor:
    """``D^{-1/2} A D^{-1/2}`` as a torch sparse CSR matrix, built once per training run.

    This is the same normalisation PyG's ``gcn_norm`` (without self loops)
    recomputes on every LightGCN forward pass from an edge index; computing it
    once and multiplying with a CSR matrix removes that per-batch scatter work.
    Isolated nodes (users or items without training positives) get degree 1 to
    avoid dividing by zero; their rows are empty anyway.
    """
    n_nodes = positives.n_rows + positives.n_cols
    edges = bipartite_edge_index(positives)
    degree = torch.bincount(edges[0], minlength=n_nodes).to(torch.float32)
    inv_sqrt = degree.clamp(min=1.0).pow(-0.5)
    weights = inv_sqrt[edges[0]] * inv_sqrt[edges[1]]
    coo = torch.sparse_coo_tensor(edges, weights, (n_nodes, n_nodes), check_invariants=True).coalesce()
    with warnings.catch_warnings():  # "sparse CSR support is in beta": the product we use is stable
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return coo.to_sparse_csr()
