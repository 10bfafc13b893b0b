"""What the training loop needs from a graph recommender, whatever its layers."""

from __future__ import annotations

from abc import ABC, abstractmethod

from torch import Tensor, nn


class GraphRecommender(nn.Module, ABC):
    """A model whose score is the dot product of the user and item rows ``propagate`` returns."""

    n_users: int
    n_items: int

    @abstractmethod
    def propagate(self, graph: Tensor) -> tuple[Tensor, Tensor]:
        """Final user [n_users, d] and item [n_items, d] representations over ``graph``."""

    @abstractmethod
    def ego(self, users: Tensor, items: Tensor) -> tuple[Tensor, Tensor]:
        """Layer-0 embeddings of the given user and item rows (the L2-regularised parameters)."""
