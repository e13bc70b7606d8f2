"""Injection sets: lensed arcs painted on a tiny simulated survey's own galaxies (lenscat.simulate.injection)."""

import h5py
import numpy as np
import pytest
from sqlalchemy import text

from lenscat.classifiers.labels import import_labels, near_known_lenses
from lenscat.errors import LenscatError
from tests.integration.test_cli import run

N, STAMP, SEED = 100, 64, 11
HOST_CUTS = {"host_min_g_r": 0.8, "host_min_r_z": 0.4, "host_max_mag_r": 22.0}


@pytest.fixture(scope="module")
def sim_h5(tmp_path_factory):
    """100 cutouts of 64 px, 10 % lenses (rendered once for the module)."""
    from lenscat.simulate.survey import simulate_survey

    path = tmp_path_factory.mktemp("inj") / "host.h5"
    simulate_survey(N, 0.1, SEED, path, stamp=STAMP, workers=1, progress=False)
    return path


def _host_survey(session, sim_h5, name="inj-host"):
    from lenscat.catalogue.ingest import ingest_sources

    ingest_sources(sim_h5, name, progress=False)
    import_labels(sim_h5, label_col="is_lens", survey=name, origin="simulation", session=session)
    return dict(
        session.execute(
            text(
                "SELECT s.objid, s.source_id FROM lenscat.sources s JOIN lenscat.surveys v "
                "USING (survey_id) WHERE v.name = :n"
            ),
            {"n": name},
        ).all()
    )


def _inject(session, tmp_path, n=20, **kw):
    from lenscat.simulate.injection import inject_survey

    return inject_survey(
        "inj-host",
        n,
        kw.pop("out", tmp_path / "inj.h5"),
        session=session,
        seed=3,
        progress=False,
        **{**HOST_CUTS, **kw},
    )


def test_inject_paints_arcs_on_red_hosts_and_records_truth(session, sim_h5, tmp_path):
    """Hosts are red, not lenses; pixels = host + non-negative light near theta_E; truth, labels, kind."""
    ids = _host_survey(session, sim_h5)
    with h5py.File(sim_h5, "r") as fh:
        lens_objids = {str(o) for o, y in zip(fh["objid"][()], fh["is_lens"][()], strict=True) if y}
        host_imgs = fh["images"][()]
        host_objids = [str(o) for o in fh["objid"][()]]
        g_r_all = fh["mag_g"][()] - fh["mag_r"][()]
    s = _inject(session, tmp_path)
    assert (s.n, s.survey, s.parent, s.n_labels_written) == (20, "inj-host-inject", "inj-host", 20)
    assert 0.8 <= s.theta_e_range[0] <= s.theta_e_range[1] <= 3.0 and s.arc_snr_range[1] > 0
    kind, parent = session.execute(
        text(
            "SELECT v.kind, p.name FROM lenscat.surveys v JOIN lenscat.surveys p "
            "ON p.survey_id = v.parent_survey_id WHERE v.name = 'inj-host-inject'"
        )
    ).one()
    assert (kind, parent) == ("injection", "inj-host")
    rows = session.execute(
        text(
            "SELECT l.label, l.origin, l.provenance, l.detail "
            "FROM lenscat.labels l JOIN lenscat.sources s USING (source_id) "
            "JOIN lenscat.surveys v USING (survey_id) WHERE v.name = 'inj-host-inject' ORDER BY s.objid"
        )
    ).all()
    assert len(rows) == 20 and {(r.label, r.origin, r.provenance) for r in rows} == {(1, "injection", str(s.path))}
    hosts = [r.detail["host_objid"] for r in rows]
    assert len(set(hosts)) == 20 and not set(hosts) & lens_objids  # known lenses are never hosts
    assert all(
        {"theta_e", "magnification", "arc_snr", "host_source_id", "lens_q", "gamma1", "source_mag_r", "injection_seed"}
        <= set(r.detail)
        for r in rows
    )
    assert {r.detail["host_source_id"] for r in rows} == {ids[h] for h in hosts}
    host_g_r = np.array([g_r_all[host_objids.index(h)] for h in hosts])
    assert host_g_r.min() >= 0.8 and np.median(host_g_r) > np.median(g_r_all)  # red hosts
    with h5py.File(s.path, "r") as fh:
        imgs, theta_e = fh["images"][()], fh["theta_e"][()]
        file_hosts = [x.decode() for x in fh["host_objid"][()]]
        assert list(fh["kind"][()]) == [b"injection"] * 20 and fh["is_lens"][()].all()
    yy, xx = np.mgrid[:STAMP, :STAMP] - (STAMP - 1) / 2
    rr = np.hypot(yy, xx) * 0.262
    for k, h in enumerate(file_hosts):
        diff = imgs[k] - host_imgs[host_objids.index(h)]
        assert diff.min() >= -1e-5  # host pixels + non-negative lensed light
        r_band = diff[1]
        near = np.abs(rr - theta_e[k]) < 1.5
        assert r_band[near].sum() > 0.5 * r_band.sum() > 0  # the light sits near the Einstein ring

    # the injected lenses are positives of their own set; the hosts stay usable as negatives
    near = near_known_lenses(session=session, candidates=np.array(list(ids.values())))
    assert not {ids[h] for h in hosts} & near

    again = _inject(session, tmp_path)  # a no-op
    assert (again.rendered, again.n_labels_written, again.n_labels_removed) == (False, 0, 0)
    assert again.ingest["batches_written"] == 0 and again.ingest["ingest_id"] == s.ingest["ingest_id"]
    assert session.execute(text("SELECT count(*) FROM public.sources WHERE survey = 'inj-host-inject'")).scalar() == 20
    assert session.execute(text("SELECT count(*) FROM lenscat.labels WHERE origin = 'injection'")).scalar() == 20


