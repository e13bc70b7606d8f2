"""A classifier's penultimate layer as an encoder version: derive, embed through the job, search, evaluate."""

from __future__ import annotations

import json
from typing import cast

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sqlalchemy import text

from lenscat.errors import LenscatError

N, LENS_FRACTION, STAMP = 120, 0.1, 64


def _direct_features(net, images: np.ndarray) -> np.ndarray:
    """The classifier's backbone output on its prepared crop, unit length (mean of unit vectors over views)."""
    from lenscat.models.preprocess import oriented

    net.eval()
    with torch.no_grad():
        x = net.prepare(torch.from_numpy(images))
        views = net.preprocessing.views
        acc = cast(torch.Tensor, sum(F.normalize(net.backbone(oriented(x, v)).float(), dim=1) for v in range(views)))
        return F.normalize(acc, dim=1).numpy()


def test_classifier_features_encoder_end_to_end(session, tmp_path, monkeypatch, capsys):
    from lenscat.catalogue.ingest import ingest_sources
    from lenscat.classifiers.labels import import_labels
    from lenscat.classifiers.train_image import train_image_classifier_version
    from lenscat.classifiers.train_linear import train_linear_classifier
    from lenscat.embeddings.embed import embed_chunk, embed_images, plan_embed_job
    from lenscat.embeddings.encoder_derive import derive_encoder, encoder_from_classifier
    from lenscat.embeddings.vectors import read_embeddings
    from lenscat.jobs.reprocess import plan_reprocess
    from lenscat.jobs.service import run_here
    from lenscat.models.features import FEATURES_ARCH
    from lenscat.models.supervised import load_classifier
    from lenscat.simulate.survey import simulate_survey
    from tests.integration.test_cli import run

    path = tmp_path / "feat.h5"
    simulate_survey(N, LENS_FRACTION, 5, path, stamp=STAMP, workers=1, progress=False)
    ingest_sources(path, "feat")
    labels = import_labels(path, label_col="is_lens", survey="feat", origin="simulation", session=session)
    assert labels.n_positive == round(N * LENS_FRACTION)
    cnn = train_image_classifier_version(
        "feat-cnn",
        arch="cnn",
        session=session,
        ratio=5,
        val_ratio=5,
        epochs=1,
        batch_size=16,
        crop=32,
        max_steps=2,
        seed=0,
    )

    # derive: one version per classifier version, whose parent is the classifier
    clf, enc, created = encoder_from_classifier("feat-cnn", session=session)
    assert created and clf.model_id == cnn.model.model_id
    assert (enc.name, enc.architecture, enc.parent_model_id) == ("feat-cnn-features", FEATURES_ARCH, clf.model_id)
    net, _ = load_classifier(str(clf.checkpoint_path))
    assert enc.output_dim == int(net.head.in_features)
    assert enc.input_spec["crop"] == net.crop and enc.input_spec["views"] == net.preprocessing.views
    _, again, created_again = encoder_from_classifier(clf.label, session=session)
    assert not created_again and again.model_id == enc.model_id

    # reprocessing plans it like any encoder; embed through the job (what a worker runs)
    dry = plan_reprocess(session=session, dry_run=True)
    assert [(p.kind, p.n_items) for p in dry if p.model == enc.label] == [("embed", N)]
    job = plan_embed_job(enc.label, session=session, chunk_size=50)
    assert job.n_items == N
    run_here(job.job_id, embed_chunk, session=session)
    ids, stored = read_embeddings(enc, session=session)
    assert len(ids) == N and stored.shape == (N, enc.output_dim)
    objid_of = dict(
        session.execute(
            text("SELECT source_id, objid FROM lenscat.sources WHERE source_id = ANY(:i)"), {"i": ids.tolist()}
        ).all()
    )
    with h5py.File(path, "r") as fh:
        row = {str(o.decode() if isinstance(o, bytes) else o): i for i, o in enumerate(fh["objid"][...])}
        images = fh["images"][...].astype(np.float32)[[row[str(objid_of[int(i)])] for i in ids]]
    direct = _direct_features(net, images)
    np.testing.assert_allclose(np.linalg.norm(direct, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(embed_images(enc, images, device="cpu"), direct, atol=1e-5)  # the job's encode path
    np.testing.assert_allclose(stored, direct, atol=2e-3)  # stored as halfvec

    # other views: a new version of the same name, from the same classifier; its own views: the same version
    views = 8 if net.preprocessing.views != 8 else 1
    _, other, made = derive_encoder(enc.label, views=views, session=session)
    assert made and other.name == enc.name and other.version == enc.version + 1
    assert other.parent_model_id == clf.model_id and other.input_spec["views"] == views
    assert derive_encoder(enc.label, views=net.preprocessing.views, session=session)[1].model_id == enc.model_id
    with pytest.raises(LenscatError, match="no readout"):
        derive_encoder(enc.label, readout="gap+annuli2", session=session)

    # the CLI: list with the parent, similar by a lens, evaluate, idempotent derive
    code, out, err = run(monkeypatch, capsys, "encoder", "list", "--format", "json")
    listed = {r["name"] + "@" + str(r["version"]): r for r in map(json.loads, out.splitlines())}
    assert code == 0 and listed[enc.label]["parent"] == f"classifier {clf.label}"
    assert listed[enc.label]["readout"] == "penultimate" and listed[enc.label]["n_embeddings"] == N
    lens_id = session.execute(
        text("SELECT source_id FROM lenscat.labels WHERE label = 1 AND source_id = ANY(:i) ORDER BY 1 LIMIT 1"),
        {"i": ids.tolist()},
    ).scalar_one()
    code, out, err = run(
        monkeypatch,
        capsys,
        "similar",
        "--encoder",
        enc.label,
        "--source-id",
        str(lens_id),
        "-k",
        "10",
        "--mag-window",
        "0",
        "--exclude-radius",
        "0",
        "--format",
        "json",
    )
    rows = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and len(rows) == 10 and lens_id not in {r["source_id"] for r in rows}
    code, out, err = run(
        monkeypatch,
        capsys,
        "encoder",
        "evaluate",
        "--name",
        enc.label,
        "-k",
        "10",
        "--mag-window",
        "0",
        "--exclude-radius",
        "0",
        "--format",
        "json",
    )
    summary = json.loads(out.splitlines()[0])
    assert code == 0 and summary["enrichment"] >= 0 and summary["n_lenses"] == labels.n_positive
    code, out, err = run(monkeypatch, capsys, "encoder", "from-classifier", "--classifier", clf.label)
    assert code == 0 and f"encoder {enc.label} already registered" in out

    # a linear probe has no image network: a one-line error
    probe = train_linear_classifier("feat-probe", enc.label, session=session, ratio=5, val_ratio=5, seed=0)
    with pytest.raises(LenscatError, match="linear probe on the embeddings of feat-cnn-features"):
        encoder_from_classifier(probe.model.label, session=session)
    code, out, err = run(monkeypatch, capsys, "encoder", "from-classifier", "--classifier", "feat-probe")
    assert code == 2 and err.startswith("lenscat: error: classifier feat-probe@1 is a linear probe")
    assert len(err.strip().splitlines()) == 1
