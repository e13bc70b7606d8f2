"""Synthetic BOSS spectra and Lyα lines (lenscat.spectra.synth; Li et al. 2018 priors)."""

from __future__ import annotations

import numpy as np
import pytest

from lenscat.errors import LenscatError
from lenscat.spectra.grid import C_KMS, WINDOW
from lenscat.spectra.synth import inject_lines, lya_profile, pixel_edges, skewnorm_shape
from lenscat.spectra.synth_priors import draw_lya_params
from lenscat.spectra.synth_training import make_training_set


@pytest.fixture(scope="module")
def synth():
    return make_training_set(3000, seed=7)


def test_profile_integrates_to_line_flux():
    w = WINDOW.wave
    e = pixel_edges(w)
    for fwhm, skew in ((300.0, 0.0), (80.0, 3.0), (900.0, -2.0), (50.0, 8.0)):
        p = lya_profile(w, 4400.0, 37.0, fwhm, skew)
        assert p.shape == (WINDOW.n,)
        assert np.sum(p * np.diff(e)) == pytest.approx(37.0, rel=1e-6)
    fine = np.linspace(4300.0, 4500.0, 40001)
    p = lya_profile(fine, 4400.0, 37.0, 300.0, 4.0, integrate=False)
    assert np.trapezoid(p, fine) == pytest.approx(37.0, rel=1e-4)


@pytest.mark.parametrize("skew", [0.0, 2.5, -1.5, 6.0])
def test_profile_fwhm_and_peak_position(skew):
    fine = np.linspace(4350.0, 4450.0, 200001)
    p = lya_profile(fine, 4400.0, 10.0, 400.0, skew, integrate=False)
    above = fine[p >= 0.5 * p.max()]
    fwhm_kms = (above[-1] - above[0]) / 4400.0 * C_KMS
    assert fwhm_kms == pytest.approx(400.0, rel=2e-3)
    assert fine[np.argmax(p)] == pytest.approx(4400.0, abs=2e-3)
    if skew == 0.0:  # a Gaussian: peak = F / (sigma sqrt(2 pi)), FWHM = 2.3548 sigma
        sigma = 4400.0 * 400.0 / C_KMS / 2.354820045
        assert p.max() == pytest.approx(10.0 / (sigma * np.sqrt(2 * np.pi)), rel=1e-4)


def test_positive_skew_is_a_red_tail():
    fine = np.linspace(4300.0, 4500.0, 20001)
    p = lya_profile(fine, 4400.0, 10.0, 400.0, 4.0, integrate=False)
    mean = np.sum(fine * p) / np.sum(p)
    assert mean > 4400.0  # tail to the red of the peak
    mode, width, peak = skewnorm_shape(0.0)
    assert mode == pytest.approx(0.0, abs=1e-6)
    assert width == pytest.approx(2.354820045, rel=1e-4)
    assert peak == pytest.approx(1 / np.sqrt(2 * np.pi), rel=1e-5)


def test_profile_vectorised():
    w = WINDOW.wave
    p = lya_profile(w, np.array([4000.0, 4600.0]), np.array([5.0, 8.0]), 300.0, 1.0)
    assert p.shape == (2, WINDOW.n)
    assert np.allclose(p[1], lya_profile(w, 4600.0, 8.0, 300.0, 1.0))
    with pytest.raises(LenscatError):
        lya_profile(w, 4400.0, 1.0, 0.0, 0.0)


def test_priors_respected():
    rng = np.random.default_rng(3)
    d = draw_lya_params(rng, 20000)
    assert np.all(d["fwhm_A"] > 0.5)
    assert np.all(d["fwhm_kms"] >= WINDOW.velocity_per_pixel)
    assert np.all(d["peak"] > 1.5)
    assert np.all((d["pixel"] >= 5) & (d["pixel"] <= WINDOW.n - 6))
    assert np.all((d["centre"] > 3800) & (d["centre"] < 5000))
    assert np.mean(d["skew"] > 0) > 0.7
    assert 250 < np.median(d["fwhm_kms"]) < 400
    assert np.allclose(d["z_lya"], d["centre"] / 1215.67 - 1)
    # the stated peak is the continuous profile's peak
    i = 0
    fine = np.linspace(d["centre"][i] - 30, d["centre"][i] + 30, 60001)
    p = lya_profile(fine, d["centre"][i], d["line_flux"][i], d["fwhm_kms"][i], d["skew"][i], integrate=False)
    assert p.max() == pytest.approx(d["peak"][i], rel=1e-3)


def test_positive_fraction_and_labels(synth):
    assert len(synth) == 3000
    assert synth.labels.sum() == round(3000 / 16)
    pos = synth.labels == 1
    assert np.all(synth.line_pixel[pos] >= 0) and np.all(synth.line_pixel[~pos] == -1)
    assert np.all(np.isnan(synth.line["centre"][~pos]))
    assert np.all(synth.line["peak"][pos] > 1.5)
    s = make_training_set(160, positive_fraction=0.25, seed=1)
    assert s.labels.sum() == 40


