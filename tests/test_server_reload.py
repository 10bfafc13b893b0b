"""IndexReloader and ServingState without gRPC: swaps, refusals, and what the metrics count."""

from __future__ import annotations

import asyncio
from pathlib import Path

from server_harness import make_index

from movierec.index import ServingIndex, build_index
from movierec.server.app import load_index
from movierec.server.engine import ServingEngine
from movierec.server.limits import Limits
from movierec.server.metrics import ServerMetrics
from movierec.server.reload import IndexReloader
from movierec.server.state import ServingState


def _engine(index: ServingIndex) -> ServingEngine:
    return ServingEngine(index, Limits())


def _metric(metrics: ServerMetrics, name: str) -> float:
    for line in metrics.exposition().decode().splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not exported")


def test_swaps_and_refusals_are_recorded_once_each(tmp_path: Path) -> None:
    store = make_index(tmp_path, n_users=5, n_items=20, dim=4, seen_per_user=2)
    metrics = ServerMetrics()
    state = ServingState(metrics)
    reloader = IndexReloader(store, state, load_index, _engine)

    async def scenario() -> None:
        assert (await reloader.reload()).swapped  # the first load is a publish, not a swap
        assert state.swap_count == 0 and not (await reloader.reload()).swapped
        build_index(tmp_path / "model", store)
        assert (await reloader.reload()).swapped and state.swap_count == 1
        (store / "CURRENT").write_text("v0009\n")  # points nowhere
        for _ in range(3):  # polled again and again: one refusal, not three
            outcome = await reloader.reload()
            assert not outcome.swapped and "v0009" in outcome.error
        (store / "CURRENT").write_text("v0001\n")  # an operator rolls back
        assert (await reloader.reload()).swapped

    asyncio.run(scenario())
    engine = state.engine
    assert engine is not None and engine.index_version == "v0001"
    assert (state.swap_count, state.last_reload_error) == (2, "")
    assert _metric(metrics, 'movierec_index_swaps_total{outcome="ok"}') == 2
    assert _metric(metrics, 'movierec_index_swaps_total{outcome="refused"}') == 1
    assert 'index_version="v0001"' in metrics.exposition().decode()
