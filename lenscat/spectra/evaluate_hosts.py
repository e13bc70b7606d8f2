"""The real host spectra of the detector evaluation: early-type galaxies without emission of their own.

Hosts are galaxies with a pipeline redshift, a pipeline subclass that is not an emission class
(:data:`EMISSION_SUBCLASSES`) and no strong emission line of their own (:func:`emission_line_snr`
below :data:`EMISSION_SNR_MAX`), read from the packed store (:func:`load_real_sample`,
:func:`load_hosts`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sqlalchemy import text
from sqlalchemy.orm import Session

from lenscat.errors import LenscatError
from lenscat.spectra.grid import VETO, WINDOW
from lenscat.spectra.pack import PackedRows

#: pipeline subclasses of galaxies with emission lines (not early-type hosts)
EMISSION_SUBCLASSES: tuple[str, ...] = ("AGN", "STARFORMING", "STARBURST", "BROADLINE")


#: a host whose strongest own emission line (residual from the project's continuum fit, see
#: :func:`emission_line_snr`) exceeds this S/N is not early-type
EMISSION_SNR_MAX = 10.0


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
