"""Cross-match and cone search in SQL, checked against astropy on the real lens catalogues."""

import astropy.units as u
import numpy as np
import pytest
from astropy.coordinates import SkyCoord, match_coordinates_sky, search_around_sky
from sqlalchemy import text

from lenscat.catalogue.ingest import ingest_sources
from lenscat.catalogue.types import SourceMapping
from lenscat.literature.crossmatch import crossmatch_catalog, pairs_sql
from lenscat.literature.ingest import prepare_literature
from lenscat.literature.service import write_literature
from lenscat.simulate.catalogue import simulate_catalog
from lenscat.sky.service import cone_search

RADIUS = 5 * u.arcsec


@pytest.fixture(scope="module")
def inputs(data_dir, tmp_path_factory):
    """Parsed real lens lists and source files (read once; written per test)."""
    cats = data_dir / "catalogs"
    lit = [
        prepare_literature(cats / f, name)
        for name, f in (
            ("lenscat", "lenscat_catalog.csv.gz"),
            ("stein-new", "stein2021_new_lenses.tsv"),
            ("sled-galaxies", "sled_lensed_galaxies.csv"),
        )
    ]
    sim = tmp_path_factory.mktemp("xm") / "sim.fits"
    simulate_catalog(3000, seed=2, lens_list=cats / "lenscat_catalog.csv.gz").write(sim)
    return {"lit": lit, "stein": cats / "stein2021_training_lenses.tsv", "sim": sim}


@pytest.fixture
def loaded(session, inputs):
    """Real lens lists + real Stein positions as sources + simulated deflectors near community lenses."""
    for prep in inputs["lit"]:
        write_literature(prep, session=session)
    ingest_sources(inputs["stein"], "stein-train", SourceMapping(id_cols=["@row"]))
    ingest_sources(inputs["sim"], "sim")
    session.execute(text("ANALYZE lenscat.sources"))
    return session


def _coords(session, sql, params=None):
    rows = session.execute(text(sql), params or {}).all()
    ids = np.array([r[0] for r in rows])
    return ids, SkyCoord([r[1] for r in rows] * u.deg, [r[2] for r in rows] * u.deg)


@pytest.mark.parametrize("catalog", ["lenscat", "stein-new", "sled-galaxies"])
def test_crossmatch_agrees_with_astropy(loaded, catalog):
    session = loaded
    summary = crossmatch_catalog(catalog, RADIUS, session=session)
    lens_ids, lenses = _coords(
        session, "SELECT lens_id, ra, dec FROM literature_lenses WHERE catalog=:c", {"c": catalog}
    )
    src_ids, sources = _coords(session, "SELECT source_id, ra, dec FROM sources")
    i_l, i_s, sep, _ = search_around_sky(lenses, sources, RADIUS)
    expected = {(int(lens_ids[a]), int(src_ids[b])): s.arcsec for a, b, s in zip(i_l, i_s, sep, strict=True)}
    got = {
        (r.lens_id, r.source_id): r
        for r in session.execute(
            text("SELECT lens_id, source_id, separation_arcsec, is_nearest, rank FROM crossmatches WHERE catalog=:c"),
            {"c": catalog},
        )
    }
    assert set(got) == set(expected)
    assert summary.n_pairs == len(expected) and summary.n_lenses == len(lens_ids)
    for key, s in expected.items():
        assert got[key].separation_arcsec == pytest.approx(s, abs=1e-6)
    # nearest = match_coordinates_sky within the radius
    idx, d2d, _ = match_coordinates_sky(lenses, sources)
    nearest = {int(lens_ids[k]): int(src_ids[idx[k]]) for k in range(len(lens_ids)) if d2d[k] <= RADIUS}
    got_nearest = {k[0]: k[1] for k, r in got.items() if r.is_nearest}
    assert got_nearest == nearest
    assert summary.n_matched == len(nearest)
    if catalog == "lenscat":
        assert len(nearest) > 1000 and len(expected) > len(nearest)  # matches and neighbours
    # neighbours are ranked by separation
    by_lens: dict[int, list] = {}
    for (lens, _), r in got.items():
        by_lens.setdefault(lens, []).append(r)
    for rows in by_lens.values():
        rows.sort(key=lambda r: r.rank)
        assert [r.rank for r in rows] == list(range(1, len(rows) + 1))
        assert all(a.separation_arcsec <= b.separation_arcsec for a, b in zip(rows, rows[1:], strict=False))


