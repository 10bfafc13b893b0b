"""User demographics: ML-1M's ``users.dat`` and ML-100K's ``u.user``, for models that take node features.

``users.dat``: ``UserID::Gender::Age::Occupation::Zip-code`` (age and occupation are codes);
``u.user``: ``user id|age|gender|occupation|zip code``. Gender, age and occupation are kept as text
categories (the feature encoder one-hot encodes them); the zip code is not used. Every broken line is a
one-line :class:`DataError` naming the file and the line.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from movierec.errors import DataError
from movierec.trainer.data.metadata import whole_number
from movierec.trainer.data.table import shown_value

USER_FILES = ("users.dat", "u.user")
USER_FIELDS = ("gender", "age", "occupation")


@dataclass(frozen=True)
class Users:
    """One row per user: dataset id and its categorical attributes (text), in file order."""

    user_ids: npt.NDArray[np.int64]
    attributes: dict[str, list[str]]  # USER_FIELDS -> one value per user

    def __len__(self) -> int:
        return int(self.user_ids.shape[0])


def find_users_file(folder: Path) -> Path | None:
    """The demographics file of a MovieLens folder, if it has one."""
    for name in USER_FILES:
        if (folder / name).is_file():
            return folder / name
    return None


def read_users(path: Path) -> Users:
    """Parse ``users.dat`` (``::``) or ``u.user`` (``|``), chosen by the file name."""
    dat = path.name.endswith(".dat")
    separator, order = ("::", (1, 2, 3)) if dat else ("|", (2, 1, 3))
    try:
        text = path.read_bytes().decode("latin-1")
    except OSError as exc:
        raise DataError(f"cannot read: {exc.strerror}", path=path) from None
    ids: list[int] = []
    columns: dict[str, list[str]] = {name: [] for name in USER_FIELDS}
    line_of: dict[int, int] = {}
    for number, line in enumerate(text.split("\n"), start=1):
        line = line.removesuffix("\r")
        if not line.strip():
            continue
        fields = line.split(separator)
        if len(fields) != 5:
            raise DataError(
                f"expected 5 '{separator}'-separated fields (id, gender, age, occupation, zip), found {len(fields)}",
                path=path,
                line=number,
            )
        user_id = whole_number(fields[0])
        if user_id is None or not 0 <= user_id <= np.iinfo(np.int64).max:
            raise DataError(f"user id is not a whole number: {shown_value(fields[0])}", path=path, line=number)
        if user_id in line_of:
            raise DataError(f"user id {user_id} already given on line {line_of[user_id]}", path=path, line=number)
        line_of[user_id] = number
        ids.append(user_id)
        for name, position in zip(USER_FIELDS, order, strict=True):
            value = fields[position].strip()
            if not value:
                raise DataError(f"empty {name}", path=path, line=number)
            columns[name].append(value)
    if not ids:
        raise DataError("users file has no rows", path=path)
    return Users(np.asarray(ids, dtype=np.int64), columns)
