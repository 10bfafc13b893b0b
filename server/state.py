"""The single reference to the engine being served.

Handlers read :attr:`ServingState.engine` once per request and use that
engine to the end, so publishing a new engine (hot swap) is one attribute
assignment: atomic under the GIL, and no request ever mixes two versions.
"""

from __future__ import annotations

from movierec.server.engine import ServingEngine
from movierec.server.errors import not_ready


class ServingState:
    """Holds the live engine; ``None`` until the first index is loaded and warmed up."""

    def __init__(self) -> None:
        self._engine: ServingEngine | None = None

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
        self._engine = engine

    def __repr__(self) -> str:
        version = None if self._engine is None else self._engine.index_version
        return f"ServingState(index_version={version!r})"
