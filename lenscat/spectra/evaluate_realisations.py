"""Re-noised realisations of real host spectra, with injected lines, for the matched-S/N protocol.

Each realisation takes a random host, adds Gaussian noise of variance ``1/ivar`` to every pixel and
halves ``ivar`` (a new, statistically correct draw at half the exposure); the same noise goes onto
every array of a pixel (window, full-range and veto rows are slices of one log-lambda grid). Half of
them get one line (Lya-like, or an [OII] doublet) scaled to a drawn matched-filter S/N
(:func:`make_realisations`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from lenscat.errors import LenscatError
from lenscat.spectra.evaluate_hosts import (
    RealSample,
)
from lenscat.spectra.grid import C_KMS, LYA, VETO, WINDOW, LogGrid
from lenscat.spectra.pack import PackedRows

#: the protocol's default Lyman-alpha lines (the issue's): matched-filter S/N, FWHM [km/s], skew-normal
#: shape (red tail) and observed wavelength [Angstrom]; evaluate_protocol's defaults and the ensemble's
#: real calibration both draw from these
LYA_SNR_RANGE = (4.0, 15.0)
LYA_FWHM_RANGE = (120.0, 700.0)
LYA_SKEW_RANGE = (1.0, 6.0)
LYA_WAVE_RANGE = (3860.0, 4950.0)


@dataclass
class Realisations:
    """Re-noised copies of real host spectra, some with an injected line (in memory)."""

    host: np.ndarray  #: (R,) index into the host sample
    rows: PackedRows  #: window rows (re-noised flux and ivar, line added)
    full: Any  #: PackedFull copy or None
    red: Any  #: RedArrays copy or None (old stores)
    surveys: list[str]
    has_line: np.ndarray  #: (R,) bool
    centre: np.ndarray  #: (R,) injected peak (Lyα) or [OII] 3729 wavelength [Angstrom]; NaN without line
    z_source: np.ndarray  #: (R,) source redshift of the injected line; NaN without line
    line_flux: np.ndarray  #: (R,) [1e-17 erg/s/cm^2]
    fwhm_kms: np.ndarray  #: (R,) [km/s]
    skew: np.ndarray  #: (R,)
    matched_snr: np.ndarray  #: (R,) sqrt(sum(line**2 ivar)) with the re-noised ivar
    line_window: np.ndarray  #: (R, WINDOW.n) the injected line on the window [1e-17 erg/s/cm^2/A]


def _grid_span(grids: Sequence[LogGrid]) -> LogGrid:
    k0 = min(g.k0 for g in grids)
    k1 = max(g.k0 + g.n for g in grids)
    return LogGrid(k0=k0, n=k1 - k0, dlog=grids[0].dlog)


def _on(master: LogGrid, g: LogGrid, arr: np.ndarray) -> np.ndarray:
    return arr[:, g.k0 - master.k0 : g.k0 - master.k0 + g.n]


def _renoise(flux: np.ndarray, ivar: np.ndarray, noise: np.ndarray, renoise: bool) -> tuple[np.ndarray, np.ndarray]:
    if not renoise:
        return np.array(flux, dtype=np.float32, copy=True), np.array(ivar, dtype=np.float32, copy=True)
    good = np.isfinite(ivar) & (ivar > 0)
    sig = np.where(good, 1.0 / np.sqrt(np.where(good, ivar, 1.0)), 0.0)
    return (flux + noise * sig).astype(np.float32), np.where(good, 0.5 * ivar, 0.0).astype(np.float32)


def make_realisations(
    real: RealSample,
    *,
    realisations: int,
    line_fraction: float,
    snr_range: tuple[float, float],
    fwhm_range: tuple[float, float],
    skew_range: tuple[float, float],
    wave_range: tuple[float, float],
    renoise: bool,
    family: str,
    seed: int,
) -> Realisations:
    """Draw hosts, re-noise them and inject lines scaled to a matched-filter S/N (see the module docstring)."""
    from lenscat.spectra.masks import galaxy_lines
    from lenscat.spectra.synth import lya_profile, matched_snr

    if realisations < 1:
        raise LenscatError(f"realisations must be >= 1, got {realisations}")
    if not 0.0 <= line_fraction <= 1.0:
        raise LenscatError(f"line fraction must be in [0, 1], got {line_fraction}")
    for name, (lo, hi) in (("S/N", snr_range), ("FWHM", fwhm_range), ("wavelength", wave_range)):
        if not 0 < lo <= hi:
            raise LenscatError(f"{name} range must be positive and increasing, got ({lo}, {hi})")
    rng = np.random.default_rng(seed)
    n_host = len(real.spectrum_ids)
    host = rng.integers(0, n_host, size=realisations)
    has_line = rng.permutation(realisations) < int(round(line_fraction * realisations))
    grids: list[LogGrid] = [WINDOW]
    full_grid = None
    if real.full is not None:
        from lenscat.spectra.grid import FULL

        full_grid = FULL
        grids.append(FULL)
    elif real.red is not None:
        grids.append(VETO)
    master = _grid_span(grids)
    noise = rng.standard_normal((realisations, master.n))
    rows = real.rows
    wflux, wivar = _renoise(rows.flux[host], rows.ivar[host], _on(master, WINDOW, noise), renoise)
    fflux = fivar = rflux = rivar = None
    if full_grid is not None:
        fflux, fivar = _renoise(real.full.flux[host], real.full.ivar[host], _on(master, full_grid, noise), renoise)
    elif real.red is not None:
        rflux, rivar = _renoise(real.red.flux[host], real.red.ivar[host], _on(master, VETO, noise), renoise)
    nan = np.full(realisations, np.nan)
    centre, zsrc, lflux, fwhm, skew, msnr = (nan.copy() for _ in range(6))
    line_win = np.zeros((realisations, WINDOW.n), np.float32)
    mwave = master.wave
    z_host = rows.z[host]
    if family == "lya":
        rest = np.array(sorted(set(galaxy_lines(extended=True).values())))
        lo_l, hi_l = np.log(wave_range[0]), np.log(wave_range[1])
        ww = WINDOW.wave
        for i in np.flatnonzero(has_line):
            for _ in range(200):
                c = float(np.exp(rng.uniform(lo_l, hi_l)))
                fw = float(rng.uniform(*fwhm_range))
                sk = float(rng.uniform(*skew_range))
                target = float(rng.uniform(*snr_range))
                if np.isfinite(z_host[i]):
                    dv = np.abs(c / (rest * (1.0 + z_host[i])) - 1.0) * C_KMS
                    if np.any(dv < 600.0 + fw):
                        continue
                near = np.abs(np.log(ww / c)) * C_KMS <= max(fw, 2.0 * WINDOW.velocity_per_pixel)
                if (wivar[i][near] > 0).mean() < 0.8:
                    continue
                break
            else:
                raise LenscatError("cannot place an injected line clear of the galaxy lines on covered pixels")
            prof = lya_profile(mwave, c, 1.0, fw, sk)
            pw = _on(master, WINDOW, prof[None, :])[0]
            s1 = float(matched_snr(pw.astype(np.float64), wivar[i]))
            f = target / s1
            centre[i], zsrc[i], lflux[i], fwhm[i], skew[i], msnr[i] = c, c / LYA - 1.0, f, fw, sk, target
            line = (f * prof)[None, :]
            line_win[i] = _on(master, WINDOW, line)[0]
            wflux[i] += line_win[i]
            if fflux is not None and full_grid is not None:
                fflux[i] += _on(master, full_grid, line)[0].astype(np.float32)
            if rflux is not None:
                rflux[i] += _on(master, VETO, line)[0].astype(np.float32)
    elif family == "oii":
        _inject_oii(
            rng,
            has_line,
            z_host,
            master,
            full_grid,
            wflux,
            wivar,
            fflux,
            fivar,
            line_win,
            (centre, zsrc, lflux, fwhm, skew, msnr),
            snr_range=snr_range,
            fwhm_range=fwhm_range,
        )
    else:
        raise LenscatError(f"unknown line family {family!r}; expected 'lya' or 'oii'")
    new_rows = dataclasses.replace(
        rows,
        **{f.name: getattr(rows, f.name)[host] for f in dataclasses.fields(rows) if getattr(rows, f.name) is not None},
    )
    new_rows = dataclasses.replace(new_rows, flux=wflux, ivar=wivar)
    full = red = None
    if real.full is not None:
        full = dataclasses.replace(
            real.full,
            **{
                f.name: getattr(real.full, f.name)[host]
                for f in dataclasses.fields(real.full)
                if getattr(real.full, f.name) is not None
            },
        )
        full = dataclasses.replace(full, flux=fflux, ivar=fivar)
    elif real.red is not None:
        from lenscat.spectra.detectors import RedArrays

        assert rflux is not None and rivar is not None
        red = RedArrays(wave=real.red.wave, flux=rflux, ivar=rivar, continuum=real.red.continuum[host])
    return Realisations(
        host=host,
        rows=new_rows,
        full=full,
        red=red,
        surveys=[real.surveys[h] for h in host],
        has_line=has_line,
        centre=centre,
        z_source=zsrc,
        line_flux=lflux,
        fwhm_kms=fwhm,
        skew=skew,
        matched_snr=msnr,
        line_window=line_win,
    )


def _inject_oii(
    rng: np.random.Generator,
    has_line: np.ndarray,
    z_host: np.ndarray,
    master: LogGrid,
    full_grid: LogGrid | None,
    wflux: np.ndarray,
    wivar: np.ndarray,
    fflux: np.ndarray | None,
    fivar: np.ndarray | None,
    line_win: np.ndarray,
    out: tuple[np.ndarray, ...],
    *,
    snr_range: tuple[float, float],
    fwhm_range: tuple[float, float],
) -> None:
    """Background [OII] doublets (:func:`lenscat.spectra.oii_inject.draw_oii_params`,
    :func:`~lenscat.spectra.oii_inject.inject_oii`).

    Each doublet (with Hbeta/[OIII] companions where covered) is scaled so that the doublet's
    matched S/N with the re-noised full-range ivar is the drawn one; its observed wavelength stays
    inside the host's covered range. FWHM is that of each Gaussian component (sigma x 2.3548).
    """
    from lenscat.spectra import oii, oii_inject

    if full_grid is None or fflux is None or fivar is None:
        raise LenscatError("[OII] injection needs full-range spectra: ingest the spectra into a new store")
    centre, zsrc, lflux, fwhm, skew, msnr = out
    idx = np.flatnonzero(has_line)
    if idx.size == 0:
        return
    wave = full_grid.wave
    good = fivar[idx] > 0
    first = np.where(good.any(axis=1), good.argmax(axis=1), 0)
    last = np.where(good.any(axis=1), good.shape[1] - 1 - good[:, ::-1].argmax(axis=1), good.shape[1] - 1)
    wr = np.stack([wave[first] + 10.0, wave[last] - 10.0], axis=1)
    fwhm_to_sigma = 1.0 / (2.0 * np.sqrt(2.0 * np.log(2.0)))
    params = oii_inject.draw_oii_params(
        rng,
        idx.size,
        z_host[idx],
        snr_range=snr_range,
        sigma_kms_range=(fwhm_range[0] * fwhm_to_sigma, fwhm_range[1] * fwhm_to_sigma),
        wave_range=wr,
    )
    new, params = oii_inject.inject_oii(wave, fflux[idx], fivar[idx], params)
    line = (np.asarray(new, dtype=np.float64) - fflux[idx]).astype(np.float32)
    fflux[idx] += line
    w0 = WINDOW.k0 - full_grid.k0
    if w0 >= 0 and w0 + WINDOW.n <= full_grid.n:
        line_win[idx] = line[:, w0 : w0 + WINDOW.n]
        wflux[idx] += line_win[idx]
    zsrc[idx] = params.z_source
    centre[idx] = oii.OII_MEAN * (1.0 + np.asarray(params.z_source))
    lflux[idx], msnr[idx] = params.line_flux, params.snr
    fwhm[idx] = np.asarray(params.sigma_kms) / fwhm_to_sigma
    skew[idx] = 0.0
