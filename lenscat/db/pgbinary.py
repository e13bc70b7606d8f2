"""PostgreSQL's binary COPY format, encoded column by column with numpy.

A text or CSV ``COPY`` of a survey batch spends most of its time formatting floats in Python and
parsing them again in the server. The binary format carries each value as its big-endian bytes;
:func:`encode_copy_binary` builds a whole batch with a few vectorised numpy operations per column
(no per-value Python work except encoding text to UTF-8), for ``COPY ... FROM STDIN (FORMAT binary)``.

Each column is a :class:`Column`: its PostgreSQL type (``int2``, ``int4``, ``int8``, ``float4``,
``float8``, ``text``, ``jsonb``, or the one-dimensional arrays ``float4[]`` / ``float8[]`` given as
an (n, m) array), its values and which of them are NULL. Floats that are not finite are NULL, as
the CSV path wrote them; an array whose elements are all NULL is itself NULL.

The alternative is psycopg's own binary COPY, ``copy.set_types([...])`` and one ``copy.write_row``
per row (pgvector-python plugs its ``vector`` / ``halfvec`` types into the same per-row path): one
Python call per row, which bench/vectors.py measured 2.1-2.2x slower for the whole COPY of 10^5
(bigint, halfvec) rows (docs/benchmarks.md). pgvector types are not encoded here: embeddings go
through :mod:`lenscat.embeddings.vectors`, whose rows are checked against pgvector's encoding.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

SIGNATURE = b"PGCOPY\n\xff\r\n\x00" + b"\x00\x00\x00\x00" + b"\x00\x00\x00\x00"
"""File header: signature, flags (no OIDs), header-extension length 0."""

TRAILER = b"\xff\xff"
"""Field count -1: end of data."""

FIXED: dict[str, str] = {"int2": ">i2", "int4": ">i4", "int8": ">i8", "float4": ">f4", "float8": ">f8"}
"""Fixed-width PostgreSQL types and the big-endian numpy dtype of their binary form."""

ARRAY_ELEMENT_OID = {"float4": 700, "float8": 701}
"""pg_type OIDs of the array element types (fixed since PostgreSQL 7)."""


FLOAT4_MAX = float(np.finfo(np.float32).max)


def _check_float4_range(values: np.ndarray) -> None:
    """PostgreSQL refuses a real beyond float32's range; so does the encoder (no silent inf)."""
    if values.size and float(np.max(np.abs(values))) > FLOAT4_MAX:
        bad = values[np.abs(values) > FLOAT4_MAX][0]
        raise ValueError(f"value {bad!r} is out of range for type real (float4)")


@dataclass(frozen=True)
class Column:
    """One column of a binary COPY: PostgreSQL type name, values (length n) and NULL mask."""

    pgtype: str
    values: Any
    null: np.ndarray | None = None

    def encoded(self) -> tuple[np.ndarray, np.ndarray]:
        """(field lengths, payload bytes): length -1 for NULL, payloads back to back."""
        if self.pgtype in FIXED:
            dtype = np.dtype(FIXED[self.pgtype])
            values = np.asarray(self.values)
            null = np.zeros(len(values), bool) if self.null is None else np.asarray(self.null, bool)
            if dtype.kind == "f":
                null = null | ~np.isfinite(values)
            elif values.dtype.kind == "f":
                raise TypeError(f"{self.pgtype} column given floats")
            keep = ~null
            if dtype.kind == "f" and dtype.itemsize == 4:
                _check_float4_range(values[keep])
            payload = values[keep].astype(dtype).view(np.uint8)
            lengths = np.where(keep, dtype.itemsize, -1).astype(np.int64)
            return lengths, payload
        if self.pgtype.endswith("[]") and self.pgtype[:-2] in ARRAY_ELEMENT_OID:
            return self._encoded_array(self.pgtype[:-2])
        if self.pgtype == "jsonb":  # version 1 of the jsonb binary format: a byte 1, then the text
            lengths, payload = Column("text", self.values, self.null).encoded()
            starts = np.cumsum(np.maximum(lengths, 0)) - np.maximum(lengths, 0)
            payload = np.insert(payload, starts[lengths >= 0], 1)
            return np.where(lengths >= 0, lengths + 1, -1), payload
        if self.pgtype != "text":
            raise ValueError(f"no binary encoder for PostgreSQL type {self.pgtype!r}")
        items = list(self.values)
        null = np.array([v is None for v in items], bool) if self.null is None else np.asarray(self.null, bool)
        blobs = [b"" if isnull else str(v).encode("utf-8") for v, isnull in zip(items, null, strict=True)]
        lengths = np.fromiter((len(b) for b in blobs), np.int64, len(blobs))
        lengths[null] = -1
        return lengths, np.frombuffer(b"".join(blobs), np.uint8)

    def _encoded_array(self, element: str) -> tuple[np.ndarray, np.ndarray]:
        """One-dimensional arrays: ndim, has-NULL flag, element OID, size, lower bound 1, then
        each element as (length, bytes) with length -1 for a NULL element."""
        dtype = np.dtype(FIXED[element])
        values = np.asarray(self.values, dtype=np.float64)
        if values.ndim != 2:
            raise ValueError(f"{self.pgtype} column needs an (n, m) array, not shape {values.shape}")
        n, m = values.shape
        isnull = ~np.isfinite(values)
        null = isnull.all(axis=1) if m else np.ones(n, bool)
        if self.null is not None:
            null |= np.asarray(self.null, bool)
        w = dtype.itemsize
        if w == 4:
            _check_float4_range(values[~isnull])
        grid = np.empty((n, 20 + m * (4 + w)), np.uint8)
        head = np.empty((n, 5), ">i4")
        head[:, 0], head[:, 1], head[:, 2], head[:, 3], head[:, 4] = (
            1,
            isnull.any(axis=1),
            ARRAY_ELEMENT_OID[element],
            m,
            1,
        )
        grid[:, :20] = head.view(np.uint8).reshape(n, 20)
        cells = grid[:, 20:].reshape(n, m, 4 + w)
        cells[:, :, :4] = np.where(isnull, -1, w).astype(">i4").view(np.uint8).reshape(n, m, 4)
        cells[:, :, 4:] = np.where(isnull, 0.0, values).astype(dtype).view(np.uint8).reshape(n, m, w)
        keep = np.ones((n, m, 4 + w), bool)
        keep[:, :, 4:] = ~isnull[:, :, None]
        keep = np.concatenate([np.ones((n, 20), bool), keep.reshape(n, -1)], axis=1)
        keep[null] = False
        lengths = keep.sum(axis=1).astype(np.int64)
        lengths[null] = -1
        return lengths, grid[keep]


