"""The single reference to the engine being served, and what happened to the last reload.

Handlers read :attr:`ServingState.engine` once per request and use that
engine to the end, so publishing a new engine (hot swap) is one attribute
assignment: atomic under the GIL, and no request ever mixes two versions.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from movierec.server.engine import ServingEngine
from movierec.server.errors import not_ready

if TYPE_CHECKING:
    from movierec.server.metrics import ServerMetrics


class ServingState:
    """Holds the live engine (``None`` until the first index is loaded and warmed up) and the swap record.

    ``metrics`` (optional) hears of every published version and every swap or refusal.
    """

    def __init__(self, metrics: ServerMetrics | None = None) -> None:
        self._engine: ServingEngine | None = None
        self._metrics = metrics
        self.swap_count = 0
        self.last_reload_error = ""
        self.last_refused_version = ""

    @property
    def engine(self) -> ServingEngine | None:
        return self._engine

    def require_engine(self) -> ServingEngine:
        """The live engine, or UNAVAILABLE while none is loaded yet."""
        engine = self._engine
        if engine is None:
            raise not_ready()
        return engine

    def publish(self, engine: ServingEngine) -> None:
        """Serve ``engine`` from the next request on; every publish after the first counts as a swap."""
        first = self._engine is None
        self._engine = engine
        self.last_reload_error = ""
        self.last_refused_version = ""
        if not first:
            self.swap_count += 1
        if self._metrics is not None:
            self._metrics.index_loaded(engine.index_version, engine.model_version)
            if not first:
                self._metrics.swap("ok")

    def refuse(self, version: str, reason: str) -> None:
        """Record that ``version`` could not be served (the current engine stays)."""
        self.last_reload_error = reason
        self.last_refused_version = version
        if self._metrics is not None:
            self._metrics.swap("refused")

    def __repr__(self) -> str:
        version = None if self._engine is None else self._engine.index_version
        return f"ServingState(index_version={version!r}, swaps={self.swap_count})"
