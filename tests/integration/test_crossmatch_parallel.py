"""The CLI cross-match on committed data searches on parallel connections; results equal astropy's."""

import json
import subprocess
import sys

import astropy.units as u
import numpy as np
import pytest
from astropy.coordinates import SkyCoord, search_around_sky
from astropy.table import Table

pytestmark = pytest.mark.slow


def _cli(env, *args):
    res = subprocess.run(
        [sys.executable, "-m", "lenscat.cli", *args], env=env, capture_output=True, text=True, timeout=300
    )
    assert res.returncode == 0, res.stderr
    return res.stdout


def _row_versions(url):
    """(lens_id, rank) -> the xmin of that stored row: which transaction last wrote it."""
    import psycopg

    with psycopg.connect(url) as conn:
        return {(a, b): x for a, b, x in conn.execute("SELECT lens_id, rank, xmin::text FROM lenscat.crossmatches")}


def test_parallel_crossmatch_equals_astropy(own_database, data_dir, tmp_path):
    from lenscat.simulate.catalogue import simulate_catalog

    url, env = own_database
    stein = data_dir / "catalogs" / "stein2021_new_lenses.tsv"
    sim = tmp_path / "sim.fits"
    simulate_catalog(20_000, seed=4, lens_list=stein).write(sim)
    _cli(env, "db", "upgrade")
    _cli(env, "ingest", "sources", str(sim), "--survey", "par")
    _cli(env, "ingest", "literature", str(stein), "--catalog", "stein-par")
    _cli(env, "crossmatch", "--catalog", "stein-par", "--radius", "5arcsec", "--quiet")
    rows = [
        json.loads(x)
        for x in _cli(
            env,
            "sql",
            "SELECT x.lens_id, l.ra AS lra, l.dec AS ldec, s.ra, s.dec, x.separation_arcsec, x.is_nearest, x.rank "
            "FROM crossmatches x JOIN literature_lenses l USING (lens_id) JOIN sources s USING (source_id)",
            "--format",
            "json",
        ).splitlines()
    ]
    lens_tab = Table.read(stein, format="ascii.tab")
    src = Table.read(sim)
    lenses = SkyCoord(lens_tab["ra"] * u.deg, lens_tab["dec"] * u.deg)
    sources = SkyCoord(np.asarray(src["ra"]) * u.deg, np.asarray(src["dec"]) * u.deg)
    i1, i2, sep, _ = search_around_sky(lenses, sources, 5 * u.arcsec)
    assert len(rows) == len(i1) > 500
    assert sorted(round(r["separation_arcsec"], 6) for r in rows) == sorted(np.round(sep.arcsec, 6))
    assert sum(r["is_nearest"] for r in rows) == len(set(i1.tolist()))
    by_lens: dict[int, list] = {}  # ranks 1..n in separation order, written through binary COPY
    for r in rows:
        by_lens.setdefault(r["lens_id"], []).append((r["rank"], r["separation_arcsec"]))
    for pairs in by_lens.values():
        pairs.sort()
        assert [k for k, _ in pairs] == list(range(1, len(pairs) + 1))
        assert [s for _, s in pairs] == sorted(s for _, s in pairs)
    # a survey filter goes through the literal-bound COPY query too: the same rows, or none;
    # a re-run that finds the same pairs rewrites none of them
    before = _cli(env, "sql", "SELECT lens_id, source_id, rank FROM crossmatches ORDER BY 1, 3", "--format", "csv")
    versions = _row_versions(url)
    _cli(env, "crossmatch", "--catalog", "stein-par", "--radius", "5arcsec", "--survey", "par", "--quiet")
    assert (
        _cli(env, "sql", "SELECT lens_id, source_id, rank FROM crossmatches ORDER BY 1, 3", "--format", "csv") == before
    )
    assert _row_versions(url) == versions
    # new sources next to three lenses: only those lenses' rows are rewritten, and the stored rows
    # are still exactly astropy's pairs
    near = lens_tab[:3]
    extra = Table(
        {
            "brickid": [999_999] * 3,
            "objid": [1, 2, 3],
            "ra": np.asarray(near["ra"], float),
            "dec": np.asarray(near["dec"], float) + 1.5 / 3600,
        }
    )
    extra.write(tmp_path / "extra.fits")
    _cli(env, "ingest", "sources", str(tmp_path / "extra.fits"), "--survey", "par")
    _cli(env, "crossmatch", "--catalog", "stein-par", "--radius", "5arcsec", "--quiet")
    after = _row_versions(url)
    lens_ids = {
        int(x)
        for x in _cli(
            env, "sql", "SELECT lens_id FROM literature_lenses ORDER BY row_number LIMIT 3", "--format", "csv"
        ).split()[1:]
    }
    assert {k for k in after if after[k] != versions.get(k)} == {k for k in after if k[0] in lens_ids}
    assert {k: v for k, v in after.items() if k[0] not in lens_ids} == {
        k: v for k, v in versions.items() if k[0] not in lens_ids
    }
    sources2 = SkyCoord(
        np.r_[np.asarray(src["ra"]), extra["ra"]] * u.deg, np.r_[np.asarray(src["dec"]), extra["dec"]] * u.deg
    )
    assert len(after) == len(search_around_sky(lenses, sources2, 5 * u.arcsec)[0]) == len(i1) + 3
    _cli(env, "ingest", "sources", str(sim), "--survey", "par-copy")
    _cli(env, "crossmatch", "--catalog", "stein-par", "--radius", "5arcsec", "--survey", "par-copy", "--quiet")
    pairs = [
        json.loads(x)
        for x in _cli(
            env,
            "sql",
            "SELECT c.survey, count(*) AS n FROM crossmatches x JOIN sources c USING (source_id) GROUP BY 1",
            "--format",
            "json",
        ).splitlines()
    ]
    assert pairs == [{"survey": "par-copy", "n": len(i1)}]
