"""Labels, the linear probe, scores, top-N, evaluation, provenance and re-processing (in-process)."""

from __future__ import annotations

import astropy.units as u
import numpy as np
import pytest
from astropy.table import Table
from sqlalchemy import text

from lenscat.catalogue.surveys import ensure_survey
from lenscat.classifiers.labels import (
    import_labels,
    label_counts,
    labels_from_crossmatch,
    resolve_labels,
)
from lenscat.classifiers.ranking import evaluate_classifier, top_candidates
from lenscat.classifiers.scoring import plan_score_job, score_chunk
from lenscat.classifiers.train_linear import train_linear_classifier
from lenscat.embeddings.vectors import read_embeddings, upsert_embeddings
from lenscat.errors import InvalidParameter, LenscatError
from lenscat.jobs.reprocess import plan_reprocess
from lenscat.jobs.service import pending_chunks, run_here
from lenscat.registry.versions import get_model, register_model

DIM = 32


def _sources(session, survey, n, seed, *, ra0=150.0):
    rng = np.random.default_rng(seed)
    sv = ensure_survey(survey, ["g", "r", "z"], session=session)
    ra, dec = rng.uniform(ra0, ra0 + 2, n), rng.uniform(1, 3, n)
    mag = rng.uniform(17, 22, n)
    start = session.execute(
        text("SELECT count(*) FROM lenscat.sources WHERE survey_id = :s"), {"s": sv.survey_id}
    ).scalar()
    ids = np.array(
        session.execute(
            text(
                "INSERT INTO lenscat.sources (survey_id, objid, ra, dec, mag) "
                "SELECT :sv, 'o' || (i + :start), r, d, ARRAY[m + 1, m, m - 0.5]::real[] "
                "FROM unnest(CAST(:ra AS float8[]), CAST(:dec AS float8[]), CAST(:m AS float8[])) "
                "WITH ORDINALITY AS t(r, d, m, i) ORDER BY i RETURNING source_id"
            ),
            {"sv": sv.survey_id, "ra": ra.tolist(), "dec": dec.tolist(), "m": mag.tolist(), "start": int(start)},
        )
        .scalars()
        .all()
    )
    return ids, ra, dec


