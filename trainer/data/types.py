"""The in-memory shape of a loaded dataset, whatever file format it came from.

Every loader returns these types, so the split, the statistics and the trainer
never need to know whether the ratings came from ``ratings.dat``, ``u.data`` or
a CSV file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt


@dataclass(frozen=True)
class Ratings:
    """One entry per rating, in file order (dataset ids, not internal rows)."""

    users: npt.NDArray[np.int64]
    items: npt.NDArray[np.int64]
    ratings: npt.NDArray[np.float32]
    timestamps: npt.NDArray[np.int64]

    def __len__(self) -> int:
        return int(self.users.shape[0])


@dataclass(frozen=True)
class Movies:
    """Movie metadata rows; may include movies nobody rated. Unknown year is None."""

    item_ids: npt.NDArray[np.int64]
    titles: list[str]
    years: list[int | None]
    genres: list[list[str]]

    def __len__(self) -> int:
        return int(self.item_ids.shape[0])


@dataclass(frozen=True)
class Dataset:
    """A loaded ratings file plus optional movie metadata.

    ``checksum`` is the SHA-256 of the ratings file: it goes into the bundle
    manifest so a model can always be traced back to the exact data it saw.
    ``has_timestamps`` is False for a generic table without a time column (its
    timestamps are then all zero and a temporal split is refused).
    """

    name: str
    format: str
    path: Path
    ratings: Ratings
    movies: Movies | None
    checksum: str
    ratings_file: Path | None = None
    has_timestamps: bool = True
