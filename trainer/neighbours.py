"""Uniform neighbourhood sampling over the user–movie graph, in torch (GraphSAGE's mini-batches).

PyG's ``NeighborLoader`` / ``LinkNeighborLoader`` need ``pyg-lib`` or ``torch-sparse`` for their sampler, and
neither has a build for the pinned torch 2.13 (``pip download --no-deps pyg-lib``: no matching distribution),
so this is the same scheme written directly: from the seed nodes, hop by hop, each frontier node keeps all its
neighbours when it has at most ``fanout`` of them, else ``fanout`` drawn uniformly with replacement (as in the
GraphSAGE paper); nodes first reached at a hop form the next frontier. The result is PyG's layout: global ids
``n_id`` with the seeds first, and an ``edge_index`` of local ids, messages flowing neighbour -> node.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from movierec.bundle.csr import CSR
from movierec.trainer.models.graph import bipartite_edge_index


class NeighbourSampler:
    """Samples the ``len(fanouts)``-hop neighbourhood of seed nodes (users ``0..U-1``, movies ``U..``)."""

    def __init__(self, positives: CSR, fanouts: Sequence[int]) -> None:
        if not fanouts or min(fanouts) < 1:
            raise ValueError(f"fanouts must be positive, got {list(fanouts)}")
        self.fanouts = tuple(fanouts)
        self.n_nodes = positives.n_rows + positives.n_cols
        edges = bipartite_edge_index(positives)
        order = torch.argsort(edges[0], stable=True)
        self.neighbours = edges[1][order]
        counts = torch.bincount(edges[0], minlength=self.n_nodes)
        self.rowptr = torch.cat([torch.zeros(1, dtype=torch.int64), counts.cumsum(0)])

    def sample(self, seeds: Tensor, generator: torch.Generator, hidden: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``(n_id, edge_index)`` for distinct ``seeds``; nodes in ``hidden`` (a bool mask) get no neighbours."""
        position = torch.full((self.n_nodes,), -1, dtype=torch.int64)
        position[seeds] = torch.arange(seeds.shape[0])
        n_id, sources, targets = [seeds], [], []
        frontier, count = seeds, seeds.shape[0]
        for fanout in self.fanouts:
            starts = self.rowptr[frontier]
            degree = self.rowptr[frontier + 1] - starts
            if hidden is not None:
                degree = torch.where(hidden[frontier], 0, degree)
            slots, owners = self._draw(starts, degree, fanout, generator)
            found = self.neighbours[slots]
            fresh = torch.unique(found[position[found] < 0])
            position[fresh] = torch.arange(count, count + fresh.shape[0])
            count += fresh.shape[0]
            n_id.append(fresh)
            sources.append(position[found])
            targets.append(position[frontier[owners]])
            frontier = fresh
        return torch.cat(n_id), torch.stack([torch.cat(sources), torch.cat(targets)])

    @staticmethod
    def _draw(starts: Tensor, degree: Tensor, fanout: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """Neighbour slots (indices into ``neighbours``) and, for each, which frontier entry it belongs to."""
        small = degree <= fanout
        whole = torch.repeat_interleave(torch.nonzero(small).flatten(), degree[small])
        offsets = torch.arange(whole.shape[0]) - torch.repeat_interleave(
            torch.cumsum(degree[small], 0) - degree[small], degree[small]
        )
        big = torch.nonzero(~small).flatten()
        draws = torch.rand(big.shape[0], fanout, generator=generator)
        picked = (draws * degree[big].unsqueeze(1)).long().clamp_max(degree[big].unsqueeze(1) - 1)
        slots = torch.cat([starts[whole] + offsets, (starts[big].unsqueeze(1) + picked).reshape(-1)])
        owners = torch.cat([whole, big.repeat_interleave(fanout)])
        return slots, owners
