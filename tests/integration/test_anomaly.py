"""The anomaly score: kNN isolation in embedding space, stored and queried like a classifier score."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sqlalchemy import text

from lenscat.catalogue.surveys import ensure_survey
from lenscat.classifiers.loaders import training_ids
from lenscat.classifiers.ranking import evaluate_classifier, top_candidates
from lenscat.classifiers.scoring import plan_score_job, score_chunk
from lenscat.embeddings.anomaly import fit_anomaly, knn_isolation
from lenscat.embeddings.vectors import read_embeddings, upsert_embeddings
from lenscat.errors import LenscatError
from lenscat.jobs.service import run_here
from lenscat.registry.versions import register_model
from tests.integration.test_cli import run

N, N_OUT, DIM = 240, 5, 16


def _world(session):
    """240 sources in 3 tight clusters, 5 planted outliers far from them, one exact duplicate pair."""
    rng = np.random.default_rng(11)
    sv = ensure_survey("anom-sim", ["g", "r", "z"], session=session)
    ids = np.array(
        session.execute(
            text(
                "INSERT INTO lenscat.sources (survey_id, objid, ra, dec, mag) "
                "SELECT :sv, 'a' || i, r, d, ARRAY[20, 19.5, 19]::real[] "
                "FROM unnest(CAST(:ra AS float8[]), CAST(:dec AS float8[])) WITH ORDINALITY AS t(r, d, i) "
                "ORDER BY i RETURNING source_id"
            ),
            {"sv": sv.survey_id, "ra": rng.uniform(60, 62, N).tolist(), "dec": rng.uniform(5, 7, N).tolist()},
        )
        .scalars()
        .all()
    )
    centres = 3 * np.eye(DIM)[:3]
    v = centres[rng.integers(0, 3, N)] + 0.3 * rng.normal(size=(N, DIM))
    out = rng.choice(N, N_OUT, replace=False)
    v[out] = rng.normal(size=(N_OUT, DIM)) * 3 + 4 * np.eye(DIM)[rng.integers(5, DIM, N_OUT)]
    dup = np.setdiff1d(np.arange(N), out)[:2]
    v[dup[1]] = v[dup[0]]
    enc, _ = register_model(
        "encoder",
        "anom-enc",
        architecture="external",
        output_dim=DIM,
        checkpoint_path=None,
        checkpoint_sha256="d" * 64,
        origin="external",
        session=session,
    )
    upsert_embeddings(enc, ids, v, session=session)
    return enc, ids, ids[out], ids[dup]


def _direct(vec, k):
    """Mean cosine distance to the k nearest others (identical vectors excluded), float64, all pairs."""
    u = vec.astype(np.float64) / np.linalg.norm(vec.astype(np.float64), axis=1, keepdims=True)
    d = 1 - u @ u.T
    same = (vec[:, None, :] == vec[None, :, :]).all(axis=2)
    d[same] = np.inf
    return np.sort(d, axis=1)[:, :k].mean(axis=1)


def test_outliers_rank_first_and_scores_equal_a_direct_knn(session, monkeypatch, capsys):
    enc, ids, outliers, dup = _world(session)
    res = fit_anomaly("anom", "anom-enc", k=10, session=session)
    model = res.model
    assert res.created and model.architecture == "anomaly" and model.parent_model_id == enc.model_id
    assert res.report["n_reference"] == N and model.hparams["k"] == 10 and len(training_ids(model)) == 0
    assert not fit_anomaly("anom", "anom-enc@1", k=10, session=session).created  # same encoder, k, reference
    job = plan_score_job("anom", chunk_size=100, session=session)
    assert job.n_items == N and job.n_chunks == 3
    run_here(job.job_id, score_chunk, session=session)
    assert plan_score_job("anom", session=session).n_items == 0
    got = dict(
        session.execute(
            text("SELECT source_id, score FROM lenscat.scores WHERE model_id = :m"), {"m": model.model_id}
        ).all()
    )
    sid, vec = read_embeddings(enc, session=session)
    want = _direct(vec, 10) / 2
    np.testing.assert_allclose([got[int(i)] for i in sid], want, atol=2e-6)
    # the duplicate pair does not count each other as a (zero-distance) neighbour
    assert got[int(dup[0])] == pytest.approx(got[int(dup[1])], abs=1e-7) and got[int(dup[0])] > 0.01
    # blocking changes nothing
    np.testing.assert_allclose(knn_isolation(vec[:37], vec, 10, block_elements=7 * N), _direct(vec, 10)[:37], atol=1e-6)
    top = top_candidates("anom", N_OUT, session=session)
    assert set(int(x) for x in top["source_id"]) == set(outliers.tolist())
    # how early 'rare objects' appear: the outliers as the labelled class, evaluated like any classifier
    session.execute(
        text(
            "INSERT INTO lenscat.labels (source_id, label, origin, provenance) "
            "SELECT unnest(CAST(:ids AS bigint[])), 1, 'import', 'anom-test'"
        ),
        {"ids": outliers.tolist()},
    )
    ev = evaluate_classifier("anom", session=session, surveys=["anom-sim"], top_n=[N_OUT])
    assert ev["n_eval"] == N and ev["models"]["anom@1"]["auc"] == 1.0
    # the grading grid's top-N sample takes it
    from lenscat.grading.inspection import resolve_sample

    grid = resolve_sample({"kind": "top", "classifier": "anom", "n": str(N_OUT)}, session=session)
    assert set(grid.source_ids) == set(outliers.tolist())


def test_k_too_large_and_the_cli(session, monkeypatch, capsys):
    _, _, outliers, _ = _world(session)
    with pytest.raises(
        LenscatError,
        match=rf"k=240 neighbours need more than 240 embedded sources; encoder "
        rf"anom-enc@1 has {N} in anom-sim: choose a smaller k",
    ):
        fit_anomaly("anom", "anom-enc", k=N, surveys=["anom-sim"], session=session)
    code, _, err = run(
        monkeypatch, capsys, "classifier", "anomaly", "--name", "anom", "--encoder", "anom-enc", "--k", "500"
    )
    assert code == 2 and err.startswith("lenscat: error: k=500 neighbours need more than 500")
    code, out, err = run(
        monkeypatch,
        capsys,
        "classifier",
        "anomaly",
        "--name",
        "anom",
        "--encoder",
        "anom-enc",
        "--k",
        "8",
        "--survey",
        "anom-sim",
        "--json",
    )
    assert code == 0, err
    rep = json.loads(out)
    assert rep["classifier"] == "anom@1" and rep["k"] == 8 and rep["n_reference"] == N
    job = plan_score_job("anom", surveys=["anom-sim"], session=session)  # scored in-process here
    assert job.n_items == N
    run_here(job.job_id, score_chunk, session=session)
    code, out, err = run(monkeypatch, capsys, "top", "--classifier", "anom", "-n", str(N_OUT), "--format", "csv")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("rank,source_id") and len(lines) == N_OUT + 1
    assert {int(x.split(",")[1]) for x in lines[1:]} == set(outliers.tolist())


def test_an_active_learning_campaign_can_start_from_the_anomaly_top(session, monkeypatch, capsys):
    from lenscat.learning.active import propose_next
    from lenscat.learning.campaigns import create_campaign

    _, _, outliers, _ = _world(session)
    fit_anomaly("anom", "anom-enc", k=10, session=session)
    job = plan_score_job("anom", session=session)
    run_here(job.job_id, score_chunk, session=session)
    camp = create_campaign(
        "anom-al", "anom-enc", batch_size=N_OUT, settings={"start_classifier": "anom"}, session=session
    )
    assert camp.settings["start_classifier"] == "anom@1"
    loop = propose_next(camp, session=session)
    assert loop.model == "anom@1" and set(loop.batch) == set(outliers.tolist()) and not loop.detail["random"]
    code, out, err = run(
        monkeypatch,
        capsys,
        "learn",
        "start",
        "anom-cli",
        "--encoder",
        "anom-enc",
        "--batch",
        "3",
        "--start-classifier",
        "anom",
    )
    assert code == 0, err
    assert "the top of anom@1 (no lens labels yet)" in out
