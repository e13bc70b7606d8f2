"""The ResNet + matched-filter ensemble detector (issue 31): fitted on a tiny synthetic set, registered,
loaded back through the detector registry and run on a batch."""

import dataclasses
import json
import shutil

import numpy as np
import pytest

from lenscat.errors import LenscatError


def test_ensemble_fits_registers_and_detects(session, tmp_path):
    from lenscat.registry.versions import get_model
    from lenscat.spectra.detector_ensemble import SpectralEnsemble, register_ensemble
    from lenscat.spectra.detector_mf import register_matched_filter
    from lenscat.spectra.detector_specnet import check_checkpoint
    from lenscat.spectra.detectors import SpectrumBatch, load_detector
    from lenscat.spectra.pack import PackedRows
    from lenscat.spectra.synth_training import make_training_set
    from lenscat.spectra.training import train_detector

    mf, _ = register_matched_filter("t-ens-mf", continuum="pipeline", session=session)
    sn, metrics = train_detector(
        "t-ens-rn",
        n_train=512,
        n_val=300,
        epochs=1,
        arch="small",
        positive_fraction=0.2,
        seed=2,
        progress=False,
        session=session,
    )
    # the matched filter is measured on the ResNet's validation set, like for like
    assert 0 <= metrics["mf_val_completeness_at_fpr_1e-3"] <= 1 and metrics["arch"] == "small"
    assert metrics["priors"] == "matched" and np.isfinite(metrics["mf_val_auc"])
    ens, m = register_ensemble("t-ens", [mf, sn], n_fit=300, seed=5, progress=False, session=session)
    assert ens.architecture == "ensemble" and m["n_fit"] == 300
    assert {k for k in m if k.endswith("_completeness_at_fpr_1e-3")} == {
        "ensemble_completeness_at_fpr_1e-3",
        "specnet_completeness_at_fpr_1e-3",
        "mf_completeness_at_fpr_1e-3",
    }
    # registry round trip: members by model id and checkpoint sha256
    got = get_model("detector", "t-ens", session=session)
    assert got.model_id == ens.model_id and got.checkpoint_sha256 == ens.checkpoint_sha256
    assert [(x["model_id"], x["checkpoint_sha256"]) for x in got.hparams["members"]] == [
        (mf.model_id, mf.checkpoint_sha256),
        (sn.model_id, sn.checkpoint_sha256),
    ]
    ck = json.loads(check_checkpoint(got).read_text())
    assert ck["features"] == ["specnet_logit", "mf_snr_local", "mf_snr_max"] and len(ck["coef"]) == 3
    # loaded through the registry, it scans a batch: bright lines found near their pixel
    det = load_detector(got)
    assert isinstance(det, SpectralEnsemble)
    s = make_training_set(
        64, seed=77, positive_fraction=0.25, priors="matched", line_priors={"snr_range": (15.0, 20.0)}, keep_truth=False
    )
    rows = PackedRows(s.flux, s.ivar, s.continuum, np.zeros_like(s.flux), s.z, np.zeros(len(s), np.int16))
    c = det.detect(SpectrumBatch(rows, np.arange(len(s))))
    assert c.best.shape == (64,) and np.all((c.best >= 0) & (c.best <= 1))
    found = set(c.row.tolist())
    pos = np.flatnonzero(s.labels == 1)
    assert len(found & set(pos.tolist())) >= 0.75 * len(pos)
    for r, px in zip(c.row.tolist(), c.pixel.tolist(), strict=True):
        if s.labels[r]:
            assert abs(px - s.line_pixel[r]) <= 6
    assert {"specnet_prob", "mf_snr_local", "mf_snr_max"} <= set(c.extra)
    # a changed checkpoint file is refused
    bad = tmp_path / "ens.json"
    assert got.checkpoint_path is not None
    shutil.copyfile(got.checkpoint_path, bad)
    bad.write_text(bad.read_text().replace('"format"', '"format" ', 1))
    with pytest.raises(LenscatError, match="sha256"):
        SpectralEnsemble(dataclasses.replace(got, checkpoint_path=str(bad)))
    with pytest.raises(LenscatError, match="one matched-filter and one specnet"):
        register_ensemble("t-ens2", [mf, mf], n_fit=300, session=session)


