"""Continuum fit (lenscat.spectra.continuum) and matched filter (lenscat.spectra.matched_filter)."""

from __future__ import annotations

import numpy as np
import pytest

from lenscat.spectra.continuum import (
    fit_continua,
    fit_continuum,
    fit_mask,
)
from lenscat.spectra.grid import C_KMS, WINDOW
from lenscat.spectra.masks import galaxy_line_masks, galaxy_line_pixels, galaxy_lines, line_mask
from lenscat.spectra.matched_filter import (
    Hits,
    MatchedFilterConfig,
    scan_batch,
    scan_batch_with_max,
    snr_map,
    snr_max,
)
from lenscat.spectra.reference import eigen_basis

pytestmark = pytest.mark.filterwarnings("error")

WAVE = WINDOW.wave
Z_GAL = 0.4
NOISE = 1.0  # per-pixel sigma [1e-17 erg/s/cm^2/A]


def galaxy(z: float = Z_GAL, level: float = 3.0) -> np.ndarray:
    """Noiseless early-type continuum from the eigenbasis at ``z``, median ``level``."""
    eb = eigen_basis()
    rest = WAVE / (1.0 + z)
    t = np.array([np.interp(rest, eb.wave, b) for b in eb.basis])
    m = np.array([1.0, -2.0, 1.0, 0.5]) @ t
    return m * level / np.median(m)


def gaussian_line(flux: float, centre: float, fwhm_kms: float = 300.0) -> np.ndarray:
    """Gaussian line of integrated ``flux`` [1e-17 erg/s/cm^2] on WAVE."""
    sig = centre * fwhm_kms / 2.3548 / C_KMS
    return flux / (sig * np.sqrt(2 * np.pi)) * np.exp(-0.5 * ((WAVE - centre) / sig) ** 2)


def noisy(n: int, model: np.ndarray, seed: int, sigma: float = NOISE) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    flux = (model[None, :] + sigma * rng.normal(size=(n, WAVE.size))).astype(np.float32)
    return flux, np.full((n, WAVE.size), 1.0 / sigma**2, dtype=np.float32)


# ----------------------------------------------------------------------------- continuum


def test_fast_galaxy_masks_match_reference():
    z = np.random.default_rng(0).uniform(0.0, 1.2, 300)
    z[::11] = np.nan
    for ext in (False, True):
        rest = np.array(list(galaxy_lines(ext).values()))
        reference = np.array(
            [line_mask(WAVE, rest * (1 + zi), 600.0) if np.isfinite(zi) else np.zeros(WAVE.size, bool) for zi in z]
        )
        assert np.array_equal(galaxy_line_masks(WAVE, z, extended=ext), reference)


def test_continuum_recovers_noiseless_model():
    truth = galaxy()
    flux, ivar = noisy(60, truth, seed=1)
    cont = fit_continua(WAVE, flux, ivar, np.full(60, Z_GAL))
    good = fit_mask(WAVE, flux[:1], ivar[:1], np.array([Z_GAL]))[0]
    rel = (cont - truth) / truth
    # unbiased: the mean over realisations is within 3 % everywhere off the masks (the worst
    # pixels, in deep absorption, scatter by ~13 % per fit) and 0.7 % on average
    bias = np.abs(rel.mean(axis=0)[good])
    assert bias.max() < 0.03 and bias.mean() < 0.007
    # each fit is good to a few per cent (per-pixel S/N is only ~3 here)
    assert np.median(np.abs(rel[:, good])) < 0.03
    single = fit_continuum(WAVE, flux[0], ivar[0], Z_GAL)
    np.testing.assert_allclose(single, cont[0], rtol=1e-6)


def test_continuum_ignores_an_emission_line():
    truth = galaxy()
    flux, ivar = noisy(20, truth + gaussian_line(40.0, 4400.0), seed=2)
    cont = fit_continua(WAVE, flux, ivar, np.full(20, Z_GAL))
    near = np.abs(WAVE - 4400.0) < 5
    # sigma clipping keeps the line out: the continuum under it is not pulled up by > 5 %
    assert np.abs((cont[:, near] - truth[near]) / truth[near]).mean() < 0.05


