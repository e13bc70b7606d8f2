"""Similarity search with filters, FITS cutouts registered as sources, and embedding in-process."""

import json
import re
import sys
from pathlib import Path

import astropy.units as u
import numpy as np
import pytest
from astropy.coordinates import SkyCoord
from sqlalchemy import text

from lenscat.catalogue.surveys import ensure_survey
from lenscat.cli import main
from lenscat.embeddings.similarity import Query, query_from_source, similar
from lenscat.embeddings.vectors import ensure_hnsw_index, upsert_embeddings
from lenscat.errors import LenscatError, NotFoundError
from lenscat.registry.versions import register_model

IMAGES = Path(__file__).parents[1] / "data" / "images"


def _world(session, n=3000, seed=0, clusters=None):
    """Sources in a 2x2 deg field with r mags and clustered unit vectors (``clusters``: a list that
    receives each source's cluster)."""
    rng = np.random.default_rng(seed)
    sv = ensure_survey("sim-sim", ["g", "r", "z"], session=session)
    ra, dec = rng.uniform(150, 152, n), rng.uniform(1, 3, n)
    mag = rng.uniform(17, 23, n)
    ids = np.array(
        session.execute(
            text(
                "INSERT INTO lenscat.sources (survey_id, objid, ra, dec, mag) "
                "SELECT :sv, 'o' || i, r, d, ARRAY[m + 1, m, m - 0.5]::real[] "
                "FROM unnest(CAST(:ra AS float8[]), CAST(:dec AS float8[]), CAST(:m AS float8[])) "
                "WITH ORDINALITY AS t(r, d, m, i) RETURNING source_id"
            ),
            {"sv": sv.survey_id, "ra": ra.tolist(), "dec": dec.tolist(), "m": mag.tolist()},
        )
        .scalars()
        .all()
    )
    model, _ = register_model(
        "encoder",
        "filt",
        architecture="resnet-small",
        output_dim=24,
        checkpoint_path=None,
        checkpoint_sha256="f" * 64,
        origin="trained",
        session=session,
    )
    centres = rng.normal(size=(10, 24))
    member = rng.integers(0, 10, n)
    if clusters is not None:
        clusters.extend(member.tolist())
    vec = centres[member] + 0.5 * rng.normal(size=(n, 24))
    upsert_embeddings(model, ids, vec, session=session)
    ensure_hnsw_index(model, session=session)
    return model, ids, ra, dec, mag


def test_filters_still_return_k_rows(session):
    model, ids, ra, dec, mag = _world(session)
    q = query_from_source(int(ids[0]), model, session=session)
    assert q.mag == pytest.approx(mag[0], abs=1e-4)
    res = similar(q, encoder=model, k=50, session=session, mag_window=0.5 * u.mag)
    assert len(res) == 50 and int(ids[0]) not in set(res["source_id"])
    assert np.all(np.abs(res["mag_r"] - q.mag) <= 0.5 + 1e-4)  # ~1/6 of the sources pass
    assert np.all(np.diff(res["similarity"]) <= 1e-9) and list(res["rank"]) == list(range(1, 51))
    # nothing within 25 arcsec of the query or of a better-ranked result
    pos = SkyCoord(res["ra"], res["dec"])
    assert np.all(pos.separation(q.coord).arcsec > 25)
    _, d2, _ = pos.match_to_catalog_sky(pos, nthneighbor=2)
    assert np.all(d2.arcsec > 25)
    # region filter and k = 1000 (beyond ef_search's default of 40)
    reg = similar(
        q,
        encoder=model,
        k=200,
        session=session,
        mag_window=None,
        exclude_radius=None,
        region=(SkyCoord(151 * u.deg, 2 * u.deg), 0.5 * u.deg),
    )
    assert len(reg) == 200
    assert np.all(SkyCoord(reg["ra"], reg["dec"]).separation(SkyCoord(151 * u.deg, 2 * u.deg)).deg <= 0.5)
    big = similar(q, encoder=model, k=1000, session=session, mag_window=None, exclude_radius=None)
    assert len(big) == 1000
    with pytest.raises(LenscatError, match="k must be between 1 and 1000"):
        similar(q, encoder=model, k=1001, session=session)