def test_injected_sources_stay_out_of_sky_queries_rankings_and_exports(session, sim_h5, tmp_path):
    import astropy.units as u
    from astropy.coordinates import SkyCoord

    from lenscat.classifiers.ranking import top_candidates
    from lenscat.export.catalogue import candidate_table
    from lenscat.grading.accounts import add_grader
    from lenscat.grading.grades import GradeInput, record_grades
    from lenscat.registry.versions import register_model
    from lenscat.sky.service import cone_search

    _host_survey(session, sim_h5)
    s = _inject(session, tmp_path, n=5)
    inj = dict(
        session.execute(
            text(
                "SELECT s.source_id, l.detail->>'host_source_id' FROM lenscat.sources s "
                "JOIN lenscat.labels l USING (source_id) WHERE l.origin = 'injection'"
            )
        ).all()
    )
    (sid, host), *_ = inj.items()
    ra, dec = session.execute(text("SELECT ra, dec FROM lenscat.sources WHERE source_id = :i"), {"i": sid}).one()
    found = cone_search(SkyCoord(ra * u.deg, dec * u.deg), 2 * u.arcsec, session=session)
    assert int(host) in list(found["source_id"]) and not set(found["source_id"]) & set(inj)
    sql_cone = session.execute(
        text("SELECT source_id FROM cone_search(:ra, :dec, 2)"), {"ra": ra, "dec": dec}
    ).scalars()
    assert set(sql_cone) == {int(host)}
    named = cone_search(SkyCoord(ra * u.deg, dec * u.deg), 2 * u.arcsec, session=session, surveys=[s.survey])
    assert list(named["source_id"]) == [sid]

    clf, _ = register_model(
        "classifier",
        "inj-probe",
        architecture="linear",
        output_dim=1,
        checkpoint_path=None,
        checkpoint_sha256="a" * 64,
        origin="trained",
        session=session,
    )
    for i in [*inj, int(host)]:  # the injected lenses score highest
        session.execute(
            text("INSERT INTO lenscat.scores (model_id, source_id, score) VALUES (:m, :s, :v)"),
            {"m": clf.model_id, "s": i, "v": 0.99 if i in inj else 0.5},
        )
    top = top_candidates("inj-probe", 10, session=session)
    assert list(top["source_id"]) == [int(host)]
    assert set(top_candidates("inj-probe", 10, session=session, surveys=[s.survey])["source_id"]) == set(inj)

    grader, _ = add_grader("inj-grader", password="grader-pass", session=session)
    record_grades(grader, [GradeInput(sid, "A"), GradeInput(int(host), "A")], session=session)
    assert list(candidate_table(session=session)["source_id"]) == [int(host)]


