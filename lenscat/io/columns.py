"""Typed access to table columns: floats with missing values, and sky angles in degrees."""

from __future__ import annotations

import numpy as np

from lenscat.errors import InputFileError
from lenscat.io.readers import ColumnTable
from lenscat.sky.coords import parse_sexagesimal


def float_column(
    table: ColumnTable, name: str, rows: np.ndarray | None = None, col_index: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Column as float64 with NaN for missing; plus a mask of unparseable entries."""
    arr = table.columns[name]
    if col_index is not None:
        arr = arr[:, col_index]
    mask = np.ma.getmaskarray(arr)
    data = np.ma.getdata(arr)
    bad = np.zeros(len(data), dtype=bool)
    if data.dtype.kind in "fiub":
        out = data.astype(np.float64)
    else:
        out = np.full(len(data), np.nan)
        for i, v in enumerate(data):
            if mask[i]:
                continue
            s = str(v).strip()
            if s == "" or s.lower() in ("nan", "null", "none", "--", "-"):
                continue
            try:
                out[i] = float(s)
            except ValueError:
                bad[i] = True
    out[mask] = np.nan
    return out, bad


def angle_column(table: ColumnTable, name: str, hours: bool) -> tuple[np.ndarray, np.ndarray]:
    """Coordinate column in degrees; strings may be sexagesimal. Returns (deg, unparseable)."""
    arr = table.columns[name]
    data = np.ma.getdata(arr)
    mask = np.ma.getmaskarray(arr)
    if data.dtype.kind in "fiu":
        out = data.astype(np.float64)
        unit = table.units.get(name, "deg").strip().lower()
        if unit in ("rad", "radian", "radians"):
            out = np.degrees(out)
        elif unit in ("h", "hourangle", "hour", "hr"):
            out = out * 15.0
        elif unit not in ("deg", "degree", "degrees", "", "none"):
            raise InputFileError(f"{table.path}: column {name!r} has unit {unit!r}; expected degrees")
        out[mask] = np.nan
        return out, np.zeros(len(out), dtype=bool)
    strings = np.array(["" if m else str(v) for v, m in zip(data, mask, strict=True)])
    out, ok = parse_sexagesimal(strings, hours=hours)
    stripped = np.char.lower(np.char.strip(strings.astype(str)))
    empty = (np.char.str_len(stripped) == 0) | np.isin(stripped, ["nan", "null", "none", "--", "n/a"])
    return out, ~ok & ~empty
