"""MovieLens data layer: loaders for every release, statistics, and the evaluation split.

Depends on numpy and pandas only (never torch), so ``recctl data`` stays light.
"""

from movierec.trainer.data.loaders import FORMATS, detect_format, load_dataset
from movierec.trainer.data.split import METHODS, Split, make_split
from movierec.trainer.data.stats import dataset_stats, item_metadata
from movierec.trainer.data.types import Dataset, Movies, Ratings

__all__ = [
    "FORMATS",
    "METHODS",
    "Dataset",
    "Movies",
    "Ratings",
    "Split",
    "dataset_stats",
    "detect_format",
    "item_metadata",
    "load_dataset",
    "make_split",
]
