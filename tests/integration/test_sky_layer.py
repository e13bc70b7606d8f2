"""The sky layer (lenscat.sky.service) against astropy: cones and pair matches, at the wrap and the poles."""

import astropy.units as u
import numpy as np
import pytest
from astropy.coordinates import SkyCoord, match_coordinates_sky, search_around_sky
from astropy.table import Table
from sqlalchemy import text

from lenscat.catalogue.ingest import ingest_sources
from lenscat.errors import LenscatError
from lenscat.sky.service import cone_ids, cone_search, match_positions, pairs_within, survey_ids, within

CENTRES = [(0.0005, 0.0), (359.9995, 10.0), (120.0, 89.9995), (200.0, -89.9999), (45.0, 30.0), (300.0, -0.0083)]


@pytest.fixture
def sky(session, tmp_path):
    """A few hundred sources around each awkward centre; returns (source ids, their positions)."""
    rng = np.random.default_rng(32)
    ra, dec = [], []
    for cra, cdec in CENTRES:
        pts = SkyCoord(cra * u.deg, cdec * u.deg).directional_offset_by(
            rng.uniform(0, 360, 250) * u.deg, rng.uniform(0, 120, 250) * u.arcsec
        )
        ra.append(pts.ra.deg)
        dec.append(pts.dec.deg)
    sra, sdec = np.concatenate(ra), np.concatenate(dec)
    Table({"objid": np.arange(sra.size), "ra": sra, "dec": sdec}).write(tmp_path / "sky.fits")
    ingest_sources(tmp_path / "sky.fits", "sky-layer")
    ids = dict(
        session.execute(
            text(
                "SELECT objid, source_id FROM lenscat.sources s JOIN lenscat.surveys v USING (survey_id) "
                "WHERE v.name = 'sky-layer'"
            )
        ).all()
    )
    return np.array([ids[str(i)] for i in range(sra.size)]), SkyCoord(sra * u.deg, sdec * u.deg)


@pytest.mark.parametrize("radius", [10 * u.arcsec, 1.5 * u.arcmin])
def test_cone_agrees_with_astropy_separation(session, sky, radius):
    sid, pos = sky
    rng = np.random.default_rng(7)
    for cra, cdec in CENTRES:
        centre = SkyCoord(cra * u.deg, cdec * u.deg).directional_offset_by(
            rng.uniform(0, 360) * u.deg, rng.uniform(0, 5) * u.arcsec
        )
        sep = centre.separation(pos)
        inside = np.flatnonzero(sep <= radius)
        order = inside[np.lexsort((sid[inside], sep[inside].arcsec))]
        table = cone_search(centre, radius, session=session, surveys=["sky-layer"])
        assert len(inside) > 5 and table["source_id"].tolist() == sid[order].tolist()
        assert np.allclose(np.asarray(table["separation"]), sep[order].arcsec, atol=1e-6)
        assert table["separation"].unit == u.arcsec and table["ra"].unit == u.deg
        hits = cone_ids(centre, radius, session=session, surveys=["sky-layer"])
        assert hits.source_id.tolist() == sid[order].tolist() and len(hits) == len(order)
        assert np.allclose(hits.separation.arcsec, sep[order].arcsec, atol=1e-6)
        assert len(cone_ids(centre, radius, session=session, surveys=["sky-layer"], limit=3)) == 3


def test_default_surveys_are_the_real_ones(session, sky):
    assert survey_ids(None, session=session) is None  # no injection set: every survey
    sid, pos = sky
    assert cone_ids(pos[0], 1 * u.arcsec, session=session).source_id[0] == sid[0]


