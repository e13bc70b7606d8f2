"""The files the database refers to: checked where they are, relocated after the data moved."""

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner
from sqlalchemy import text

from lenscat.catalogue.datafiles import check_files, referenced_files, relocate_files
from lenscat.cli import cli
from lenscat.errors import LenscatError
from tests.integration.test_embed_workers import write_stein_h5

IMAGES = Path(__file__).parents[1] / "data" / "images"


def _world(session, root: Path) -> dict[str, Path]:
    """Under ``root``: a Stein HDF5 survey, a FITS set of per-band files, a checkpoint, a spectrum store."""
    from lenscat.catalogue.ingest import ingest_sources
    from lenscat.catalogue.ingest_fits import ingest_fits_cutouts
    from lenscat.registry.versions import register_model

    (root / "fits").mkdir(parents=True)
    h5 = root / "survey.h5"
    write_stein_h5(h5, 4)
    ingest_sources(h5, "moved-survey")
    bands = sorted((IMAGES / "ps1_sled_lenses").glob("SDSSJ1430_6104_PS1_[grz].fits"))
    fits = [Path(shutil.copy(f, root / "fits")) for f in bands]
    ingest_fits_cutouts(fits, "moved-fits", session=session)
    ckpt = root / "weights.pt"
    ckpt.write_bytes(b"not really torch, but a file with a digest")
    from lenscat.catalogue.ingest_log import file_sha256

    register_model(
        "encoder",
        "moved-enc",
        architecture="resnet-small",
        output_dim=8,
        checkpoint_path=ckpt,
        checkpoint_sha256=file_sha256(ckpt),
        origin="trained",
        session=session,
    )
    pack = root / "spectra.h5"
    with h5py.File(pack, "w") as fh:
        fh["flux"] = np.zeros((3, 4), np.float32)
    session.execute(
        text(
            "INSERT INTO lenscat.spectrum_packs (name, path, window_k0, window_n, veto_k0, veto_n, "
            "dlog, n_rows) VALUES ('moved', :p, 0, 4, 0, 1, 1e-4, 3)"
        ),
        {"p": str(pack)},
    )
    return {"h5": h5, "ckpt": ckpt, "pack": pack, "fits": fits[0].parent}


def _mine(session, root: Path):
    return [f for f in referenced_files(session=session) if f.path.startswith(str(root))]


def test_moved_files_are_found_missing_then_relocated(session, tmp_path):
    old, new = tmp_path / "scratch", tmp_path / "project"
    _world(session, old)
    files = _mine(session, old)
    assert sorted(f.kind for f in files) == ["checkpoint", "cutouts", "cutouts", "spectra"]
    assert check_files(files, progress=False) == [None] * 4
    fits = next(f for f in files if f.members)
    assert len(fits.members) == 3 and fits.label == "survey moved-fits"

    shutil.move(old, new)
    assert check_files(files, progress=False) == ["missing"] * 4
    from lenscat.errors import InputFileError
    from lenscat.images.store import source_cutout

    sid = session.execute(
        text(
            "SELECT source_id FROM lenscat.sources s JOIN lenscat.surveys v USING (survey_id) "
            "WHERE v.name = 'moved-survey' LIMIT 1"
        )
    ).scalar_one()
    with pytest.raises(InputFileError, match="cutout file not found .*lenscat db relocate"):
        source_cutout(sid, session=session)  # the reader says what to do

    plan = relocate_files(old, new, session=session, dry_run=True, progress=False)
    assert plan.counts() == {"cutouts": 2, "spectra": 1, "checkpoint": 1}
    assert not plan.problems and not plan.written
    assert _mine(session, old) == files  # a dry run writes nothing

    done = relocate_files(old, new, session=session, progress=False)
    assert done.written
    moved = _mine(session, new)
    assert len(moved) == 4 and not _mine(session, old)
    assert check_files(moved, progress=False) == [None] * 4
    fits = next(f for f in moved if f.members)
    assert all(m.startswith(str(new / "fits") + "/") for m in fits.members) and fits.path == fits.members[0]

    image, _ = source_cutout(sid, session=session)  # read from the new place
    assert image.shape == (3, 152, 152)

    with pytest.raises(LenscatError, match="no cutout file, spectrum store or checkpoint is registered under"):
        relocate_files(old, new, session=session, progress=False)  # a second run has nothing left to move