def test_reproducible():
    a = make_training_set(300, seed=11)
    b = make_training_set(300, seed=11)
    c = make_training_set(300, seed=12)
    for k in ("flux", "ivar", "continuum", "z", "labels", "line_pixel"):
        assert np.array_equal(getattr(a, k), getattr(b, k))
    assert not np.array_equal(a.flux, c.flux)


def test_ivar_consistent_with_noise(synth):
    good = synth.ivar > 0
    r = (synth.flux - synth.truth) * np.sqrt(synth.ivar)
    assert np.std(r[good]) == pytest.approx(1.0, abs=0.01)
    assert abs(np.mean(r[good])) < 0.01
    assert 0.001 < np.mean(~good) < 0.02  # a few masked pixels


def test_continuum_positive_and_flux_levels(synth):
    assert np.all(synth.galaxy > 0)
    assert np.all(synth.continuum > 0)
    level = np.median(synth.galaxy, axis=1)
    assert np.all((level > 0.49) & (level < 5.01))
    assert np.all((synth.z > 0.3) & (synth.z < 0.7))
    snr = np.median(synth.galaxy * np.sqrt(synth.ivar), axis=1)
    assert np.percentile(snr, 5) > 0.8 and np.percentile(snr, 95) < 5.5
    # the blue end is noisier, as in BOSS
    sig = 1 / np.sqrt(np.where(synth.ivar > 0, synth.ivar, np.nan))
    assert np.nanmedian(sig[:, :50]) > 1.5 * np.nanmedian(sig[:, -50:])
    rel = np.abs(synth.continuum / synth.galaxy - 1)
    assert 0.001 < np.median(rel) < 0.05


def test_lines_in_truth():
    s = make_training_set(800, seed=4, sky_residual=0.0)
    pos = np.flatnonzero(s.labels == 1)
    assert s.truth is not None and s.galaxy is not None  # kept for training sets
    line = s.truth[pos] - s.galaxy[pos]
    expect = lya_profile(
        s.wave, s.line["centre"][pos], s.line["line_flux"][pos], s.line["fwhm_kms"][pos], s.line["skew"][pos]
    )
    assert np.allclose(line, expect, atol=1e-4 * float(np.max(s.galaxy)))
    assert np.all(np.abs(np.argmax(line, axis=1) - s.line_pixel[pos]) <= 1)
    neg = s.labels == 0
    assert np.allclose(s.truth[neg], s.galaxy[neg])


def test_real_residuals():
    res = np.random.default_rng(0).standard_normal((50, WINDOW.n)) * 1.3
    res[:, 100:110] = 0.0  # masked in the store
    s = make_training_set(400, seed=2, residuals=res, residual_fraction=1.0)
    assert np.all(s.meta["noise_kind"] == 1)
    assert np.all(s.ivar[:, 100:110] == 0)
    good = s.ivar > 0
    r = (s.flux - s.truth) * np.sqrt(s.ivar)
    assert np.std(r[good]) == pytest.approx(1.3, rel=0.02)
    with pytest.raises(LenscatError):
        make_training_set(10, residuals=np.zeros((3, 10)))


def test_inject_lines():
    rng = np.random.default_rng(5)
    w = WINDOW.wave
    flux = np.ones((4, WINDOW.n), dtype=np.float32)
    ivar = np.full((4, WINDOW.n), 4.0, dtype=np.float32)
    ivar[0, :10] = 0
    params = draw_lya_params(rng, 4)
    params["centre"][2] = np.nan
    f2, iv2 = inject_lines(w, flux, ivar, params)
    assert np.array_equal(iv2, ivar) and np.array_equal(f2[2], flux[2])
    e = np.diff(pixel_edges(w))
    assert np.sum((f2[1] - 1) * e) == pytest.approx(params["line_flux"][1], rel=1e-3)
    f3, iv3 = inject_lines(w, flux, ivar, params, variance_per_flux=0.1, rng=rng)
    assert np.all(iv3[1] <= ivar[1]) and np.any(iv3[1] < ivar[1])
    assert np.all(iv3[0, :10] == 0)
    assert f3.dtype == np.float32


# --- issue 31: matched-S/N priors, block generation ----------------------------------------


