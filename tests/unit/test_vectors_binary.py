"""lenscat's numpy binary COPY of (bigint, halfvec) rows against pgvector-python's own encoding."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from pgvector import HalfVector

from lenscat.db.pgbinary import SIGNATURE, TRAILER
from lenscat.embeddings.vectors import copy_binary_rows, normalise, parse_copy_binary_rows
from lenscat.errors import LenscatError


def _pgvector_stream(ids: np.ndarray, vec: np.ndarray) -> bytes:
    """The stream psycopg writes with ``copy.set_types(["bigint", "halfvec"])`` + ``write_row`` per row."""
    rows = []
    for i, v in zip(ids.tolist(), vec, strict=True):
        payload = HalfVector(v).to_binary()
        rows.append(struct.pack(">hiqi", 2, 8, i, len(payload)) + payload)
    return SIGNATURE + b"".join(rows) + TRAILER


def test_numpy_rows_equal_pgvector_rows() -> None:
    rng = np.random.default_rng(3)
    ids = np.array([5, 1, 2**40, 7], dtype=np.int64)
    vec = normalise(rng.standard_normal((4, 17)))
    assert copy_binary_rows(ids, vec) == _pgvector_stream(ids, vec)


def test_parse_round_trip_and_pgvector_loader() -> None:
    rng = np.random.default_rng(4)
    ids = np.arange(10, 16, dtype=np.int64)
    vec = normalise(rng.standard_normal((6, 8)))
    got_ids, got = parse_copy_binary_rows(copy_binary_rows(ids, vec), 8)
    assert got_ids.tolist() == ids.tolist() and got.dtype == np.float32
    np.testing.assert_array_equal(got, vec.astype(np.float16).astype(np.float32))
    for row, v in zip(got, vec, strict=True):  # pgvector's loader reads the same values
        np.testing.assert_array_equal(HalfVector.from_binary(HalfVector(v).to_binary()).to_numpy(), row)
    assert parse_copy_binary_rows(b"", 8)[1].shape == (0, 8)
    with pytest.raises(LenscatError, match="do not all have 9 dimensions"):
        parse_copy_binary_rows(copy_binary_rows(ids, vec), 9)
