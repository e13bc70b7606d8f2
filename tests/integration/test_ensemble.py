"""Ensembles of classifier versions: rank averaging, stacking, scoring, evaluation, provenance (small world)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from astropy.table import Table
from sqlalchemy import text

from lenscat.catalogue.surveys import ensure_survey
from lenscat.classifiers.ensemble import N_QUANTILES, MissingMemberScores, train_ensemble
from lenscat.classifiers.labels import import_labels
from lenscat.classifiers.loaders import training_ids
from lenscat.classifiers.ranking import evaluate_classifier, top_candidates
from lenscat.classifiers.scoring import plan_score_job, score_chunk
from lenscat.classifiers.train_linear import train_linear_classifier
from lenscat.embeddings.vectors import upsert_embeddings
from lenscat.errors import LenscatError
from lenscat.jobs.service import run_here
from lenscat.registry.versions import register_model
from tests.integration.test_cli import run

N, N_LENS, DIM = 400, 40, 16


def _world(session, tmp_path):
    """400 sources, 40 lenses; encoder 'ens-a' sees the lenses (a lens direction), 'ens-b' is noise."""
    rng = np.random.default_rng(7)
    sv = ensure_survey("ens-sim", ["g", "r", "z"], session=session)
    ids = np.array(
        session.execute(
            text(
                "INSERT INTO lenscat.sources (survey_id, objid, ra, dec, mag) "
                "SELECT :sv, 'e' || i, r, d, ARRAY[20, 19.5, 19]::real[] "
                "FROM unnest(CAST(:ra AS float8[]), CAST(:dec AS float8[])) WITH ORDINALITY AS t(r, d, i) "
                "ORDER BY i RETURNING source_id"
            ),
            {"sv": sv.survey_id, "ra": rng.uniform(40, 44, N).tolist(), "dec": rng.uniform(-3, 1, N).tolist()},
        )
        .scalars()
        .all()
    )
    lens = np.zeros(N, bool)
    lens[rng.choice(N, N_LENS, replace=False)] = True
    va = rng.normal(size=(4, DIM))[rng.integers(0, 4, N)] + 0.7 * rng.normal(size=(N, DIM))
    va[lens, 0] += 2.0
    vb = rng.normal(size=(N, DIM))
    for name, v, sha in (("ens-a", va, "a"), ("ens-b", vb, "b")):
        enc, _ = register_model(
            "encoder",
            name,
            architecture="external",
            output_dim=DIM,
            checkpoint_path=None,
            checkpoint_sha256=sha * 64,
            origin="external",
            session=session,
        )
        upsert_embeddings(enc, ids, v, session=session)
    truth = tmp_path / "truth.ecsv"
    Table({"objid": [f"e{i + 1}" for i in range(N)], "is_lens": lens.astype(int)}).write(truth)
    import_labels(truth, label_col="is_lens", survey="ens-sim", origin="simulation", session=session)
    return ids, lens


def _probe(name, encoder, session, *, test_fraction=0.5, seed=1, score=True):
    res = train_linear_classifier(
        name, encoder, session=session, ratio=10, val_ratio=10, test_fraction=test_fraction, seed=seed, epochs=10
    )
    if score:
        _score(name, session)
    return res.model


def _score(name, session):
    job = plan_score_job(name, chunk_size=500, session=session)
    run_here(job.job_id, score_chunk, session=session)


def _scores(model, session):
    rows = session.execute(
        text("SELECT source_id, score FROM lenscat.scores WHERE model_id = :m ORDER BY source_id"),
        {"m": model.model_id},
    ).all()
    return np.array([r[0] for r in rows], np.int64), np.array([r[1] for r in rows], np.float64)


def test_rank_ensemble_equals_numpy_and_evaluates_beside_its_members(session, tmp_path, monkeypatch, capsys):
    ids, lens = _world(session, tmp_path)
    strong, noise = _probe("ens-strong", "ens-a", session), _probe("ens-noise", "ens-b", session)
    res = train_ensemble("ens-rank", ["ens-strong", "ens-noise"], method="rank", session=session)
    ens = res.model
    assert res.created and ens.architecture == "ensemble" and ens.parent_model_id is None
    assert [m["label"] for m in ens.hparams["members"]] == ["ens-strong@1", "ens-noise@1"]
    assert ens.hparams["members"][0]["checkpoint_sha256"] == strong.checkpoint_sha256
    again = train_ensemble("ens-rank", ["ens-noise", "ens-strong@1"], method="rank", session=session)
    assert not again.created and again.model.model_id == ens.model_id  # same members in any order: same version
    _score("ens-rank", session)
    assert plan_score_job("ens-rank", surveys=["ens-sim"], session=session).n_items == 0
    got_ids, got = _scores(ens, session)
    # direct numpy: each member's score -> percentile against its 1,001 quantiles (mid-rank on ties), averaged
    (ia, sa), (ib, sb) = _scores(strong, session), _scores(noise, session)
    assert np.array_equal(ia, ib) and np.array_equal(got_ids, ia) and len(ia) == N
    grid = np.linspace(0, 1, N_QUANTILES)

    def pct(s):
        q = np.quantile(s, grid)
        uq, inv = np.unique(q, return_inverse=True)
        return np.interp(s, uq, np.bincount(inv, weights=grid) / np.bincount(inv))

    np.testing.assert_allclose(got, (pct(sa) + pct(sb)) / 2, atol=1e-6)
    empirical = ((np.argsort(np.argsort(sa)) + np.argsort(np.argsort(sb))) / 2) / (N - 1)
    np.testing.assert_allclose(got, empirical, atol=0.02)
    # it leaves out what every member trained or validated on, and is not worse than the random member
    seen = np.union1d(training_ids(strong), training_ids(noise))
    assert np.array_equal(training_ids(ens), seen)
    ev = evaluate_classifier("ens-rank", baselines=["ens-strong", "ens-noise"], session=session)
    assert set(ev["models"]) == {"ens-rank@1", "ens-strong@1", "ens-noise@1"}
    assert ev["models"]["ens-rank@1"]["auc"] >= ev["models"]["ens-noise@1"]["auc"]
    assert ev["models"]["ens-rank@1"]["auc"] > 0.75
    # the CLI shows the members beside the ensemble without being asked; list names them; top takes it
    code, out, err = run(monkeypatch, capsys, "classifier", "evaluate", "--name", "ens-rank", "--format", "json")
    assert code == 0, err
    cli_ev = json.loads(out)
    assert set(cli_ev["models"]) == set(ev["models"]) and cli_ev["n_eval"] == ev["n_eval"]
    code, out, _ = run(monkeypatch, capsys, "classifier", "list", "--format", "json")
    rows = {r["classifier"]: r for r in map(json.loads, out.splitlines())}
    assert rows["ens-rank"]["architecture"] == "ensemble" and rows["ens-rank"]["members"] == "ens-strong@1,ens-noise@1"
    top = top_candidates("ens-rank", 10, session=session)
    assert len(top) == 10 and np.all(np.diff(top["score"]) <= 0)


def test_stacking_fits_on_held_out_lenses_and_refuses_with_too_few(session, tmp_path, monkeypatch, capsys):
    ids, lens = _world(session, tmp_path)
    strong, noise = _probe("ens-strong", "ens-a", session), _probe("ens-noise", "ens-b", session)
    res = train_ensemble("ens-stack", ["ens-strong", "ens-noise"], method="stack", seed=3, session=session)
    r = res.report
    held = int(np.isin(ids[lens], np.union1d(training_ids(strong), training_ids(noise)), invert=True).sum())
    assert held >= 10 and r["fit_lenses"] == held // 2
    assert abs(r["coef"]["ens-strong@1"]) > abs(r["coef"]["ens-noise@1"]) and r["coef"]["ens-strong@1"] > 0
    fit = training_ids(res.model)
    assert len(fit) == len(np.union1d(training_ids(strong), training_ids(noise))) + r["fit_lenses"] + r["fit_nonlenses"]
    _score("ens-stack", session)
    ev = evaluate_classifier("ens-stack", baselines=["ens-noise"], session=session)
    assert ev["excluded_training_sources"] == len(fit)  # the stacking fit's sources are left out too
    assert ev["models"]["ens-stack@1"]["auc"] >= ev["models"]["ens-noise@1"]["auc"]
    # a member that trained on nearly every lens leaves too few held-out lenses: refused, 'rank' suggested
    _probe("ens-wide", "ens-b", session, test_fraction=0.05, seed=9)
    with pytest.raises(LenscatError, match="stacking needs at least 10 labelled lenses.*rank"):
        train_ensemble("ens-stack2", ["ens-strong", "ens-wide"], method="stack", session=session)
    code, out, err = run(
        monkeypatch,
        capsys,
        "classifier",
        "ensemble",
        "--name",
        "ens-cli",
        "--member",
        "ens-strong",
        "--member",
        "ens-noise",
        "--method",
        "stack",
        "--json",
    )
    assert code == 0, err
    assert json.loads(out)["method"] == "stack" and json.loads(out)["members"] == ["ens-strong@1", "ens-noise@1"]


def test_missing_member_scores_name_the_member(session, tmp_path, monkeypatch, capsys):
    _world(session, tmp_path)
    _probe("ens-strong", "ens-a", session)
    _probe("ens-late", "ens-b", session, score=False)
    with pytest.raises(
        MissingMemberScores,
        match=r"member ens-late@1 has scored 0 of the 400 sources of survey "
        r"ens-sim it can score: score the sources with classifier ens-late@1 first",
    ) as exc:
        train_ensemble("ens-x", ["ens-strong", "ens-late"], surveys=["ens-sim"], session=session)
    assert exc.value.member == "ens-late@1"
    code, _, err = run(
        monkeypatch,
        capsys,
        "classifier",
        "ensemble",
        "--name",
        "ens-x",
        "--member",
        "ens-strong",
        "--member",
        "ens-late",
    )
    assert code == 2 and err.strip() == (
        "lenscat: error: member ens-late@1 has scored 0 of the 400 sources it can "
        "score: run `lenscat classifier score --name ens-late@1` first"
    )
    with pytest.raises(LenscatError, match="at least two distinct"):
        train_ensemble("ens-x", ["ens-strong", "ens-strong@1"], session=session)
    # an ensemble made while its members were complete asks for the member when a requested job finds it behind
    _score("ens-late", session)
    train_ensemble("ens-y", ["ens-strong", "ens-late"], session=session)
    late = session.execute(text("SELECT model_id FROM lenscat.model_versions WHERE name = 'ens-late'")).scalar_one()
    session.execute(
        text(
            "DELETE FROM lenscat.scores WHERE model_id = :m AND source_id IN (SELECT source_id FROM "
            "lenscat.scores WHERE model_id = :m ORDER BY source_id LIMIT 3)"
        ),
        {"m": late},
    )
    code, _, err = run(monkeypatch, capsys, "classifier", "score", "--name", "ens-y")
    assert (
        code == 2
        and "member ens-late@1 has scored 397 of the 400 sources" in err
        and "lenscat classifier score --name ens-late@1" in err
    )