def test_continuum_degenerate_inputs():
    p = WAVE.size
    out = fit_continua(WAVE, np.zeros((3, p)), np.zeros((3, p)), np.array([0.4, np.nan, 0.2]))
    assert out.shape == (3, p) and np.all(out == 0)
    nan_flux = np.full(p, np.nan)
    assert np.all(fit_continuum(WAVE, nan_flux, np.ones(p), 0.3) == 0)
    # unknown redshift: polynomial only, still close for a smooth spectrum
    smooth = 2.0 + 0.5 * (WAVE - 4400.0) / 600.0
    flux, ivar = noisy(1, smooth, seed=3, sigma=0.2)
    poly = fit_continuum(WAVE, flux[0], ivar[0], None)
    assert np.abs(poly - smooth).max() < 0.1
    # a redshift beyond the eigenbasis coverage also falls back to the polynomial
    assert np.all(np.isfinite(fit_continuum(WAVE, flux[0], ivar[0], 2.5)))
    assert fit_continua(WAVE, np.zeros((0, p)), np.zeros((0, p)), np.zeros(0)).shape == (0, p)


# ----------------------------------------------------------------------------- matched filter


def test_finds_injected_line_with_expected_snr():
    n, lam0, flux_line = 200, 4400.0, 25.0
    truth = galaxy()
    line = gaussian_line(flux_line, lam0)
    flux, ivar = noisy(n, truth + line, seed=4)
    cont = fit_continua(WAVE, flux, ivar, np.full(n, Z_GAL))
    hits = scan_batch(flux, ivar, cont, np.full(n, Z_GAL))
    expected = float(np.sqrt(np.sum(ivar[0] * line**2)))  # optimal S/N of the known line
    assert 8.0 < expected < 12.0
    near = np.abs(np.log10(hits.wavelength / lam0)) / WINDOW.dlog <= 2.0
    assert np.array_equal(np.unique(hits.row[near]), np.arange(n))  # every spectrum, once
    assert len(np.unique(hits.row[near])) == near.sum()
    assert (~near).sum() <= 1  # (pure-noise false hits are ~1e-9 per trial)
    ratio = hits.snr[near] / expected
    assert abs(np.median(ratio) - 1.0) < 0.07
    assert np.mean(np.abs(ratio - 1.0) < 0.25) > 0.95
    assert np.median(hits.line_flux[near]) == pytest.approx(flux_line, rel=0.12)
    assert 60.0 < np.median(hits.sigma_kms[near]) < 200.0  # true sigma 127 km/s
    np.testing.assert_allclose(
        hits.line_flux, hits.amplitude * hits.sigma_kms / C_KMS * hits.wavelength * np.sqrt(2 * np.pi), rtol=1e-3
    )
    # snr_max agrees with the hit S/N (the line is the maximum)
    sm = snr_max(flux, ivar, cont, np.full(n, Z_GAL))
    np.testing.assert_allclose(sm[hits.row[near]], hits.snr[near], rtol=1e-3)


def test_pure_noise_false_hit_rate():
    n = 2000
    truth = galaxy()
    # ivar under-states the noise by 1.5x: the residual-spread rescaling must absorb it
    flux, _ = noisy(n, truth, seed=5, sigma=1.5)
    ivar = np.ones_like(flux)
    cont = fit_continua(WAVE, flux, ivar, np.full(n, Z_GAL))
    hits = scan_batch(flux, ivar, cont, np.full(n, Z_GAL))
    assert len(hits) <= 1  # Gaussian tail at 6 sigma: ~2e-3 expected over ~2.4e6 trials
    sm = snr_max(flux, ivar, cont, np.full(n, Z_GAL))
    assert np.all(np.isfinite(sm))
    assert 2.5 < np.median(sm) < 4.5  # max of ~1,000 correlated unit normals
    # without rescaling the same spectra would be full of false hits
    raw = scan_batch(flux, ivar, cont, np.full(n, Z_GAL), config=MatchedFilterConfig(rescale_ivar=False))
    assert len(raw) > 20


def test_galaxy_oii_is_masked():
    n, zg = 50, 0.2
    truth = galaxy(zg)
    lam = 3728.48 * (1 + zg)
    flux, ivar = noisy(n, truth + gaussian_line(60.0, lam), seed=6)
    cont = np.broadcast_to(truth, flux.shape)
    masked = scan_batch(flux, ivar, cont, np.full(n, zg))
    assert not np.any(np.abs(masked.wavelength - lam) < 15.0)
    unmasked = scan_batch(flux, ivar, cont, np.full(n, np.nan))  # unknown z: nothing masked
    assert np.sum(np.abs(unmasked.wavelength - lam) < 3.0) == n


