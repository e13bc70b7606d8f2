"""``lenscat spectra evaluate``: injection-recovery into real spectra, detectors side by side.

Two protocols; every detector runs in memory through the detector registry
(:func:`lenscat.spectra.detectors.load_detector`: ``detect`` then ``characterise``, the same code
as a scan), and nothing is written to the database.

**Matched S/N** (:func:`evaluate_protocol`, the default; issue 31). Real early-type galaxy spectra
(the *hosts*: galaxies with a pipeline redshift, a pipeline subclass that is not an emission class
-- AGN, STARFORMING, STARBURST, BROADLINE -- and no strong emission line of their own, see
:func:`emission_line_snr`) are **re-noised** into new realisations: each realisation takes a
random host, adds Gaussian noise of variance ``1/ivar`` to every pixel and halves ``ivar``, so
the realisation is a new, statistically correct draw of a spectrum at half the exposure. The
same noise goes onto every array of a pixel (window, full-range and veto rows are slices of one
log-lambda grid), so a line's follow-up sees what the detector saw. Half of the realisations get
one Lyman-alpha-like line (:func:`lenscat.spectra.synth.lya_profile`, a red-tailed skew-normal):
peak wavelength log-uniform in 3860-4950 A, FWHM uniform in 120-700 km/s, skew uniform in 1-6,
and a **matched-filter S/N** drawn uniformly from 4-15: the line's flux is scaled so that
``sqrt(sum(line**2 * ivar)) = S/N`` with the re-noised ``ivar`` (the S/N an ideal filter of the
exact profile reaches). Lines are kept more than ``600 km/s + FWHM`` away from the galaxy's own
lines (the mask of the matched filter) and on well-covered pixels. A line is *found* when the
detector has a candidate within ``tolerance_px`` pixels (of log-lambda, 69 km/s) of the injected
peak (in source redshift, for [OII] doublets), and *found after vetoes* when that candidate's hit
is a candidate (``fit_ok`` and no veto). Reported per detector: completeness binned in matched
S/N, FWHM and skew, before and after the vetoes; the headline "lines with S/N >= 8 found, before
and after vetoes", with how many each veto removed; the fraction of clean realisations with a
false candidate; and the real spectra as observed (every candidate listed, the strong-emission
galaxies named explicitly).

**Flux grid** (:func:`evaluate_detectors`, the original mode): lines injected by flux into real
spectra as observed, completeness per (flux, FWHM) cell and hits per 1,000 real spectra.

Units: wavelength [Angstrom, vacuum], flux density [1e-17 erg/s/cm^2/A], line flux
[1e-17 erg/s/cm^2], velocity [km/s].
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import text
from sqlalchemy.orm import Session

from lenscat.errors import LenscatError
from lenscat.registry.versions import ModelVersion
from lenscat.spectra.grid import C_KMS, LYA, VETO, WINDOW, LogGrid
from lenscat.spectra.pack import PackedRows

DEFAULT_FLUXES = (3.0, 5.0, 8.0, 12.0, 20.0, 35.0, 60.0)  # 1e-17 erg/s/cm^2
DEFAULT_FWHMS = (150.0, 300.0, 500.0, 800.0)  # km/s

#: matched-S/N bins of the protocol's completeness table
SNR_BINS: tuple[float, ...] = (4.0, 6.0, 8.0, 10.0, 12.0, 15.0)
#: the headline cut: lines at matched S/N >= this
HEADLINE_SNR = 8.0
#: pipeline subclasses of galaxies with emission lines (not early-type hosts)
EMISSION_SUBCLASSES: tuple[str, ...] = ("AGN", "STARFORMING", "STARBURST", "BROADLINE")
#: a host whose strongest own emission line (residual from the project's continuum fit, see
#: :func:`emission_line_snr`) exceeds this S/N is not early-type
EMISSION_SNR_MAX = 10.0
#: order in which a lost line is attributed to one cause (so the per-veto counts add up);
#: other ``veto_*`` flags follow alphabetically
VETO_ORDER: tuple[str, ...] = ("fit_not_ok", "veto_skew", "veto_oii")
#: named host samples of the protocol (SQL on ``lenscat.spectra s``)
HOST_SAMPLES: dict[str, str] = {
    "early-type": (
        "s.spec_class = 'GALAXY' AND s.z IS NOT NULL AND coalesce(upper(s.subclass), '') !~ '("
        + "|".join(EMISSION_SUBCLASSES)
        + ")'"
    ),
    "galaxies": "s.spec_class = 'GALAXY' AND s.z IS NOT NULL",
    "all": "true",
}


# --------------------------------------------------------------------------------------------
# real spectra
# --------------------------------------------------------------------------------------------


@dataclass
class RealSample:
    """Real spectra loaded from the array stores, with their identifiers."""

    spectrum_ids: np.ndarray
    keys: list[str]
    rows: PackedRows
    pack_rows: np.ndarray
    stores: list[Any]  # PackStore per spectrum (stores are shared objects)
    surveys: list[str] = field(default_factory=list)
    subclasses: list[str | None] = field(default_factory=list)
    full: Any = None  #: PackedFull of the same rows when every store has full-range rows
    red: Any = None  #: RedArrays (4900-8850 A veto range) when the stores predate full-range rows


def _concat(parts: list[Any]) -> Any:
    """Concatenate dataclass instances field by field (a field None in any part stays None)."""
    cls = type(parts[0])
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        vals = [getattr(p, f.name) for p in parts]
        out[f.name] = None if any(v is None for v in vals) else np.concatenate(vals)
    return cls(**out)


def load_real_sample(
    *,
    session: Session,
    max_spectra: int | None = None,
    min_coverage: float = 0.5,
    seed: int = 0,
    sample: str = "galaxies",
    survey: str | None = None,
    full: bool = False,
) -> RealSample:
    """Packed rows of the ingested spectra of a sample with at least ``min_coverage`` good window pixels.

    ``sample`` is a name of :data:`HOST_SAMPLES` or of :data:`lenscat.spectra.scan.SAMPLES`;
    ``survey`` restricts to one survey; ``full`` also loads the full-range rows (or, for stores
    written before them, the 4900-8850 A veto-range rows) for the per-line vetoes.
    """
    from lenscat.spectra.ingest import pack_store

    if sample in HOST_SAMPLES:
        cond = HOST_SAMPLES[sample]
    else:
        from lenscat.spectra.scan import sample_sql

        cond = sample_sql(sample)
    params: dict[str, Any] = {"c": float(min_coverage)}
    if survey is not None:
        cond = f"({cond}) AND s.survey = :sv"
        params["sv"] = survey
    rows = session.execute(
        text(
            "SELECT spectrum_id, survey || ':' || spec_key, pack_id, pack_row, survey, subclass FROM lenscat.spectra s "
            f"WHERE window_coverage >= :c AND ({cond}) ORDER BY spectrum_id"
        ),
        params,
    ).all()
    if not rows:
        where = f" of survey {survey!r}" if survey else ""
        raise LenscatError(
            f"no ingested spectra{where} in sample {sample!r} with >= {min_coverage:.0%} good window "
            "pixels to inject lines into: ingest spectra first (`lenscat spectra ingest`)"
        )
    if max_spectra is not None and len(rows) > max_spectra:
        pick = np.sort(np.random.default_rng(seed).choice(len(rows), size=max_spectra, replace=False))
        rows = [rows[i] for i in pick]
    parts: list[PackedRows] = []
    fulls: list[Any] = []
    reds: list[Any] = []
    stores: list[Any] = []
    by_pack: dict[int, list[int]] = {}
    for i, r in enumerate(rows):
        by_pack.setdefault(int(r[2]), []).append(i)
    order: list[int] = []
    packs = {pid: pack_store(pid, session=session) for pid in by_pack}
    stores_full = all(bool(getattr(st, "has_full", False)) for st in packs.values())
    for pid, idx in by_pack.items():
        store = packs[pid]
        prow = np.array([rows[i][3] for i in idx], dtype=np.int64)
        parts.append(store.read(prow))
        if full:  # full-range rows when every store has them, else the old veto range of all
            if stores_full:
                fulls.append(store.read_full(prow))
            else:
                reds.append(store.read_veto(prow))
        stores.extend([store] * len(idx))
        order.extend(idx)
    sel = [rows[i] for i in order]
    out = RealSample(
        spectrum_ids=np.array([r[0] for r in sel], dtype=np.int64),
        keys=[r[1] for r in sel],
        rows=_concat(parts),
        pack_rows=np.array([r[3] for r in sel], dtype=np.int64),
        stores=stores,
        surveys=[r[4] for r in sel],
        subclasses=[r[5] for r in sel],
    )
    if full:
        from lenscat.spectra.detectors import RedArrays

        if stores_full and fulls:
            out.full = _concat(fulls)
        else:
            v = _concat(reds)
            out.red = RedArrays(wave=VETO.wave, flux=v.flux, ivar=v.ivar, continuum=v.continuum)
    return out


def _fit_continuum_window(rows: PackedRows) -> np.ndarray:
    """The project's continuum fit on the window rows (stored, or fitted now for old stores)."""
    fit = getattr(rows, "continuum_fit", None)
    if fit is not None:
        return np.asarray(fit)
    from lenscat.spectra.continuum import fit_continua

    src = np.asarray(rows.continuum_source)
    out = np.array(rows.continuum, dtype=np.float32, copy=True)
    need = np.flatnonzero(src == 0)  # rows holding a pipeline model: fit the project's continuum
    if need.size:
        out[need] = fit_continua(WINDOW.wave, rows.flux[need], rows.ivar[need], rows.z[need])
    return out


