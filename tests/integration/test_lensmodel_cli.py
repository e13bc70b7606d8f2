"""`lenscat model train / run / show / evaluate` end to end on a tiny simulated survey, in process."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sqlalchemy import text

from lenscat.catalogue.ingest import ingest_sources
from lenscat.classifiers.scoring import upsert_scores
from lenscat.modelling.frames import SKY_SIGN
from lenscat.modelling.injections import injected_lens_set
from lenscat.modelling.running import psf_fwhm_of
from lenscat.modelling.service import count_lens_models, lens_model_for
from lenscat.modelling.vetting import VetRules, arc_check
from lenscat.registry.versions import get_model, register_model
from lenscat.simulate.survey import simulate_survey
from tests.integration.test_cli import run


def test_model_train_run_show_evaluate(session, tmp_path, monkeypatch, capsys):
    h5 = tmp_path / "lm.h5"
    simulate_survey(24, 0.5, 5, h5, stamp=96, workers=1, progress=False)
    ingest_sources(h5, "lm-sim")
    ids = np.asarray(
        session.execute(
            text(
                "SELECT s.source_id FROM lenscat.sources s JOIN lenscat.surveys v USING (survey_id) "
                "WHERE v.name = 'lm-sim' ORDER BY s.source_id"
            )
        )
        .scalars()
        .all()
    )
    assert len(ids) == 24
    clf, _ = register_model(
        "classifier",
        "lm-clf",
        architecture="external",
        output_dim=1,
        checkpoint_path=None,
        checkpoint_sha256="e" * 64,
        origin="external",
        session=session,
    )
    upsert_scores(clf, ids, np.linspace(0.01, 0.99, len(ids)), job_id=None, session=session)

    code, out, err = run(monkeypatch, capsys, "model", "run", "--classifier", "lm-clf", "--top", "5", "--here")
    assert code == 2 and "no lens modelling network is registered" in err and "lenscat model train" in err

    code, out, err = run(
        monkeypatch,
        capsys,
        "model",
        "train",
        "--name",
        "lm",
        "--n",
        "160",
        "--epochs",
        "2",
        "--width",
        "4",
        "--seed",
        "3",
        "--survey",
        "lm-sim",
        "--n-injections",
        "6",
        "--json",
    )
    assert code == 0, err
    rep = json.loads(out)
    assert (
        rep["model"] == "lm@1"
        and rep["created"]
        and rep["sizes"] == {"train": 266, "validation": 33, "calibration": 33}
    )
    # as many non-lenses as lenses (the hosts of the injections without an arc, simulated impostors):
    # the lens probability is calibrated and its threshold loses at most 1 % of the calibration lenses
    prob = rep["lens_probability"]
    assert prob["temperature"] > 0 and 0 <= prob["threshold"] <= 1 and prob["max_lens_loss"] == 0.01
    assert prob["calibration_set"]["lenses_kept"] >= 0.99
    # the injections' truth is in the sky frame too: the true model finds its injected arcs
    inj = injected_lens_set("lm-sim", 6, seed=3, session=session)
    assert inj.images.shape == (6, 3, 48, 48) and set(inj.kinds) == {"injection"}
    snr = [arc_check(w, t, VetRules())[1]["arc_snr"] for w, t in zip(inj.images, inj.targets, strict=True)]
    wrong = [arc_check(w, t * SKY_SIGN, VetRules())[1]["arc_snr"] for w, t in zip(inj.images, inj.targets, strict=True)]
    assert np.median(snr) > 3 and np.median(snr) > np.median(wrong)
    mv = get_model("lensmodel", "lm", session=session)
    assert mv.architecture == "lensmodel-cnn" and mv.checkpoint_sha256 and mv.training_set_sha256
    assert set(mv.hparams["calibration"]) >= {"theta_e", "source_y"} and mv.hparams["n"] == 160
    assert mv.hparams["n_injections"] == 6 and mv.hparams["survey"] == "lm-sim"
    assert mv.hparams["n_nonlenses"] == 166 and mv.hparams["vet_rules"]["min_lens_probability"] is not None
    assert mv.hparams["arc_mag_r"] == [19.0, 23.0]  # the lens-probability recipe's faint arcs too

    code, out, err = run(
        monkeypatch,
        capsys,
        "model",
        "run",
        "--classifier",
        "lm-clf",
        "--top",
        "10",
        "--chunk-size",
        "4",
        "--here",
        "--json",
    )
    assert code == 0, err
    summary = json.loads(out)
    assert summary["queued"] == 10 and summary["done"] == 10 and summary["status"] == "done"
    assert count_lens_models(mv.model_id, session=session) == 10
    top10 = ids[-10:]  # the highest scores
    got = lens_model_for(int(top10[0]), session=session)
    assert got is not None and got.job_id == summary["job_id"] and got.theta_e >= 0 and got.theta_e_err > 0
    assert isinstance(got.vet_detail.get("arc_snr"), float) and "theta_e" in got.vet_detail
    assert 0 <= got.vet_detail["lens_probability"] <= 1 and got.vet_detail["psf_fwhm_source"] == "default"
    # a catalogue that kept per-source PSF sizes in `extra`: the vetting takes the g and r mean
    session.execute(
        text("UPDATE lenscat.sources SET extra = CAST(:e AS jsonb) WHERE source_id = :s"),
        {"e": json.dumps({"psf_fwhm_g": 1.1, "psf_fwhm_r": 0.9, "x": "a"}), "s": int(top10[0])},
    )
    fw = psf_fwhm_of(np.array([int(top10[0]), int(top10[1])]), session=session)
    assert fw[0] == pytest.approx(1.0) and np.isnan(fw[1])
    assert lens_model_for(int(ids[0]), session=session) is None
    before = session.execute(
        text("SELECT source_id, theta_e, created_at FROM lenscat.lens_models WHERE model_id = :m ORDER BY 1"),
        {"m": mv.model_id},
    ).all()
    # a second run models the same sources again and changes nothing (idempotent upserts)
    code, out, err = run(
        monkeypatch, capsys, "model", "run", "--model", "lm", "--classifier", "lm-clf", "--top", "10", "--here"
    )
    assert code == 0, err
    after = session.execute(
        text("SELECT source_id, theta_e, created_at FROM lenscat.lens_models WHERE model_id = :m ORDER BY 1"),
        {"m": mv.model_id},
    ).all()
    assert before == after
    again = lens_model_for(int(top10[0]), session=session)
    assert again is not None and again.vet_detail["psf_fwhm_source"] == "cutout" and again.vet_detail["psf_fwhm"] == 1.0

    code, out, err = run(monkeypatch, capsys, "model", "show", "--top", "3", "--format", "json")
    assert code == 0, err
    rows = [json.loads(line) for line in out.splitlines()]
    assert len(rows) == 3 and rows[0]["lens_model"] == "lm@1"
    assert rows[0]["theta_e"] >= rows[1]["theta_e"] >= rows[2]["theta_e"]
    code, out, err = run(monkeypatch, capsys, "model", "show", str(int(top10[0])))
    assert code == 0 and "theta_e" in out and "arcsec" in out
    code, out, err = run(monkeypatch, capsys, "model", "show", str(int(ids[0])))
    assert code == 2 and "has no lens model" in err
    view = session.execute(
        text("SELECT count(*), bool_and(q > 0 AND q <= 1) FROM public.lens_models WHERE lens_model = 'lm@1'")
    ).one()
    assert view == (10, True)

    code, out, err = run(monkeypatch, capsys, "model", "evaluate", "--n", "12", "--seed", "2", "--json")
    assert code == 0, err
    ev = json.loads(out)
    assert ev["lensmodel"] == "lm@1" and ev["simulator"] == "independent"
    assert set(ev["all"]) == {"theta_e", "e1", "e2", "gamma1", "gamma2", "center_x", "center_y", "source_x", "source_y"}
    assert 0 <= ev["all"]["theta_e"]["cover68"] <= 1 and ev["all"]["theta_e"]["n"] == 12

    # graded sources: --grades A,B models the A and B consensus only
    from lenscat.grading.accounts import add_grader
    from lenscat.grading.grades import GradeInput, record_grades

    grader, _ = add_grader("lm-grader", token=True, session=session)
    record_grades(
        grader,
        [GradeInput(int(ids[0]), "A"), GradeInput(int(ids[1]), "B"), GradeInput(int(ids[2]), "N")],
        session=session,
    )
    code, out, err = run(monkeypatch, capsys, "model", "run", "--grades", "A,B", "--here", "--json")
    assert code == 0, err
    assert json.loads(out)["queued"] == 2 and lens_model_for(int(ids[0]), session=session) is not None
    assert lens_model_for(int(ids[2]), session=session) is None
    # --refine: a forward-model fit refines the stored values, and vet_detail says whether it was kept
    plain = lens_model_for(int(ids[0]), session=session)
    code, out, err = run(monkeypatch, capsys, "model", "run", "--grades", "A,B", "--here", "--refine", "--json")
    assert code == 0, err
    refined = lens_model_for(int(ids[0]), session=session)
    assert plain is not None and refined is not None and "refined" not in plain.vet_detail
    assert isinstance(refined.vet_detail["refined"], bool) and refined.theta_e_err > 0
    if refined.vet_detail["refined"]:
        assert refined.theta_e != plain.theta_e
    else:
        assert refined.vet_detail["refine_rejected"] and refined.theta_e == plain.theta_e
    code, out, err = run(monkeypatch, capsys, "model", "run", "--grades", "A", "--classifier", "lm-clf", "--top", "3")
    assert code == 2 and "not both" in err