def test_masked_and_empty_inputs():
    p = WAVE.size
    zeros = np.zeros((4, p), dtype=np.float32)
    h = scan_batch(zeros, zeros, zeros, np.full(4, np.nan))
    assert isinstance(h, Hits) and len(h) == 0
    assert np.all(np.isnan(snr_max(zeros, zeros, zeros, np.zeros(4))))
    assert np.all(np.isneginf(snr_map(zeros, zeros, zeros, np.zeros(4))))
    nanf = np.full((2, p), np.nan, dtype=np.float32)
    assert len(scan_batch(nanf, np.ones((2, p)), zeros[:2], np.zeros(2))) == 0
    assert len(scan_batch(zeros[:0], zeros[:0], zeros[:0], np.zeros(0))) == 0
    with pytest.raises(ValueError):
        scan_batch(zeros, zeros[:3], zeros, np.zeros(4))


def test_line_next_to_a_mask_needs_coverage():
    n, lam0 = 30, 4400.0
    truth = galaxy()
    flux, ivar = noisy(n, truth + gaussian_line(30.0, lam0), seed=7)
    cont = np.broadcast_to(truth, flux.shape)
    ivar[:, np.abs(WAVE - lam0) < 4.0] = 0.0  # the line's core is masked
    hits = scan_batch(flux, ivar, cont, np.full(n, Z_GAL))
    assert not np.any(np.abs(hits.wavelength - lam0) < 3.0)
    sm = snr_map(flux, ivar, cont, np.full(n, Z_GAL))
    assert np.all(np.isneginf(sm[:, np.abs(WAVE - lam0) < 1.0]))


def test_chunking_does_not_change_results():
    n = 70
    truth = galaxy()
    flux, ivar = noisy(n, truth + gaussian_line(25.0, 4600.0), seed=8)
    cont = np.broadcast_to(truth, flux.shape)
    a = scan_batch(flux, ivar, cont, np.full(n, Z_GAL))
    b = scan_batch(flux, ivar, cont, np.full(n, Z_GAL), config=MatchedFilterConfig(chunk=16, workers=1))
    assert np.array_equal(a.row, b.row) and np.array_equal(a.pixel, b.pixel)
    np.testing.assert_allclose(a.snr, b.snr, rtol=1e-5)


def test_galaxy_pixel_runs_match_the_masks():
    z = np.random.default_rng(9).uniform(0.0, 1.2, 300)
    z[::7] = np.nan
    for ext in (False, True):
        mask = np.zeros((z.size, WAVE.size), dtype=bool)
        mask.reshape(-1)[galaxy_line_pixels(WAVE, z, half_width_kms=600.0, extended=ext)] = True
        assert np.array_equal(mask, galaxy_line_masks(WAVE, z, half_width_kms=600.0, extended=ext))
    assert galaxy_line_pixels(WAVE, np.full(3, np.nan), extended=True).size == 0


def test_scan_batch_with_max_is_both_in_one_pass():
    n = 300
    truth = galaxy()
    flux, ivar = noisy(n, truth + gaussian_line(20.0, 4250.0), seed=10)
    flux[::3] = noisy(100, truth, seed=11)[0]  # a third without the line
    ivar[5] = 0.0  # nothing to search
    ivar[7, 60:] = 0.0  # too few good pixels
    ivar[9:12, 400:460] = 0.0  # a masked run
    cont = np.broadcast_to(truth, flux.shape)
    z = np.full(n, Z_GAL)
    z[20:40] = np.nan
    cfg = MatchedFilterConfig(chunk=50)  # several blocks (and threads)
    hits, best = scan_batch_with_max(flux, ivar, cont, z, config=cfg)
    ref = scan_batch(flux, ivar, cont, z, config=cfg)
    assert len(hits) > 150 and np.array_equal(hits.row, ref.row) and np.array_equal(hits.pixel, ref.pixel)
    np.testing.assert_array_equal(hits.snr, ref.snr)
    np.testing.assert_array_equal(best, snr_max(flux, ivar, cont, z, config=cfg))
    # the best S/N is the maximum of the coverage-cut map, wherever it lies
    m = snr_map(flux, ivar, cont, z, config=cfg)
    finite = np.isfinite(m).any(axis=1)
    assert np.array_equal(finite, np.isfinite(best)) and not finite[5] and not finite[7]
    np.testing.assert_allclose(best[finite], m[finite].max(axis=1), rtol=1e-6)
    # one thread gives the same
    h1, b1 = scan_batch_with_max(flux, ivar, cont, z, config=MatchedFilterConfig(workers=1))
    assert np.array_equal(h1.row, hits.row) and np.array_equal(h1.pixel, hits.pixel)
    np.testing.assert_allclose(b1, best, rtol=1e-6)


def test_torch_threads_are_restored():
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    flux, ivar = noisy(40, galaxy(), seed=12)
    snr_max(flux, ivar, np.broadcast_to(galaxy(), flux.shape), np.full(40, Z_GAL))
    assert torch.get_num_threads() == before
