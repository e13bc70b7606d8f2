#!/usr/bin/env python
"""Benchmark: binary COPY of embeddings, lenscat's numpy encoder/parser against pgvector-python's rows.

Issue 32 asks to use pgvector-python (``pgvector.psycopg.register_vector``, ``HalfVector``, its binary
COPY support) wherever it serves and to keep lenscat's own encoder only where it is measured faster.
One run, same process, same scratch server, same vectors (``--n`` x ``--dim``, default 10^5 x 128,
unit length, seeded):

* **write**: ``COPY stage (source_id, embedding) FROM STDIN WITH (FORMAT BINARY)`` into a temporary
  ``(bigint, halfvec)`` table, with :func:`lenscat.embeddings.vectors.copy_binary_rows` (one numpy
  record array, one ``copy.write``) against pgvector's way (``register_vector`` on the cursor,
  ``copy.set_types(["bigint", "halfvec"])``, one ``copy.write_row((id, HalfVector(v)))`` per row);
  also the client-side encoding alone (numpy against ``HalfVector(v).to_binary()`` per row);
* **read**: ``COPY (SELECT source_id, embedding ...) TO STDOUT WITH (FORMAT BINARY)`` parsed with
  :func:`lenscat.embeddings.vectors.parse_copy_binary_rows` against pgvector's binary loader
  (``copy.set_types``, ``copy.rows()``, ``HalfVector.to_numpy()`` per row, then ``np.stack``).

Each is the best of ``--repeats``; both sides are checked to store / return the same values. The
ratio (pgvector time / lenscat time) is printed. The script runs its own embedded PostgreSQL under
a fresh temporary ``LENSCAT_HOME`` (or ``--home``) and removes it at the end.

Usage::

    python bench/vectors.py [--n 100000] [--dim 128] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from benchutil import format_table, machine_info, own_embedded_home


def best_of(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    """Shortest wall time of ``repeats`` calls, and the last result."""
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def run(n: int, dim: int, repeats: int, seed: int) -> list[tuple[str, str, str, str]]:
    """Measure every path; returns table rows (measure, lenscat s, pgvector s, ratio)."""
    import psycopg
    from pgvector import HalfVector
    from pgvector.psycopg import register_vector

    from lenscat.db.server import resolve_database_url
    from lenscat.embeddings.vectors import copy_binary_rows, normalise, parse_copy_binary_rows

    rng = np.random.default_rng(seed)
    ids = np.arange(1, n + 1, dtype=np.int64)
    vec = normalise(rng.standard_normal((n, dim)).astype(np.float32))
    rows: list[tuple[str, str, str, str]] = []

    def add(name: str, ours: float, theirs: float) -> None:
        rows.append((name, f"{ours:.3f}", f"{theirs:.3f}", f"{theirs / ours:.1f}x"))
        print(f"  {name}: lenscat {ours:.3f} s, pgvector {theirs:.3f} s, ratio {theirs / ours:.1f}", flush=True)

    def encode_pgvector() -> bytes:
        return b"".join(HalfVector(v).to_binary() for v in vec)

    t_np, _ = best_of(lambda: copy_binary_rows(ids, vec), repeats)
    t_pg, _ = best_of(encode_pgvector, repeats)
    add(f"encode only, {n:,} x {dim}-d", t_np, t_pg)

    with psycopg.connect(resolve_database_url()) as conn:
        register_vector(conn)  # this connection is the benchmark's own; cursors made after it see the types
        cur = conn.cursor()
        cur.execute("CREATE TEMP TABLE stage (source_id bigint, embedding halfvec)")

        def write_numpy() -> None:
            cur.execute("TRUNCATE stage")
            with cur.copy("COPY stage (source_id, embedding) FROM STDIN WITH (FORMAT BINARY)") as copy:
                copy.write(copy_binary_rows(ids, vec))

        def write_pgvector() -> None:
            cur.execute("TRUNCATE stage")
            with cur.copy("COPY stage (source_id, embedding) FROM STDIN WITH (FORMAT BINARY)") as copy:
                copy.set_types(["bigint", "halfvec"])
                for i, v in zip(ids.tolist(), vec, strict=True):
                    copy.write_row((i, HalfVector(v)))

        sql = "COPY (SELECT source_id, embedding FROM stage ORDER BY source_id) TO STDOUT WITH (FORMAT BINARY)"

        def read_numpy() -> tuple[np.ndarray, np.ndarray]:
            buf = bytearray()
            with cur.copy(sql) as copy:
                for block in copy:
                    buf += block
            return parse_copy_binary_rows(buf, dim)

        def read_pgvector() -> tuple[np.ndarray, np.ndarray]:
            out_ids, out_vec = [], []
            with cur.copy(sql) as copy:
                copy.set_types(["bigint", "halfvec"])
                for sid, hv in copy.rows():
                    out_ids.append(sid)
                    out_vec.append(hv.to_numpy())
            return np.array(out_ids, dtype=np.int64), np.stack(out_vec).astype(np.float32)

        t_np, _ = best_of(write_numpy, repeats)
        back_np = read_numpy()
        t_pg, _ = best_of(write_pgvector, repeats)
        back_pg = read_numpy()
        assert np.array_equal(back_np[0], back_pg[0]) and np.array_equal(back_np[1], back_pg[1]), "writes differ"
        add(f"COPY FROM (write), {n:,} x {dim}-d", t_np, t_pg)
        t_np, a = best_of(read_numpy, repeats)
        t_pg, b = best_of(read_pgvector, repeats)
        assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]), "reads differ"
        add(f"COPY TO (read), {n:,} x {dim}-d", t_np, t_pg)
        conn.rollback()
    return rows


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, start the scratch server, measure, report."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[1] if __doc__ else None)
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--home", default=None, help="LENSCAT_HOME for the scratch server (default: a temp dir)")
    args = ap.parse_args(argv)
    home = args.home or tempfile.mkdtemp(prefix="lenscat-bench-")
    made_home = args.home is None
    os.chmod(home, 0o755)  # the embedded server may run as another user
    own_embedded_home(home)

    from lenscat.db.migrate import ensure_schema
    from lenscat.db.server import stop_embedded
    from lenscat.db.session import dispose_engine

    info = machine_info()
    print(f"lenscat vector COPY benchmark, {info['date_utc']}: {info['cpu_count']} CPUs ({info['cpu']})", flush=True)
    try:
        ensure_schema()
        rows = run(args.n, args.dim, args.repeats, args.seed)
        print()
        print(format_table(rows, ("measure", "lenscat numpy [s]", "pgvector per row [s]", "pgvector / lenscat"), False))
    finally:
        dispose_engine()
        stop_embedded()
        if made_home:
            shutil.rmtree(home, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
