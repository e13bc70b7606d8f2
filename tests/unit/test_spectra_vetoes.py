"""Lyman-alpha vetoes that keep real lines (lenscat.spectra.linefit: skew_test, oii_interloper_test,
lya_vetoes; issue 31 item 1).

Red-tailed skew-normal lines are injected at matched S/N (``sqrt(sum(line^2 ivar))``) on Gaussian
noise and on the real residuals of an SDSS early type (its pipeline ``model`` as the continuum);
neither veto may fire on them. Blue-skewed, bright symmetric and [OII]-interloper lines must be
vetoed. Fixed seeds throughout.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest

from lenscat.spectra.grid import C_KMS, WINDOW, LogGrid, to_grid
from lenscat.spectra.linefit import LineFit, fit_line
from lenscat.spectra.masks import galaxy_line_mask
from lenscat.spectra.readers import read_spectra
from lenscat.spectra.synth import lya_profile
from lenscat.spectra.veto_oii import oii_interloper_test
from lenscat.spectra.veto_skew import skew_test
from lenscat.spectra.veto_types import OII_COMPANIONS, OII_DOUBLET, VetoConfig
from lenscat.spectra.vetoes import lya_vetoes

pytestmark = pytest.mark.filterwarnings("error")

SPEC = Path(__file__).parents[1] / "data" / "spectra" / "sdss" / "spec-0403-51871-0462.fits"
W = WINDOW.wave
RED = LogGrid.window(3600.0, 10400.0)  # any increasing grid works; this one is the full range


@lru_cache(maxsize=1)
def real() -> tuple[float, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(z, window flux, ivar, model, red flux, ivar, model) of the real early type."""
    s = read_spectra(SPEC)[0]
    iv_w, (f_w, m_w) = to_grid(s.wave, s.flux, s.model, ivar=s.ivar, grid=WINDOW)
    iv_r, (f_r, m_r) = to_grid(s.wave, s.flux, s.model, ivar=s.ivar, grid=RED)
    assert f_w is not None and m_w is not None and f_r is not None and m_r is not None and s.z is not None
    return (
        float(s.z),
        f_w.astype(float),
        iv_w.astype(float),
        m_w.astype(float),
        f_r.astype(float),
        iv_r.astype(float),
        m_r.astype(float),
    )