def test_relocation_refuses_changed_or_missing_files_and_writes_nothing(session, tmp_path):
    old, new = tmp_path / "a", tmp_path / "b"
    paths = _world(session, old)
    shutil.copytree(old, new)
    paths_new = {k: new / v.relative_to(old) for k, v in paths.items()}
    paths_new["ckpt"].write_bytes(b"other weights")  # changed contents
    with h5py.File(paths_new["pack"], "a") as fh:  # fewer rows than committed
        del fh["flux"]
        fh["flux"] = np.zeros((1, 4), np.float32)
    (paths_new["fits"] / "SDSSJ1430_6104_PS1_z.fits").unlink()  # one band of the set gone

    res = relocate_files(old, new, session=session, progress=False)
    assert not res.written
    why = {f.kind + ("-set" if f.members else ""): p for f, p in res.problems}
    assert set(why) == {"checkpoint", "spectra", "cutouts-set"}
    assert why["checkpoint"].startswith("contents changed (sha256")
    assert why["spectra"] == "holds 1 rows, the database has committed 3"
    assert why["cutouts-set"].startswith("missing band file") and why["cutouts-set"].endswith("_z.fits")
    assert len(_mine(session, old)) == 4 and not _mine(session, new)

    with pytest.raises(LenscatError, match="the same"):
        relocate_files(old, old, session=session, progress=False)


def test_cli_files_and_relocate(session, tmp_path):
    old, new = tmp_path / "old", tmp_path / "new"
    _world(session, old)
    runner = CliRunner()
    res = runner.invoke(cli, ["db", "files", "--kind", "cutouts", "--format", "json"])
    assert res.exit_code == 0, res.output
    rows = [json.loads(line) for line in res.stdout.splitlines()]
    assert {r["status"] for r in rows} == {"ok"} and {r["kind"] for r in rows} == {"cutouts"}
    assert any(r["path"] == str(old / "survey.h5") and r["n_rows"] == 4 for r in rows)

    shutil.move(old, new)
    res = runner.invoke(cli, ["db", "files", "--problems", "--format", "json"])
    assert res.exit_code == 1  # problems: a non-zero exit for scripts
    mine = [json.loads(line) for line in res.stdout.splitlines() if str(old) in line]
    assert len(mine) == 4 and {r["status"] for r in mine} == {"missing"}

    res = runner.invoke(cli, ["db", "relocate", str(old), str(new), "--format", "json"])
    assert res.exit_code == 0, res.output
    rows = [json.loads(line) for line in res.stdout.splitlines()]
    assert len(rows) == 4 and {r["status"] for r in rows} == {"ok"}
    assert "relocated 2 cutouts, 1 spectra, 1 checkpoint" in res.stderr
    res = runner.invoke(cli, ["db", "files", "--problems", "--format", "json"])
    assert not [line for line in res.stdout.splitlines() if str(tmp_path) in line]


def test_reingesting_a_moved_survey_file_repoints_its_cutouts(session, tmp_path):
    """A survey file moved and ingested again from its new place: its rows are done, its cutouts follow it."""
    from lenscat.catalogue.ingest import ingest_sources
    from lenscat.images.store import source_cutout

    def cutout_files() -> set[str]:
        return set(
            session.execute(
                text("SELECT DISTINCT cutout_file FROM public.sources WHERE survey = 'moved-again'")
            ).scalars()
        )

    old, new = tmp_path / "scratch" / "survey.h5", tmp_path / "project" / "survey.h5"
    old.parent.mkdir()
    new.parent.mkdir()
    write_stein_h5(old, 4)
    ingest_sources(old, "moved-again")
    rows = session.execute(
        text("SELECT source_id, cutout_row FROM public.sources WHERE survey = 'moved-again' ORDER BY cutout_row")
    ).all()
    shutil.copy(old, new)
    again = ingest_sources(new, "moved-again")  # the old file still exists: nothing moves
    assert again.batches_skipped == again.batches_total and again.cutouts_moved_from == []
    assert cutout_files() == {str(old)}
    old.unlink()
    res = CliRunner().invoke(cli, ["ingest", "sources", str(new), "--survey", "moved-again"])
    assert res.exit_code == 0, res.output
    assert f"{old}: no longer there; its sources now read their cutouts from {new} (same content)" in res.stdout
    assert "already ingested" in res.stdout  # no row was written again
    assert cutout_files() == {str(new)}
    assert not session.execute(text("SELECT 1 FROM lenscat.cutout_files WHERE path = :p"), {"p": str(old)}).first()
    with h5py.File(new, "r") as fh:
        for sid, row in rows:
            np.testing.assert_array_equal(source_cutout(sid, session=session)[0], fh["images"][row])
    assert ingest_sources(new, "moved-again").cutouts_moved_from == []
