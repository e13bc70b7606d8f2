"""Read-only user SQL streams: memory stays flat whatever the row count (issue 29, item 5)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from lenscat.db.usersql import FETCH_ROWS, readonly_query, run_readonly_sql
from lenscat.errors import LenscatError, ReadOnlyError

# Runs the CLI in a fresh interpreter and reports its peak resident memory (kB) on the last stderr line.
PEAK_RSS = (
    "import resource, sys\n"
    "from lenscat.cli import main\n"
    "sys.argv = ['lenscat'] + sys.argv[1:]\n"
    "try:\n"
    "    main()\n"
    "finally:\n"
    "    sys.stdout.flush()\n"
    "    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)\n"
)


def _cli_peak_kb(tmp_path, *args):
    out = tmp_path / "out.txt"
    with open(out, "w") as fh:
        proc = subprocess.run(
            [sys.executable, "-c", PEAK_RSS, *args],
            stdout=fh,
            stderr=subprocess.PIPE,
            text=True,
            env=os.environ.copy(),
            timeout=600,
        )
    assert proc.returncode == 0, proc.stderr
    return int(proc.stderr.strip().splitlines()[-1]), out


def test_cli_sql_streams_rows_with_flat_memory(tmp_path):
    # 1.5 million rows of ~110 bytes: ~170 MB of CSV, several times that as Python tuples if buffered
    n = 1_500_000
    sql = f"SELECT g, repeat('x', 100) AS pad FROM generate_series(1, {n}) g"
    small_kb, _ = _cli_peak_kb(
        tmp_path, "sql", "SELECT g, repeat('x', 100) AS pad FROM generate_series(1, 10) g", "--format", "csv"
    )
    big_kb, out = _cli_peak_kb(tmp_path, "sql", sql, "--format", "csv")
    with open(out) as fh:
        lines = sum(1 for _ in fh)
    assert lines == n + 1  # header and every row
    assert (big_kb - small_kb) / 1024 < 80, (small_kb, big_kb)  # bounded by one fetch batch, not by the rows


def test_cli_sql_json_and_max_rows_stream(tmp_path):
    _, out = _cli_peak_kb(
        tmp_path, "sql", "SELECT g FROM generate_series(1, 100000) g", "--format", "json", "--max-rows", "7"
    )
    assert out.read_text().splitlines() == [f'{{"g": {i}}}' for i in range(1, 8)]


def test_stream_yields_every_row_in_batches():
    with readonly_query("SELECT g FROM generate_series(1, :n) g".replace(":n", str(3 * FETCH_ROWS + 5))) as result:
        assert result.columns == ["g"]
        assert [r[0] for r in result] == list(range(1, 3 * FETCH_ROWS + 6))


def test_run_readonly_sql_caps_rows_and_says_so():
    cols, rows, truncated = run_readonly_sql("SELECT g FROM generate_series(1, 1000000) g", max_rows=10)
    assert cols == ["g"] and [r[0] for r in rows] == list(range(1, 11)) and truncated
    cols, rows, truncated = run_readonly_sql("VALUES (1), (2)", max_rows=10)
    assert len(rows) == 2 and not truncated
    cols, rows, truncated = run_readonly_sql("SHOW statement_timeout", max_rows=10)
    assert cols == ["statement_timeout"] and len(rows) == 1


@pytest.mark.parametrize(
    "sql",
    [
        "DELETE FROM sources",
        "WITH d AS (DELETE FROM lenscat.grades RETURNING 1) SELECT * FROM d",
        "SELECT 1; DELETE FROM sources",
        "UPDATE literature_lenses SET name = 'x'",
    ],
)
def test_writes_are_refused_through_the_stream(sql):
    with pytest.raises(LenscatError) as exc:
        run_readonly_sql(sql, max_rows=5)
    msg = str(exc.value)
    assert isinstance(exc.value, ReadOnlyError) or "one statement" in msg or "permission denied" in msg


def test_an_error_after_some_rows_is_one_line():
    # the division by zero happens at row 2,500, after the first batch has been written
    with (
        readonly_query("SELECT 1 / (2500 - g) FROM generate_series(1, 5000) g") as result,
        pytest.raises(LenscatError, match="division by zero"),
    ):
        for _ in result:
            pass


def test_statement_timeout_applies():
    with pytest.raises(LenscatError, match="statement timeout"):
        run_readonly_sql("SELECT pg_sleep(3)", max_rows=1, timeout_s=0.2)