def encode_copy_binary(columns: list[Column]) -> bytes:
    """The rows formed by ``columns`` (equal lengths) as one binary COPY stream.

    Row layout: int16 field count, then per field an int32 length (-1: NULL) and the payload.
    """
    if not columns:
        raise ValueError("no columns")
    fixed = _fixed_width_stream(columns)
    if fixed is not None:
        return fixed
    encoded = [c.encoded() for c in columns]
    n = len(encoded[0][0])
    if any(len(lengths) != n for lengths, _ in encoded):
        raise ValueError("columns of different lengths")
    # bytes each field takes in each row: 4 (its length word) + payload
    sizes = np.stack([4 + np.maximum(lengths, 0) for lengths, _ in encoded], axis=1)
    row_size = 2 + sizes.sum(axis=1)
    row_start = len(SIGNATURE) + np.cumsum(row_size) - row_size
    total = len(SIGNATURE) + int(row_size.sum()) + len(TRAILER)
    out = np.empty(total, np.uint8)
    out[: len(SIGNATURE)] = np.frombuffer(SIGNATURE, np.uint8)
    out[total - len(TRAILER) :] = np.frombuffer(TRAILER, np.uint8)
    count = np.frombuffer(np.array([len(columns)], ">i2").tobytes(), np.uint8)
    out[row_start[:, None] + np.arange(2)] = count
    field_start = row_start + 2
    for j, (lengths, payload) in enumerate(encoded):
        word = lengths.astype(">i4").view(np.uint8).reshape(n, 4)
        out[field_start[:, None] + np.arange(4)] = word
        keep = lengths > 0
        if keep.any():
            lens = lengths[keep]
            first = np.r_[0, np.cumsum(lens)[:-1]]
            pos = np.repeat(field_start[keep] + 4 - first, lens) + np.arange(int(lens.sum()))
            out[pos] = payload
        field_start = field_start + sizes[:, j]
    return out.tobytes()


FIXED_WIDTH_FAST = ("int2", "int4", "int8", "float8")
"""Types whose rows :func:`_fixed_width_stream` writes as one record array (float4 needs its range check)."""


def _fixed_width_stream(columns: list[Column]) -> bytes | None:
    """The COPY stream of fixed-width columns without NULLs, as one numpy record array; else None.

    Every row then has the same layout (field count, then a length word and the value per field),
    so a structured array writes the whole stream at once: 10^6 rows of three columns in a few
    tens of ms against ~3 s for the general path. None (the general path) when a column is of
    another type, carries a NULL mask, has a non-finite value (written as NULL), holds values the
    general path refuses, or the lengths differ.
    """
    if any(c.pgtype not in FIXED_WIDTH_FAST or c.null is not None for c in columns):
        return None
    values = [np.asarray(c.values) for c in columns]
    if len({len(v) for v in values}) != 1 or any(v.ndim != 1 for v in values):
        return None
    for c, v in zip(columns, values, strict=True):
        if np.dtype(FIXED[c.pgtype]).kind == "i" and v.dtype.kind not in "iub":
            return None  # the general path says what is wrong (floats for an integer column)
        if v.dtype.kind == "f" and not np.isfinite(v).all():
            return None
    fields: list[tuple[str, str]] = [("n", ">i2")]
    for j, c in enumerate(columns):
        fields += [(f"l{j}", ">i4"), (f"v{j}", FIXED[c.pgtype])]
    rows = np.empty(len(values[0]), dtype=np.dtype(fields))
    rows["n"] = len(columns)
    for j, v in enumerate(values):
        rows[f"l{j}"] = np.dtype(FIXED[columns[j].pgtype]).itemsize
        rows[f"v{j}"] = v
    return SIGNATURE + rows.tobytes() + TRAILER
