"""PostgreSQL reads lenscat's binary COPY streams as the values they were made from."""

import numpy as np
from sqlalchemy import text

from lenscat.db.pgbinary import Column, encode_copy_binary
from lenscat.db.session import raw_connection


def test_postgres_reads_the_binary_stream(session):
    session.execute(text("CREATE TEMP TABLE t_bin (i bigint, k integer, x double precision, f real, s text)"))
    n = 1000
    rng = np.random.default_rng(3)
    x = rng.normal(size=n)
    x[::7] = np.nan
    f = rng.normal(size=n).astype(np.float32)
    s = np.array([None if i % 11 == 0 else f"obj-{i}-é" for i in range(n)], dtype=object)
    data = encode_copy_binary(
        [
            Column("int8", np.arange(n) * 2**33),
            Column("int4", np.arange(n) - 500),
            Column("float8", x),
            Column("float4", f),
            Column("text", s),
        ]
    )
    with (
        raw_connection(session).cursor() as cur,
        cur.copy("COPY t_bin (i, k, x, f, s) FROM STDIN (FORMAT binary)") as copy,
    ):
        copy.write(data)
    rows = session.execute(text("SELECT i, k, x, f, s FROM t_bin ORDER BY i")).all()
    assert len(rows) == n
    for j, (i, k, xv, fv, sv) in enumerate(rows):
        assert i == j * 2**33 and k == j - 500
        assert (xv is None) if np.isnan(x[j]) else xv == x[j]
        assert np.float32(fv) == f[j]  # real comes back as its shortest decimal
        assert sv == s[j]


def test_postgres_reads_arrays_with_null_elements_and_jsonb(session):
    session.execute(text("CREATE TEMP TABLE t_arr (a real[], d double precision[], j jsonb)"))
    a = np.array([[1.0, 2.5, 3.0], [np.nan, 4.0, np.inf], [np.nan, np.nan, np.nan], [0.1, 0.2, 0.3]])
    j = np.array(['{"flag": 1, "name": "é"}', None, "[1, 2]", '"x"'], dtype=object)
    data = encode_copy_binary([Column("float4[]", a), Column("float8[]", a), Column("jsonb", j)])
    with raw_connection(session).cursor() as cur, cur.copy("COPY t_arr (a, d, j) FROM STDIN (FORMAT binary)") as copy:
        copy.write(data)
    rows = session.execute(text("SELECT a, d, j FROM t_arr")).all()
    assert [r.d for r in rows] == [[1.0, 2.5, 3.0], [None, 4.0, None], None, [0.1, 0.2, 0.3]]
    assert rows[3].a == [np.float32(0.1), np.float32(0.2), np.float32(0.3)]
    assert [r.j for r in rows] == [{"flag": 1, "name": "é"}, None, [1, 2], "x"]
    assert session.execute(text("SELECT array_lower(d, 1), array_ndims(d) FROM t_arr LIMIT 1")).one() == (1, 1)