def emission_line_snr(
    wave: np.ndarray, flux: np.ndarray, ivar: np.ndarray, fit: np.ndarray, z: np.ndarray, *, sigma_px: float = 2.0
) -> np.ndarray:
    """Per spectrum, the S/N of its strongest own emission line (residual from the project's continuum fit).

    For every line of :func:`lenscat.spectra.masks.galaxy_lines` (full list) redshifted to ``z``
    and inside ``wave``, a Gaussian of ``sigma_px`` pixels is fitted at the line's pixel to the
    residual ``flux - fit`` (the fit masks the galaxy's lines, so emission stays in the residual;
    the pipeline ``model`` does not, which is why it is not used here); the S/N is
    ``sum(r ivar k) / sqrt(sum(ivar k**2))``. NaN where z is unknown or no line is covered.

    Parameters
    ----------
    wave : numpy.ndarray, shape (P,)
        Pixel wavelengths [Angstrom] on a log-lambda grid.
    flux, ivar, fit : numpy.ndarray, shape (N, P)
        Flux density and continuum fit [1e-17 erg/s/cm^2/A] and inverse variance.
    z : numpy.ndarray, shape (N,)
        Pipeline redshift.
    """
    from lenscat.spectra.masks import galaxy_lines

    rest = np.array(sorted(set(galaxy_lines(full_range=True).values())))
    n = len(flux)
    out = np.full(n, np.nan)
    half = int(np.ceil(4 * sigma_px))
    off = np.arange(-half, half + 1)
    k = np.exp(-0.5 * (off / sigma_px) ** 2)
    lw = np.log(wave)
    for i in range(n):
        if not np.isfinite(z[i]):
            continue
        obs = np.log(rest * (1.0 + z[i]))
        inside = (obs > lw[0]) & (obs < lw[-1])
        if not inside.any():
            continue
        px = np.clip(np.searchsorted(lw, obs[inside]), half, len(wave) - 1 - half)
        idx = px[:, None] + off[None, :]
        r = (flux[i] - fit[i])[idx]
        w = np.where(np.isfinite(ivar[i][idx]) & (ivar[i][idx] > 0), ivar[i][idx], 0.0)
        den = np.sqrt((w * k * k).sum(axis=1))
        snr = np.where(den > 0, (r * w * k).sum(axis=1) / np.where(den > 0, den, 1.0), np.nan)
        if np.isfinite(snr).any():
            out[i] = float(np.nanmax(snr))
    return out