def test_crossmatch_rerun_is_idempotent(loaded):
    a = crossmatch_catalog("stein-new", RADIUS, session=loaded)
    before = loaded.execute(text("SELECT lens_id, source_id, separation_arcsec FROM crossmatches ORDER BY 1, 2")).all()
    b = crossmatch_catalog("stein-new", RADIUS, session=loaded)
    after = loaded.execute(text("SELECT lens_id, source_id, separation_arcsec FROM crossmatches ORDER BY 1, 2")).all()
    assert a == b and before == after


def test_crossmatch_keys_refuse_inconsistent_rows(loaded):
    """(lens, rank) is the key, each pair is stored once and is_nearest is exactly rank 1."""
    import sqlalchemy.exc

    crossmatch_catalog("stein-new", RADIUS, session=loaded)
    lens, src = loaded.execute(
        text("SELECT lens_id, source_id FROM crossmatches WHERE catalog = 'stein-new' AND is_nearest LIMIT 1")
    ).one()
    other = loaded.execute(text("SELECT source_id FROM sources WHERE source_id <> :s LIMIT 1"), {"s": src}).scalar()
    insert = text(
        "INSERT INTO lenscat.crossmatches (lens_id, source_id, separation_arcsec, is_nearest, rank, "
        "radius_arcsec) VALUES (:l, :s, 1.0, :n, :k, 5)"
    )
    for params, constraint in (
        ({"s": other, "n": True, "k": 1}, "pk_crossmatches"),
        ({"s": src, "n": False, "k": 9}, "uq_crossmatches_source_lens"),
        ({"s": other, "n": True, "k": 9}, "ck_crossmatches_nearest_rank"),
    ):
        with pytest.raises(sqlalchemy.exc.IntegrityError, match=constraint), loaded.begin_nested():
            loaded.execute(insert, {"l": lens, **params})


def test_ranked_pairs_query_ranks_by_separation(loaded):
    """The query both write paths use: ranks 1..n per lens in separation order."""
    from lenscat.literature.crossmatch import ranked_pairs_sql

    cid = loaded.execute(text("SELECT catalog_id FROM literature_catalogs WHERE catalog='lenscat'")).scalar()
    rows = loaded.execute(text(ranked_pairs_sql()), {"r": 30 / 3600, "cid": cid}).all()
    by_lens: dict[int, list] = {}
    for lens_id, _, sep, nearest, rank, radius in rows:
        by_lens.setdefault(lens_id, []).append((rank, sep, nearest))
        assert radius == pytest.approx(30.0) and sep <= 30.0
    assert any(len(v) > 1 for v in by_lens.values())
    for v in by_lens.values():
        assert [k for k, _, _ in v] == list(range(1, len(v) + 1))
        assert [s for _, s, _ in v] == sorted(s for _, s, _ in v)
        assert [n for _, _, n in v] == [True] + [False] * (len(v) - 1)


def test_crossmatch_uses_the_sky_index(loaded):
    cid = loaded.execute(text("SELECT catalog_id FROM literature_catalogs WHERE catalog='lenscat'")).scalar()
    plan = "\n".join(r[0] for r in loaded.execute(text("EXPLAIN " + pairs_sql()), {"r": 5 / 3600, "cid": cid}))
    assert "ix_sources_zone_ra" in plan
    assert "Seq Scan on sources" not in plan
    plan = "\n".join(
        r[0] for r in loaded.execute(text("EXPLAIN " + pairs_sql(True)), {"r": 5 / 3600, "cid": cid, "sids": [1]})
    )
    assert "Seq Scan on sources" not in plan


def test_cone_search_against_astropy_including_wrap_and_pole(session):
    rng = np.random.default_rng(4)
    centres = [(0.0005, 0.0), (359.9995, 10.0), (120.0, 89.9995), (200.0, -89.9999), (45.0, 30.0)]
    ra, dec = [], []
    for cra, cdec in centres:
        c = SkyCoord(cra * u.deg, cdec * u.deg)
        pts = c.directional_offset_by(rng.uniform(0, 360, 300) * u.deg, rng.uniform(0, 20, 300) * u.arcsec)
        ra.append(pts.ra.deg)
        dec.append(pts.dec.deg)
    ra_all, dec_all = np.concatenate(ra), np.concatenate(dec)
    import tempfile
    from pathlib import Path

    from astropy.table import Table

    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "edge.fits"
        Table({"objid": np.arange(len(ra_all)), "ra": ra_all, "dec": dec_all}).write(p)
        ingest_sources(p, "edges")
    all_c = SkyCoord(ra_all * u.deg, dec_all * u.deg)
    for cra, cdec in centres:
        centre = SkyCoord(cra * u.deg, cdec * u.deg)
        table = cone_search(centre, 10 * u.arcsec, session=session, surveys=["edges"])
        sep = centre.separation(all_c).arcsec
        expected = sorted(sep[sep <= 10])
        assert len(table) == len(expected) > 50
        assert np.allclose(np.asarray(table["separation"]), expected, atol=1e-6)
        assert table["separation"].unit == u.arcsec and table["ra"].unit == u.deg
    plan = "\n".join(
        r[0]
        for r in session.execute(
            text(
                "EXPLAIN SELECT * FROM lenscat_sky_ranges(10, 10, 0.01) q JOIN lenscat.sources s "
                "ON s.zone = q.zone AND s.ra BETWEEN q.ra_lo AND q.ra_hi"
            )
        )
    )
    assert "Seq Scan on sources" not in plan


