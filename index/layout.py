"""Names inside an index bundle (see the :mod:`movierec.index` docstring for the whole layout)."""

from __future__ import annotations

INDEX_KIND = "index"
FAISS_FILE = "index.faiss"
MODEL_DIR = "model"
BUILD_LOCK = ".build.lock"