def host_emission(real: RealSample) -> np.ndarray:
    """:func:`emission_line_snr` of a loaded sample (full range when loaded, else the window)."""
    full = real.full
    if full is not None:
        from lenscat.spectra.grid import FULL

        return emission_line_snr(FULL.wave, full.flux, full.ivar, full.fit, real.rows.z)
    rows = real.rows
    return emission_line_snr(WINDOW.wave, rows.flux, rows.ivar, _fit_continuum_window(rows), rows.z)


# --------------------------------------------------------------------------------------------
# the matched-S/N protocol
# --------------------------------------------------------------------------------------------


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
    """Background [OII] doublets (:func:`lenscat.spectra.oii.draw_oii_params`, :func:`~lenscat.spectra.oii.inject_oii`).

    Each doublet (with Hbeta/[OIII] companions where covered) is scaled so that the doublet's
    matched S/N with the re-noised full-range ivar is the drawn one; its observed wavelength stays
    inside the host's covered range. FWHM is that of each Gaussian component (sigma x 2.3548).
    """
    from lenscat.spectra import oii

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
    params = oii.draw_oii_params(
        rng,
        idx.size,
        z_host[idx],
        snr_range=snr_range,
        sigma_kms_range=(fwhm_range[0] * fwhm_to_sigma, fwhm_range[1] * fwhm_to_sigma),
        wave_range=wr,
    )
    new, params = oii.inject_oii(wave, fflux[idx], fivar[idx], params)
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


def _is_candidate(values: dict[str, Any]) -> bool:
    return bool(values.get("fit_ok")) and not any(
        bool(v) for k, v in values.items() if k.startswith("veto_") and k != "veto_detail"
    )


def _loss_causes(values: dict[str, Any]) -> list[str]:
    """Why a hit is not a candidate, in :data:`VETO_ORDER` (then other vetoes alphabetically)."""
    causes = [] if values.get("fit_ok") else ["fit_not_ok"]
    vetoes = sorted(k for k, v in values.items() if k.startswith("veto_") and k != "veto_detail" and bool(v))
    ordered = [v for v in VETO_ORDER if v in vetoes] + [v for v in vetoes if v not in VETO_ORDER]
    return causes + ordered