def test_sql_callable_cone_search(session, tmp_path):
    from astropy.table import Table

    p = tmp_path / "few.csv"
    Table({"objid": [1, 2, 3], "ra": [10.0, 10.001, 10.1], "dec": [5.0, 5.0, 5.0]}).write(p)
    ingest_sources(p, "few")
    rows = session.execute(text("SELECT source_id, separation_arcsec FROM cone_search(10.0, 5.0, 10.0)")).all()
    assert len(rows) == 2 and rows[0][1] == pytest.approx(0.0) and rows[1][1] == pytest.approx(3.5863, rel=1e-3)


@pytest.mark.parametrize("radius_arcsec", [5.0, 150.0])
def test_pair_search_agrees_with_astropy_at_the_wrap_the_poles_and_wide_radii(session, tmp_path, radius_arcsec):
    """Lenses whose cones cross ra = 0/360, touch a pole or span several zones take the general path."""
    from astropy.table import Table

    rng = np.random.default_rng(11)
    centres = [(0.0005, 0.0), (359.9995, 10.0), (120.0, 89.9995), (200.0, -89.9999), (45.0, 30.0), (300.0, -0.0083)]
    src_ra, src_dec, lens_ra, lens_dec = [], [], [], []
    for cra, cdec in centres:
        c = SkyCoord(cra * u.deg, cdec * u.deg)
        pts = c.directional_offset_by(rng.uniform(0, 360, 200) * u.deg, rng.uniform(0, 300, 200) * u.arcsec)
        src_ra.append(pts.ra.deg)
        src_dec.append(pts.dec.deg)
        lz = c.directional_offset_by(rng.uniform(0, 360, 20) * u.deg, rng.uniform(0, 60, 20) * u.arcsec)
        lens_ra.append(lz.ra.deg)
        lens_dec.append(lz.dec.deg)
    sra, sdec = np.concatenate(src_ra), np.concatenate(src_dec)
    lra, ldec = np.concatenate(lens_ra), np.concatenate(lens_dec)
    Table({"objid": np.arange(sra.size), "ra": sra, "dec": sdec}).write(tmp_path / "s.fits")
    ingest_sources(tmp_path / "s.fits", "edge-src")
    Table({"name": [f"L{i}" for i in range(lra.size)], "ra": lra, "dec": ldec}).write(
        tmp_path / "l.csv", format="ascii.csv"
    )
    write_literature(prepare_literature(tmp_path / "l.csv", "edge-lenses"), session=session)
    cid = session.execute(
        text("SELECT catalog_id FROM lenscat.literature_catalogs WHERE name = 'edge-lenses'")
    ).scalar()
    r = radius_arcsec / 3600.0
    got = session.execute(text(pairs_sql()), {"r": r, "cid": cid}).all()
    names = dict(
        session.execute(
            text("SELECT lens_id, name FROM lenscat.literature_lenses WHERE catalog_id = :c"), {"c": cid}
        ).all()
    )
    objid = dict(
        session.execute(
            text(
                "SELECT source_id, objid FROM lenscat.sources s JOIN lenscat.surveys v "
                "USING (survey_id) WHERE v.name = 'edge-src'"
            )
        ).all()
    )
    got_pairs = sorted((int(names[a][1:]), int(objid[b])) for a, b, _ in got)
    il, isrc, _, _ = search_around_sky(
        SkyCoord(lra * u.deg, ldec * u.deg), SkyCoord(sra * u.deg, sdec * u.deg), radius_arcsec * u.arcsec
    )
    assert got_pairs == sorted(zip(il.tolist(), isrc.tolist(), strict=True)) and len(got_pairs) > 50
