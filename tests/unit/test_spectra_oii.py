"""[OII] background emitters: the doublet filter, its fit and vetoes, on real residuals (no DB)."""

import warnings
from pathlib import Path

import numpy as np
import pytest

from lenscat.spectra import oii, oii_fit, oii_inject, oii_search, oii_vetoes
from lenscat.spectra.grid import C_KMS, FULL, to_grid
from lenscat.spectra.readers import read_spectra

DATA = Path(__file__).parents[1] / "data" / "spectra" / "sdss"


def _full(name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    s = read_spectra(DATA / name)[0]
    ivar, (flux, model) = to_grid(s.wave, s.flux, s.model, ivar=s.ivar, grid=FULL)
    assert model is not None and flux is not None and s.z is not None
    return flux, ivar, model, float(s.z)


@pytest.fixture(scope="module")
def clean():
    """spec-0403-51871-0462 (early type, z = 0.137) on FULL, with its pipeline model as continuum."""
    return _full("spec-0403-51871-0462.fits")


def _renoised(clean, n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """n re-noised copies: noise of the file's own variance added, ivar halved consistently."""
    flux, ivar, model, z = clean
    rng = np.random.default_rng(seed)
    sig = np.where(ivar > 0, 1.0 / np.sqrt(np.where(ivar > 0, ivar, 1.0)), 0.0)
    f = flux[None, :] + rng.normal(size=(n, flux.size)) * sig[None, :]
    return f, np.repeat(ivar[None, :] / 2, n, 0), np.repeat(model[None, :], n, 0), np.full(n, z)


def _covered(ivar: np.ndarray) -> tuple[float, float]:
    g = np.flatnonzero(ivar > 0)
    return float(FULL.wave[g[0]] + 20), float(FULL.wave[g[-1]] - 20)


def test_doublet_profile_integrates_to_the_flux_and_is_a_resolved_pair():
    wave = FULL.wave
    p = oii.doublet_profile(wave, 0.5, 30.0, 60.0, 1.3)
    assert np.sum(p * np.gradient(wave)) == pytest.approx(30.0, rel=1e-3)
    # at sigma 60 km/s the components (3.24 px apart) are two peaks, 3729 the taller at ratio 1.3
    i1 = np.argmin(np.abs(wave - oii.OII_3727 * 1.5))
    i2 = np.argmin(np.abs(wave - oii.OII_3729 * 1.5))
    assert i2 - i1 == 3 and p[i2] > p[i1]


def test_injection_is_scaled_to_the_matched_snr():
    rng = np.random.default_rng(3)
    ivar = np.full((4, FULL.n), 4.0, dtype=np.float32)
    params = oii_inject.draw_oii_params(rng, 4, 0.3, snr_range=(8.0, 8.0), companions=False)
    flux, out = oii_inject.inject_oii(FULL.wave, np.zeros_like(ivar), ivar, params)
    for i in range(4):
        assert oii.matched_snr(flux[i], ivar[i]) == pytest.approx(8.0, rel=1e-3)
        assert out.z_source[i] > 0.3 + 1.3 * 8000 / C_KMS - 1e-9
    assert np.all(out.line_flux > 0)


def test_filter_finds_injected_doublets_at_snr_8_and_recovers_z(clean):
    n = 24
    f, iv, m, z = _renoised(clean, n, seed=11)
    rng = np.random.default_rng(12)
    params = oii_inject.draw_oii_params(rng, n, z, snr_range=(8.0, 15.0), wave_range=_covered(clean[1]))
    fi, params = oii_inject.inject_oii(FULL.wave, f, iv, params)
    hits = oii_search.search(FULL.wave, fi, iv, m, z)
    found, pulls, ratios = 0, [], []
    for i in range(n):
        sel = np.flatnonzero((hits.row == i) & (np.abs(hits.z - params.z_source[i]) < 5e-4 * (1 + params.z_source[i])))
        if sel.size == 0:
            continue
        found += 1
        fit = oii_fit.fit_doublet(FULL.wave, fi[i], iv[i], m[i], float(hits.z[sel[0]]))
        assert fit.ok
        pulls.append((fit.z - params.z_source[i]) / fit.z_err)
        ratios.append(fit.line_flux / params.line_flux[i])
    assert found >= 0.9 * n
    flux_ratio = np.asarray(ratios)  # fluxes: unbiased overall, nearly all within 50 % at S/N 8-15
    assert abs(np.median(flux_ratio) - 1.0) < 0.2 and np.mean(np.abs(flux_ratio - 1.0) < 0.5) >= 0.9
    pulls = np.abs(np.asarray(pulls))
    assert np.mean(pulls < 3) >= 0.9  # z within its error
    # nothing below z_l + dz: the galaxy's own lines are never searched
    zmin = oii.min_z_source(z[0], oii.OIIConfig().min_dv_kms)
    assert np.all(hits.z >= zmin)


def test_no_hit_below_the_lens_and_foreground_doublet_is_vetoed(clean):
    flux, ivar, model, z = clean
    wave = FULL.wave
    # a strong doublet 2,000 km/s behind the galaxy: inside the excluded velocity gap
    zs = z + (1 + z) * 2000 / C_KMS
    f = flux + oii.doublet_profile(wave, zs, 80.0, 80.0, 1.0)
    hits = oii_search.search(wave, f[None], ivar[None], model[None], np.array([z]))
    assert not np.any(np.abs(hits.z - zs) < 3e-3)
    r, w = oii.prepare(wave, f[None], ivar[None], model[None], np.array([z]), oii.OIIConfig(galaxy_half_width_kms=0))
    fit = oii_fit.fit_doublet(wave, r[0], w[0], np.zeros(wave.size), zs)
    assert fit.ok
    assert oii_vetoes.oii_vetoes(fit, wave, r[0], w[0], z).veto_foreground


def _vetoes_at(clean, f: np.ndarray, z_guess: float) -> tuple[oii_fit.DoubletFit, oii_vetoes.OIIVetoes]:
    flux, ivar, model, z = clean
    r, w = oii.prepare(FULL.wave, f[None], ivar[None], model[None], np.array([z]))
    fit = oii_fit.fit_doublet(FULL.wave, r[0], w[0], np.zeros(FULL.n), z_guess)
    return fit, oii_vetoes.oii_vetoes(fit, FULL.wave, r[0], w[0], z)


def test_vetoes_spike_interloper_and_a_real_doublet(clean):
    flux, ivar, model, z = clean
    wave = FULL.wave
    # a resolved doublet at z_s = 0.62 (6,040 A) is kept: the doublet beats one line
    zs = 0.62
    fit, vet = _vetoes_at(clean, flux + oii.doublet_profile(wave, zs, 40.0, 60.0, 1.2), zs)
    assert fit.ok and abs(fit.z - zs) < 3 * fit.z_err + 1e-5
    assert fit.delta_chi2 > 9 and not (vet.veto_doublet or vet.veto_foreground or vet.veto_interloper)
    assert 0.8 < fit.ratio < 1.5
    # a one-pixel spike (cosmic ray) where a doublet would be
    i = int(np.argmin(np.abs(wave - 6500.0)))
    spike = flux.copy()
    spike[i] += 12.0 / np.sqrt(ivar[i])
    _fit, vet = _vetoes_at(clean, spike, 6500.0 / oii.OII_MEAN - 1)
    assert vet.veto_doublet
    # [OIII] 5007 of a lower-z emitter with its 4959 (1/2.98) and [OII]: an interloper
    zi = 0.25
    lam = oii.OIII_5007 * (1 + zi)
    line = (
        oii._gauss(wave, lam, 40.0, 150.0)
        + oii._gauss(wave, oii.OIII_4959 * (1 + zi), 40.0 / 2.98, 150.0)
        + oii.doublet_profile(wave, zi, 50.0, 150.0, 1.0)
    )
    _fit, vet = _vetoes_at(clean, flux + line, lam / oii.OII_MEAN - 1)
    interloper = vet.detail["interloper"]
    assert isinstance(interloper, dict)
    assert vet.veto_interloper and interloper["oiii_5007"].get("holds") == 1.0


def test_clean_realisations_have_no_candidate_and_the_emission_galaxy_none(clean):
    from lenscat.spectra.detector_oii import characterise_oii, is_candidate
    from lenscat.spectra.detectors import Candidates

    f, iv, m, z = _renoised(clean, 40, seed=21)
    agn = _full("spec-0295-51585-0596.fits")
    f = np.vstack([f, agn[0][None]])
    iv = np.vstack([iv, agn[1][None]])
    m = np.vstack([m, agn[2][None]])
    z = np.append(z, agn[3])
    h = oii_search.search(FULL.wave, f, iv, m, z)
    c = Candidates(
        row=h.row,
        pixel=h.pixel,
        snr=h.snr,
        prob=np.full(len(h), np.nan),
        best=h.best,
        family="oii",
        wavelength=h.wavelength,
        z_source=h.z,
    )
    rows = characterise_oii(c, np.arange(len(z)), f, iv, m, z)
    assert all(r.values["line"] == "oii" for r in rows)
    assert not [r for r in rows if is_candidate(r.values)]


def test_block_medians_match_numpy_nanmedian():
    rng = np.random.default_rng(5)
    a = rng.normal(size=(7, 5, 40))
    a[rng.random(a.shape) < 0.3] = np.nan
    a[0, 0] = np.nan  # nothing finite
    a[1, 1, :39] = np.nan  # one value
    a[2, 2, :38] = np.nan  # two: their mean
    with np.errstate(all="ignore"), pytest.warns(RuntimeWarning):
        ref = np.nanmedian(a, axis=-1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # and without a warning
        got = oii._nanmedian(a)
    assert np.array_equal(np.isnan(got), np.isnan(ref)) and np.isnan(got[0, 0])
    np.testing.assert_array_equal(got[~np.isnan(ref)], ref[~np.isnan(ref)])


def test_threads_over_blocks_give_the_same_hits(clean, monkeypatch):
    n = 40
    f, iv, m, z = _renoised(clean, n, seed=21)
    rng = np.random.default_rng(22)
    params = oii_inject.draw_oii_params(rng, n, z, snr_range=(7.0, 15.0), wave_range=_covered(clean[1]))
    fi, _ = oii_inject.inject_oii(FULL.wave, f, iv, params)
    cfg = oii.OIIConfig(chunk=9)  # five blocks
    monkeypatch.setattr(oii_search, "WORKERS", 1)
    one = oii_search.search(FULL.wave, fi, iv, m, z, cfg)
    monkeypatch.setattr(oii_search, "WORKERS", 2)
    two = oii_search.search(FULL.wave, fi, iv, m, z, cfg)
    assert len(one) >= 0.8 * n
    for k in ("row", "pixel", "snr", "sigma_px", "ratio", "line_flux", "best"):
        np.testing.assert_array_equal(getattr(one, k), getattr(two, k))