@dataclass
class ProtocolResult:
    """Results of one detector (with one continuum) under the matched-S/N protocol."""

    detector: str
    continuum: str  #: 'pipeline', 'fit' or 'chosen' (the detector version's own per-survey choice)
    family: str
    matched_snr: np.ndarray  #: (L,) of the injected lines
    fwhm_kms: np.ndarray
    skew: np.ndarray
    found_before: np.ndarray  #: (L,) bool
    found_after: np.ndarray  #: (L,) bool
    lost_to: list[str]  #: (L,) first cause a found line was lost to ('' if kept or not found)
    fired: list[list[str]]  #: (L,) every veto set on the found line's hit
    n_clean: int
    false_before: int  #: clean realisations with any detection
    false_after: int  #: clean realisations with a candidate after the vetoes
    real_candidates: list[dict[str, Any]] = field(default_factory=list)
    emission_galaxies: list[dict[str, Any]] = field(default_factory=list)
    n_real: int = 0

    # -- summaries -------------------------------------------------------------------------
    def headline(self, snr_min: float = HEADLINE_SNR) -> dict[str, Any]:
        """Lines with matched S/N >= ``snr_min``: found before and after vetoes, lost per cause."""
        hi = self.matched_snr >= snr_min
        n = int(hi.sum())
        before = int((self.found_before & hi).sum())
        after = int((self.found_after & hi).sum())
        removed: dict[str, int] = {}
        fired: dict[str, int] = {}
        for i in np.flatnonzero(hi & self.found_before):
            if self.lost_to[i]:
                removed[self.lost_to[i]] = removed.get(self.lost_to[i], 0) + 1
            for v in self.fired[i]:
                fired[v] = fired.get(v, 0) + 1
        return {
            "snr_min": snr_min,
            "n_lines": n,
            "found_before": before,
            "found_after": after,
            "completeness_before": before / n if n else float("nan"),
            "completeness_after": after / n if n else float("nan"),
            "removed": dict(sorted(removed.items(), key=lambda kv: _cause_rank(kv[0]))),
            "vetoes_fired": dict(sorted(fired.items(), key=lambda kv: _cause_rank(kv[0]))),
        }

    def false_rate(self, after: bool = True) -> float:
        """Fraction of clean realisations with a false candidate (after or before the vetoes)."""
        if not self.n_clean:
            return float("nan")
        return (self.false_after if after else self.false_before) / self.n_clean

    def binned(self, what: str, edges: Sequence[float]) -> list[dict[str, Any]]:
        """Completeness before/after vetoes in bins of ``'snr'``, ``'fwhm'`` or ``'skew'``."""
        x = {"snr": self.matched_snr, "fwhm": self.fwhm_kms, "skew": self.skew}[what]
        out = []
        for j, (lo, hi) in enumerate(zip(edges[:-1], edges[1:], strict=True)):
            last = j == len(edges) - 2
            m = (x >= lo) & ((x <= hi) if last else (x < hi))
            n = int(m.sum())
            out.append(
                {
                    "lo": float(lo),
                    "hi": float(hi),
                    "n": n,
                    "before": float(self.found_before[m].mean()) if n else None,
                    "after": float(self.found_after[m].mean()) if n else None,
                }
            )
        return out

    def as_dict(self, fwhm_edges: Sequence[float], skew_edges: Sequence[float]) -> dict[str, Any]:
        """JSON-friendly form."""
        return {
            "detector": self.detector,
            "continuum": self.continuum,
            "family": self.family,
            "headline": self.headline(),
            "n_lines": int(self.matched_snr.size),
            "n_clean": self.n_clean,
            "false_rate_before": self.false_rate(False),
            "false_rate_after": self.false_rate(True),
            "false_before": self.false_before,
            "false_after": self.false_after,
            "completeness_by_snr": self.binned("snr", SNR_BINS),
            "completeness_by_fwhm": self.binned("fwhm", fwhm_edges),
            "completeness_by_skew": self.binned("skew", skew_edges),
            "n_real_spectra": self.n_real,
            "real_candidates": self.real_candidates,
            "emission_galaxies": self.emission_galaxies,
        }


def _cause_rank(cause: str) -> tuple[int, str]:
    return (VETO_ORDER.index(cause), cause) if cause in VETO_ORDER else (len(VETO_ORDER), cause)


def _source_z(cands: Any, family: str) -> np.ndarray:
    if cands.z_source is not None:
        return np.asarray(cands.z_source, dtype=np.float64)
    if cands.wavelength is not None:
        lam = np.asarray(cands.wavelength, dtype=np.float64)
    else:
        from lenscat.spectra.grid import FULL

        grid = WINDOW if family == "lya" else FULL
        lam = grid.wave[np.asarray(cands.pixel, dtype=np.int64)]
    return lam / LYA - 1.0


def run_detector(
    det: Any, rows: PackedRows, ids: np.ndarray, surveys: list[str], *, full: Any, red: Any, continuum: str | None
) -> tuple[Any, list[Any], list[str]]:
    """Run one loaded detector over in-memory rows (detect + characterise); returns (cands, hits, choices)."""
    from lenscat.spectra.detectors import SpectrumBatch, apply_continuum

    choices = det.continuum_for(surveys) if continuum is None else [continuum] * len(rows)
    red_loader = None
    if full is None and red is not None:
        from lenscat.spectra.detectors import RedArrays

        def red_loader(idx: np.ndarray) -> RedArrays:
            return RedArrays(wave=red.wave, flux=red.flux[idx], ivar=red.ivar[idx], continuum=red.continuum[idx])

    batch = SpectrumBatch(
        apply_continuum(rows, choices), ids, surveys, full=full, red_loader=red_loader, continuum=choices
    )
    cands = det.detect(batch)
    hits = det.characterise(cands, batch)
    return cands, hits, choices