def test_matched_priors_reach_the_drawn_matched_snr_exactly():
    from lenscat.spectra.synth import matched_snr

    s = make_training_set(
        600,
        seed=9,
        priors="matched",
        positive_fraction=0.25,
        line_priors={"snr_range": (4.0, 15.0), "bright_fraction": 0.0},
    )
    pos = np.flatnonzero(s.labels == 1)
    assert len(pos) == 150 and s.meta["priors"] == "matched"
    line = lya_profile(
        s.wave, s.line["centre"][pos], s.line["line_flux"][pos], s.line["fwhm_kms"][pos], s.line["skew"][pos]
    )
    # the optimal-filter S/N of the line against the spectrum's own final ivar (masks and the
    # line's photon noise included) is the drawn one
    got = matched_snr(line, s.ivar[pos])
    assert np.allclose(got, s.line["snr_target"][pos], rtol=1e-5)
    assert np.allclose(got, s.line["snr_matched"][pos], rtol=1e-5)
    assert np.all((s.line["snr_target"][pos] >= 4.0) & (s.line["snr_target"][pos] <= 15.0))
    # the stated peak is the continuous profile's
    i = int(pos[0])
    fine = np.linspace(s.line["centre"][i] - 30, s.line["centre"][i] + 30, 60001)
    p = lya_profile(
        fine, s.line["centre"][i], s.line["line_flux"][i], s.line["fwhm_kms"][i], s.line["skew"][i], integrate=False
    )
    assert p.max() == pytest.approx(s.line["peak"][i], rel=1e-3)
    # Li et al.'s priors record the matched S/N too
    li = make_training_set(300, seed=9, positive_fraction=0.25)
    lp = np.flatnonzero(li.labels == 1)
    ll = lya_profile(
        li.wave, li.line["centre"][lp], li.line["line_flux"][lp], li.line["fwhm_kms"][lp], li.line["skew"][lp]
    )
    assert np.allclose(matched_snr(ll, li.ivar[lp]), li.line["snr_matched"][lp], rtol=1e-5)


def test_matched_priors_cover_the_full_fwhm_and_skew_range():
    from lenscat.spectra.synth_priors import draw_matched_params

    d = draw_matched_params(np.random.default_rng(4), 20000)
    assert np.all((d["fwhm_kms"] >= 70.0) & (d["fwhm_kms"] <= 1100.0))
    # log-uniform: as many lines below 278 km/s (the geometric middle) as above
    assert 0.47 < np.mean(d["fwhm_kms"] < np.sqrt(70.0 * 1100.0)) < 0.53
    assert np.mean(d["fwhm_kms"] < 120) > 0.15 and np.mean(d["fwhm_kms"] > 700) > 0.1
    red = d["skew"] > 1.5
    assert 0.6 < np.mean(red) < 0.8 and d["skew"].max() <= 8.0
    assert np.mean(np.abs(d["skew"]) < 1.0) > 0.15  # some nearly symmetric lines
    core = d["snr_target"] <= 20.0  # S/N 3-20, plus a bright tail (15 %) up to 150
    assert np.all(d["snr_target"] >= 3.0) and 0.13 < np.mean(~core) < 0.17 and d["snr_target"].max() <= 150.0
    assert np.all((d["pixel"] >= 5) & (d["pixel"] <= WINDOW.n - 6))
    with pytest.raises(LenscatError):
        make_training_set(10, priors="nope")


def test_blocks_concatenate_to_the_whole_set(monkeypatch):
    from lenscat.spectra import synth_training as synth_mod
    from lenscat.spectra.synth_training import iter_training_set

    monkeypatch.setattr(synth_mod, "_CHUNK", 256)
    whole = make_training_set(600, seed=13, priors="matched", keep_truth=False)
    blocks = list(iter_training_set(600, seed=13, priors="matched", keep_truth=False))
    assert [len(b) for b in blocks] == [256, 256, 88] and blocks[1].meta["start"] == 256
    for k in ("flux", "ivar", "continuum", "z", "labels", "line_pixel"):
        assert np.array_equal(np.concatenate([getattr(b, k) for b in blocks]), getattr(whole, k))
    assert np.array_equal(
        np.concatenate([b.line["line_flux"] for b in blocks]), whole.line["line_flux"], equal_nan=True
    )
    assert whole.truth is None and blocks[0].truth is None


def test_matched_flux_of_a_line_hidden_by_masks_is_finite():
    from lenscat.spectra.synth import _matched_line_flux

    unit = lya_profile(WINDOW.wave, np.array([4200.0, 4500.0]), 1.0, 300.0, 2.0)
    ones = np.ones_like(unit)
    good = np.ones(unit.shape, dtype=bool)
    good[1, np.abs(WINDOW.wave - 4500.0) < 60.0] = False  # the second line lies entirely on masked pixels
    f = _matched_line_flux(unit, np.array([1.0, 1.0]), ones, ones, good, np.array([10.0, 10.0]))
    assert np.all(np.isfinite(f)) and np.all(f > 0)
    var = 1.0 + f[0] * unit[0]
    assert np.sqrt(np.sum(f[0] ** 2 * unit[0] ** 2 / var)) == pytest.approx(10.0, rel=1e-9)