def _vectors(n, lens, seed):
    """Galaxy-like embeddings in a few clusters; lenses sit off to one side (a 'lens direction')."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(6, DIM))
    v = centres[rng.integers(0, 6, n)] + 0.6 * rng.normal(size=(n, DIM))
    direction = np.zeros(DIM)
    direction[0] = 1.0
    v[lens] += 2.5 * direction
    return v


def _world(session, tmp_path, n=4000, n_lens=40, seed=0):
    ids, ra, dec = _sources(session, "clf-sim", n, seed)
    rng = np.random.default_rng(seed + 1)
    lens = np.zeros(n, bool)
    lens[rng.choice(n, n_lens, replace=False)] = True
    enc, _ = register_model(
        "encoder",
        "clf-enc",
        architecture="external",
        output_dim=DIM,
        checkpoint_path=None,
        checkpoint_sha256="c" * 64,
        origin="external",
        session=session,
    )
    upsert_embeddings(enc, ids, _vectors(n, lens, seed), session=session)
    truth = tmp_path / "truth.ecsv"
    Table({"objid": [f"o{i + 1}" for i in range(n)], "is_lens": lens.astype(int)}).write(truth)
    summary = import_labels(truth, label_col="is_lens", survey="clf-sim", origin="simulation", session=session)
    assert (summary.n_positive, summary.n_negative, summary.rejects) == (n_lens, n - n_lens, [])
    return enc, ids, lens


def _score_all(name, session):
    job = plan_score_job(name, chunk_size=1500, session=session)
    run_here(job.job_id, score_chunk, session=session)
    return job


def test_read_embeddings_in_bulk_matches_what_was_written(session):
    ids, _, _ = _sources(session, "bulk", 300, 3)
    enc, _ = register_model(
        "encoder",
        "bulk-enc",
        architecture="external",
        output_dim=DIM,
        checkpoint_path=None,
        checkpoint_sha256="b" * 64,
        origin="external",
        session=session,
    )
    v = np.random.default_rng(0).normal(size=(300, DIM))
    upsert_embeddings(enc, ids, v, session=session)
    got, vec = read_embeddings(enc, session=session)
    assert np.array_equal(got, np.sort(ids)) and vec.shape == (300, DIM)
    unit = v / np.linalg.norm(v, axis=1, keepdims=True)
    np.testing.assert_allclose(vec[np.searchsorted(got, ids)], unit, atol=2e-3)  # halfvec precision
    some, vs = read_embeddings(enc, source_ids=ids[[5, 3, 3]], session=session)
    assert list(some) == sorted([ids[5], ids[3]]) and vs.shape == (2, DIM)
    rng_ids, _ = read_embeddings(enc, id_range=(int(ids[10]), int(ids[19])), session=session)
    assert list(rng_ids) == list(ids[10:20])


def test_train_score_top_evaluate_with_provenance(session, tmp_path):
    enc, ids, lens = _world(session, tmp_path)
    res = train_linear_classifier("probe", "clf-enc", session=session, ratio=40, val_ratio=1000, seed=1)
    model = res.model
    assert res.created and model.architecture == "linear" and model.parent_model_id == enc.model_id
    assert res.report["train_lenses"] == 24 and res.report["val_lenses"] == 8  # 8 more held out for testing
    assert res.report["train_nonlenses"] + res.report["val_nonlenses"] <= (4000 - 40) // 2
    assert res.report["notes"]  # 1:1000 validation does not fit in 4,000 sources: both ratios scaled
    assert model.training_set_sha256 and len(model.training_set_sha256) == 64
    assert 1 <= res.report["epoch_kept"] <= 30
    # same labels, embeddings and options: the same checkpoint, no new version
    again = train_linear_classifier("probe", "clf-enc", session=session, ratio=40, val_ratio=1000, seed=1)
    assert not again.created and again.model.model_id == model.model_id
    # scores for every embedded source, idempotently
    job = _score_all("probe", session)
    assert job.n_items == 4000
    assert (
        session.execute(text("SELECT count(*) FROM lenscat.scores WHERE model_id = :m"), {"m": model.model_id}).scalar()
        == 4000
    )
    assert plan_score_job("probe", session=session).n_items == 0
    # provenance: score -> classifier -> encoder, through the documented views
    row = session.execute(
        text(
            "SELECT s.classifier, s.classifier_version, s.encoder, c.training_set_sha256, c.hparams->>'ratio' "
            "FROM public.scores s JOIN public.classifiers c ON c.classifier_id = s.classifier_id LIMIT 1"
        )
    ).one()
    assert row[:3] == ("probe", 1, "clf-enc@1") and row[3] == model.training_set_sha256 and float(row[4]) == 40
    # the top of the ranking is mostly lenses; the query reads the index
    top = top_candidates("probe", 40, session=session)
    assert len(top) == 40 and np.all(np.diff(top["score"]) <= 0) and list(top["rank"]) == list(range(1, 41))
    lens_ids = set(ids[lens].tolist())
    assert np.mean([int(s) in lens_ids for s in top["source_id"]]) > 0.7
    session.execute(text("ANALYZE lenscat.scores"))  # as `lenscat classifier score` does after a job
    plan = "\n".join(
        session.execute(
            text(
                f"EXPLAIN SELECT source_id, score FROM lenscat.scores WHERE model_id = {model.model_id} "
                "ORDER BY score DESC, source_id LIMIT 100"
            )
        ).scalars()
    )
    assert "ix_scores_model_score" in plan and "Sort" not in plan.split("Index")[0]
    assert len(top_candidates("probe", 10, min_score=0.999999, session=session)) <= 10
    not_labelled = top_candidates("probe", 10, exclude_labelled=True, session=session)
    assert len(not_labelled) == 0  # every source carries a simulation label
    # evaluation leaves the training and validation sources out
    ev = evaluate_classifier("probe", session=session, top_n=[8, 40], plots=tmp_path / "plots")
    m = ev["models"]["probe@1"]
    n_seen = (
        res.report["train_lenses"]
        + res.report["train_nonlenses"]
        + res.report["val_lenses"]
        + res.report["val_nonlenses"]
    )
    assert ev["n_eval"] == 4000 - n_seen and ev["excluded_training_sources"] == n_seen
    assert m["auc"] > 0.95 and 0 <= m["tpr0"] <= m["tpr10"] <= 1
    assert [t["n"] for t in m["top_n"]] == [8, 40]
    assert len(ev["plots"]) == 3 and all((tmp_path / "plots").glob("*.png"))


def test_new_version_and_new_sources_are_reprocessed_once(session, tmp_path):
    enc, ids, lens = _world(session, tmp_path, n=1500, n_lens=20, seed=5)
    train_linear_classifier("probe2", "clf-enc", session=session, ratio=20, val_ratio=200, seed=0)
    planned = plan_reprocess(session=session)
    assert [(p.kind, p.model, p.n_items) for p in planned] == [("score", "probe2@1", 1500)]
    # a second run while that job is queued plans nothing (never the same work twice)
    assert plan_reprocess(session=session) == []
    job_id = planned[0].job_id
    assert job_id is not None
    assert pending_chunks(job_id, session=session) == planned[0].chunks
    assert run_here(job_id, score_chunk, session=session) == 1500
    # new sources with embeddings: only they are queued
    new_ids, _, _ = _sources(session, "clf-sim", 100, 9, ra0=160.0)
    upsert_embeddings(enc, new_ids, np.random.default_rng(1).normal(size=(100, DIM)), session=session)
    dry = plan_reprocess(session=session, dry_run=True)
    assert [(p.kind, p.n_items, p.job_id) for p in dry] == [("score", 100, None)]
    planned = plan_reprocess(session=session)
    assert [(p.model, p.n_items) for p in planned] == [("probe2@1", 100)]
    # a new classifier version has no scores: scored in full, the old version is left alone
    train_linear_classifier("probe2", "clf-enc", session=session, ratio=20, val_ratio=200, seed=3)
    planned = plan_reprocess(session=session)
    assert [(p.model, p.n_items) for p in planned] == [("probe2@2", 1600)]


def test_labels_from_crossmatch_and_positions_with_rejects(session, tmp_path):
    from lenscat.literature.crossmatch import crossmatch_catalog
    from lenscat.literature.ingest import prepare_literature
    from lenscat.literature.service import write_literature
    from lenscat.literature.types import LiteratureColumns

    ids, ra, dec = _sources(session, "lab", 500, 11)
    cat = tmp_path / "lenses.csv"
    Table({"name": ["L1", "L2", "FAR"], "ra": [ra[0] + 1e-4, ra[1], 10.0], "dec": [dec[0], dec[1] - 2e-4, 10.0]}).write(
        cat, format="ascii.csv"
    )
    write_literature(prepare_literature(cat, "mini", LiteratureColumns()), session=session)
    crossmatch_catalog("mini", 5 * u.arcsec, session=session)
    s = labels_from_crossmatch("mini", session=session)
    assert (s.n_positive, s.n_written) == (2, 2)
    assert labels_from_crossmatch("mini", session=session).n_written == 0  # idempotent
    assert resolve_labels(session=session) == {int(ids[0]): 1, int(ids[1]): 1}
    # a table matched by position: one bad label, one position with no source, one duplicate match
    tab = tmp_path / "grades.csv"
    Table(
        {
            "RA": [ra[2], ra[3], 11.0, ra[2] + 1e-5, ra[0]],
            "DEC": [dec[2], dec[3], 11.0, dec[2], dec[0]],
            "verdict": ["no", "maybe", "yes", "no", "no"],
        }
    ).write(tab, format="ascii.csv")
    imp = import_labels(tab, label_col="verdict", ra_col="RA", dec_col="DEC", radius=1 * u.arcsec, session=session)
    reasons = dict(imp.rejects)
    assert set(reasons) == {2, 3, 4}
    assert "cannot read 'maybe'" in reasons[2] and "no source within 1 arcsec" in reasons[3]
    assert "already labelled by an earlier row" in reasons[4]
    assert (imp.n_positive, imp.n_negative) == (0, 2)
    # the imported verdict outranks the literature list for source 0; both rows are kept
    assert resolve_labels(session=session)[int(ids[0])] == 0
    assert {(r["origin"], r["positive"], r["negative"]) for r in label_counts(session=session)} == {
        ("literature", 2, 0),
        ("import", 0, 2),
    }
    with pytest.raises(LenscatError, match="no column 'grade'"):
        import_labels(tab, label_col="grade", ra_col="RA", dec_col="DEC", session=session)


def test_label_positions_that_cannot_be_read_are_rejected_with_reasons(session, tmp_path):
    """Text positions: sexagesimal RA in hours is read; junk, missing and impossible values are rejects."""
    from astropy.coordinates import Angle

    ids, ra, dec = _sources(session, "labpos", 50, 12)
    hms = Angle(ra[0] * u.deg).to_string(unit=u.hourangle, sep=":", precision=3)
    dms = Angle(dec[0] * u.deg).to_string(unit=u.deg, sep=":", precision=2, alwayssign=True)
    tab = tmp_path / "positions.csv"
    tab.write_text(
        "ra,dec,lens\n"
        f"{hms},{dms},1\n"
        f"abc,{dec[1]},0\n"
        f"{ra[2]},95,0\n"
        f",{dec[3]},0\n"
        f"{ra[4]},{dec[4]},0\n"
        f"{ra[5] + 360},{dec[5]},0\n"
    )
    imp = import_labels(tab, label_col="lens", radius=1 * u.arcsec, session=session)
    reasons = dict(imp.rejects)
    assert set(reasons) == {2, 3, 4, 6}
    assert "column 'ra': cannot read 'abc' as a right ascension" in reasons[2]
    assert "column 'dec': declination 95 deg outside [-90, 90]" in reasons[3]
    assert "column 'ra': right ascension missing" in reasons[4]
    assert f"column 'ra': right ascension {ra[5] + 360:g} deg out of range [0, 360)" in reasons[6]
    assert resolve_labels(session=session) == {int(ids[0]): 1, int(ids[4]): 0}


def test_too_few_labels_is_a_clear_error(session, tmp_path):
    ids, _, _ = _sources(session, "few", 50, 2)
    enc, _ = register_model(
        "encoder",
        "few-enc",
        architecture="external",
        output_dim=DIM,
        checkpoint_path=None,
        checkpoint_sha256="d" * 64,
        origin="external",
        session=session,
    )
    upsert_embeddings(enc, ids, np.random.default_rng(0).normal(size=(50, DIM)), session=session)
    with pytest.raises(LenscatError, match="0 labelled lens"):
        train_linear_classifier("nope", "few-enc", session=session)
    with pytest.raises(LenscatError, match="no classifier 'nope'"):
        get_model("classifier", "nope", session=session)


def test_finetune_and_cnn_versions_train_score_and_keep_provenance(session, tmp_path):
    """The image architectures end to end on a tiny survey (a few steps on the CPU)."""
    from lenscat.catalogue.ingest import ingest_sources
    from lenscat.classifiers.loaders import training_ids
    from lenscat.classifiers.train_image import train_image_classifier_version
    from lenscat.embeddings.encoder_train import train_encoder
    from tests.integration.test_embed_workers import write_stein_h5

    h5 = tmp_path / "tiny.h5"
    write_stein_h5(h5, 96, seed=4)
    ingest_sources(h5, "tiny")
    enc, _, _ = train_encoder(
        "tiny-moco", ["tiny"], epochs=1, batch_size=16, max_steps=2, crop=32, queue_size=64, progress=False
    )
    truth = tmp_path / "truth.csv"
    Table({"objid": np.arange(1000, 1096), "lens": (np.arange(96) % 8 == 0).astype(int)}).write(
        truth, format="ascii.csv"
    )
    import_labels(truth, label_col="lens", survey="tiny", session=session)
    ft = train_image_classifier_version(
        "tiny-ft",
        arch="finetune",
        encoder=enc.label,
        session=session,
        ratio=5,
        val_ratio=5,
        epochs=1,
        batch_size=16,
        max_steps=3,
        seed=0,
    )
    cnn = train_image_classifier_version(
        "tiny-cnn",
        arch="cnn",
        session=session,
        ratio=5,
        val_ratio=5,
        epochs=1,
        batch_size=16,
        crop=32,
        max_steps=3,
        seed=0,
    )
    assert ft.model.architecture == "finetune" and ft.model.parent_model_id == enc.model_id
    assert cnn.model.architecture == "cnn" and cnn.model.parent_model_id is None
    assert ft.model.input_spec["input"] == "image" and 1 <= ft.report["steps"] <= 3
    seen = training_ids(ft.model)
    assert (
        len(seen)
        == ft.report["train_lenses"]
        + ft.report["train_nonlenses"]
        + ft.report["val_lenses"]
        + ft.report["val_nonlenses"]
    )
    for name in ("tiny-ft", "tiny-cnn"):
        job = _score_all(name, session)
        assert job.n_items == 96
    sc = session.execute(
        text(
            "SELECT classifier, count(*), min(score), max(score) FROM public.scores "
            "WHERE classifier LIKE 'tiny-%' GROUP BY 1 ORDER BY 1"
        )
    ).all()
    assert [(r[0], r[1]) for r in sc] == [("tiny-cnn", 96), ("tiny-ft", 96)]
    assert all(0 <= r[2] <= r[3] <= 1 for r in sc)
    # the domain error names the parameter, not a flag (the CLI turns it into --encoder)
    with pytest.raises(InvalidParameter, match="needs encoder") as bad:
        train_image_classifier_version("bad", arch="finetune", session=session)
    assert bad.value.param == "arch" and "needs --encoder" in bad.value.render(lambda p: "--" + p)


def test_classifier_commands_from_the_cli(session, tmp_path, monkeypatch, capsys):
    """labels import / list, classifier train / list / evaluate, top: the user's path, in-process."""
    import json

    from lenscat.classifiers.scoring import plan_score_job
    from tests.integration.test_cli import run

    enc, ids, lens = _world(session, tmp_path, n=2000, n_lens=30, seed=8)
    code, out, err = run(monkeypatch, capsys, "labels", "list", "--format", "json")
    assert code == 0 and json.loads(out.splitlines()[0])["positive"] == 30
    code, out, err = run(
        monkeypatch,
        capsys,
        "classifier",
        "train",
        "--name",
        "cli-probe",
        "--encoder",
        "clf-enc",
        "--ratio",
        "30",
        "--val-ratio",
        "300",
        "--json",
    )
    assert code == 0, err
    rep = json.loads(out)
    assert rep["classifier"] == "cli-probe@1" and rep["created"] and "instead of 1:30" in err
    code, out, err = run(
        monkeypatch,
        capsys,
        "classifier",
        "train",
        "--name",
        "cli-probe",
        "--encoder",
        "clf-enc",
        "--ratio",
        "30",
        "--val-ratio",
        "300",
    )
    assert code == 0 and "already registered" in out
    code, _, err = run(monkeypatch, capsys, "classifier", "train", "--name", "x", "--arch", "linear")
    assert code == 2 and "needs --encoder" in err
    _score_all("cli-probe", session)  # workers are other processes: scored in-process here
    assert plan_score_job("cli-probe", session=session).n_items == 0
    code, out, err = run(monkeypatch, capsys, "top", "--classifier", "cli-probe", "-n", "5", "--format", "csv")
    assert code == 0 and out.splitlines()[0].startswith("rank,source_id,survey,objid,ra,dec,score")
    assert len(out.splitlines()) == 6
    code, out, err = run(
        monkeypatch,
        capsys,
        "classifier",
        "evaluate",
        "--name",
        "cli-probe",
        "--format",
        "json",
        "--top-n",
        "10,50",
        "--plots",
        str(tmp_path / "ev"),
    )
    assert code == 0, err
    ev = json.loads(out)
    assert ev["models"]["cli-probe@1"]["auc"] > 0.9 and len(ev["plots"]) == 3
    code, out, _ = run(monkeypatch, capsys, "classifier", "evaluate", "--name", "cli-probe")
    assert code == 0 and "AUC" in out and "TPR0" in out
    code, _, err = run(monkeypatch, capsys, "classifier", "evaluate", "--name", "cli-probe", "--top-n", "ten")
    assert code == 2 and "comma-separated integers" in err
    code, out, _ = run(monkeypatch, capsys, "classifier", "list", "--format", "json")
    row = json.loads(out.splitlines()[0])
    assert row["classifier"] == "cli-probe" and row["encoder"] == "clf-enc@1" and row["n_scores"] == 2000