def _score(det: Any, label: str, continuum: str | None, real_set: Realisations, tolerance_px: int) -> ProtocolResult:
    n = len(real_set.host)
    ids = np.arange(n, dtype=np.int64)
    cands, hits, _ = run_detector(
        det, real_set.rows, ids, real_set.surveys, full=real_set.full, red=real_set.red, continuum=continuum
    )
    family = str(getattr(cands, "family", "lya"))
    zc = _source_z(cands, family)
    row = np.asarray(cands.row, dtype=np.int64)
    tol = tolerance_px * WINDOW.dlog
    with np.errstate(invalid="ignore", divide="ignore"):
        match = np.abs(np.log10((1.0 + zc) / (1.0 + real_set.z_source[row]))) <= tol
    match &= real_set.has_line[row]
    by_key = {
        (int(r), int(p)): j for j, (r, p) in enumerate(zip(row.tolist(), np.asarray(cands.pixel).tolist(), strict=True))
    }
    hit_of: dict[int, dict[str, Any]] = {}
    for h in hits:
        j = by_key.get((int(h.spectrum_id), int(h.pixel)))
        if j is not None:
            hit_of[j] = h.values
    found_before = np.zeros(n, dtype=bool)
    found_after = np.zeros(n, dtype=bool)
    any_cand = np.zeros(n, dtype=bool)
    any_kept = np.zeros(n, dtype=bool)
    causes: dict[int, list[str]] = {}
    for j in range(row.size):
        r = int(row[j])
        any_cand[r] = True
        vals = hit_of.get(j)
        kept = vals is not None and _is_candidate(vals)
        any_kept[r] |= kept
        if match[j]:
            found_before[r] = True
            if kept:
                found_after[r] = True
            elif vals is not None:
                causes.setdefault(r, _loss_causes(vals))
            else:
                causes.setdefault(r, ["not_characterised"])
    lines = np.flatnonzero(real_set.has_line)
    lost_to = ["" if found_after[r] or not found_before[r] else causes.get(int(r), ["?"])[0] for r in lines]
    fired = [causes.get(int(r), []) if not found_after[r] else [] for r in lines]
    clean = ~real_set.has_line
    return ProtocolResult(
        detector=label,
        continuum=continuum or "chosen",
        family=family,
        matched_snr=real_set.matched_snr[lines],
        fwhm_kms=real_set.fwhm_kms[lines],
        skew=real_set.skew[lines],
        found_before=found_before[lines],
        found_after=found_after[lines],
        lost_to=lost_to,
        fired=fired,
        n_clean=int(clean.sum()),
        false_before=int((any_cand & clean).sum()),
        false_after=int((any_kept & clean).sum()),
    )


def _real_as_observed(
    det: Any, result: ProtocolResult, real: RealSample, continuum: str | None, emission: np.ndarray
) -> None:
    """Every candidate in the real spectra as observed; the strong-emission galaxies reported by name."""
    cands, hits, _ = run_detector(
        det, real.rows, real.spectrum_ids, real.surveys, full=real.full, red=real.red, continuum=continuum
    )
    key_of = dict(zip(real.spectrum_ids.tolist(), real.keys, strict=True))
    n_hits: dict[int, int] = {}
    n_cand: dict[int, int] = {}
    for h in hits:
        sid = int(h.spectrum_id)
        n_hits[sid] = n_hits.get(sid, 0) + 1
        if _is_candidate(h.values):
            n_cand[sid] = n_cand.get(sid, 0) + 1
            result.real_candidates.append(
                {
                    "spectrum_id": sid,
                    "spectrum": key_of[sid],
                    "wavelength": float(h.wavelength),
                    "line": h.values.get("line", result.family),
                    "snr": h.values.get("snr"),
                    "prob": h.values.get("prob"),
                    "z_source": h.values.get("z_source"),
                }
            )
    for i, sid in enumerate(real.spectrum_ids.tolist()):
        sub = (real.subclasses[i] or "").upper()
        strong = any(s in sub for s in EMISSION_SUBCLASSES) or (
            np.isfinite(emission[i]) and emission[i] > EMISSION_SNR_MAX
        )
        if strong:
            result.emission_galaxies.append(
                {
                    "spectrum_id": int(sid),
                    "spectrum": real.keys[i],
                    "subclass": real.subclasses[i],
                    "emission_snr": float(emission[i]) if np.isfinite(emission[i]) else None,
                    "hits": n_hits.get(int(sid), 0),
                    "candidates": n_cand.get(int(sid), 0),
                }
            )
    result.n_real = len(real.spectrum_ids)


def fwhm_edges(fwhm_range: tuple[float, float], n: int = 4) -> list[float]:
    """Equal-width FWHM bins over the protocol's range [km/s]."""
    return [float(x) for x in np.linspace(fwhm_range[0], fwhm_range[1], n + 1)]


def skew_edges(skew_range: tuple[float, float], n: int = 4) -> list[float]:
    """Equal-width skew bins over the protocol's range."""
    return [float(x) for x in np.linspace(skew_range[0], skew_range[1], n + 1)]


def load_hosts(
    *,
    session: Session,
    hosts: str = "early-type",
    survey: str | None = None,
    min_coverage: float = 0.5,
    emission_snr_max: float = EMISSION_SNR_MAX,
) -> RealSample:
    """The host spectra of the protocol; ``'early-type'`` also drops spectra with a strong own emission line."""
    real = load_real_sample(session=session, sample=hosts, survey=survey, min_coverage=min_coverage, full=True)
    if hosts != "early-type":
        return real
    em = host_emission(real)
    keep = ~(np.isfinite(em) & (em > emission_snr_max))
    if not keep.any():
        raise LenscatError(
            f"no early-type host spectra (every candidate host has an emission line above S/N {emission_snr_max:g})"
        )
    return _subset(real, np.flatnonzero(keep))


