"""Joint evidence on a constructed world: grades, classifier scores, spectral hits, lens models and a
literature match written through the domain services; the ranking's order and each contribution."""

from __future__ import annotations

import math
from typing import Any

import astropy.units as u
import h5py
import numpy as np
import pytest
from astropy.table import Table
from sqlalchemy import text

from lenscat.errors import InvalidParameter
from lenscat.evidence.service import evidence_of, joint_evidence

N_SOURCES = 20
SCORES = {0: 0.95, 1: 0.9, 2: 0.6, 3: 0.2, 4: 0.5, 5: 0.99}


def write_stein(path, n: int = N_SOURCES, size: int = 64) -> None:
    """A Stein-layout survey file: galaxies with an arc in nanomaggies, RA 150-151, Dec 2-3."""
    rng = np.random.default_rng(5)
    yy, xx = np.mgrid[:size, :size] - (size - 1) / 2
    rr = np.hypot(xx, yy)
    images = rng.normal(0, 0.003, size=(n, 3, size, size)).astype(np.float32)
    for i in range(n):
        images[i] += (np.array([0.2, 0.5, 0.9])[:, None, None] * np.exp(-(rr**2) / 18.0)).astype(np.float32)
        images[i] += (np.array([0.4, 0.2, 0.1])[:, None, None] * np.exp(-((rr - 6) ** 2) / 2.0)).astype(np.float32)
    with h5py.File(path, "w") as fh:
        fh["images"] = images
        fh["ra"] = np.linspace(150.1, 150.9, n)
        fh["dec"] = np.linspace(2.1, 2.9, n)
        fh["objid"] = np.arange(5001, 5001 + n, dtype=np.int64)
        fh["mag_r"] = np.linspace(18.0, 20.0, n).astype(np.float32)
        fh["z_spec"] = np.full(n, 0.3, dtype=np.float32)


def lens_model(source_id: int, theta_e: float, flags: tuple[str, ...] = (), arc_mag: float | None = 21.5):
    from lenscat.modelling.types import LensModel

    return LensModel(
        model_id=0,
        source_id=source_id,
        theta_e=theta_e,
        theta_e_err=0.05,
        e1=0.1,
        e1_err=0.02,
        e2=-0.05,
        e2_err=0.02,
        gamma1=0.02,
        gamma1_err=0.01,
        gamma2=0.01,
        gamma2_err=0.01,
        center_x=0.0,
        center_x_err=0.02,
        center_y=0.0,
        center_y_err=0.02,
        source_x=0.1,
        source_x_err=0.05,
        source_y=-0.05,
        source_y_err=0.05,
        arc_mag=arc_mag,
        arc_band="g",
        vet_flags=flags,
    )


