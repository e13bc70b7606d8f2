"""`lenscat skymap ingest / match / list` and `lenscat export --moc` end to end, against a direct computation."""

from __future__ import annotations

import json

import astropy.units as u
import numpy as np
from astropy.coordinates import SkyCoord
from astropy.table import Table
from astropy_healpix import lonlat_to_healpix
from sqlalchemy import text

from lenscat.catalogue.ingest import ingest_sources
from lenscat.literature.ingest import prepare_literature
from lenscat.literature.service import write_literature
from lenscat.skymaps.service import match_skymap
from tests.integration.test_cli import run
from tests.unit.test_skymap_readers import NSIDE, blob, direct_levels, write_flat


def _positions(n_near: int, n_all: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    near = SkyCoord(150 * u.deg, 10 * u.deg).directional_offset_by(
        rng.uniform(0, 360, n_near) * u.deg, rng.uniform(0, 16, n_near) * u.deg
    )
    ra = np.r_[near.ra.deg, rng.uniform(0, 360, n_all)]
    dec = np.r_[near.dec.deg, np.degrees(np.arcsin(rng.uniform(-1, 1, n_all)))]
    return ra, dec


def _direct(
    ra: np.ndarray, dec: np.ndarray, p: np.ndarray, credible: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Inside mask, density [sr^-1] and level of each position, straight from the NESTED pixel probabilities."""
    pix_sr = 4 * np.pi / p.size
    level = direct_levels(p, p)
    pix = lonlat_to_healpix(ra * u.deg, dec * u.deg, NSIDE, order="nested")
    return level[pix] <= credible + 1e-12, p[pix] / pix_sr, level[pix]


def test_skymap_ingest_match_and_moc_export(session, tmp_path, monkeypatch, capsys):
    from lenscat.grading.accounts import add_grader
    from lenscat.grading.grades import GradeInput, record_grades

    ra, dec = _positions(2500, 1500, seed=34)
    Table({"objid": np.arange(ra.size), "ra": ra, "dec": dec}).write(tmp_path / "src.fits")
    ingest_sources(tmp_path / "src.fits", "sm-src")
    ids = dict(session.execute(text("SELECT objid, source_id FROM public.sources WHERE survey = 'sm-src'")).all())
    sid = np.array([ids[str(i)] for i in range(ra.size)])

    p = blob(150.0, 10.0, 5.0)
    gw = write_flat(tmp_path / "bayestar.fits.gz", p, "NESTED", OBJECT="S341207a", INSTRUME="H1,L1,V1")
    code, out, err = run(monkeypatch, capsys, "skymap", "ingest", str(gw), "--name", "S341207a")
    assert code == 0 and "sky map S341207a inserted: flat" in out, err
    code, out, _ = run(monkeypatch, capsys, "skymap", "ingest", str(gw), "--name", "S341207a")
    assert code == 0 and "unchanged" in out
    ring = write_flat(tmp_path / "ring.fits", blob(150.0, 10.0, 1.0, ring_radius=10.0), "RING")
    code, out, err = run(monkeypatch, capsys, "skymap", "ingest", str(ring), "--name", "S341207a")
    assert code == 2 and "is stored from another file" in err and "--replace" in err
    code, out, err = run(monkeypatch, capsys, "skymap", "ingest", str(ring), "--name", "ring")
    assert code == 0 and "sky map ring inserted" in out
    code, out, _ = run(monkeypatch, capsys, "skymap", "list", "--format", "json")
    listed = {r["name"]: r for r in map(json.loads, out.splitlines())}
    assert listed["S341207a"]["object"] == "S341207a" and listed["S341207a"]["instrument"] == "H1,L1,V1"
    pix_deg2 = 4 * np.pi / p.size * (180 / np.pi) ** 2
    assert np.isclose(listed["S341207a"]["area90_deg2"], (direct_levels(p, p) <= 0.9).sum() * pix_deg2, rtol=1e-12)

    # sources: equal to the direct computation, sorted by credible level
    code, out, err = run(
        monkeypatch,
        capsys,
        "skymap",
        "match",
        "S341207a",
        "--credible",
        "0.9",
        "--survey",
        "sm-src",
        "--format",
        "json",
    )
    assert code == 0, err
    rows = [json.loads(line) for line in out.splitlines()]
    inside, dens, level = _direct(ra, dec, p, 0.9)
    assert 1000 < len(rows) == inside.sum()
    assert f"{len(rows)} source row(s) inside the 0.9 credible region of S341207a" in err
    assert f"stored: {len(rows)} new, 0 updated" in err
    got = {r["object_id"]: r for r in rows}
    assert set(got) == set(sid[inside].tolist())
    for k in np.flatnonzero(inside):
        r = got[int(sid[k])]
        assert np.isclose(r["probdensity"], dens[k], rtol=1e-9) and np.isclose(r["cumprob"], level[k], atol=1e-9)
        assert np.isclose(r["probdensity_deg2"], dens[k] * (np.pi / 180) ** 2, rtol=1e-9)
        assert r["name"] == f"sm-src:{np.flatnonzero(sid == r['object_id'])[0]}"
    assert [r["cumprob"] for r in rows] == sorted(r["cumprob"] for r in rows)
    # stored, and a second match changes nothing
    n_view = session.execute(text("SELECT count(*) FROM public.skymap_matches WHERE skymap = 'S341207a'")).scalar()
    assert n_view == len(rows)
    again = match_skymap("S341207a", session=session, credible=0.9, surveys=["sm-src"])
    assert again.meta["n_inserted"] == 0 and again.meta["n_updated"] == 0 and len(again) == len(rows)
    assert again.meta["n_probed"] < 1.3 * len(rows)  # the index probe read little more than the region
    assert again["probdensity"].unit == u.sr**-1 and again["ra"].unit == u.deg

    # literature lenses of one catalogue
    lra, ldec = _positions(300, 200, seed=35)
    Table({"name": [f"L{i}" for i in range(lra.size)], "ra": lra, "dec": ldec}).write(
        tmp_path / "lenses.csv", format="ascii.csv"
    )
    write_literature(prepare_literature(tmp_path / "lenses.csv", "sm-lenses"), session=session)
    out_csv = tmp_path / "lit.csv"
    code, out, err = run(
        monkeypatch,
        capsys,
        "skymap",
        "match",
        "S341207a",
        "--catalog",
        "sm-lenses",
        "--format",
        "csv",
        "--out",
        str(out_csv),
    )
    assert code == 0 and "matches of S341207a" in out, err
    lit = Table.read(out_csv, format="ascii.csv")
    inside, dens, level = _direct(lra, ldec, p, 0.9)
    assert len(lit) == inside.sum() > 100
    assert sorted(str(n) for n in lit["name"]) == sorted(f"sm-lenses:L{i}" for i in np.flatnonzero(inside))
    view = session.execute(
        text("SELECT object_name, probdensity_deg2 FROM public.skymap_matches WHERE target = 'literature'")
    ).all()
    assert len(view) == len(lit) and all(n.startswith("sm-lenses:L") for n, _ in view)

    # graded candidates, and their MOC read back
    alice, _ = add_grader("sm-alice", password="alice-pass", session=session)
    graded = sid[:40]
    record_grades(alice, [GradeInput(int(s), "A" if i % 2 else "B") for i, s in enumerate(graded)], session=session)
    code, out, err = run(monkeypatch, capsys, "skymap", "match", "S341207a", "--candidates", "--format", "json")
    assert code == 0, err
    cand = [json.loads(line) for line in out.splitlines()]
    inside, _, _ = _direct(ra[:40], dec[:40], p, 0.9)
    assert {r["object_id"] for r in cand} == set(graded[inside].tolist()) and all(
        r["target"] == "candidate" for r in cand
    )

    moc_path = tmp_path / "candidates.moc.fits"
    code, out, err = run(monkeypatch, capsys, "export", "--moc", str(moc_path), "--moc-order", "12")
    assert code == 0 and "wrote MOC" in out, err
    from mocpy import MOC

    moc = MOC.from_fits(str(moc_path))
    assert moc.max_order == 12 and moc.contains_lonlat(ra[:40] * u.deg, dec[:40] * u.deg).all()
    cell = lonlat_to_healpix(ra * u.deg, dec * u.deg, 2**12, order="nested")
    assert np.array_equal(moc.contains_lonlat(ra * u.deg, dec * u.deg), np.isin(cell, cell[:40]))
    code, out, err = run(monkeypatch, capsys, "skymap", "ingest", str(moc_path), "--name", "cand-moc")
    assert code == 0 and "a MOC" in out, err
    whole = match_skymap("cand-moc", session=session, target="candidate", credible=0.5)
    assert sorted(whole["object_id"].tolist()) == sorted(graded.tolist())

    code, _, err = run(monkeypatch, capsys, "skymap", "match", "nope")
    assert code == 2 and "no sky map named 'nope'" in err
    code, _, err = run(monkeypatch, capsys, "skymap", "ingest", str(tmp_path / "src.fits"), "--name", "x")
    assert code == 2 and "src.fits" in err and "no probability column" in err

    # another file under a stored name with --replace: the old region's matches go with it
    code, out, err = run(monkeypatch, capsys, "skymap", "ingest", str(ring), "--name", "S341207a", "--replace")
    assert code == 0 and "sky map S341207a replaced" in out, err
    left = session.execute(text("SELECT count(*) FROM public.skymap_matches WHERE skymap = 'S341207a'")).scalar()
    assert left == 0
