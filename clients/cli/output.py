"""Shared output helpers so every command prints JSON and tables the same way."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any


def print_json(payload: Any) -> None:
    """One JSON document on stdout (machine-readable ``--json`` output)."""
    json.dump(payload, sys.stdout, indent=2, sort_keys=False, default=str)
    sys.stdout.write("\n")


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """A plain aligned text table; numbers right-aligned."""
    cells = [[str(h) for h in headers]] + [[_fmt(v) for v in row] for row in rows]
    widths = [max(len(r[c]) for r in cells) for c in range(len(headers))]
    numeric = [all(isinstance(row[c], int | float) for row in rows) if rows else False for c in range(len(headers))]
    for i, row in enumerate(cells):
        parts = [v.rjust(w) if numeric[c] else v.ljust(w) for c, (v, w) in enumerate(zip(row, widths, strict=True))]
        print("  ".join(parts).rstrip())
        if i == 0:
            print("  ".join("-" * w for w in widths))


def readable_number(value: float) -> str:
    """A number as a person reads it: integral values without ``.0`` (JSON and protobuf Struct numbers arrive
    as floats, so counts come back as ``6022.0``), others to four significant digits (one decimal from 1000 up,
    where ``:g`` would switch to exponents)."""
    if value.is_integer():
        return str(int(value))
    if abs(value) >= 1000:
        return f"{value:.1f}"
    return f"{value:.4g}"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)
