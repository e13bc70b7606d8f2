"""The binary COPY encoder: layout of headers, lengths, NULLs and payloads."""

import struct

import numpy as np
import pytest

from lenscat.db.pgbinary import SIGNATURE, TRAILER, Column, encode_copy_binary


def _decode(data: bytes, types: list[str]) -> list[tuple]:
    """A plain reference reader of the binary COPY format."""
    fmt = {"int2": ">h", "int4": ">i", "int8": ">q", "float4": ">f", "float8": ">d"}
    assert data.startswith(SIGNATURE) and data.endswith(TRAILER)
    pos, rows = len(SIGNATURE), []
    while True:
        (nfields,) = struct.unpack_from(">h", data, pos)
        pos += 2
        if nfields == -1:
            break
        assert nfields == len(types)
        row: list[object] = []
        for t in types:
            (length,) = struct.unpack_from(">i", data, pos)
            pos += 4
            if length == -1:
                row.append(None)
                continue
            raw = data[pos : pos + length]
            pos += length
            row.append(raw.decode("utf-8") if t == "text" else struct.unpack(fmt[t], raw)[0])
        rows.append(tuple(row))
    assert pos == len(data)
    return rows


def test_rows_round_trip_with_nulls_text_and_every_fixed_type():
    cols = [
        Column("int8", np.array([1, 2**40, -3])),
        Column("int4", np.array([7, 0, -1])),
        Column("int2", np.array([1, 2, 3]), null=np.array([False, True, False])),
        Column("float8", np.array([0.1, np.nan, -1e300])),
        Column("float4", np.array([1.5, np.inf, 2.25])),
        Column("text", np.array(["NGC 1", None, "ÅÉ λ"], dtype=object)),
        Column("text", np.array(["", "x", "yz"])),
    ]
    rows = _decode(encode_copy_binary(cols), ["int8", "int4", "int2", "float8", "float4", "text", "text"])
    assert rows == [
        (1, 7, 1, 0.1, 1.5, "NGC 1", ""),
        (2**40, 0, None, None, None, None, "x"),
        (-3, -1, 3, -1e300, 2.25, "ÅÉ λ", "yz"),
    ]


def test_float4_rounds_like_a_cast_and_empty_batches_have_header_and_trailer():
    v = np.array([0.1, 1 / 3])
    rows = _decode(encode_copy_binary([Column("float4", v)]), ["float4"])
    assert [r[0] for r in rows] == [float(np.float32(x)) for x in v]
    assert encode_copy_binary([Column("int8", np.zeros(0, np.int64))]) == SIGNATURE + TRAILER


def test_bad_columns_are_refused():
    with pytest.raises(ValueError, match="different lengths"):
        encode_copy_binary([Column("int8", np.arange(2)), Column("int8", np.arange(3))])
    with pytest.raises(ValueError, match="numeric"):
        encode_copy_binary([Column("numeric", np.arange(2))])
    with pytest.raises(TypeError, match="floats"):
        encode_copy_binary([Column("int8", np.array([1.5]))])


def test_values_beyond_float4_are_refused_not_turned_into_infinity():
    with pytest.raises(ValueError, match="out of range for type real"):
        encode_copy_binary([Column("float4", np.array([1.0, 1e300]))])
    with pytest.raises(ValueError, match="out of range for type real"):
        encode_copy_binary([Column("float4[]", np.array([[1.0, -1e39]]))])
    assert len(encode_copy_binary([Column("float8", np.array([1e300]))])) > 0
