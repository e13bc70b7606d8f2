"""Synthetic early-type galaxy spectra in the Lya window: eigenspectrum continua, SDSS sky and noise.

:func:`_galaxies` builds foreground galaxies from the SDSS eigenspectra (:mod:`lenscat.spectra.reference`)
with real SDSS sky and photon + read noise; :func:`_synth_chunk` makes one reproducible block of a
training set (galaxies, lines drawn under :mod:`lenscat.spectra.synth_priors` and injected by
:func:`lenscat.spectra.synth.inject_lines`) for :mod:`lenscat.spectra.synth_training`.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np

from lenscat.errors import LenscatError
from lenscat.spectra.grid import LogGrid
from lenscat.spectra.reference import eigen_basis, sdss_sky_spectra
from lenscat.spectra.synth import _matched_line_flux, lya_profile, matched_snr, skewnorm_shape
from lenscat.spectra.synth_priors import draw_lya_params, draw_matched_params

#: rest-frame range over which eigen-component amplitudes are compared [Angstrom]
_REST_RANGE = (2200.0, 3900.0)


#: relative amplitude (vs component 0, by rms) of eigen-components 1, 2, 3 in the early-type mix
_EIGEN_MIX = (0.08, 0.03, 0.02)


@lru_cache(maxsize=4)
def _eigen_rms(name: str) -> np.ndarray:
    eb = eigen_basis(name)
    m = (eb.wave > _REST_RANGE[0]) & (eb.wave < _REST_RANGE[1])
    return np.asarray(np.sqrt(np.mean(eb.basis[:, m] ** 2, axis=1)))


@lru_cache(maxsize=4)
def _sky_on_grid(k0: int, n: int, dlog: float) -> tuple[np.ndarray, np.ndarray]:
    """The four real SDSS sky spectra on a grid (ends extended flat), and their line parts."""
    grid = LogGrid(k0=k0, n=n, dlog=dlog)
    w, sky = sdss_sky_spectra()
    lw = np.log10(w)
    lg = grid.loglam
    out = np.empty((len(sky), n))
    for i, s in enumerate(sky):
        ok = s > 0
        lo = float(np.median(s[ok][:10]))
        hi = float(np.median(s[ok][-10:]))
        out[i] = np.interp(lg, lw[ok], s[ok], left=lo, right=hi)
    # line part: the spectrum minus a running median (31 px), the template of sky residuals
    half = 15
    pad = np.pad(out, ((0, 0), (half, half)), mode="edge")
    win = np.lib.stride_tricks.sliding_window_view(pad, 2 * half + 1, axis=1)
    lines = out - np.median(win, axis=2)
    return out, lines


def _galaxies(
    rng: np.random.Generator, z: np.ndarray, grid: LogGrid, basis_name: str, level: np.ndarray, continuum_error: float
) -> tuple[np.ndarray, np.ndarray]:
    """(galaxy, continuum estimate) (N, P) float64: eigen mixes at z scaled to ``level``."""
    eb = eigen_basis(basis_name)
    n = len(z)
    rms = _eigen_rms(basis_name)
    coef = np.zeros((n, eb.basis.shape[0]))
    coef[:, 0] = 1.0
    k = min(len(_EIGEN_MIX), eb.basis.shape[0] - 1)
    coef[:, 1 : 1 + k] = rng.normal(size=(n, k)) * (np.asarray(_EIGEN_MIX[:k]) * rms[0] / rms[1 : 1 + k])
    dcoef = np.zeros_like(coef)
    if continuum_error > 0 and k:
        dcoef[:, 1 : 1 + k] = rng.normal(size=(n, k)) * (continuum_error / np.sqrt(k) * rms[0] / rms[1 : 1 + k])
    # fractional rest-frame pixel of every observed pixel; the coefficients are applied on the
    # rest-frame span first, then each row is read off at its offset (linear interpolation)
    d_eig = float(eb.loglam[1] - eb.loglam[0])
    pos = (grid.loglam[None, :] - np.log10(1.0 + z)[:, None] - eb.loglam[0]) / d_eig
    if pos.min() < 0 or pos.max() > eb.basis.shape[1] - 1:
        raise LenscatError("galaxy redshift range outside the eigenspectra's coverage")
    if abs(d_eig - grid.dlog) < 1e-9 * grid.dlog:
        # same log step (BOSS pixels): a constant sub-pixel offset per row, contiguous slices
        base = np.floor(pos[:, 0]).astype(np.int64)
        frac = (pos[:, 0] - base)[:, None]
        lo, hi = int(base.min()), int(base.max()) + grid.n + 1
        base -= lo
        span = eb.basis[:, lo : min(hi, eb.basis.shape[1])]
        if span.shape[1] < hi - lo:
            span = np.pad(span, ((0, 0), (0, hi - lo - span.shape[1])), mode="edge")
        rows = np.arange(n)

        def shifted(c: np.ndarray) -> np.ndarray:
            comb = c @ span
            win = np.lib.stride_tricks.sliding_window_view(comb, grid.n + 1, axis=1)[rows, base]
            return np.asarray(win[:, :-1] * (1.0 - frac) + win[:, 1:] * frac)
    else:
        i0 = np.clip(np.floor(pos).astype(np.int64), 0, eb.basis.shape[1] - 2)
        fr = pos - i0
        lo = int(i0.min())
        i0 -= lo
        span = eb.basis[:, lo : int(i0.max()) + lo + 2]

        def shifted(c: np.ndarray) -> np.ndarray:
            comb = c @ span
            return np.asarray(
                np.take_along_axis(comb, i0, axis=1) * (1.0 - fr) + np.take_along_axis(comb, i0 + 1, axis=1) * fr
            )

    gal = shifted(coef)
    err = shifted(dcoef) if continuum_error > 0 else np.zeros_like(gal)
    med = np.median(gal, axis=1)
    bad = ~(gal.min(axis=1) > 0.2 * np.abs(med)) | ~(med > 0)
    if bad.any():  # keep the continuum positive: fall back to the pure early-type component
        pure = np.zeros_like(coef)
        pure[:, 0] = 1.0
        gal[bad] = shifted(pure)[bad]
        err[bad] = 0.0
        med = np.median(gal, axis=1)
    scale = level / med
    gal *= scale[:, None]
    cont = gal.copy()
    if continuum_error > 0:
        x = np.linspace(-1.0, 1.0, grid.n)
        leg = np.polynomial.legendre.legvander(x, 3)  # (P, 4)
        a = rng.normal(size=(n, 4)) * (continuum_error / 2.0)
        cont = (gal + err * scale[:, None]) * (1.0 + a @ leg.T)
        cont = np.clip(cont, 0.05 * gal, None)
    return gal, cont


def _synth_chunk(
    rng: np.random.Generator,
    positive: np.ndarray,
    grid: LogGrid,
    sky_rows: np.ndarray,
    sky_lines: np.ndarray,
    res: np.ndarray | None,
    *,
    residual_fraction: float,
    z_range: tuple[float, float],
    level_range: tuple[float, float],
    snr_range: tuple[float, float],
    sky_scale_range: tuple[float, float],
    sky_residual: float,
    throughput_slope: tuple[float, float],
    read_fraction: tuple[float, float],
    bad_pixel_fraction: float,
    bad_run_probability: float,
    continuum_error: float,
    line_priors: dict[str, Any],
    basis: str,
    priors: str = "li2018",
) -> dict[str, Any]:
    """One chunk of :func:`~lenscat.spectra.synth_training.make_training_set` (steps 1-6 but the continuum fit).

    The random draws come in the same order for both priors' code paths as before the
    ``'matched'`` priors existed, so ``'li2018'`` sets are unchanged; the line amplitude of
    ``'matched'`` lines is solved for once the noise and masks are known.
    """
    n = len(positive)
    p = grid.n
    wave = grid.wave

    # 1. galaxies
    z = rng.uniform(z_range[0], z_range[1], size=n)
    level = np.exp(rng.uniform(np.log(level_range[0]), np.log(level_range[1]), size=n))
    gal, cont = _galaxies(rng, z, grid, basis, level, continuum_error)

    # 2. sky and its subtraction residual
    sky_index = rng.integers(0, len(sky_rows), size=n)
    sky_scale = rng.uniform(sky_scale_range[0], sky_scale_range[1], size=n)
    sky_f = np.clip(sky_rows[sky_index] * sky_scale[:, None], 0.0, None)
    lines_f = sky_lines[sky_index] * sky_scale[:, None]
    eps = rng.normal(0.0, sky_residual, size=n) if sky_residual > 0 else np.zeros(n)
    delta = rng.normal(0.0, 0.1, size=n) if sky_residual > 0 else np.zeros(n)
    truth = gal + eps[:, None] * lines_f + delta[:, None] * np.gradient(lines_f, axis=1)

    # 5. lines (drawn before the noise: they add photon noise)
    pos = np.flatnonzero(positive)
    matched = priors == "matched"
    line_f = np.zeros((n, p))
    unit_line = np.zeros((len(pos), p))
    if matched:
        drawn = draw_matched_params(rng, len(pos), grid=grid, **line_priors)
        if len(pos):  # unit-flux profiles; the flux follows from the noise below
            unit_line = lya_profile(wave, drawn["centre"], 1.0, drawn["fwhm_kms"], drawn["skew"])
    else:
        drawn = draw_lya_params(rng, len(pos), grid=grid, **line_priors)
        if len(pos):
            line_f[pos] = lya_profile(wave, drawn["centre"], drawn["line_flux"], drawn["fwhm_kms"], drawn["skew"])
        truth += line_f

    # 3. noise: variance per unit gain k from galaxy + sky photons and read noise, k set by S/N
    beta = rng.uniform(throughput_slope[0], throughput_slope[1], size=n)
    inv_t = (wave[None, :] / 5000.0) ** (-beta[:, None])  # 1 / T
    rho = rng.uniform(read_fraction[0], read_fraction[1], size=n)
    read = rho * np.median(sky_f, axis=1)
    shape_var = (gal + sky_f) * inv_t + read[:, None] * inv_t * inv_t
    snr = np.exp(rng.uniform(np.log(snr_range[0]), np.log(snr_range[1]), size=n))
    snr0 = np.median(gal / np.sqrt(shape_var), axis=1)
    gain = (snr0 / snr) ** 2
    unit = rng.standard_normal((n, p))
    noise_kind = np.zeros(n, dtype=np.int8)
    masked = np.zeros((n, p), dtype=bool)
    if res is not None:
        use = rng.random(n) < residual_fraction
        r = res[rng.integers(0, len(res), size=int(use.sum()))]
        bad_r = ~np.isfinite(r) | (r == 0)
        unit[use] = np.where(bad_r, 0.0, r)
        masked[use] |= bad_r
        noise_kind[use] = 1

    # 4. masked pixels
    if bad_pixel_fraction > 0:
        masked |= rng.random((n, p)) < bad_pixel_fraction
    runs = np.flatnonzero(rng.random(n) < bad_run_probability)
    if len(runs):
        length = rng.integers(5, 41, size=len(runs))
        start = rng.integers(0, p - 5, size=len(runs))
        cols = np.arange(p)[None, :]
        masked[runs] |= (cols >= start[:, None]) & (cols < (start + length)[:, None])

    # 5b. matched priors: the line flux that gives the drawn matched S/N against the final ivar
    if matched:
        if len(pos):
            flux_l = _matched_line_flux(
                unit_line, gain[pos], shape_var[pos], inv_t[pos], ~masked[pos], drawn["snr_target"]
            )
            line_f[pos] = flux_l[:, None] * unit_line
        else:
            flux_l = np.zeros(0)
        _, width, gmax = skewnorm_shape(drawn["skew"])
        drawn["line_flux"] = flux_l
        drawn["peak"] = flux_l * gmax * width / np.maximum(drawn["fwhm_A"], 1e-30)
        truth += line_f
    var = gain[:, None] * (shape_var + np.clip(line_f, 0.0, None) * inv_t)
    flux = truth + np.sqrt(var) * unit
    ivar = np.where(masked, 0.0, 1.0 / var)
    drawn["snr_matched"] = matched_snr(line_f[pos], ivar[pos]) if len(pos) else np.zeros(0)
    line = {k: np.full(n, np.nan) for k in drawn}
    for k, v in drawn.items():
        line[k][pos] = v
    return {
        "flux": flux,
        "ivar": ivar,
        "continuum": cont,
        "truth": truth,
        "galaxy": gal,
        "line": line,
        "z": z,
        "snr": snr,
        "level": level,
        "sky_index": sky_index,
        "sky_scale": sky_scale,
        "noise_kind": noise_kind,
        "gain": gain,
    }