def test_reingested_literature_list_drops_the_matches_of_removed_lenses(session, tmp_path):
    """crossmatches has no FK cascade (migration 0004): the literature writer removes them itself."""
    from lenscat.literature.crossmatch import crossmatch_catalog
    from lenscat.literature.ingest import prepare_literature
    from lenscat.literature.service import write_literature
    from lenscat.literature.types import LiteratureColumns

    ids, ra, dec = _sources(session, "lab2", 100, 12)
    cat = tmp_path / "lenses.csv"
    Table({"name": ["A", "B"], "ra": [ra[0], ra[1]], "dec": [dec[0], dec[1]]}).write(cat, format="ascii.csv")
    write_literature(prepare_literature(cat, "drop", LiteratureColumns()), session=session)
    assert crossmatch_catalog("drop", 2 * u.arcsec, session=session).n_matched == 2
    Table({"name": ["A"], "ra": [ra[0]], "dec": [dec[0]]}).write(cat, format="ascii.csv", overwrite=True)
    assert write_literature(prepare_literature(cat, "drop", LiteratureColumns()), session=session).removed == 1
    left = (
        session.execute(
            text(
                "SELECT x.source_id FROM lenscat.crossmatches x LEFT JOIN lenscat.literature_lenses l "
                "USING (lens_id) WHERE l.lens_id IS NULL OR l.name = 'A'"
            )
        )
        .scalars()
        .all()
    )
    assert left == [int(ids[0])]


