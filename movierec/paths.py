"""Where data lives by default.

Tests, benchmarks and the CLI read MovieLens-1M from ``$MOVIEREC_DATA`` when
set, else from ``../shared/data/ml-1m`` next to the checkout when it exists:
the dataset is never committed (GroupLens licence).
"""

from __future__ import annotations

import os
from pathlib import Path

DATA_ENV = "MOVIEREC_DATA"
_REPO_ROOT = Path(__file__).resolve().parent.parent
_SHARED_ML1M = _REPO_ROOT.parent / "shared" / "data" / "ml-1m"


def default_ml1m_dir() -> Path | None:
    """The configured MovieLens-1M folder, or None when neither the variable nor the shared copy exists."""
    configured = os.environ.get(DATA_ENV)
    if configured:
        return Path(configured)
    if (_SHARED_ML1M / "ratings.dat").is_file():
        return _SHARED_ML1M
    return None