def _subset(real: RealSample, idx: np.ndarray) -> RealSample:
    def take(obj: Any) -> Any:
        if obj is None:
            return None
        return dataclasses.replace(
            obj,
            **{
                f.name: getattr(obj, f.name)[idx]
                for f in dataclasses.fields(obj)
                if isinstance(getattr(obj, f.name), np.ndarray)
                and getattr(obj, f.name).ndim >= 1
                and getattr(obj, f.name).shape[0] == len(real.spectrum_ids)
            },
        )

    red = real.red
    if red is not None:
        red = dataclasses.replace(red, flux=red.flux[idx], ivar=red.ivar[idx], continuum=red.continuum[idx])
    return RealSample(
        spectrum_ids=real.spectrum_ids[idx],
        keys=[real.keys[i] for i in idx],
        rows=take(real.rows),
        pack_rows=real.pack_rows[idx],
        stores=[real.stores[i] for i in idx],
        surveys=[real.surveys[i] for i in idx],
        subclasses=[real.subclasses[i] for i in idx],
        full=take(real.full),
        red=red,
    )


def evaluate_protocol(
    detectors: Sequence[ModelVersion],
    *,
    session: Session,
    realisations: int = 240,
    line_fraction: float = 0.5,
    snr_range: tuple[float, float] = (4.0, 15.0),
    fwhm_range: tuple[float, float] = (120.0, 700.0),
    skew_range: tuple[float, float] = (1.0, 6.0),
    wave_range: tuple[float, float] = (3860.0, 4950.0),
    renoise: bool = True,
    hosts: str = "early-type",
    continuum: str | Sequence[str | None] | None = None,
    family: str = "lya",
    seed: int = 0,
    tolerance_px: int = 4,
    survey: str | None = None,
    real_sample: str | None = "galaxies",
    device: str | None = None,
    host_sample: RealSample | None = None,
) -> tuple[list[ProtocolResult], dict[str, Any]]:
    """The issue-31 protocol: re-noised early-type spectra, lines at a drawn matched S/N, every detector in memory.

    Parameters
    ----------
    detectors
        Detector versions (any registered architecture).
    realisations
        Re-noised realisations (the same set for every detector and continuum).
    line_fraction
        Fraction of realisations with one injected line; the rest measure the false-candidate rate.
    snr_range
        Matched-filter S/N of the injected lines, drawn uniformly (dimensionless).
    fwhm_range
        Line FWHM [km/s], drawn uniformly.
    skew_range
        Skew-normal shape (> 0: red tail), drawn uniformly (Lyα only).
    wave_range
        Peak wavelength [Angstrom], log-uniform (Lyα only; [OII] draws its source redshift).
    renoise
        Re-noise the hosts (noise of variance 1/ivar added, ivar halved); False: hosts as observed.
    hosts
        Host sample: ``'early-type'`` (default, see the module docstring), ``'galaxies'`` or ``'all'``.
    continuum
        ``None``: each detector version's own per-survey choice; ``'pipeline'`` or ``'fit'``: that
        continuum for every spectrum; a sequence: each of them in turn (one result per entry).
    family
        ``'lya'`` or ``'oii'`` (the injected line family).
    tolerance_px
        A candidate within this many log-lambda pixels (69 km/s each) of the injected line finds it.
    survey
        Only hosts of this survey.
    real_sample
        Sample of real spectra scanned as observed (every candidate listed); None skips that step.
    host_sample
        Hosts already loaded (:func:`load_hosts`), to reuse across calls.

    Returns
    -------
    results, info
        One :class:`ProtocolResult` per (detector, continuum), and the protocol's settings.
    """
    from lenscat.spectra.detectors import load_detector

    real = host_sample if host_sample is not None else load_hosts(session=session, hosts=hosts, survey=survey)
    rs = make_realisations(
        real,
        realisations=realisations,
        line_fraction=line_fraction,
        snr_range=snr_range,
        fwhm_range=fwhm_range,
        skew_range=skew_range,
        wave_range=wave_range,
        renoise=renoise,
        family=family,
        seed=seed,
    )
    conts: list[str | None] = [continuum] if continuum is None or isinstance(continuum, str) else list(continuum)
    observed = None
    emission = None
    if real_sample is not None:
        observed = load_real_sample(session=session, sample=real_sample, survey=survey, full=True)
        emission = host_emission(observed)
    results: list[ProtocolResult] = []
    for model in detectors:
        det = load_detector(model, device)
        for cont in conts:
            res = _score(det, model.label, cont, rs, tolerance_px)
            if observed is not None and emission is not None:
                _real_as_observed(det, res, observed, cont, emission)
            results.append(res)
    info = {
        "protocol": "snr",
        "realisations": realisations,
        "line_fraction": line_fraction,
        "n_lines": int(rs.has_line.sum()),
        "n_clean": int((~rs.has_line).sum()),
        "n_hosts": len(real.spectrum_ids),
        "hosts": hosts,
        "host_spectra": real.keys,
        "snr_range": list(snr_range),
        "fwhm_range": list(fwhm_range),
        "skew_range": list(skew_range),
        "wave_range": list(wave_range),
        "renoise": renoise,
        "family": family,
        "seed": seed,
        "tolerance_px": tolerance_px,
        "survey": survey,
        "snr_bins": list(SNR_BINS),
        "fwhm_bins": fwhm_edges(fwhm_range),
        "skew_bins": skew_edges(skew_range),
        "emission_snr_max": EMISSION_SNR_MAX,
    }
    return results, info