def test_near_known_lenses_in_memory_matches_the_cone_searches(session, tmp_path):
    from lenscat.classifiers.labels import near_known_lenses

    enc, ids, lens = _world(session, tmp_path, n=1500, n_lens=25, seed=11)
    everywhere = near_known_lenses(session=session)
    some = ids[::3]
    assert near_known_lenses(session=session, candidates=some) == everywhere & {int(i) for i in some}
    assert near_known_lenses(session=session, candidates=ids) == everywhere & {int(i) for i in ids}
    assert set(ids[lens].tolist()) <= everywhere  # a lens is within 25 arcsec of itself
    assert near_known_lenses(session=session, candidates=ids[:0]) == set()


def _ring_survey(path, n: int = 150, seed: int = 0) -> np.ndarray:
    """A Stein-layout file of ``n`` 64-pixel cutouts: red blobs, the lenses with a faint blue ring."""
    import h5py

    from tests.unit.test_models_supervised import rings_and_blobs

    images, lens = rings_and_blobs(n, size=64, lens_frac=0.2, seed=seed)
    rng = np.random.default_rng(seed)
    with h5py.File(path, "w") as fh:
        fh["images"] = images
        fh["ra"] = rng.uniform(150, 151, n)
        fh["dec"] = rng.uniform(2, 3, n)
        fh["objid"] = np.arange(1000, 1000 + n, dtype=np.int64)
        fh["is_lens"] = lens
    return lens