def build_world(session, tmp_path) -> dict[str, int]:
    """The evidence world; returns {'s0'...'s19', 'classifier'...: ids}.

    s0 A, top score, a supporting Lyman-alpha hit, a vetted model; s1 A, a model that failed
    vetting and an [OII] hit too close to the galaxy's redshift; s2 B with a vetted model; s3 B with
    a confirmed literature lens; s4 N; s5 ungraded but the classifier's top source.
    """
    from lenscat.catalogue.ingest import ingest_sources
    from lenscat.classifiers.scoring import upsert_scores
    from lenscat.grading.accounts import add_grader
    from lenscat.grading.grades import GradeInput, record_grades
    from lenscat.literature.crossmatch import crossmatch_catalog
    from lenscat.literature.ingest import prepare_literature
    from lenscat.literature.service import write_literature
    from lenscat.literature.types import LiteratureColumns
    from lenscat.modelling.service import store_lens_models
    from lenscat.registry.versions import register_model
    from lenscat.spectra.detectors import Candidates, HitRow
    from lenscat.spectra.scan import write_scan_results

    h5 = tmp_path / "ev.h5"
    write_stein(h5)
    ingest_sources(h5, "ev-sim", progress=False)
    by_objid = dict(session.execute(text("SELECT objid, source_id FROM public.sources WHERE survey = 'ev-sim'")).all())
    ids = {f"s{k}": int(by_objid[str(5001 + k)]) for k in range(N_SOURCES)}
    alice, _ = add_grader("ev-alice", password="alice-pass", session=session)
    g = GradeInput
    record_grades(
        alice,
        [g(ids["s0"], "A"), g(ids["s1"], "A"), g(ids["s2"], "B"), g(ids["s3"], "B"), g(ids["s4"], "N")],
        session=session,
    )
    clf, _ = register_model(
        "classifier",
        "ev-clf",
        architecture="linear",
        output_dim=1,
        checkpoint_path=None,
        checkpoint_sha256="c" * 64,
        origin="trained",
        session=session,
    )
    ids["classifier"] = clf.model_id
    scores = {ids[f"s{k}"]: SCORES.get(k, 0.05 + 0.005 * k) for k in range(N_SOURCES)}
    upsert_scores(clf, np.array(list(scores)), np.array(list(scores.values())), job_id=None, session=session)
    lm, _ = register_model(
        "lensmodel",
        "ev-lm",
        architecture="sie-cnn",
        output_dim=9,
        checkpoint_path=None,
        checkpoint_sha256="f" * 64,
        origin="trained",
        session=session,
    )
    store_lens_models(
        [
            lens_model(ids["s0"], 1.2),
            lens_model(ids["s1"], 1.0, flags=("arcs_disagree",)),
            lens_model(ids["s2"], 0.8, arc_mag=None),
        ],
        model_id=lm.model_id,
        job_id=None,
        session=session,
    )
    det, _ = register_model(
        "detector",
        "ev-det",
        architecture="matched-filter",
        output_dim=None,
        checkpoint_path=None,
        checkpoint_sha256="d" * 64,
        origin="configured",
        session=session,
    )
    pack = session.execute(
        text(
            "INSERT INTO lenscat.spectrum_packs (name, path, window_k0, window_n, veto_k0, veto_n, dlog) "
            "VALUES ('ev-pack', '/nonexistent', 0, 10, 0, 10, 1e-4) RETURNING pack_id"
        )
    ).scalar_one()
    specs = []
    for k, key in enumerate(("s0", "s1")):
        specs.append(
            session.execute(
                text(
                    "INSERT INTO lenscat.spectra (survey, spec_key, ra, dec, z, source_id, file_path, file_row, "
                    "pack_id, pack_row) VALUES ('sdss', :k, 150, 2, 0.3, :s, '/nonexistent', 0, :p, :r) "
                    "RETURNING spectrum_id"
                ),
                {"k": f"ev-{key}", "s": ids[key], "p": pack, "r": k},
            ).scalar_one()
        )
    cands = Candidates(
        row=np.array([0, 1]),
        pixel=np.array([10, 20]),
        snr=np.array([9.0, 7.0]),
        prob=np.array([np.nan, np.nan]),
        best=np.array([9.0, 7.0]),
    )
    hits = [
        HitRow(specs[0], 10, 3768.6, {"z_source": 2.1, "snr": 9.0, "fit_ok": True, "line": "lya"}),
        HitRow(specs[1], 20, 4884.0, {"z_source": 0.31, "snr": 7.0, "fit_ok": True, "line": "oii"}),
    ]
    write_scan_results(det, np.array(specs), cands, hits, job_id=None, session=session)
    cat = tmp_path / "ev-lenses.csv"
    s3 = session.execute(text("SELECT ra, dec FROM lenscat.sources WHERE source_id = :i"), {"i": ids["s3"]}).one()
    Table({"name": ["EV J1000+0230"], "ra": [s3.ra], "dec": [s3.dec], "grade": ["confirmed"]}).write(
        cat, format="ascii.csv"
    )
    write_literature(prepare_literature(cat, "ev-lit", LiteratureColumns()), session=session)
    crossmatch_catalog("ev-lit", 2 * u.arcsec, session=session)
    session.flush()
    return ids


def _by_source(table: Table) -> dict[int, dict[str, Any]]:
    return {int(r["source_id"]): {c: r[c] for c in table.colnames} for r in table}


