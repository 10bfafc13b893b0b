"""Training objectives for dot-product graph recommenders.

* BPR (Rendle et al. 2009; the LightGCN paper's loss), per (u, i⁺, i⁻) triple:
  ``-log σ(e_u·e_i⁺ − e_u·e_i⁻)``, averaged over the batch.
* Full softmax (multinomial likelihood, Liang et al. 2018; "InfoNCE over all
  items"): for a user with training positives P_u and temperature τ,
  ``-Σ_{i∈P_u} log softmax_j(e_u·e_j / τ)_i``, averaged over the positives of the
  batch. Every item is a negative for every user at once, which is affordable
  when the catalogue is a few thousand items, and it optimises the whole
  ranking rather than one sampled pair. With per-positive weights ``w`` (recency,
  ``movierec.trainer.recency``) the average is weighted: ``Σ w·loss / Σ w``.
* L2 on the *ego* (layer-0) embeddings of the rows a batch touches, as in the
  LightGCN paper: ``λ · ½ (‖E⁰_users‖² + ‖E⁰_items‖²) / batch``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def bpr_loss(users: Tensor, positives: Tensor, negatives: Tensor) -> Tensor:
    """Mean BPR loss of matching rows of user, positive-item and negative-item embeddings."""
    margin = (users * positives).sum(dim=1) - (users * negatives).sum(dim=1)
    return F.softplus(-margin).mean()


def softmax_loss(
    users: Tensor,
    items: Tensor,
    pair_rows: Tensor,
    pair_items: Tensor,
    temperature: float,
    weights: Tensor | None = None,
) -> Tensor:
    """Full-softmax loss of a user batch against all items.

    ``users`` [B, d] and ``items`` [n_items, d] are final embeddings; the
    positives are the pairs ``(pair_rows[k], pair_items[k])`` with rows local
    to the batch. Computed as ``Σ_u |P_u| logsumexp(s_u) − Σ_{(u,i)} s_ui`` so no
    dense target matrix is built.
    """
    logits = users @ items.T / temperature
    log_normaliser = torch.logsumexp(logits, dim=1)
    positive_logits = logits[pair_rows, pair_items]
    return weighted_mean(log_normaliser[pair_rows] - positive_logits, weights)


def weighted_mean(terms: Tensor, weights: Tensor | None) -> Tensor:
    """The plain mean of per-positive loss terms, or their ``weights``-weighted mean."""
    if weights is None:
        return terms.mean()
    return (terms * weights).sum() / weights.sum()


def ego_l2(user_ego: Tensor, item_ego: Tensor, batch_size: int) -> Tensor:
    """½ (‖user_ego‖² + ‖item_ego‖²) / batch_size (multiply by the weight decay λ)."""
    return 0.5 * (user_ego.pow(2).sum() + item_ego.pow(2).sum()) / batch_size