def headline_cells(r: ProtocolResult) -> tuple[str, str, str]:
    """The issue's table cells: found before vetoes, after vetoes (with losses per veto), false rate."""
    h = r.headline()
    n = h["n_lines"]

    def frac(k: int) -> str:
        return f"{k} / {n} ({k / n:.2f})" if n else f"{k} / 0"

    lost = ", ".join(
        f"{v} lost to `{k}`" if i == 0 else f"{v} to `{k}`" for i, (k, v) in enumerate(h["removed"].items())
    )
    after = frac(h["found_after"]) + (f": {lost}" if lost else "")
    fr = r.false_rate(True)
    fb = r.false_rate(False)
    false = f"{100 * fr:.0f} % ({r.false_after} / {r.n_clean}; {100 * fb:.0f} % before vetoes)" if r.n_clean else "n/a"
    return frac(h["found_before"]), after, false


def protocol_table(results: Sequence[ProtocolResult]) -> tuple[list[str], list[list[Any]]]:
    """Header and rows of the issue's table (one row per detector and continuum)."""
    cols = [
        "detector",
        "continuum",
        f"lines with S/N >= {HEADLINE_SNR:g} found, before vetoes",
        "after vetoes",
        "clean spectra with a false candidate",
    ]
    rows = [[r.detector, r.continuum, *headline_cells(r)] for r in results]
    return cols, rows