@pytest.mark.parametrize("radius", [5 * u.arcsec, 150 * u.arcsec])
def test_match_positions_agrees_with_astropy(session, sky, radius):
    sid, pos = sky
    rng = np.random.default_rng(9)
    picks = rng.choice(len(pos), 300, replace=False)
    queries = pos[picks].directional_offset_by(rng.uniform(0, 360, 300) * u.deg, rng.uniform(0, 30, 300) * u.arcsec)
    # nearest within the radius, as match_coordinates_sky limited to the radius
    got = match_positions(queries, radius, session=session, surveys=["sky-layer"])
    idx, sep, _ = match_coordinates_sky(queries, pos)
    ok = np.flatnonzero(sep <= radius)
    assert got.index.tolist() == ok.tolist() and len(ok) > 50
    assert got.source_id.tolist() == sid[idx[ok]].tolist() and set(got.rank.tolist()) == {1}
    assert np.allclose(got.separation.arcsec, sep[ok].arcsec, atol=1e-6)
    # every pair within the radius, as search_around_sky
    every = match_positions(queries, radius, session=session, surveys=["sky-layer"], nearest=False)
    iq, isrc, _, _ = search_around_sky(queries, pos, radius)
    assert sorted(zip(every.index.tolist(), every.source_id.tolist(), strict=True)) == sorted(
        zip(iq.tolist(), sid[isrc].tolist(), strict=True)
    )
    for i in np.unique(every.index)[:50]:
        rows = every.index == i
        assert every.rank[rows].tolist() == list(range(1, rows.sum() + 1))
        assert np.all(np.diff(every.separation.arcsec[rows]) >= 0)
    # the in-memory pairing of the same positions gives the database's answer, in the same order
    mem = pairs_within(queries, pos, radius)
    assert mem.index.tolist() == every.index.tolist() and sid[mem.target].tolist() == every.source_id.tolist()
    assert np.allclose(mem.separation.arcsec, every.separation.arcsec, atol=1e-6)


def test_match_positions_takes_any_frame_and_no_positions(session, sky):
    sid, pos = sky
    got = match_positions(pos[:20].galactic, 0.1 * u.arcsec, session=session, surveys=["sky-layer"])
    assert got.source_id.tolist() == sid[:20].tolist()
    empty = match_positions(pos[:0], 1 * u.arcsec, session=session)
    assert len(empty) == 0 and empty.separation.unit == u.arcsec
    with pytest.raises(LenscatError, match="radius must be positive"):
        match_positions(pos[:3], 0 * u.arcsec, session=session)


def test_within_condition_agrees_with_astropy(session, sky):
    sid, pos = sky
    centre = SkyCoord(0.0005 * u.deg, 0.0 * u.deg)
    for outside in (False, True):
        cond, params = within("c", centre, 30 * u.arcsec, outside=outside)
        got = session.execute(
            text(
                "SELECT s.source_id FROM lenscat.sources s JOIN lenscat.surveys v USING (survey_id) "
                f"WHERE v.name = 'sky-layer' AND {cond}"
            ),
            params,
        ).scalars()
        near = centre.separation(pos) <= 30 * u.arcsec
        assert sorted(got) == sorted(sid[~near if outside else near].tolist())


def test_query_from_position_takes_the_nearest_source_with_an_embedding(session):
    """Similarity's position query goes through the sky layer's raw-id cone."""
    from lenscat.catalogue.surveys import ensure_survey
    from lenscat.embeddings.similarity import query_from_position
    from lenscat.embeddings.vectors import upsert_embeddings
    from lenscat.errors import NotFoundError
    from lenscat.registry.versions import register_model

    sv = ensure_survey("sky-emb", ["g", "r", "z"], session=session)
    ids = (
        session.execute(
            text(
                "INSERT INTO lenscat.sources (survey_id, objid, ra, dec) VALUES "
                "(:sv, 'near', 10.0, 5.0), (:sv, 'embedded', 10.0003, 5.0), (:sv, 'far', 10.01, 5.0) "
                "RETURNING source_id"
            ),
            {"sv": sv.survey_id},
        )
        .scalars()
        .all()
    )
    model, _ = register_model(
        "encoder",
        "sky-emb",
        architecture="resnet-small",
        output_dim=4,
        checkpoint_path=None,
        checkpoint_sha256="e" * 64,
        origin="trained",
        session=session,
    )
    upsert_embeddings(model, np.array(ids[1:]), np.eye(4)[:2], session=session)
    q = query_from_position(SkyCoord(10.0 * u.deg, 5.0 * u.deg), model, session=session)
    assert q.source_id == ids[1]
    with pytest.raises(NotFoundError, match="no source with an embedding"):
        query_from_position(SkyCoord(10.0 * u.deg, 5.0 * u.deg), model, radius=0.5 * u.arcsec, session=session)
