"""Node features for feature-aware models (GraphSAGE): movies from their metadata, users from ``users.dat``.

Movies: :class:`movierec.item_features.ItemEncoder` (multi-hot genres, normalised year, unknown-year flag),
the encoder the bundle stores so new movies are encoded the same way at ``index add-items`` time.
Users: one-hot gender, age group and occupation when the dataset folder has a demographics file
(:mod:`movierec.trainer.data.users`); a user missing from it gets all zeros, and a dataset without one
gives users no features (the model then relies on their learned embeddings alone).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from movierec.bundle.model import ItemMetadata
from movierec.item_features import ItemEncoder
from movierec.trainer.data.types import Dataset
from movierec.trainer.data.users import USER_FIELDS, Users, find_users_file, read_users


@dataclass(frozen=True)
class NodeFeatures:
    users: npt.NDArray[np.float32]  # [n_users, user width] (width 0: no demographics)
    items: npt.NDArray[np.float32]  # [n_items, encoder width]
    encoder: ItemEncoder
    user_columns: tuple[str, ...]  # "field=value" per user column, for the record


def item_encoder_for(items: ItemMetadata) -> ItemEncoder:
    return ItemEncoder.fit(items.genres, items.years)


def user_features(users: Users | None, user_ids: npt.NDArray[np.int64]) -> tuple[npt.NDArray[np.float32], list[str]]:
    """One-hot demographics aligned with ``user_ids`` (rows of users absent from the file stay zero)."""
    if users is None:
        return np.zeros((user_ids.shape[0], 0), dtype=np.float32), []
    columns = [f"{name}={value}" for name in USER_FIELDS for value in sorted(set(users.attributes[name]))]
    column_of = {label: j for j, label in enumerate(columns)}
    row_of = {int(user_id): row for row, user_id in enumerate(user_ids.tolist())}
    out = np.zeros((user_ids.shape[0], len(columns)), dtype=np.float32)
    for position, user_id in enumerate(users.user_ids.tolist()):
        row = row_of.get(int(user_id))
        if row is not None:
            for name in USER_FIELDS:
                out[row, column_of[f"{name}={users.attributes[name][position]}"]] = 1.0
    return out, columns


def node_features(dataset: Dataset, items: ItemMetadata, user_ids: npt.NDArray[np.int64]) -> NodeFeatures:
    folder = dataset.path if dataset.path.is_dir() else dataset.path.parent
    users_file = find_users_file(folder)
    users, columns = user_features(read_users(users_file) if users_file else None, user_ids)
    encoder = item_encoder_for(items)
    return NodeFeatures(users, encoder.encode(items.genres, items.years), encoder, tuple(columns))
