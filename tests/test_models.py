"""Graph, LightGCN/NGCF propagation, losses and negative sampling, checked against dense formulas."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from movierec.bundle.csr import CSR
from movierec.trainer.losses import bpr_loss, ego_l2, softmax_loss
from movierec.trainer.models.graph import bipartite_edge_index, normalized_adjacency
from movierec.trainer.models.lightgcn import LightGCN, StockLightGCN
from movierec.trainer.models.ngcf import NGCF
from movierec.trainer.sampling import NegativeSampler, row_entries

# users 0..2, items 0..3: user 0 likes {0, 1}, user 1 likes {1}, user 2 likes {2, 3}
POSITIVES = CSR.from_pairs([0, 0, 1, 2, 2], [0, 1, 1, 2, 3], n_rows=3, n_cols=4)


def dense_normalized_adjacency(positives: CSR) -> torch.Tensor:
    n_users, n_items = positives.n_rows, positives.n_cols
    adjacency = torch.zeros(n_users + n_items, n_users + n_items)
    for user, item in zip(*positives.to_pairs(), strict=True):
        adjacency[user, n_users + item] = adjacency[n_users + item, user] = 1.0
    degree = adjacency.sum(dim=1).clamp(min=1.0)
    return adjacency / torch.sqrt(degree[:, None] * degree[None, :])


def test_normalized_adjacency_is_symmetric_gcn_normalisation() -> None:
    adjacency = normalized_adjacency(POSITIVES).to_dense()
    assert torch.allclose(adjacency, dense_normalized_adjacency(POSITIVES))
    # user 0 (degree 2) -- item 1 (node 4, degree 2): 1 / sqrt(2 * 2)
    assert adjacency[0, 4].item() == pytest.approx(0.5)
    assert bipartite_edge_index(POSITIVES).shape == (2, 2 * POSITIVES.nnz)


def test_lightgcn_propagation_matches_the_dense_formula_and_its_gradient() -> None:
    torch.manual_seed(0)
    model = LightGCN(3, 4, dim=5, layers=2, alpha=[0.5, 0.3, 0.2])
    graph = normalized_adjacency(POSITIVES)
    users, items = model.propagate(graph)
    dense = dense_normalized_adjacency(POSITIVES)
    ego = model.embedding.weight
    expected = 0.5 * ego + 0.3 * (dense @ ego) + 0.2 * (dense @ dense @ ego)
    assert torch.allclose(torch.cat([users, items]), expected, atol=1e-6)
    weights = torch.randn(7, 5)
    (grad,) = torch.autograd.grad((torch.cat([users, items]) * weights).sum(), ego)
    (expected_grad,) = torch.autograd.grad((expected * weights).sum(), ego)
    assert torch.allclose(grad, expected_grad, atol=1e-6)


def test_stock_pyg_lightgcn_computes_the_same_embeddings() -> None:
    ours = LightGCN(3, 4, dim=6, layers=3)
    stock = StockLightGCN(3, 4, dim=6, layers=3)
    with torch.no_grad():
        stock.model.embedding.weight.copy_(ours.embedding.weight)
    ours_users, ours_items = ours.propagate(normalized_adjacency(POSITIVES))
    stock_users, stock_items = stock.propagate(bipartite_edge_index(POSITIVES))
    assert torch.allclose(ours_users, stock_users, atol=1e-6)
    assert torch.allclose(ours_items, stock_items, atol=1e-6)


def test_layer_weights_are_validated() -> None:
    with pytest.raises(ValueError, match="3 non-negative layer weights"):
        LightGCN(3, 4, dim=2, layers=2, alpha=[1.0, 1.0])


def test_ngcf_concatenates_every_layer() -> None:
    model = NGCF(3, 4, dim=8, layers=3)
    users, items = model.propagate(normalized_adjacency(POSITIVES))
    assert users.shape == (3, 32) and items.shape == (4, 32)
    assert torch.equal(users[:, :8], model.embedding.weight[:3])
    # each propagated layer is L2-normalised per row
    assert torch.allclose(items[:, 8:16].norm(dim=1), torch.ones(4), atol=1e-5)


def test_softmax_loss_is_the_mean_negative_log_softmax_of_the_positives() -> None:
    users = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    items = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    rows, cols = torch.tensor([0, 0, 1]), torch.tensor([0, 2, 1])
    # logits / 0.5: user 0 -> [2, 0, 2], user 1 -> [0, 4, 4]
    expected = (
        -(
            F.log_softmax(torch.tensor([2.0, 0.0, 2.0]), 0)[0]
            + F.log_softmax(torch.tensor([2.0, 0.0, 2.0]), 0)[2]
            + F.log_softmax(torch.tensor([0.0, 4.0, 4.0]), 0)[1]
        )
        / 3
    )
    assert softmax_loss(users, items, rows, cols, temperature=0.5).item() == pytest.approx(expected.item())


def test_bpr_and_l2_match_their_formulas() -> None:
    users = torch.tensor([[1.0, 2.0]])
    positives = torch.tensor([[1.0, 1.0]])
    negatives = torch.tensor([[0.0, 1.0]])
    # margin 3 - 2 = 1
    assert bpr_loss(users, positives, negatives).item() == pytest.approx(np.log1p(np.exp(-1.0)))
    assert ego_l2(users, torch.cat([positives, negatives]), batch_size=2).item() == pytest.approx(0.5 * (5 + 3) / 2)


def test_negatives_are_items_and_never_positives() -> None:
    rng = np.random.default_rng(0)
    n_users, n_items = 50, 30
    rows = rng.integers(0, n_users, 600)
    cols = rng.integers(0, n_items, 600)
    # user 0 likes every item but 29: its only valid negative is 29
    rows = np.concatenate([rows, np.zeros(n_items - 1, dtype=np.int64)])
    cols = np.concatenate([cols, np.arange(n_items - 1)])
    cols[(rows == 0) & (cols == n_items - 1)] = 0
    positives = CSR.from_pairs(rows, cols, n_users, n_items)
    sampler = NegativeSampler(positives)
    users = np.repeat(np.arange(n_users, dtype=np.int64), 200)
    negatives = sampler.sample(users, rng)
    assert negatives.min() >= 0 and negatives.max() < n_items
    liked = {(int(u), int(i)) for u, i in zip(*positives.to_pairs(), strict=True)}
    assert not any((int(u), int(i)) in liked for u, i in zip(users, negatives, strict=True))
    assert set(negatives[users == 0].tolist()) == {n_items - 1}


def test_is_positive_agrees_with_the_csr() -> None:
    sampler = NegativeSampler(POSITIVES)
    users = np.array([0, 0, 0, 1, 2, 2], dtype=np.int64)
    items = np.array([0, 2, 3, 1, 1, 3], dtype=np.int64)
    assert sampler.is_positive(users, items).tolist() == [True, False, False, True, False, True]


def test_a_user_with_every_item_positive_is_refused() -> None:
    full = CSR.from_pairs([0, 0], [0, 1], n_rows=1, n_cols=2)
    with pytest.raises(ValueError, match="no negative exists"):
        NegativeSampler(full).sample(np.array([0]), np.random.default_rng(0))


def test_row_entries_lists_the_entries_of_the_chosen_rows() -> None:
    local, entries = row_entries(POSITIVES, np.array([2, 0], dtype=np.int64))
    assert local.tolist() == [0, 0, 1, 1]
    assert POSITIVES.indices[entries].tolist() == [2, 3, 0, 1]
    assert entries.tolist() == [POSITIVES.indptr[2], POSITIVES.indptr[2] + 1, 0, 1]
