"""Talking to the recommender: :class:`RecommenderClient` and its result and error types.

Exports resolve lazily so that importing ``movierec.clients.cli`` (every
``recctl`` command) does not load gRPC until a command actually needs it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from movierec.clients.client import (
        DeadlineExceededError,
        InvalidArgumentError,
        ItemFilter,
        NotFoundError,
        Recommendations,
        RecommendedItem,
        RecommenderClient,
        RecommenderError,
        Recorded,
        ReloadResult,
        ServerInfo,
        ServerUnavailableError,
        StreamQuery,
        UnauthenticatedError,
    )

__all__ = [
    "DeadlineExceededError",
    "InvalidArgumentError",
    "ItemFilter",
    "NotFoundError",
    "Recommendations",
    "RecommendedItem",
    "RecommenderClient",
    "RecommenderError",
    "Recorded",
    "ReloadResult",
    "ServerInfo",
    "ServerUnavailableError",
    "StreamQuery",
    "UnauthenticatedError",
]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module("movierec.clients.client"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
