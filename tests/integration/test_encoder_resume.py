"""`lenscat encoder train` stopped by Ctrl-C keeps its state; the same command resumes and registers."""

import json
import os
import signal
from typing import Any

import pytest
from sqlalchemy import text

from lenscat.embeddings.encoder_train import train_encoder
from lenscat.embeddings.encoders import CatalogueImages
from lenscat.errors import Interrupted
from lenscat.registry.versions import training_state_dir


def test_interrupted_training_resumes_and_registers_once(session, tmp_path, monkeypatch):
    from lenscat.catalogue.ingest import ingest_sources
    from tests.integration.test_embed_workers import write_stein_h5

    h5 = tmp_path / "resume.h5"
    write_stein_h5(h5, 64, seed=8)
    ingest_sources(h5, "resume-survey")
    args: dict[str, Any] = dict(epochs=2, batch_size=16, crop=32, queue_size=32, progress=False, seed=5)
    real_get = CatalogueImages.get
    reads = []

    def ctrl_c_on_third_read(self, indices):
        reads.append(len(indices))
        if len(reads) == 3:
            os.kill(os.getpid(), signal.SIGINT)  # as Ctrl-C: the current step finishes, the state is saved
        return real_get(self, indices)

    monkeypatch.setattr(CatalogueImages, "get", ctrl_c_on_third_read)
    with pytest.raises(Interrupted, match=r"training state saved at step \d of 8 .*re-run the same command"):
        train_encoder("resume-enc", ["resume-survey"], **args)
    assert session.execute(text("SELECT count(*) FROM lenscat.model_versions WHERE name = 'resume-enc'")).scalar() == 0
    states = list(training_state_dir().glob("moco-*.state"))
    assert len(states) == 1
    monkeypatch.setattr(CatalogueImages, "get", real_get)

    model, created, metrics = train_encoder("resume-enc", ["resume-survey"], **args)
    assert created and metrics["steps"] == 8 and 1 <= metrics["resumed_from_step"] < 8
    assert not states[0].exists()  # registered: nothing left to resume
    # the resumed encoder is the one an uninterrupted run gives: same checkpoint, so no new version
    again, created_again, fresh = train_encoder("resume-enc", ["resume-survey"], **args)
    assert fresh["resumed_from_step"] == 0 and not created_again
    assert again.model_id == model.model_id and again.checkpoint_sha256 == model.checkpoint_sha256

    # interrupted again, then `--restart` from the CLI: the saved state is discarded, training starts at 0
    reads.clear()
    monkeypatch.setattr(CatalogueImages, "get", ctrl_c_on_third_read)
    with pytest.raises(Interrupted):
        train_encoder("resume-enc", ["resume-survey"], **args)
    monkeypatch.setattr(CatalogueImages, "get", real_get)
    from click.testing import CliRunner

    from lenscat.cli import cli

    res = CliRunner().invoke(
        cli,
        [
            "encoder",
            "train",
            "--name",
            "resume-enc",
            "--survey",
            "resume-survey",
            "--epochs",
            "2",
            "--batch-size",
            "16",
            "--crop",
            "32",
            "--queue-size",
            "32",
            "--seed",
            "5",
            "--restart",
            "--json",
        ],
    )
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["resumed_from_step"] == 0 and out["checkpoint_sha256"] == model.checkpoint_sha256
    assert not list(training_state_dir().glob("moco-*.state"))


def test_interrupted_classifier_training_resumes_and_registers_once(session, tmp_path, monkeypatch):
    import numpy as np
    from astropy.table import Table

    from lenscat.catalogue.ingest import ingest_sources
    from lenscat.classifiers.labels import import_labels
    from lenscat.classifiers.train_image import train_image_classifier_version
    from tests.integration.test_embed_workers import write_stein_h5

    h5 = tmp_path / "clf.h5"
    write_stein_h5(h5, 96, seed=9)
    ingest_sources(h5, "resume-clf")
    truth = tmp_path / "truth.csv"
    Table({"objid": np.arange(1000, 1096), "lens": (np.arange(96) % 8 == 0).astype(int)}).write(
        truth, format="ascii.csv"
    )
    import_labels(truth, label_col="lens", survey="resume-clf", session=session)
    args = dict(
        arch="cnn",
        session=session,
        surveys=["resume-clf"],
        ratio=5,
        val_ratio=5,
        epochs=3,
        batch_size=8,
        crop=32,
        seed=1,
    )
    real_get = CatalogueImages.get
    reads = []

    def ctrl_c_on_fourth_read(self, indices):
        reads.append(len(indices))
        if len(reads) == 4:
            os.kill(os.getpid(), signal.SIGINT)
        return real_get(self, indices)

    monkeypatch.setattr(CatalogueImages, "get", ctrl_c_on_fourth_read)
    with pytest.raises(Interrupted, match=r"training state saved at step \d+ of \d+"):
        train_image_classifier_version("resume-cnn", **args)
    assert session.execute(text("SELECT count(*) FROM lenscat.model_versions WHERE name = 'resume-cnn'")).scalar() == 0
    states = list(training_state_dir().glob("classifier-*.state"))
    assert len(states) == 1
    monkeypatch.setattr(CatalogueImages, "get", real_get)
    done = train_image_classifier_version("resume-cnn", **args)
    assert done.created and done.report["resumed_from_step"] >= 1 and not states[0].exists()
    again = train_image_classifier_version("resume-cnn", **args)  # uninterrupted: the same checkpoint
    assert not again.created and again.model.model_id == done.model.model_id
