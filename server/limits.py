"""What one request may ask for: bounds the work a single caller can cause.

Kept apart from the engine (no numpy/faiss import) so ``recctl serve --help``
can show the defaults without loading the serving stack.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_MAX_K = 1000
DEFAULT_MAX_EXCLUDE = 10_000


@dataclass(frozen=True)
class Limits:
    max_k: int = DEFAULT_MAX_K
    max_exclude_item_ids: int = DEFAULT_MAX_EXCLUDE

    def __post_init__(self) -> None:
        if self.max_k < 1 or self.max_exclude_item_ids < 0:
            raise ValueError("max_k must be >= 1 and max_exclude_item_ids >= 0")
