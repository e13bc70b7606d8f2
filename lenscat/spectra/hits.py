"""Reading spectra and hits back as astropy tables with units (the CLI and users' scripts)."""

from __future__ import annotations

from typing import Any

import astropy.units as u
from astropy.table import Table
from sqlalchemy import text
from sqlalchemy.orm import Session

from lenscat.errors import LenscatError
from lenscat.registry.versions import get_model
from lenscat.sky.units import rows_to_table

HIT_UNITS: dict[str, u.UnitBase] = {
    "wavelength": u.AA,
    "line_flux": 1e-17 * u.erg / u.s / u.cm**2,
    "line_flux_err": 1e-17 * u.erg / u.s / u.cm**2,
    "fwhm_kms": u.km / u.s,
    "ra": u.deg,
    "dec": u.deg,
}
SPECTRA_UNITS: dict[str, u.UnitBase] = {"ra": u.deg, "dec": u.deg, "source_sep_arcsec": u.arcsec}

HIT_COLUMNS = (
    "hit_id, spectrum_id, detector, detector_version, survey, spec_key, ra, dec, z_lens, wavelength, "
    "z_source, snr, prob, line_flux, line_flux_err, fwhm_kms, skew_alpha, veto_oii, veto_skew, "
    "veto_overdensity, is_candidate, source_id, line, veto_doublet, veto_foreground, veto_interloper, veto_weak"
)


def hits_table(
    *,
    session: Session,
    detector: str | None = None,
    candidates_only: bool = False,
    min_snr: float | None = None,
    min_prob: float | None = None,
    spectrum_id: int | None = None,
    line: str | None = None,
    limit: int | None = 100,
) -> Table:
    """Hits from the ``spectral_hits`` view, strongest first.

    Parameters
    ----------
    detector
        ``NAME`` (latest version), ``NAME@VERSION`` or None for every detector.
    candidates_only
        Only hits with a converged fit and no veto.
    min_snr, min_prob
        Lower limits on S/N and (ResNet) probability.
    spectrum_id
        Only this spectrum.
    line
        Only this line family: ``'lya'`` (background Lyman alpha) or ``'oii'`` ([OII] doublet).
    limit
        At most this many rows (None: all).
    """
    where: list[str] = []
    params: dict[str, Any] = {}
    if detector is not None:
        where.append("detector_id = :m")
        params["m"] = get_model("detector", detector, session=session).model_id
    if candidates_only:
        where.append("is_candidate")
    if min_snr is not None:
        where.append("snr >= :snr")
        params["snr"] = float(min_snr)
    if min_prob is not None:
        where.append("prob >= :prob")
        params["prob"] = float(min_prob)
    if spectrum_id is not None:
        where.append("spectrum_id = :sid")
        params["sid"] = int(spectrum_id)
    if line is not None:
        if line not in ("lya", "oii"):
            raise LenscatError(f"unknown line family {line!r}; expected 'lya' or 'oii'")
        where.append("line = :line")
        params["line"] = line
    sql = (
        f"SELECT {HIT_COLUMNS} FROM public.spectral_hits "
        + (f"WHERE {' AND '.join(where)} " if where else "")
        + "ORDER BY coalesce(prob, 0) DESC, snr DESC NULLS LAST, hit_id"
        + (" LIMIT :lim" if limit else "")
    )
    if limit:
        params["lim"] = int(limit)
    res = session.execute(text(sql), params)
    return rows_to_table(res.keys(), res.fetchall(), HIT_UNITS)


def spectra_table(*, session: Session, limit: int | None = 100, linked_only: bool = False) -> Table:
    """Rows of the ``spectra`` view."""
    sql = (
        "SELECT spectrum_id, survey, spec_key, ra, dec, z, spec_class, subclass, source_id, source_sep_arcsec, "
        "window_coverage, window_snr, pack, pack_row, file_path FROM public.spectra "
        + ("WHERE source_id IS NOT NULL " if linked_only else "")
        + "ORDER BY spectrum_id"
        + (" LIMIT :lim" if limit else "")
    )
    params: dict[str, Any] = {"lim": int(limit)} if limit else {}
    res = session.execute(text(sql), params)
    return rows_to_table(res.keys(), res.fetchall(), SPECTRA_UNITS)


def detectors_table(*, session: Session) -> Table:
    """Detector versions with the number of spectra each has scanned and the hits it found."""
    res = session.execute(
        text(
            """SELECT m.model_id, m.name, m.version, m.architecture, m.checkpoint_sha256,
                  (SELECT count(*) FROM lenscat.spectral_scans x WHERE x.model_id = m.model_id) AS scanned,
                  (SELECT count(*) FROM lenscat.spectral_hits h WHERE h.model_id = m.model_id) AS hits,
                  m.created_at
           FROM lenscat.model_versions m WHERE m.kind = 'detector' ORDER BY m.name, m.version"""
        )
    )
    return rows_to_table(res.keys(), res.fetchall(), {})


def hit_counts(model_id: int, *, session: Session) -> tuple[int, int]:
    """(hits, candidates without a veto) of one detector version."""
    row = session.execute(
        text("SELECT count(*), count(*) FILTER (WHERE is_candidate) FROM public.spectral_hits WHERE detector_id = :m"),
        {"m": int(model_id)},
    ).one()
    return int(row[0]), int(row[1])