def test_bad_requests_are_one_line_errors(session, sim_h5, tmp_path):
    _host_survey(session, sim_h5)
    for kw, msg in (
        (dict(n=20, theta_e=(3.0, 1.0)), "theta_E range is inverted"),
        (dict(n=N), "eligible hosts"),
        (dict(n=5, source_mag=(25, 20)), "inverted"),
    ):
        with pytest.raises(LenscatError, match=msg) as exc:
            _inject(session, tmp_path, **kw)
        assert "\n" not in str(exc.value)
    from lenscat.simulate.injection import inject_survey

    with pytest.raises(LenscatError, match="no survey named 'nope'"):
        inject_survey("nope", 5, tmp_path / "x.h5", session=session)


def test_simulate_inject_from_the_cli(session, sim_h5, tmp_path, monkeypatch, capsys):
    _host_survey(session, sim_h5)
    out = tmp_path / "cli-inj.h5"
    args = [
        "simulate",
        "inject",
        "--survey",
        "inj-host",
        "--n",
        "4",
        "--name",
        "inj-cli",
        "--out",
        str(out),
        "--seed",
        "5",
        "--theta-e",
        "1,2",
        "--host-min-g-r",
        "0.8",
        "--host-min-r-z",
        "0.4",
    ]
    code, stdout, err = run(monkeypatch, capsys, *args)
    assert code == 0, err
    assert "injection set inj-cli (parent inj-host): 4 lenses" in stdout and "theta_E 1." in stdout
    code, _, err = run(monkeypatch, capsys, *args[:-6], "--theta-e", "2,1")
    assert code == 2 and err.strip().startswith("lenscat: error:") and len(err.strip().splitlines()) == 1


def test_an_interrupted_run_resumes_to_the_same_file(session, sim_h5, tmp_path, monkeypatch):
    import lenscat.simulate.injection_file as inj

    _host_survey(session, sim_h5)
    real, calls = inj.render_injection, []

    def flaky(*a, **k):
        calls.append(1)
        if len(calls) == 7:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(inj, "CHUNK", 3)
    monkeypatch.setattr(inj, "render_injection", flaky)
    out = tmp_path / "resumed.h5"
    with pytest.raises(KeyboardInterrupt):
        _inject(session, tmp_path, n=8, out=out)
    assert not out.exists() and (tmp_path / ".resumed.h5.partial").exists()
    assert session.execute(text("SELECT count(*) FROM lenscat.surveys WHERE kind = 'injection'")).scalar() == 0
    resumed = _inject(session, tmp_path, n=8, out=out)
    assert (resumed.rendered, resumed.resumed_rows, resumed.n_labels_written) == (True, 6, 8)
    monkeypatch.setattr(inj, "render_injection", real)
    fresh = _inject(session, tmp_path, n=8, out=tmp_path / "fresh.h5", name="inj-fresh")
    with h5py.File(out, "r") as a, h5py.File(fresh.path, "r") as b:
        assert np.array_equal(a["images"][()], b["images"][()]) and np.array_equal(a["theta_e"][()], b["theta_e"][()])
    assert session.execute(text("SELECT count(*) FROM public.sources WHERE survey = 'inj-host-inject'")).scalar() == 8