def test_union_ensemble_keeps_every_filter_hit_and_holds_its_threshold_on_real_clean_spectra(
    session, data_dir, tmp_path
):
    """rule='union': every matched-filter hit is a candidate; real_calibration measures the stack on clean
    re-noised real early types and takes the stricter threshold."""
    from lenscat.registry.versions import get_model
    from lenscat.spectra.detector_ensemble import SpectralEnsemble, register_ensemble
    from lenscat.spectra.detector_specnet import check_checkpoint
    from lenscat.spectra.detectors import SpectrumBatch, load_detector
    from lenscat.spectra.ingest import ingest_spectra
    from lenscat.spectra.pack import PackedRows
    from lenscat.spectra.synth_training import make_training_set
    from lenscat.spectra.training import train_detector

    d = tmp_path / "sdss"
    shutil.copytree(data_dir / "spectra" / "sdss", d)
    for f in d.glob("spPlate-*"):
        f.unlink()
    ingest_spectra([d], pack="t-union", workers=1, progress=False)
    mf, _ = register_matched_filter_for_test(session)
    sn, _ = train_detector(
        "t-union-rn",
        n_train=512,
        n_val=300,
        epochs=1,
        arch="small",
        positive_fraction=0.2,
        seed=2,
        progress=False,
        session=session,
    )
    ens, m = register_ensemble(
        "t-union", [mf, sn], n_fit=300, seed=5, rule="union", real_calibration=60, progress=False, session=session
    )
    cal = m["calibration"]
    assert m["rule"] == "union" and cal["real"]["realisations"] == 60 and cal["real"]["seed"] == 7
    # the stricter of the synthetic threshold and the real one, at the stricter of 1e-3 and the filter's own rate
    assert cal["real"]["fpr_used"] == min(1e-3, cal["real"]["mf_fpr"])
    assert m["threshold_logodds"] == max(cal["threshold_synthetic"], cal["threshold_real"])
    assert cal["threshold_real"] > cal["real"]["max_score"] or cal["real"]["fpr_used"] > 0
    # the union is at least as complete as the stack alone on the synthetic evaluation set
    assert m["union_completeness_at_threshold"] >= m["ensemble_completeness_at_threshold"]
    got = get_model("detector", "t-union", session=session)
    assert got.hparams["rule"] == "union"
    assert json.loads(check_checkpoint(got).read_text())["rule"] == "union"
    det = load_detector(got)
    assert isinstance(det, SpectralEnsemble) and det.rule == "union"
    s = make_training_set(64, seed=78, positive_fraction=0.5, priors="matched", keep_truth=False)
    rows = PackedRows(s.flux, s.ivar, s.continuum, np.zeros_like(s.flux), s.z, np.zeros(len(s), np.int16))
    batch = SpectrumBatch(rows, np.arange(len(s)))
    c = det.detect(batch)
    hits = det.mf.detect(batch)
    got_keys = set(zip(c.row.tolist(), c.pixel.tolist(), strict=True))
    # every hit of the filter member is a candidate, flagged as such
    assert set(zip(hits.row.tolist(), hits.pixel.tolist(), strict=True)) <= got_keys
    assert int(c.extra["from_mf"].sum()) == len(hits) and len(got_keys) == len(c)
    # a candidate of the stack alone lies more than LOCAL_PX from every filter hit of its spectrum
    for r, px in zip(c.row[~c.extra["from_mf"]].tolist(), c.pixel[~c.extra["from_mf"]].tolist(), strict=True):
        assert np.all(np.abs(hits.pixel[hits.row == r] - px) > 4)
    assert np.all(np.diff(c.row) >= 0)


def register_matched_filter_for_test(session):
    from lenscat.spectra.detector_mf import register_matched_filter

    return register_matched_filter("t-union-mf", continuum="pipeline", session=session)
