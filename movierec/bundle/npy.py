"""Load one ``.npy`` file of a bundle, checked against what the reader expects before any data is read.

``np.load`` trusts the file's header: a header claiming a billion rows makes it
allocate them, a short file surfaces as an ``EOFError`` and a wrong dtype loads
silently. Here the header is read first (``numpy.lib.format``), its dtype and
number of dimensions compared with the expected ones and its data size with the
file's size, so anything off is a :class:`~movierec.errors.BundleError` naming
the file, never another exception or a huge allocation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from movierec.errors import BundleError


class NpyHeader(NamedTuple):
    """What an ``.npy`` header says: shape, dtype, and where the data starts."""

    shape: tuple[int, ...]
    dtype: np.dtype[Any]
    data_offset: int


def read_npy_header(path: Path) -> NpyHeader:
    """The header of ``path``; BundleError if it is not a readable ``.npy`` header."""
    try:
        with open(path, "rb") as handle:
            version = np.lib.format.read_magic(handle)
            if version == (1, 0):
                shape, _fortran, dtype = np.lib.format.read_array_header_1_0(handle)
            elif version == (2, 0):
                shape, _fortran, dtype = np.lib.format.read_array_header_2_0(handle)
            else:
                raise BundleError(f".npy format version {version} is not supported", path=path)
            return NpyHeader(tuple(int(n) for n in shape), np.dtype(dtype), handle.tell())
    except FileNotFoundError:
        raise BundleError("missing from the bundle", path=path) from None
    except BundleError:
        raise
    except Exception as exc:
        # numpy parses the header as a Python literal: hostile bytes raise ValueError, EOFError, SyntaxError,
        # tokenize.TokenError, TypeError... (the fuzz test found the TokenError). All mean the same here.
        raise BundleError(f"not a readable .npy file ({_first_line(exc)})", path=path) from None


def check_npy(path: Path, dtype: npt.DTypeLike, ndim: int) -> NpyHeader:
    """``path``'s header, once its dtype, number of dimensions and data size are what a reader expects."""
    header = read_npy_header(path)
    expected = np.dtype(dtype)
    if header.dtype != expected:
        raise BundleError(f"holds {header.dtype.str} values, expected {expected.str}", path=path)
    if len(header.shape) != ndim:
        raise BundleError(f"has {len(header.shape)} dimension(s) {header.shape}, expected {ndim}", path=path)
    data_bytes = int(np.prod(header.shape, dtype=object)) * expected.itemsize
    size = path.stat().st_size
    if size != header.data_offset + data_bytes:
        raise BundleError(
            f"truncated or padded: shape {header.shape} needs {data_bytes} data bytes, the file holds "
            f"{size - header.data_offset}",
            path=path,
        )
    return header


def read_npy(path: Path, dtype: npt.DTypeLike, ndim: int, *, mmap: bool = False) -> npt.NDArray[Any]:
    """The array in ``path`` after :func:`check_npy`; with ``mmap``, a read-only view over the file's mapping.

    The mapped array is a plain ``ndarray`` (its base keeps the mapping open),
    not an ``np.memmap``: memmap's Python-level ``__array_finalize__`` runs on
    every slice, and the request path slices mapped arrays (ranked prefixes,
    model rows) on every call.
    """
    check_npy(path, dtype, ndim)
    try:
        array = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise BundleError(f"not a readable .npy file ({_first_line(exc)})", path=path) from None
    return np.asarray(array)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
