"""Skew-normal line fits and candidate vetoes (lenscat.spectra.linefit)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from lenscat.spectra.grid import C_KMS, LYA, WINDOW
from lenscat.spectra.linefit import LineFit, _mode_fwhm, _skewness, fit_line, skew_normal_profile
from lenscat.spectra.overdensity import wavelength_overdensity
from lenscat.spectra.reference import eigen_basis

pytestmark = pytest.mark.filterwarnings("error")

WAVE = WINDOW.wave


def galaxy(z: float = 0.4, level: float = 3.0) -> np.ndarray:
    eb = eigen_basis()
    t = np.array([np.interp(WAVE / (1.0 + z), eb.wave, b) for b in eb.basis])
    m = np.array([1.0, -2.0, 1.0, 0.5]) @ t
    return m * level / np.median(m)


def test_profile_helpers_match_scipy():
    for a in (-4.0, -1.0, 0.0, 2.5):
        assert _skewness(a) == pytest.approx(float(stats.skewnorm(a).stats(moments="s")), abs=1e-6)
        x = np.linspace(4400, 4600, 20001)
        prof = skew_normal_profile(x, 10.0, 4500.0, 3.0, a)
        assert np.trapezoid(prof, x) == pytest.approx(10.0, rel=1e-6)
        mode, fwhm = _mode_fwhm(4500.0, 3.0, a)
        assert mode == pytest.approx(x[np.argmax(prof)], abs=0.02)
        above = x[prof >= prof.max() / 2]
        assert fwhm == pytest.approx(above[-1] - above[0], abs=0.03)


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_skew_normal_fit_recovers_injected_line(sign):
    flux, xi, alpha, fwhm_kms = 25.0, 4500.0, 3.0 * sign, 300.0
    omega = xi * fwhm_kms / C_KMS / _mode_fwhm(xi, 1.0, alpha)[1]  # profile FWHM = 300 km/s
    mode, _ = _mode_fwhm(xi, omega, alpha)
    line = skew_normal_profile(WAVE, flux, xi, omega, alpha)
    cont = galaxy()
    rng = np.random.default_rng(11 if sign > 0 else 12)
    fits: list[LineFit] = []
    for _ in range(12):
        f = cont + line + 0.7 * rng.normal(size=WAVE.size)
        fits.append(fit_line(WAVE, f, np.full(WAVE.size, 1 / 0.49), cont, mode + 1.0))
    assert all(ft.ok for ft in fits)
    lam = np.array([ft.wavelength for ft in fits])
    assert np.median(np.abs(lam - mode)) < 1.0  # ~1 px
    assert np.median([ft.line_flux for ft in fits]) == pytest.approx(flux, rel=0.2)
    assert np.median([ft.fwhm_kms for ft in fits]) == pytest.approx(fwhm_kms, rel=0.25)
    skews = np.array([ft.skewness for ft in fits])
    assert np.mean(np.sign(skews) == sign) >= 0.75
    assert np.all(np.sign([ft.alpha for ft in fits]) == np.sign(skews))
    ft = fits[0]
    assert ft.z_source == pytest.approx(ft.wavelength / LYA - 1.0)
    assert ft.snr == pytest.approx(ft.line_flux / ft.line_flux_err)
    assert 0.6 < ft.redchi2 < 1.5 and ft.wavelength_err > 0 and ft.n_pix > 50


def test_fit_line_degenerate_inputs():
    p = WAVE.size
    res = fit_line(WAVE, np.zeros(p), np.zeros(p), np.zeros(p), 4500.0)
    assert not res.ok and np.isnan(res.wavelength)
    res = fit_line(WAVE, np.full(p, np.nan), np.ones(p), np.zeros(p), 4500.0)
    assert not res.ok
    # pure noise: a fit may converge but carries no significant flux
    rng = np.random.default_rng(3)
    noise = fit_line(WAVE, rng.normal(size=p), np.ones(p), np.zeros(p), 4500.0)
    assert not noise.ok or noise.snr < 5


def test_wavelength_overdensity_flags_a_spike():
    rng = np.random.default_rng(4)
    lo, hi = np.log10(WAVE[0]), np.log10(WAVE[-1])
    uniform = 10 ** rng.uniform(lo, hi, 3000)
    flags, table = wavelength_overdensity(uniform, 20000)
    assert flags.sum() == 0 and len(table) == 0
    spike = 4358.0 + 0.3 * rng.normal(size=40)
    flags, table = wavelength_overdensity(np.concatenate([uniform, spike]), 20000)
    assert flags[3000:].all()
    assert flags[:3000].mean() < 0.01  # only uniform hits that share the spike's bins
    assert len(table) >= 1 and np.all((table.wave_lo <= 4358.5) & (table.wave_hi >= 4357.5))
    assert np.all(table.count > 5 * table.expected) and np.all(table.p_value < 1e-8)
    empty_flags, empty = wavelength_overdensity(np.array([]), 10)
    assert empty_flags.size == 0 and len(empty) == 0
    off, _ = wavelength_overdensity(np.array([np.nan, 1000.0, 9000.0]), 10)
    assert not off.any()
