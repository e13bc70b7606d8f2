#!/usr/bin/env python
"""Benchmark: a 5" TAP cone query on 10^6 sources vs the same cone_search through lenscat's read-only SQL (issue 34).

One run, on seeded data (``--n`` sources uniform on the sphere, ingested with ``ingest_sources``):

(a) TAP: ``--repeat`` synchronous ADQL queries over HTTP to ``lenscat serve`` (one keep-alive
    ``httpx`` client, ``Authorization: Bearer``, VOTable output)::

        SELECT source_id, ra, dec, DISTANCE(POINT('ICRS', ra, dec), POINT('ICRS', ra0, dec0)) AS dist
        FROM sources WHERE 1 = CONTAINS(POINT('ICRS', ra, dec), CIRCLE('ICRS', ra0, dec0, r))

    (``r`` = 5 arcsec in degrees, written as a number), each centred on a random source (so each
    cone holds at least one);
(b) baseline, same centres, same run: ``public.cone_search`` joined to the ``sources`` view through
    :func:`lenscat.db.usersql.run_readonly_sql`, the function behind ``lenscat sql`` (read-only role,
    read-only transaction, a new connection per query, as the TAP service opens one per query);
(c) for scale, the server's first TAP query (the ADQL parse that the template cache of
    :func:`lenscat.tap.adql.translate` saves every later cone), ``lenscat sql`` itself as a command
    (Python start-up included) on a few centres, and one TAP query written so that it cannot use
    the index (the exact separation on a derived table): what every cone would cost without the
    translation onto the sky index.

Every TAP answer must hold the same source ids as the baseline's. Reported: medians and 90th
percentiles of the per-query wall times, and the ratio TAP / baseline (goal: within 2x).

Usage::

    python bench/tap.py [--n 1000000] [--repeat 200] [--seed 34]

The script runs its own embedded PostgreSQL under a fresh temporary ``LENSCAT_HOME`` and removes it
at the end (``--keep`` keeps it).
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchutil import goal, ingest_uniform_sky, loadavg, machine_info, own_embedded_home, pct

GOAL_RATIO = 2.0
RADIUS_ARCSEC = 5.0
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.integration.live_server: the same server start-up as the TAP tests


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=200)
    ap.add_argument("--seed", type=int, default=34)
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args(argv)
    home = Path(tempfile.mkdtemp(prefix="lenscat-bench-tap-"))
    own_embedded_home(home)

    import httpx
    from astropy.io.votable import parse_single_table

    from lenscat.db.migrate import ensure_schema
    from lenscat.db.server import stop_embedded
    from lenscat.db.session import dispose_engine, session_scope
    from lenscat.db.usersql import run_readonly_sql
    from lenscat.grading.accounts import add_grader
    from tests.integration.live_server import lenscat_server

    info = machine_info()
    print(f"# {info['date_utc']}; {info['cpu']} x{info['cpu_count']}; load {info['loadavg_start']}", flush=True)
    print(f"# n={args.n:,} repeat={args.repeat} seed={args.seed} LENSCAT_HOME={home}", flush=True)
    try:
        ensure_schema()
        ra, dec, rng = ingest_uniform_sky(args.n, args.seed, home, "bench-sky")
        with session_scope() as s:
            _, token = add_grader("benchbot", token=True, password=None, session=s)
        assert token is not None
        dispose_engine()

        env = {**os.environ, "LENSCAT_HOME": str(home)}
        with lenscat_server(env, "--log-level", "warning", timeout=120) as base:
            picks = rng.choice(args.n, size=args.repeat, replace=False)
            centres = [(float(ra[i]), float(dec[i])) for i in picks]
            r_deg = RADIUS_ARCSEC / 3600.0

            def adql(ra0: float, dec0: float) -> str:
                return (
                    f"SELECT source_id, ra, dec, DISTANCE(POINT('ICRS', ra, dec), POINT('ICRS', {ra0!r}, {dec0!r})) "
                    f"AS dist FROM sources WHERE 1 = CONTAINS(POINT('ICRS', ra, dec), "
                    f"CIRCLE('ICRS', {ra0!r}, {dec0!r}, {r_deg!r}))"
                )

            def sql(ra0: float, dec0: float) -> str:
                return (
                    f"SELECT c.source_id, s.ra, s.dec, c.separation_arcsec FROM cone_search({ra0!r}, {dec0!r}, "
                    f"{RADIUS_ARCSEC}) c JOIN sources s USING (source_id)"
                )

            headers = {"Authorization": f"Bearer {token}"}
            t_tap: list[float] = []
            t_sql: list[float] = []
            same = True
            n_found = 0
            with httpx.Client(headers=headers, timeout=60) as client:
                # warm both paths once (first connection, plan caches, the server's imports)
                t0 = time.perf_counter()
                client.get(base + "/tap/sync", params={"QUERY": adql(*centres[0])}).raise_for_status()
                t_first = time.perf_counter() - t0
                run_readonly_sql(sql(*centres[0]), max_rows=10_000)
                for k, (ra0, dec0) in enumerate(centres):
                    # alternate the order so that neither path always runs second
                    for which in (0, 1) if k % 2 == 0 else (1, 0):
                        t0 = time.perf_counter()
                        if which == 0:
                            r = client.get(base + "/tap/sync", params={"QUERY": adql(ra0, dec0)})
                            r.raise_for_status()
                            tap_ids = sorted(
                                int(x) for x in parse_single_table(io.BytesIO(r.content)).array["source_id"]
                            )
                            t_tap.append(time.perf_counter() - t0)
                        else:
                            rows = run_readonly_sql(sql(ra0, dec0), max_rows=10_000).rows
                            sql_ids = sorted(int(row[0]) for row in rows)
                            t_sql.append(time.perf_counter() - t0)
                    same = same and tap_ids == sql_ids
                    n_found += len(sql_ids)
                # no index: the exact separation on a derived table (the translation cannot see the view)
                slow = (
                    "SELECT x.source_id FROM (SELECT source_id, ra, dec FROM sources) AS x WHERE 1 = CONTAINS("
                    f"POINT('ICRS', x.ra, x.dec), CIRCLE('ICRS', {centres[0][0]!r}, {centres[0][1]!r}, {r_deg!r}))"
                )
                t0 = time.perf_counter()
                client.get(base + "/tap/sync", params={"QUERY": slow}).raise_for_status()
                t_slow = time.perf_counter() - t0

            t_cli = []
            for ra0, dec0 in centres[:5]:
                t0 = time.perf_counter()
                subprocess.run(
                    [sys.executable, "-m", "lenscat.cli", "sql", sql(ra0, dec0), "--format", "csv"],
                    env=env,
                    cwd=ROOT,
                    check=True,
                    capture_output=True,
                )
                t_cli.append(time.perf_counter() - t0)

            med_tap, med_sql = statistics.median(t_tap), statistics.median(t_sql)
            print(
                f"{args.repeat} cones of {RADIUS_ARCSEC:g} arcsec, {n_found:,} sources found in all; same ids: {same}",
                flush=True,
            )
            print(
                f"TAP /tap/sync (HTTP, ADQL, VOTable): median {med_tap * 1e3:.2f} ms, "
                f"p90 {pct(t_tap, 90) * 1e3:.2f} ms",
                flush=True,
            )
            print(
                f"baseline cone_search via run_readonly_sql (lenscat sql's function): median {med_sql * 1e3:.2f} ms, "
                f"p90 {pct(t_sql, 90) * 1e3:.2f} ms",
                flush=True,
            )
            print(f"ratio TAP / baseline (medians): {med_tap / med_sql:.2f}", flush=True)
            print(
                f"first TAP query of the server (ADQL parsed: the translation of this query shape is then kept): "
                f"{t_first * 1e3:.0f} ms",
                flush=True,
            )
            print(f"`lenscat sql` as a command (5 cones): median {statistics.median(t_cli):.2f} s", flush=True)
            print(f"TAP without the sky index (exact separation over a derived table): {t_slow:.2f} s", flush=True)
            print(goal(med_tap <= GOAL_RATIO * med_sql, f"TAP 5 arcsec cone within {GOAL_RATIO:g}x of cone_search"))
            print(f"# load at end {loadavg()}")
            return 0 if same else 1
    finally:
        dispose_engine()
        stop_embedded()
        if not args.keep:
            shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