def test_default_train_is_the_few_label_cnn_recipe_and_radial_scores(session, tmp_path, monkeypatch, capsys):
    """`classifier train --name C` without --arch: the CNN recipe (every negative, early stopping,
    8-view scores); `--arch radial`: the radial colour-profile baseline, scored by the score job."""
    import json

    from lenscat.catalogue.ingest import ingest_sources
    from lenscat.classifiers.loaders import training_ids
    from lenscat.models.supervised import load_classifier
    from tests.integration.test_cli import run

    h5 = tmp_path / "rings.h5"
    lens = _ring_survey(h5)
    ingest_sources(h5, "rings")
    import_labels(h5, label_col="is_lens", survey="rings", origin="simulation", session=session)
    n_lens = int(lens.sum())
    code, out, err = run(
        monkeypatch,
        capsys,
        "classifier",
        "train",
        "--name",
        "C",
        "--survey",
        "rings",
        "--epochs",
        "2",
        "--test-fraction",
        "0",
        "--json",
    )
    assert code == 0, err
    rep = json.loads(out)
    model = get_model("classifier", "C", session=session)
    assert rep["classifier"] == "C@1" and model.architecture == "cnn" and model.hparams["recipe"] == "cpu"
    # every non-lens trains or validates; every lens too (nothing held out)
    assert rep["train_nonlenses"] + rep["val_nonlenses"] == len(lens) - n_lens == rep["negative_pool"]
    assert rep["train_lenses"] + rep["val_lenses"] == n_lens
    assert rep["epochs_completed"] <= 2 and rep["stop_reason"] in ("completed", "early_stopping")
    assert 0 <= rep["val_auc"] <= 1 and rep["best_epoch"] in (1, 2)
    net, meta = load_classifier(str(model.checkpoint_path))
    assert net.preprocessing.views == 8 and net.crop == 64 and meta["hparams"]["augment"] == "few_label"
    assert len(training_ids(model)) == len(lens)
    assert _score_all("C", session).n_items == len(lens)

    code, out, err = run(
        monkeypatch,
        capsys,
        "classifier",
        "train",
        "--name",
        "R",
        "--arch",
        "radial",
        "--survey",
        "rings",
        "--test-fraction",
        "0.2",
    )
    assert code == 0, err
    assert "classifier R@1 registered" in out and "kept epoch" in out
    rad = get_model("classifier", "R", session=session)
    assert rad.architecture == "radial" and rad.input_spec["features"] == "radial-profile"
    assert rad.input_spec["pixel_scale"] == pytest.approx(0.262) and rad.parent_model_id is None
    seen = training_ids(rad)
    assert _score_all("R", session).n_items == len(lens)
    scores = dict(
        session.execute(
            text("SELECT source_id, score FROM lenscat.scores WHERE model_id = :m"), {"m": rad.model_id}
        ).all()
    )
    assert len(scores) == len(lens) and all(0 <= v <= 1 for v in scores.values())
    truth = resolve_labels(session=session)
    unseen = [i for i in scores if i not in set(seen.tolist())]
    assert unseen and all(truth[i] == 1 for i in unseen)  # every non-lens trained or validated: held-out lenses left
    negatives = [v for i, v in scores.items() if truth[i] == 0]
    assert np.median([scores[i] for i in unseen]) > np.median(negatives)  # radial profiles see blue rings
    code, _, err = run(monkeypatch, capsys, "classifier", "train", "--name", "x", "--arch", "linear")
    assert code == 2 and "needs --encoder" in err
    # the settings before the recipe stay reachable for comparisons; radial through the same entry point
    from lenscat.classifiers.train_image import train_image_classifier_version

    old = train_image_classifier_version(
        "L", recipe="legacy", session=session, surveys=["rings"], epochs=1, crop=48, max_steps=2
    )
    assert old.model.hparams["recipe"] == "legacy" and old.model.hparams["ratio"] == 100
    assert old.report["train_nonlenses"] + old.report["val_nonlenses"] <= (len(lens) - n_lens) // 2
    assert load_classifier(str(old.model.checkpoint_path))[0].preprocessing.views == 1
    again = train_image_classifier_version("R", arch="radial", session=session, surveys=["rings"], test_fraction=0.2)
    assert again.model.model_id == rad.model_id and not again.created