def test_exclude_known_lenses(session):
    model, ids, ra, dec, _ = _world(session, seed=1)
    q = query_from_source(int(ids[0]), model, session=session)
    first = similar(q, encoder=model, k=5, session=session, mag_window=None, exclude_radius=None)
    top = int(first["source_id"][0])
    cat = session.execute(
        text(
            "INSERT INTO lenscat.literature_catalogs (name, path, sha256, format) VALUES ('k', 'x', 'y', 'csv') "
            "RETURNING catalog_id"
        )
    ).scalar()
    lens = session.execute(
        text(
            "INSERT INTO lenscat.literature_lenses (catalog_id, row_number, name, ra, dec, raw) "
            "VALUES (:c, 1, 'L', 150.5, 2.0, '{}') RETURNING lens_id"
        ),
        {"c": cat},
    ).scalar()
    session.execute(
        text(
            "INSERT INTO lenscat.crossmatches (lens_id, source_id, separation_arcsec, is_nearest, "
            "rank, radius_arcsec) VALUES (:l, :s, 0.1, true, 1, 5)"
        ),
        {"l": lens, "s": top},
    )
    again = similar(q, encoder=model, k=5, session=session, mag_window=None, exclude_radius=None)
    assert bool(again["known_lens"][0]) is (int(again["source_id"][0]) == top)
    excl = similar(q, encoder=model, k=5, session=session, mag_window=None, exclude_radius=None, exclude_known=True)
    assert top not in set(excl["source_id"]) and len(excl) == 5
    # already graded / labelled sources can be left out too
    second = int(first["source_id"][1])
    session.execute(
        text("INSERT INTO lenscat.labels (source_id, label, origin, provenance) VALUES (:s, 0, 'human', 'grader-a')"),
        {"s": second},
    )
    unl = similar(q, encoder=model, k=5, session=session, mag_window=None, exclude_radius=None, exclude_labelled=True)
    assert second not in set(unl["source_id"]) and len(unl) == 5 and unl.meta["exclude_labelled"]


def test_query_errors(session):
    model, ids, *_ = _world(session, n=50, seed=2)
    with pytest.raises(NotFoundError, match="no source with source_id"):
        query_from_source(10**12, model, session=session)
    with pytest.raises(LenscatError, match="dimensions"):
        similar(Query(np.ones(5)), encoder=model, k=3, session=session)


def test_fits_cutouts_register_and_embed(session, tmp_path):
    from lenscat.catalogue.ingest_fits import ingest_fits_cutouts
    from lenscat.embeddings.embed import embed_chunk, plan_embed_job
    from lenscat.jobs.service import run_here
    from lenscat.models.checkpoint import save_encoder
    from lenscat.models.resnet import build_encoder
    from lenscat.registry.versions import store_checkpoint

    files = [
        f
        for stem in ("J120540_43_491029_3", "SDSSJ1430_6104")  # two of the 17 lenses the folder holds
        for f in sorted((IMAGES / "ps1_sled_lenses").glob(f"{stem}_PS1_[grz].fits"))
    ]
    files += [IMAGES / "hst_slacs" / "SDSSJ0029-0055_F814W_99px.fits"]
    done = ingest_fits_cutouts(files, "real-lenses", session=session)
    again = ingest_fits_cutouts(files, "real-lenses", session=session)
    assert [d.source_id for d in done] == [d.source_id for d in again] and len(done) == 3
    j1430 = next(d for d in done if d.objid == "SDSSJ1430_6104_PS1")
    assert j1430.bands == ["g", "r", "z"] and len(j1430.files) == 3
    # the SLACS lens is at the centre: SLED gives 217.64483, 61.06800
    assert (
        SkyCoord(j1430.ra * u.deg, j1430.dec * u.deg).separation(SkyCoord(217.64483 * u.deg, 61.068 * u.deg)).arcsec < 2
    )

    torch_enc = build_encoder("resnet-small", output_dim=32)
    save_encoder(torch_enc, tmp_path / "enc.pt", arch="resnet-small", hparams={"output_dim": 32})
    path, sha = store_checkpoint(tmp_path / "enc.pt")
    register_model(
        "encoder",
        "tiny",
        architecture="resnet-small",
        output_dim=32,
        checkpoint_path=path,
        checkpoint_sha256=sha,
        origin="initialised",
        input_spec={"bands": ["g", "r", "z"], "pixel_scale_arcsec": 0.262, "stamp": 152},
        session=session,
    )
    job = plan_embed_job("tiny", surveys=["real-lenses"], chunk_size=2, session=session)
    assert (job.n_items, job.n_chunks) == (3, 2)
    assert run_here(job.job_id, embed_chunk, session=session) == 3
    assert run_here(job.job_id, embed_chunk, session=session) == 0  # nothing left to do
    n = session.execute(text("SELECT count(*) FROM embeddings WHERE encoder = 'tiny'")).scalar()
    assert n == 3
    state = session.execute(text("SELECT status, n_done FROM jobs WHERE job_id = :j"), {"j": job.job_id}).one()
    assert tuple(state) == ("done", 3)