def gaussian_spectrum(rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    cont, cont_r = np.full(W.size, 3.0), np.full(RED.n, 3.0)
    return (
        cont + rng.normal(size=W.size),
        np.ones(W.size),
        cont,
        cont_r + rng.normal(size=RED.n),
        np.ones(RED.n),
        cont_r,
    )


def matched(line: np.ndarray, ivar: np.ndarray, snr: float) -> np.ndarray:
    """``line`` scaled to matched-filter S/N ``snr``."""
    return line * snr / np.sqrt(np.sum(line**2 * ivar))


def red_tailed_rates(source: str, n: int, seed: int) -> tuple[int, int, int]:
    """(fitted lines, skew vetoes, [OII] vetoes) for n red-tailed lines at matched S/N 4-15."""
    rng = np.random.default_rng(seed)
    z = None
    if source == "real":
        z, f_w, iv_w, m_w, f_r, iv_r, m_r = real()
        avoid = galaxy_line_mask(W, z, half_width_kms=1000.0, extended=True)
    else:
        avoid = np.zeros(W.size, dtype=bool)
    n_ok = n_skew = n_oii = 0
    for _ in range(n):
        c = float(rng.uniform(3860.0, 4950.0))
        while avoid[int(np.argmin(np.abs(W - c)))]:
            c = float(rng.uniform(3860.0, 4950.0))
        alpha, fwhm, snr = rng.uniform(1.0, 6.0), rng.uniform(120.0, 700.0), rng.uniform(4.0, 15.0)
        if source == "real":
            flux, ivar, cont, rf, riv, rc = f_w, iv_w, m_w, f_r, iv_r, m_r
        else:
            flux, ivar, cont, rf, riv, rc = gaussian_spectrum(rng)
        flux = flux + matched(lya_profile(W, c, 1.0, fwhm, alpha), ivar, snr)
        fit = fit_line(W, flux, ivar, cont, c)
        if not fit.ok:
            continue
        n_ok += 1
        v = lya_vetoes(W, flux, ivar, cont, fit, RED.wave, rf, riv, rc, z_lens=z)
        n_skew += v.veto_skew
        n_oii += v.veto_oii
    return n_ok, n_skew, n_oii


@pytest.mark.parametrize(("source", "seed"), [("gaussian", 31), ("real", 32)])
def test_red_tailed_lines_are_kept(source, seed):
    n_ok, n_skew, n_oii = red_tailed_rates(source, 60, seed)
    assert n_ok >= 57
    assert n_skew / n_ok < 0.02
    assert n_oii / n_ok < 0.02


def _line_at(snr: float, alpha: float, fwhm: float, seed: int, centre: float = 4400.0):
    rng = np.random.default_rng(seed)
    flux, ivar, cont, rf, riv, rc = gaussian_spectrum(rng)
    flux = flux + matched(lya_profile(W, centre, 1.0, fwhm, alpha), ivar, snr)
    fit = fit_line(W, flux, ivar, cont, centre)
    return flux, ivar, cont, rf, riv, rc, fit


def test_blue_skewed_bright_lines_are_vetoed():
    vetoed = 0
    for seed in range(10):
        flux, ivar, cont, _, _, _, fit = _line_at(30.0, -4.0, 400.0, seed)
        st = skew_test(W, flux, ivar, cont, fit)
        assert st.ok and st.alpha < 0 and st.alpha_lo <= st.alpha <= st.alpha_hi
        vetoed += st.veto and st.reason == "blue-skewed"
    assert vetoed >= 8


def test_symmetric_rule():
    # a bright, resolved (FWHM 600 km/s = 8.7 px), symmetric line: skew-normal alpha >= 1 is rejected
    # (skewness grows as alpha^3, so alpha = 1 is nearly Gaussian: this takes S/N ~ 300)
    flux, ivar, cont, _, _, _, fit = _line_at(300.0, 0.0, 600.0, 5)
    st = skew_test(W, flux, ivar, cont, fit)
    assert st.veto and st.reason == "symmetric-narrow" and st.dchi2_sym >= 25.0
    assert not skew_test(W, flux, ivar, cont, fit, config=VetoConfig(symmetric_veto=False)).veto
    # the same line at S/N 40, and a just-red-tailed line (alpha = 1) at S/N 300, are kept
    flux, ivar, cont, _, _, _, fit = _line_at(40.0, 0.0, 600.0, 6)
    assert not skew_test(W, flux, ivar, cont, fit).veto
    flux, ivar, cont, _, _, _, fit = _line_at(300.0, 1.0, 600.0, 7)
    st = skew_test(W, flux, ivar, cont, fit)
    assert not st.veto and st.alpha > 0.5 and st.dchi2_sym < 0.0


def test_skew_test_scales_by_reduced_chi2():
    # a blue line whose noise is twice what ivar says: the raw chi-square difference is 4x too big
    rng = np.random.default_rng(8)
    cont = np.full(W.size, 3.0)
    line = matched(lya_profile(W, 4400.0, 1.0, 400.0, -4.0), np.ones(W.size), 8.0)
    flux = cont + line + 2.0 * rng.normal(size=W.size)
    fit = fit_line(W, flux, np.ones(W.size), cont, 4400.0)
    st = skew_test(W, flux, np.ones(W.size), cont, fit)
    assert st.scale > 3.0
    assert not st.veto


def test_skew_test_degenerate_and_json():
    assert not skew_test(W, np.zeros(W.size), np.zeros(W.size), np.zeros(W.size), LineFit()).ok
    v = lya_vetoes(
        W,
        np.zeros(W.size),
        np.zeros(W.size),
        np.zeros(W.size),
        LineFit(),
        RED.wave,
        np.zeros(RED.n),
        np.zeros(RED.n),
        np.zeros(RED.n),
        z_lens=float("nan"),
    )
    assert not v.veto_skew and not v.veto_oii
    flux, ivar, cont, rf, riv, rc, fit = _line_at(12.0, 2.0, 300.0, 9)
    v = lya_vetoes(W, flux, ivar, cont, fit, RED.wave, rf, riv, rc, z_lens=None)
    text = json.dumps(v.detail, allow_nan=False)  # jsonb rejects NaN
    back = json.loads(text)
    assert set(back) == {"skew", "oii"} and set(back["oii"]["companion_snr"]) == set(OII_COMPANIONS)
    assert back["skew"]["ok"] and np.isfinite(back["skew"]["alpha_err"])


def _gauss(wave: np.ndarray, centre: float, flux: float, sigma: float) -> np.ndarray:
    return flux / (sigma * np.sqrt(2 * np.pi)) * np.exp(-0.5 * ((wave - centre) / sigma) ** 2)


def _oii(wave: np.ndarray, z: float, flux: float, sigma_kms: float, ratio: float = 1.2) -> np.ndarray:
    out = np.zeros(wave.size)
    for rest, f in zip(OII_DOUBLET, (flux / (1 + ratio), flux * ratio / (1 + ratio)), strict=True):
        c = rest * (1 + z)
        out += _gauss(wave, c, f, c * sigma_kms / C_KMS)
    return out


def _companions(wave: np.ndarray, z: float, oii_flux: float, sigma_kms: float, shift: float = 0.0) -> np.ndarray:
    ratios = {"hbeta": 0.5, "oiii_4960": 0.33, "oiii_5008": 1.0, "halpha": 1.5, "nii_6585": 0.5}
    out = np.zeros(wave.size)
    for k, rest in OII_COMPANIONS.items():
        c = rest * (1 + z) + shift
        out += _gauss(wave, c, ratios[k] * oii_flux, c * sigma_kms / C_KMS)
    return out


def test_oii_interloper_with_companions_on_real_spectrum():
    z_lens, f_w, iv_w, m_w, f_r, iv_r, m_r = real()
    z = 0.2  # [OII] at 4474 A, [OIII] 5008 at 6010 A, Halpha at 7878 A; clear of the lens's lines
    dbl = _oii(W, z, 1.0, 80.0)
    scale = 15.0 / np.sqrt(np.sum(dbl**2 * iv_w))  # doublet at matched S/N 15
    flux = f_w + scale * dbl
    red = f_r + scale * (_oii(RED.wave, z, 1.0, 80.0) + _companions(RED.wave, z, 1.0, 80.0))
    lam = OII_DOUBLET[1] * (1 + z)
    fit = fit_line(W, flux, iv_w, m_w, lam)
    assert fit.ok
    v = lya_vetoes(W, flux, iv_w, m_w, fit, RED.wave, red, iv_r, m_r, z_lens=z_lens)
    assert v.veto_oii and v.oii.companions and v.oii.doublet
    assert v.oii.z_oii == pytest.approx(z, abs=3e-4) and v.oii.n_covered == 5
    assert v.oii.companion_snr["oiii_5008"] >= 3.0 and v.oii.companion_joint >= 4.0
    # the same red spectrum without companions, and with them 100 A off, gives no companion veto
    for red2 in (
        f_r + scale * _oii(RED.wave, z, 1.0, 80.0),
        f_r + scale * _companions(RED.wave, z, 1.0, 80.0, shift=100.0),
    ):
        t = oii_interloper_test(fit.wavelength, fit, W, flux, iv_w, m_w, RED.wave, red2, iv_r, m_r, z_lens=z_lens)
        assert not t.companions


def test_companions_alone_veto_a_single_line():
    # a single (blended-looking) line with Hbeta/[OIII]/Halpha at the [OII] redshift: criterion (b)
    rng = np.random.default_rng(10)
    flux, ivar, cont, rf, riv, rc = gaussian_spectrum(rng)
    z = 0.15
    lam = 3728.48 * (1 + z)
    flux = flux + matched(lya_profile(W, lam, 1.0, 400.0, 0.5), ivar, 12.0)
    rf = rf + _companions(RED.wave, z, 40.0, 150.0)
    fit = fit_line(W, flux, ivar, cont, lam)
    t = oii_interloper_test(fit.wavelength, fit, W, flux, ivar, cont, RED.wave, rf, riv, rc)
    assert t.veto and t.companions and not t.doublet
    # uncovered (ivar 0 on the red side): nothing to test, no veto
    t = oii_interloper_test(fit.wavelength, fit, W, flux, ivar, cont, RED.wave, rf, np.zeros(RED.n), rc)
    assert t.n_covered == 0 and not t.companions and np.isnan(t.companion_joint)


def test_resolved_doublet_alone_is_vetoed():
    n_veto = 0
    for seed in range(5):
        rng = np.random.default_rng(100 + seed)
        flux, ivar, cont, rf, riv, rc = gaussian_spectrum(rng)
        z = 0.1 + 0.05 * seed
        flux = flux + matched(_oii(W, z, 1.0, 70.0), ivar, 15.0)
        fit = fit_line(W, flux, ivar, cont, OII_DOUBLET[1] * (1 + z))
        v = lya_vetoes(W, flux, ivar, cont, fit, RED.wave, rf, riv, rc)
        assert not v.oii.companions and 0.3 <= v.oii.doublet_ratio <= 1.5
        n_veto += v.veto_oii and v.oii.doublet
    assert n_veto >= 4


def test_analytic_jacobian_matches_numerical():
    from scipy.optimize._numdiff import approx_derivative

    from lenscat.spectra.linefit import _skew_jac, _Win, skew_normal_profile

    x = np.linspace(4380.0, 4420.0, 50)
    w = _Win(
        x=x, r=np.zeros(x.size), sw=np.linspace(0.5, 2.0, x.size), u=(x - 4400.0) / 20.0, lam0=4400.0, hw=20.0, dpx=0.9
    )
    for q in (np.array([10.0, 4399.0, 3.0, 2.5, 0.3, -0.1]), np.array([4.0, 4401.0, 1.2, -3.0, 0.0, 0.2])):
        num = approx_derivative(
            lambda p: (skew_normal_profile(x, p[0], p[1], p[2], p[3]) + p[4] + p[5] * w.u) * w.sw,
            q,
            method="3-point",
            abs_step=1e-6,
        )
        err = np.abs(_skew_jac(w, q) - num).max(axis=0)
        assert np.all(err <= 1e-5 * np.abs(num).max(axis=0) + 1e-12)