def test_injected_lenses_train_but_never_validate_or_test():
    from lenscat.classifiers.training_sets import split_positives

    pos = np.arange(1, 41, dtype=np.int64)
    injected = np.arange(11, 41, dtype=np.int64)  # 10 real lenses, 30 injections
    train, val, test, notes = split_positives(
        pos, injected, val_fraction=0.2, test_fraction=0.2, rng=np.random.default_rng(0)
    )
    assert set(injected) <= set(train) and not set(injected) & (set(val) | set(test))
    assert len(val) == 2 and len(test) == 2 and len(train) == 36 and not notes
    assert sorted(np.concatenate([train, val, test]).tolist()) == pos.tolist()
    # no real lens at all: a fraction of the injections validates, and a note says so
    train, val, test, notes = split_positives(
        injected, injected, val_fraction=0.2, test_fraction=0.2, rng=np.random.default_rng(0)
    )
    assert len(val) == 6 and len(test) == 0 and len(train) == 24 and "validating on 6 of the 30 injected" in notes[0]
    # without injections the split is the one real labels always had
    train, val, test, _ = split_positives(
        pos[:10], injected[:0], val_fraction=0.2, test_fraction=0.2, rng=np.random.default_rng(0)
    )
    order = np.random.default_rng(0).permutation(pos[:10])
    assert val.tolist() == order[:2].tolist() and test.tolist() == order[2:4].tolist()