def _label(session, ids, labels):
    session.execute(
        text(
            "INSERT INTO lenscat.labels (source_id, label, origin, provenance) "
            "SELECT s, l, 'simulation', 'test' FROM unnest(CAST(:s AS bigint[]), CAST(:l AS int[])) "
            "AS t(s, l)"
        ),
        {"s": [int(i) for i in ids], "l": [int(v) for v in labels]},
    )


def test_lens_query_enrichment(session, monkeypatch, capsys):
    from lenscat.embeddings.similarity_eval import lens_query_enrichment

    member: list[int] = []
    model, ids, *_ = _world(session, seed=3, clusters=member)
    with pytest.raises(LenscatError, match="no labelled lens among the 3000 sources"):
        lens_query_enrichment(model, session=session, progress=False)
    # lenses = one cluster of the embedding space: the neighbours of a lens are lenses
    lens = np.array(member) == 0
    _label(session, ids, lens)
    ev = lens_query_enrichment(model, session=session, max_queries=40, progress=False)
    assert ev.n_sources == 3000 and ev.n_lenses == int(lens.sum()) and len(ev.queries) == 40
    assert ev.base_rate == pytest.approx(lens.mean())
    assert set(ev.queries["source_id"]) <= set(ids[lens].tolist())
    q = ev.queries
    assert np.all(q["n_results"] == 100) and np.all(q["n_lenses_found"] <= 100)
    assert np.allclose(q["lens_fraction"], q["n_lenses_found"] / q["n_results"])
    # a +-0.5 mag window of a 6 mag range holds ~50 lenses: the ceiling is ~half the top 100
    assert 3 < ev.ceiling < 7 and 0.8 * ev.ceiling < ev.enrichment <= ev.ceiling + 1e-9
    wide = lens_query_enrichment(
        model, session=session, max_queries=40, mag_window=None, exclude_radius=None, progress=False
    )
    assert wide.ceiling == pytest.approx(1 / ev.base_rate) and wide.enrichment > 0.9 / ev.base_rate
    assert wide.filters["mag_window"] is None and wide.filters["exclude_radius_arcsec"] is None
    # random labels: no enrichment beyond noise
    session.execute(text("DELETE FROM lenscat.labels WHERE provenance = 'test'"))
    _label(session, ids, np.random.default_rng(0).random(3000) < 0.05)
    rand = lens_query_enrichment(model, session=session, k=200, progress=False)
    assert rand.filters["n_queries"] == rand.n_lenses and 0.5 < rand.enrichment < 1.6

    # the command line: summary and per-query rows
    def cli(*args):
        monkeypatch.setattr(sys, "argv", ["lenscat", "encoder", "evaluate", "--name", "filt", *args])
        code = 0
        try:
            main()
        except SystemExit as e:
            code = int(e.code or 0)
        return (code, *capsys.readouterr())

    code, out, _ = cli("--format", "json", "--labels", "simulation", "-k", "200")
    assert code == 0
    summary = json.loads(out)
    assert summary["enrichment"] == pytest.approx(rand.enrichment, abs=1e-3) and summary["k"] == 200
    assert summary["label_origins"] == ["simulation"] and summary["mag_window"] == 0.5
    code, out, _ = cli("--per-query", "--max-queries", "5", "--format", "csv")
    lines = out.splitlines()
    assert code == 0 and lines[0].startswith("source_id,objid,mag,n_window") and len(lines) == 6
    code, out, _ = cli("-k", "200")
    assert code == 0 and re.search(r"160 lens queries, top 200 .* enrichment [01]\.\dx \(a perfect encoder", out)
    code, _, err = cli("--survey", "nope")
    assert code == 2 and "nope" in err