def test_joint_evidence_order_contributions_and_categories(session, tmp_path):
    ids = build_world(session, tmp_path)
    t = joint_evidence(session=session, grades="A,B,C,N")
    order = [int(i) for i in t["source_id"]]
    assert order == [ids[k] for k in ("s0", "s3", "s2", "s1", "s4")]
    assert t["ra"].unit == u.deg and t["theta_e"].unit == u.arcsec and t["arc_mag"].unit == u.mag
    rows = _by_source(t)
    n = N_SOURCES

    def image(n_above: int) -> float:
        return min(max(0.5 * math.log10(n / (n_above + 1)), 0.0), 2.0)

    expected = {  # grade, image, spectral, model, literature, category
        "s0": (2.0, image(1), 2.0, 0.5, 0.0, "spectroscopically supported"),
        "s1": (2.0, image(2), 0.0, -1.5, 0.0, "vetoed by model"),
        "s2": (1.0, image(3), 0.0, 0.5, 0.0, "imaging + model"),
        "s3": (1.0, image(5), 0.0, 0.0, 3.0, "known lens"),
        "s4": (-2.0, image(4), 0.0, 0.0, 0.0, "rejected by graders"),
    }
    for key, (gr, im, sp, mo, li, cat) in expected.items():
        r = rows[ids[key]]
        got = [float(r[c]) for c in ("grade_llr", "image_llr", "spectral_llr", "model_llr", "literature_llr")]
        assert got == pytest.approx([gr, im, sp, mo, li], abs=1e-9), key
        assert float(r["evidence_score"]) == pytest.approx(gr + im + sp + mo + li, abs=1e-9)
        assert r["category"] == cat, key
    s0 = rows[ids["s0"]]
    assert s0["best_hit_line"] == "lya" and float(s0["best_hit_z_source"]) == pytest.approx(2.1)
    assert int(s0["n_supporting_hits"]) == 1 and float(s0["score_percentile"]) == pytest.approx(95.0)
    assert float(s0["theta_e"]) == pytest.approx(1.2) and s0["passed_vetting"] == "yes"
    # the [OII] hit of s1 sits 0.01 above the galaxy's redshift: not support (margin 0.05)
    assert int(rows[ids["s1"]]["n_supporting_hits"]) == 0 and rows[ids["s1"]]["vet_flags"] == "arcs_disagree"
    assert rows[ids["s3"]]["literature_status"] == "confirmed"
    # a classifier's top N joins the graded selection; s5 is ungraded and only there
    top = joint_evidence(session=session, grades="A", classifier="ev-clf", top=1)
    assert [int(i) for i in top["source_id"]] == [ids["s0"], ids["s1"], ids["s5"]]
    s5 = _by_source(top)[ids["s5"]]
    assert s5["category"] == "imaging only" and s5["consensus_grade"] == ""
    assert float(s5["image_llr"]) == pytest.approx(image(0))
    one = evidence_of(ids["s2"], session=session)
    assert one is not None and one["category"] == "imaging + model"
    # a newer lens-model version takes over (as lens_model_for): theta_E 0.3" is too small to count
    from lenscat.modelling.service import lens_model_for, store_lens_models
    from lenscat.registry.versions import register_model

    lm2, _ = register_model(
        "lensmodel",
        "ev-lm2",
        architecture="sie-cnn",
        output_dim=9,
        checkpoint_path=None,
        checkpoint_sha256="e" * 64,
        origin="trained",
        session=session,
    )
    store_lens_models([lens_model(ids["s2"], 0.3)], model_id=lm2.model_id, job_id=None, session=session)
    newer = evidence_of(ids["s2"], session=session)
    latest = lens_model_for(ids["s2"], session=session)
    assert newer is not None and latest is not None and newer["lens_model"] == latest.lens_model
    assert str(newer["lens_model"]).startswith("ev-lm2@") and newer["model_llr"] == 0.0
    # the public view holds the graded, modelled and supported sources, not the merely scored
    in_view = set(session.execute(text("SELECT source_id FROM public.joint_evidence")).scalars())
    assert {ids[f"s{k}"] for k in range(5)} <= in_view and ids["s5"] not in in_view


def test_joint_evidence_refuses_bad_selections(session):
    with pytest.raises(InvalidParameter, match="top"):
        joint_evidence(session=session, top=5)
    with pytest.raises(InvalidParameter, match="unknown grade 'Q'"):
        joint_evidence(session=session, grades="A,Q")
