"""Cutouts in other bands than DECaLS g, r, z (HSC-like g, r, i, z, y): train, embed, search, classify."""

import astropy.units as u
import h5py
import numpy as np
import pytest
from sqlalchemy import text

from lenscat.errors import LenscatError

BANDS = ["g", "r", "i", "z", "y"]
SKY = [0.002, 0.003, 0.004, 0.008, 0.02]


def _write_hsc_like(path, n, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:64, :64] - 31.5
    images = rng.normal(size=(n, 5, 64, 64)) * np.asarray(SKY)[None, :, None, None]
    for i in range(n):
        w = rng.uniform(2, 6)
        images[i] += rng.uniform(0.05, 1.0, 5)[:, None, None] * np.exp(-(xx**2 + yy**2) / (2 * w * w))
    with h5py.File(path, "w") as fh:
        fh["images"] = images.astype(np.float32)
        fh["ra"] = rng.uniform(30, 31, n)
        fh["dec"] = rng.uniform(-5, -4, n)
        fh["objid"] = np.arange(5000, 5000 + n, dtype=np.int64)
        fh["mag_r"] = rng.uniform(18, 21, n).astype(np.float32)
        fh["is_lens"] = (np.arange(n) % 6 == 0).astype(np.int8)


def test_five_band_survey_trains_embeds_searches_and_classifies(session, tmp_path):
    from lenscat.catalogue.ingest import ingest_sources
    from lenscat.catalogue.types import SourceMapping
    from lenscat.classifiers.labels import import_labels
    from lenscat.classifiers.train_image import train_image_classifier_version
    from lenscat.embeddings.embed import embed_chunk, plan_embed_job
    from lenscat.embeddings.encoder_train import train_encoder
    from lenscat.embeddings.similarity import query_from_source, similar
    from lenscat.jobs.service import run_here

    h5 = tmp_path / "hsc.h5"
    _write_hsc_like(h5, 48)
    ingest_sources(h5, "hsc-like", SourceMapping(bands=BANDS), pixel_scale=0.168 * u.arcsec)
    with pytest.raises(LenscatError, match=r"pixel scale of 0.168 arcsec/pixel but this input says 0.262"):
        ingest_sources(h5, "hsc-like", SourceMapping(bands=BANDS), pixel_scale="0.262")
    model, created, metrics = train_encoder(
        "hsc-moco", ["hsc-like"], batch_size=16, max_steps=2, crop=32, progress=False
    )
    assert created and metrics["steps"] == 2
    hp, spec = session.execute(
        text("SELECT hparams, input_spec FROM lenscat.model_versions WHERE name = 'hsc-moco'")
    ).one()
    assert hp["in_chans"] == 5 and spec["bands"] == BANDS and spec["stamp"] == 64
    assert spec["pixel_scale_arcsec"] == pytest.approx(0.168)
    np.testing.assert_allclose(hp["preprocess"]["scales"], SKY, rtol=0.05)  # measured, not DECaLS'
    assert hp["augment"]["blur"] is False and len(hp["augment"]["extinction"]) == 5
    assert any(n.startswith("bands g, r, i, z, y") for n in metrics["band_setup"])

    job = plan_embed_job(model.label, surveys=["hsc-like"], chunk_size=100, session=session)
    run_here(job.job_id, embed_chunk, session=session)
    assert session.execute(text("SELECT count(*) FROM embeddings WHERE encoder = 'hsc-moco'")).scalar() == 48
    sid = session.execute(text("SELECT min(source_id) FROM sources WHERE survey = 'hsc-like'")).scalar()
    res = similar(
        query_from_source(sid, model, session=session),
        encoder=model,
        k=5,
        mag_window=None,
        exclude_radius=None,
        session=session,
    )
    assert len(res) == 5 and sid not in set(res["source_id"])

    import_labels(h5, label_col="is_lens", survey="hsc-like", origin="simulation", session=session)
    cnn = train_image_classifier_version(
        "hsc-cnn", arch="cnn", session=session, ratio=5, val_ratio=5, crop=32, batch_size=16, max_steps=2
    )
    cnn_spec = session.execute(text("SELECT input_spec FROM lenscat.model_versions WHERE name = 'hsc-cnn'")).scalar()
    assert cnn_spec["bands"] == BANDS and cnn.report["created"]
    assert any("re-reddening with" in n for n in cnn.report["notes"])
    ft = train_image_classifier_version(
        "hsc-ft", arch="finetune", encoder="hsc-moco", session=session, ratio=5, val_ratio=5, batch_size=16, max_steps=2
    )
    assert ft.report["encoder"] == model.label
