"""Names inside an index bundle (see the :mod:`movierec.index` docstring for the whole layout)."""

from __future__ import annotations

INDEX_KIND = "index"
FAISS_FILE = "index.faiss"
MODEL_DIR = "model"
BUILD_LOCK = ".build.lock"
# Each user's ranking prefix (movierec.index.ranked): item rows, their scores (users x depth), lengths (users).
RANKED_ROWS_FILE = "ranked_rows.npy"
RANKED_SCORES_FILE = "ranked_scores.npy"
RANKED_LENGTHS_FILE = "ranked_lengths.npy"
