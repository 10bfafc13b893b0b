"""The gRPC recommender server; its public face for other layers is small.

``recctl`` and other processes reach the live events through
:func:`read_logged_events` (and type stores with :class:`LiveEventStore`),
never through the server's modules. Exports resolve lazily, so importing a
submodule (``movierec.server.app``) does not pay for the others.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from movierec.server.live_events import LiveEventStore, read_logged_events

__all__ = ["LiveEventStore", "read_logged_events"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module("movierec.server.live_events"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
