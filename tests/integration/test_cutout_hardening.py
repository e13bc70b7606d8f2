"""Bad cutouts: refused at ingest, isolated inside worker chunks, and changed pixels noticed.

* a Stein-layout file whose ``images`` has the wrong shape is refused with one line, nothing written;
* a chunk holding unreadable, missing, NaN or too-small cutouts embeds the rest, records each bad
  source with its reason, and scheduled re-processing does not queue them again;
* re-ingesting a file whose pixels changed finds the changed rows: their embeddings and scores go,
  the others stay, ``lenscat db files --problems`` names the file before the re-ingest.
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
from click.testing import CliRunner
from sqlalchemy import text

from lenscat.cli import cli
from lenscat.errors import InputFileError
from tests.integration.test_embed_workers import write_stein_h5


def _counts(session) -> tuple[int, ...]:
    return tuple(
        session.execute(
            text(
                "SELECT (SELECT count(*) FROM lenscat.surveys), (SELECT count(*) FROM lenscat.ingests), "
                "(SELECT count(*) FROM lenscat.cutout_files), (SELECT count(*) FROM lenscat.sources)"
            )
        ).one()
    )


def _tiny_encoder(session, tmp_path: Path, name: str):
    from lenscat.models.checkpoint import save_encoder
    from lenscat.models.resnet import build_encoder
    from lenscat.registry.versions import register_model, store_checkpoint

    save_encoder(
        build_encoder("resnet-small", output_dim=16),
        tmp_path / f"{name}.pt",
        arch="resnet-small",
        hparams={"output_dim": 16},
    )
    path, sha = store_checkpoint(tmp_path / f"{name}.pt")
    model, _ = register_model(
        "encoder",
        name,
        architecture="resnet-small",
        output_dim=16,
        checkpoint_path=path,
        checkpoint_sha256=sha,
        origin="initialised",
        input_spec={"bands": ["g", "r", "z"], "pixel_scale_arcsec": 0.262, "stamp": 152},
        session=session,
    )
    return model


def _source_ids(session, survey: str) -> list[int]:
    return [
        int(x)
        for x in session.execute(
            text("SELECT source_id FROM public.sources WHERE survey = :s ORDER BY cutout_row"), {"s": survey}
        ).scalars()
    ]


def test_wrong_shaped_cutouts_are_refused_at_ingest_and_nothing_is_written(session, tmp_path):
    runner = CliRunner()
    before = _counts(session)
    for shape in [(4, 152, 152), (4, 3, 4, 4)]:
        p = tmp_path / f"bad-{len(shape)}-{shape[-1]}.h5"
        with h5py.File(p, "w") as fh:
            fh["ra"] = np.linspace(10, 11, 4)
            fh["dec"] = np.linspace(1, 2, 4)
            fh["objid"] = np.arange(4)
            fh["images"] = np.zeros(shape, np.float32)
        res = runner.invoke(cli, ["ingest", "sources", str(p), "--survey", "bad-shapes"])
        assert isinstance(res.exception, InputFileError), res.output  # `lenscat` prints it, exit status 2
        msg = str(res.exception)
        assert "\n" not in msg and msg.startswith(f"{p}: dataset 'images' has shape {shape}")
        assert "expected (N, bands, H, W)" in msg
    assert _counts(session) == before  # no survey, ingest, cutout file or source


def test_bad_cutouts_are_recorded_and_skipped_the_rest_is_embedded(session, tmp_path):
    from lenscat.catalogue.ingest import ingest_sources
    from lenscat.embeddings.embed import embed_chunk, plan_embed_job
    from lenscat.images.store import close_stores
    from lenscat.jobs.reprocess import plan_reprocess
    from lenscat.jobs.service import job_details, run_here

    good, gone, small = tmp_path / "good.h5", tmp_path / "gone.h5", tmp_path / "small.h5"
    write_stein_h5(good, 5, seed=1)
    with h5py.File(good, "r+") as fh:  # one NaN image among good ones
        fh["images"][2, 0, 10, 10] = np.nan
    write_stein_h5(gone, 2, seed=2)
    write_stein_h5(small, 2, seed=3)
    for p in (good, gone, small):
        ingest_sources(p, f"iso-{p.stem}", progress=False)
    gone.unlink()  # its cutouts cannot be read any more
    with h5py.File(small, "w") as fh:  # registered before: now 4x4 stamps (as an older lenscat accepted)
        fh["ra"], fh["dec"], fh["objid"] = np.zeros(2), np.zeros(2), np.arange(2)
        fh["images"] = np.ones((2, 3, 4, 4), np.float32)
    enc = _tiny_encoder(session, tmp_path, "iso-enc")
    ids = {p.stem: _source_ids(session, f"iso-{p.stem}") for p in (good, gone, small)}
    nan_id = ids["good"][2]
    ok_ids = [i for i in ids["good"] if i != nan_id]

    job = plan_embed_job("iso-enc", chunk_size=100, session=session)
    assert job.n_chunks == 1 and job.n_items == 9  # one chunk: good and bad sources together
    assert run_here(job.job_id, embed_chunk, session=session) == 4
    embedded = set(
        session.execute(
            text("SELECT source_id FROM lenscat.embeddings WHERE model_id = :m"), {"m": enc.model_id}
        ).scalars()
    )
    assert embedded == set(ok_ids)
    failed = dict(
        session.execute(
            text("SELECT item_id, reason FROM lenscat.job_item_failures WHERE model_id = :m"), {"m": enc.model_id}
        ).all()
    )
    assert set(failed) == {nan_id, *ids["gone"], *ids["small"]}
    assert failed[nan_id] == "cutout has NaN or infinite pixels"
    assert all("cutout file not found" in failed[i] and str(gone) in failed[i] for i in ids["gone"])
    assert all("4x4 pixels, smaller than the 96-pixel crop" in failed[i] for i in ids["small"])
    state = session.execute(text("SELECT status FROM lenscat.jobs WHERE job_id = :j"), {"j": job.job_id}).scalar()
    assert state == "done"
    details = job_details(job.job_id, session=session)
    assert details["n_items_failed"] == 5 and len(details["failed_items"]) == 5
    assert {f["item_id"]: f["reason"] for f in details["failed_items"]} == failed

    res = CliRunner().invoke(cli, ["jobs", "show", str(job.job_id)])
    assert res.exit_code == 0, res.output
    shown = json.loads(res.stdout)
    assert shown["n_items_failed"] == 5 and {f["item_id"] for f in shown["failed_items"]} == set(failed)

    # scheduled re-processing does not queue the permanently failing sources again...
    assert not [p for p in plan_reprocess(session=session, dry_run=True) if p.kind == "embed"]
    # ...unless asked; a re-run updates the same failure rows (attempts), never adds rows
    again = [p for p in plan_reprocess(session=session, retry_failed=True) if p.kind == "embed"]
    assert len(again) == 1 and again[0].n_items == 5 and again[0].job_id is not None
    assert run_here(again[0].job_id, embed_chunk, session=session) == 0
    rows = session.execute(
        text("SELECT item_id, attempts FROM lenscat.job_item_failures WHERE model_id = :m"), {"m": enc.model_id}
    ).all()
    assert len(rows) == 5 and {a for _, a in rows} == {2}

    # the missing file comes back: once the user retries, those sources are embedded and forgotten as failures
    write_stein_h5(gone, 2, seed=2)
    retry = plan_embed_job("iso-enc", chunk_size=100, session=session)
    assert retry.n_items == 5
    assert run_here(retry.job_id, embed_chunk, session=session) == 2
    left = set(
        session.execute(
            text("SELECT item_id FROM lenscat.job_item_failures WHERE model_id = :m"), {"m": enc.model_id}
        ).scalars()
    )
    assert left == {nan_id, *ids["small"]}

    # the small cutouts are replaced by proper ones: their input changed, so re-processing takes them again
    close_stores()
    write_stein_h5(small, 2, seed=9)
    ingest_sources(small, "iso-small", progress=False)
    planned = [p for p in plan_reprocess(session=session, dry_run=True) if p.kind == "embed"]
    assert [p.n_items for p in planned] == [2]


def test_changed_pixels_are_found_and_only_their_results_recomputed(session, tmp_path):
    from lenscat.catalogue.ingest import ingest_sources
    from lenscat.classifiers.scoring import upsert_scores
    from lenscat.embeddings.embed import embed_chunk, plan_embed_job
    from lenscat.jobs.reprocess import plan_reprocess
    from lenscat.jobs.service import run_here
    from lenscat.registry.versions import register_model

    h5 = tmp_path / "pixels.h5"
    write_stein_h5(h5, 6, seed=4)
    ingest_sources(h5, "pix", progress=False)
    enc = _tiny_encoder(session, tmp_path, "pix-enc")
    run_here(plan_embed_job("pix-enc", chunk_size=4, session=session).job_id, embed_chunk, session=session)
    sids = _source_ids(session, "pix")
    clf, _ = register_model(
        "classifier",
        "pix-clf",
        architecture="linear",
        output_dim=1,
        checkpoint_path=None,
        checkpoint_sha256=None,
        origin="trained",
        parent_model_id=enc.model_id,
        session=session,
    )
    upsert_scores(clf, np.array(sids), np.full(len(sids), 0.5), job_id=None, session=session)

    def vectors() -> dict[int, tuple[str, object]]:
        return {
            int(r.source_id): (str(r.embedding), r.created_at)
            for r in session.execute(
                text(
                    "SELECT source_id, embedding::text AS embedding, created_at FROM lenscat.embeddings "
                    "WHERE model_id = :m"
                ),
                {"m": enc.model_id},
            )
        }

    before = vectors()
    assert set(before) == set(sids)
    runner = CliRunner()
    res = runner.invoke(cli, ["db", "files", "--problems", "--kind", "cutouts", "--format", "json"])
    assert str(h5) not in res.stdout

    from lenscat.images.store import close_stores

    close_stores()  # this process's reader lets go of the file, as another process's would not matter
    with h5py.File(h5, "r+") as fh:  # pixels of rows 1 and 4 change in place; the catalogue does not
        fh["images"][1] = fh["images"][1] * 3.0
        fh["images"][4, 2, 70:80, 70:80] += 0.5
    res = runner.invoke(cli, ["db", "files", "--problems", "--kind", "cutouts", "--format", "json"])
    assert res.exit_code == 1
    bad = [json.loads(line) for line in res.stdout.splitlines() if str(h5) in line]
    assert len(bad) == 1 and bad[0]["status"].startswith("contents changed")

    res = runner.invoke(cli, ["ingest", "sources", str(h5), "--survey", "pix"])
    assert res.exit_code == 0, res.output
    assert "nothing changed" not in res.stdout
    assert f"{h5}: pixels of 2 cutouts changed (rows 1, 4); 2 embeddings and 2 scores of 2 sources" in res.stdout
    after = vectors()
    changed = {sids[1], sids[4]}
    assert set(after) == set(sids) - changed
    assert all(after[i] == before[i] for i in after)  # unchanged rows keep their vectors
    scored = set(
        session.execute(text("SELECT source_id FROM lenscat.scores WHERE model_id = :m"), {"m": clf.model_id}).scalars()
    )
    assert scored == set(sids) - changed

    planned = [p for p in plan_reprocess(session=session, dry_run=True) if p.kind == "embed"]
    assert [p.n_items for p in planned] == [2]  # exactly the changed rows
    job = plan_embed_job("pix-enc", chunk_size=4, session=session)
    assert job.n_items == 2
    assert run_here(job.job_id, embed_chunk, session=session) == 2
    final = vectors()
    assert set(final) == set(sids)
    assert all(final[i] == before[i] for i in set(sids) - changed)
    assert all(final[i][0] != before[i][0] for i in changed)  # recomputed from the new pixels

    res = runner.invoke(cli, ["db", "files", "--problems", "--kind", "cutouts", "--format", "json"])
    assert str(h5) not in res.stdout  # the registered digest is the new content's
    res = runner.invoke(cli, ["ingest", "sources", str(h5), "--survey", "pix"])
    assert "already ingested" in res.stdout and "pixels of" not in res.stdout


def test_scoring_skips_bad_cutouts_and_scores_the_rest(session, tmp_path):
    from astropy.table import Table

    from lenscat.catalogue.ingest import ingest_sources
    from lenscat.classifiers.labels import import_labels
    from lenscat.classifiers.scoring import plan_score_job, score_chunk
    from lenscat.classifiers.train_image import train_image_classifier_version
    from lenscat.images.store import close_stores
    from lenscat.jobs.reprocess import plan_reprocess
    from lenscat.jobs.service import run_here

    h5, gone = tmp_path / "score.h5", tmp_path / "score-gone.h5"
    write_stein_h5(h5, 48, seed=5)
    write_stein_h5(gone, 3, seed=6)
    ingest_sources(h5, "score-iso", progress=False)
    ingest_sources(gone, "score-iso-gone", progress=False)
    truth = tmp_path / "truth.csv"
    Table({"objid": np.arange(1000, 1048), "lens": (np.arange(48) % 8 == 0).astype(int)}).write(
        truth, format="ascii.csv"
    )
    import_labels(truth, label_col="lens", survey="score-iso", session=session)
    cnn = train_image_classifier_version(
        "iso-cnn",
        arch="cnn",
        session=session,
        ratio=5,
        val_ratio=5,
        epochs=1,
        batch_size=16,
        crop=32,
        max_steps=2,
        seed=0,
    ).model
    close_stores()
    with h5py.File(h5, "r+") as fh:
        fh["images"][5, 1, 3, 3] = np.inf
    gone.unlink()
    sids = _source_ids(session, "score-iso")
    gone_ids = _source_ids(session, "score-iso-gone")

    job = plan_score_job("iso-cnn", chunk_size=1000, session=session)
    assert job.n_chunks == 1 and job.n_items == 51
    assert run_here(job.job_id, score_chunk, session=session) == 47
    scored = set(
        session.execute(text("SELECT source_id FROM lenscat.scores WHERE model_id = :m"), {"m": cnn.model_id}).scalars()
    )
    assert scored == set(sids) - {sids[5]}
    failed = dict(
        session.execute(
            text("SELECT item_id, reason FROM lenscat.job_item_failures WHERE model_id = :m"), {"m": cnn.model_id}
        ).all()
    )
    assert failed[sids[5]] == "cutout has NaN or infinite pixels"
    assert set(failed) == {sids[5], *gone_ids} and all("cutout file not found" in failed[i] for i in gone_ids)
    assert not [p for p in plan_reprocess(session=session, dry_run=True) if p.kind == "score"]