def test_split_keeps_injection_labels_out_of_validation_and_test(session, tmp_path):
    """Positives of origin 'injection' train only; every non-lens is used when no ratio is given."""
    from lenscat.catalogue.ingest import ingest_sources
    from lenscat.classifiers.training_sets import make_split

    h5 = tmp_path / "inj.h5"
    lens = _ring_survey(h5, n=100, seed=4)
    ingest_sources(h5, "inj-split")
    import_labels(h5, label_col="is_lens", survey="inj-split", origin="simulation", session=session)
    pos = np.array(sorted(s for s, y in resolve_labels(session=session).items() if y == 1))
    injected = pos[: len(pos) // 2]
    session.execute(
        text("UPDATE lenscat.labels SET origin = 'injection' WHERE source_id = ANY(:ids)"), {"ids": injected.tolist()}
    )
    split = make_split(session=session, surveys=["inj-split"], encoder=None, ratio=None, seed=0)
    real = set(pos.tolist()) - set(injected.tolist())
    train_pos = set(split.train_ids[split.train_y == 1].tolist())
    val_pos = set(split.val_ids[split.val_y == 1].tolist())
    assert set(injected.tolist()) <= train_pos and val_pos <= real and val_pos
    held_out = real - train_pos - val_pos
    assert held_out and len(held_out) == round(0.2 * len(real))
    assert len(split.train_y) - split.train_y.sum() + len(split.val_y) - split.val_y.sum() == len(lens) - lens.sum()
    assert any("injected lenses train only" in n for n in split.notes)
    session.execute(
        text("UPDATE lenscat.labels SET origin = 'injection' WHERE source_id = ANY(:ids)"), {"ids": pos.tolist()}
    )
    only = make_split(session=session, surveys=["inj-split"], encoder=None, ratio=None, seed=0)
    assert only.val_y.sum() == round(0.2 * len(pos)) and only.train_y.sum() + only.val_y.sum() == len(pos)
    assert any("validating on" in n and "optimistic" in n for n in only.notes)


def test_hard_negatives_are_drawn_more_often_and_recorded(session, tmp_path, monkeypatch, capsys):
    """`--hard-negatives C` repeats the top-scored training non-lenses of C, `human` the non-lenses a
    grader rejected; the split, the report and the training-set hash say so; bad requests are one line."""
    import json

    from lenscat.catalogue.ingest import ingest_sources
    from lenscat.classifiers.loaders import training_ids
    from lenscat.classifiers.train_image import train_image_classifier_version
    from tests.integration.test_cli import run

    h5 = tmp_path / "rings.h5"
    lens = _ring_survey(h5, n=120, seed=3)
    ingest_sources(h5, "rings")
    import_labels(h5, label_col="is_lens", survey="rings", origin="simulation", session=session)
    first = train_image_classifier_version("R0", arch="radial", session=session, surveys=["rings"], test_fraction=0)
    _score_all("R0", session)
    ids = dict(session.execute(text("SELECT objid, source_id FROM sources WHERE survey = 'rings'")).all())
    rejected = [ids[str(1000 + i)] for i in np.flatnonzero(lens == 0)[:4]]  # a grader's "not a lens"
    objids = [1000 + int(i) for i in np.flatnonzero(lens == 0)[:4]]
    Table({"objid": objids, "label": [0] * 4}).write(tmp_path / "human.csv")
    assert (
        import_labels(
            tmp_path / "human.csv", id_col="objid", survey="rings", origin="human", session=session
        ).n_negative
        == 4
    )

    code, out, err = run(
        monkeypatch,
        capsys,
        "classifier",
        "train",
        "--name",
        "H",
        "--arch",
        "radial",
        "--survey",
        "rings",
        "--test-fraction",
        "0",
        "--hard-negatives",
        "R0",
        "--hard-negatives",
        "human",
        "--hard-negative-top",
        "10",
        "--hard-negative-weight",
        "4",
        "--json",
    )
    assert code == 0, err
    rep = json.loads(out)
    hard = get_model("classifier", "H", session=session)
    assert np.array_equal(np.unique(training_ids(hard)), np.unique(training_ids(first.model)))  # same sources
    import torch

    assert hard.checkpoint_path is not None
    train_ids = torch.load(hard.checkpoint_path, weights_only=False)["train_ids"].numpy()
    counts = dict(zip(*np.unique(train_ids, return_counts=True), strict=True))
    repeated = {int(i) for i, c in counts.items() if c > 1}
    scores = dict(
        session.execute(
            text("SELECT source_id, score FROM lenscat.scores WHERE model_id = :m"), {"m": first.model.model_id}
        ).all()
    )
    truth = resolve_labels(session=session, origins=["simulation"])
    train_negs = [int(i) for i in counts if truth[int(i)] == 0]
    top10 = sorted(train_negs, key=lambda i: (-scores[i], i))[:10]
    assert repeated == set(top10) | (set(rejected) & set(train_negs))
    assert all(counts[i] == 4 for i in repeated) and all(counts[i] == 1 for i in set(counts) - repeated)
    assert rep["hard_negatives"] == len(repeated) and rep["hard_negative_weight"] == 4
    assert hard.hparams["hard_negatives"] == ["R0", "human"]
    assert hard.training_set_sha256 != first.model.training_set_sha256
    assert any("hard negatives drawn 4x" in n for n in rep["notes"])

    code, _, err = run(
        monkeypatch, capsys, "classifier", "train", "--name", "x", "--encoder", "e", "--hard-negatives", "R0"
    )
    assert code == 2 and "--hard-negatives applies to --arch cnn and radial" in err
    code, _, err = run(
        monkeypatch,
        capsys,
        "classifier",
        "train",
        "--name",
        "x",
        "--arch",
        "radial",
        "--survey",
        "rings",
        "--hard-negatives",
        "nope",
    )
    assert code == 2 and "no classifier 'nope'" in err and len(err.strip().splitlines()) == 1