def plot_protocol(results: Sequence[ProtocolResult], path: str | Path) -> Path:
    """Completeness vs matched S/N per detector (and continuum), before and after the vetoes (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, len(results), figsize=(4.5 * len(results), 4), squeeze=False, sharey=True)
    mids = 0.5 * (np.asarray(SNR_BINS[:-1]) + np.asarray(SNR_BINS[1:]))
    for ax, r in zip(axes[0], results, strict=True):
        b = r.binned("snr", SNR_BINS)
        for key, style in (("before", "o--"), ("after", "o-")):
            y = [np.nan if c[key] is None else c[key] for c in b]
            ax.plot(mids, y, style, label=f"{key} vetoes")
        ax.set_xlabel("matched-filter S/N of the injected line")
        ax.set_title(f"{r.detector} ({r.continuum}): false {100 * r.false_rate():.0f} %", fontsize=9)
        ax.grid(alpha=0.3)
    return _save_completeness_figure(fig, axes, path)


# --------------------------------------------------------------------------------------------
# the flux-grid mode
# --------------------------------------------------------------------------------------------


@dataclass
class DetectorEvaluation:
    """Results for one detector (flux-grid mode)."""

    detector: str
    completeness: np.ndarray  #: (n_flux, n_fwhm) recovered fraction
    n_trials: np.ndarray  #: (n_flux, n_fwhm)
    false_hits_per_1000: float
    false_hits_raw_per_1000: float
    real_candidates: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self, fluxes: tuple[float, ...], fwhms: tuple[float, ...]) -> dict[str, Any]:
        """JSON-friendly form."""
        return {
            "detector": self.detector,
            "completeness": [
                {
                    "line_flux": f,
                    "fwhm_kms": w,
                    "completeness": float(self.completeness[i, j]),
                    "trials": int(self.n_trials[i, j]),
                }
                for i, f in enumerate(fluxes)
                for j, w in enumerate(fwhms)
            ],
            "completeness_by_flux": {
                str(f): float(np.average(self.completeness[i], weights=np.maximum(self.n_trials[i], 1)))
                for i, f in enumerate(fluxes)
            },
            "false_hits_per_1000": self.false_hits_per_1000,
            "false_hits_before_vetoes_per_1000": self.false_hits_raw_per_1000,
            "real_candidates": self.real_candidates,
        }


def _recovered(c: Any, n: int, centre_px: np.ndarray, tol: int) -> np.ndarray:
    rec = np.zeros(n, dtype=bool)
    if c.row.size:
        close = np.abs(c.pixel - centre_px[c.row]) <= tol
        rec[c.row[close]] = True
    return rec


def evaluate_detectors(
    detectors: list[ModelVersion],
    *,
    session: Session,
    fluxes: tuple[float, ...] = DEFAULT_FLUXES,
    fwhms: tuple[float, ...] = DEFAULT_FWHMS,
    injections_per_cell: int = 200,
    max_spectra: int | None = 2000,
    tolerance_px: int = 4,
    seed: int = 0,
    device: str | None = None,
    sample: str = "galaxies",
) -> tuple[list[DetectorEvaluation], dict[str, Any]]:
    """Flux-grid injection-recovery and false-hit rates of detectors on the ingested real spectra.

    Lines are added to real spectra as observed (their noise is kept: the injected line adds
    signal, the ivar stays as observed) on a grid of line fluxes and widths at random window
    pixels; a line is recovered when the detector reports a hit within ``tolerance_px`` pixels of
    the injected peak. The same detectors scan the real spectra as observed, which gives the hits
    per 1,000 spectra that survive the per-line vetoes (an upper limit on the false-positive rate).

    Parameters
    ----------
    detectors
        Detector versions to compare.
    fluxes
        Injected line fluxes [1e-17 erg/s/cm^2].
    fwhms
        Injected line widths, FWHM [km/s].
    injections_per_cell
        Injected lines per (flux, width) cell, spread over the real spectra.
    max_spectra
        Real spectra to use at most (a random subset beyond that).
    tolerance_px
        A hit within this many pixels of the injected peak counts as recovered.
    sample
        Real spectra to use (:data:`lenscat.spectra.scan.SAMPLES`; default the science sample,
        galaxies with a pipeline redshift).
    """
    from lenscat.spectra.detectors import load_detector
    from lenscat.spectra.synth import inject_lines

    real = load_real_sample(session=session, max_spectra=max_spectra, seed=seed, sample=sample, full=True)
    n_real = len(real.spectrum_ids)
    rng = np.random.default_rng(seed)
    wave = WINDOW.wave
    results = []
    # the injected set: the same lines for every detector
    cells = [(i, j) for i in range(len(fluxes)) for j in range(len(fwhms))]
    base = np.concatenate([np.full(injections_per_cell, k) for k in range(len(cells))])
    host = rng.integers(0, n_real, size=base.size)
    margin = 20
    centre_px = rng.integers(margin, WINDOW.n - margin, size=base.size)
    skew = rng.uniform(0.0, 4.0, size=base.size)
    params = {
        "centre": wave[centre_px],
        "line_flux": np.array([fluxes[cells[k][0]] for k in base]),
        "fwhm_kms": np.array([fwhms[cells[k][1]] for k in base]),
        "skew": skew,
    }
    flux_inj, ivar_inj = inject_lines(wave, real.rows.flux[host], real.rows.ivar[host], params)
    inj = dataclasses.replace(
        real.rows,
        **{
            f.name: getattr(real.rows, f.name)[host]
            for f in dataclasses.fields(real.rows)
            if getattr(real.rows, f.name) is not None
        },
    )
    inj = dataclasses.replace(
        inj, flux=np.asarray(flux_inj, dtype=np.float32), ivar=np.asarray(ivar_inj, dtype=np.float32)
    )
    inj_surveys = [real.surveys[h] for h in host]
    for model in detectors:
        from lenscat.spectra.detectors import SpectrumBatch, apply_continuum

        det = load_detector(model, device)
        choices = det.continuum_for(inj_surveys)
        c = det.detect(
            SpectrumBatch(apply_continuum(inj, choices), np.arange(base.size), inj_surveys, continuum=choices)
        )
        rec = _recovered(c, base.size, centre_px, tolerance_px)
        comp = np.zeros((len(fluxes), len(fwhms)))
        ntr = np.zeros((len(fluxes), len(fwhms)), dtype=np.int64)
        for k, (i, j) in enumerate(cells):
            m = base == k
            ntr[i, j] = int(m.sum())
            comp[i, j] = float(rec[m].mean()) if m.any() else np.nan
        # false hits on the real spectra as observed, after the per-line vetoes
        c0, hits, _ = run_detector(
            det, real.rows, real.spectrum_ids, real.surveys, full=real.full, red=real.red, continuum=None
        )
        key_of = dict(zip(real.spectrum_ids.tolist(), real.keys, strict=True))
        kept = [
            {
                "spectrum_id": h.spectrum_id,
                "spectrum": key_of[int(h.spectrum_id)],
                "wavelength": h.wavelength,
                **h.values,
            }
            for h in hits
            if _is_candidate(h.values)
        ]
        results.append(
            DetectorEvaluation(
                detector=model.label,
                completeness=comp,
                n_trials=ntr,
                false_hits_per_1000=1000.0 * len(kept) / n_real,
                false_hits_raw_per_1000=1000.0 * int(c0.row.size) / n_real,
                real_candidates=kept,
            )
        )
    info = {
        "protocol": "flux",
        "n_real_spectra": n_real,
        "n_injected": int(base.size),
        "tolerance_px": tolerance_px,
        "fluxes": list(fluxes),
        "fwhms_kms": list(fwhms),
        "seed": seed,
        "sample": sample,
    }
    return results, info


def plot_completeness(
    results: list[DetectorEvaluation], fluxes: tuple[float, ...], fwhms: tuple[float, ...], path: str | Path
) -> Path:
    """Completeness vs line flux, one panel per detector, one curve per width (PNG)."""
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, len(results), figsize=(5 * len(results), 4), squeeze=False, sharey=True)
    for ax, r in zip(axes[0], results, strict=True):
        for j, w in enumerate(fwhms):
            ax.plot(fluxes, r.completeness[:, j], marker="o", label=f"FWHM {w:.0f} km/s")
        ax.set_xscale("log")
        ax.set_xticks(list(fluxes))
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
        ax.set_xlabel(r"injected line flux [$10^{-17}$ erg s$^{-1}$ cm$^{-2}$]")
        ax.set_title(f"{r.detector}: {r.false_hits_per_1000:.0f} hits / 1000 real spectra")
        ax.grid(alpha=0.3)
    return _save_completeness_figure(fig, axes, path)


def protocol_json(results: Sequence[ProtocolResult], info: dict[str, Any]) -> str:
    """The protocol's results as one JSON document."""
    fe, se = info["fwhm_bins"], info["skew_bins"]
    return json.dumps({**info, "detectors": [r.as_dict(fe, se) for r in results]}, default=str)


def _save_completeness_figure(fig: Any, axes: Any, path: Path) -> Path:
    """Label, lay out, write (PNG) and close a row of completeness panels."""
    import matplotlib.pyplot as plt

    axes[0][0].set_ylabel("completeness")
    axes[0][0].set_ylim(0, 1.02)
    axes[0][-1].legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
