"""`lenscat encoder train` stopped by Ctrl-C keeps its state; the same command resumes and registers."""

import os
import signal

import pytest
from sqlalchemy import text

from lenscat.encoders import CatalogueImages, train_encoder, training_state_dir
from lenscat.errors import Interrupted


def test_interrupted_training_resumes_and_registers_once(session, tmp_path, monkeypatch):
    from lenscat.source_ingest import ingest_sources
    from tests.integration.test_embed_workers import write_stein_h5

    h5 = tmp_path / "resume.h5"
    write_stein_h5(h5, 64, seed=8)
    ingest_sources(h5, "resume-survey")
    args = dict(epochs=2, batch_size=16, crop=32, queue_size=32, progress=False, seed=5)
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
