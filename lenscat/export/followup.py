"""Follow-up columns added to an exported candidate table: the lens model (parameters with calibrated 1-sigma
uncertainties, latest lensmodel version), the joint evidence, and, for a site and nights, the observability.

:func:`add_lens_model_columns` reads :func:`lenscat.modelling.service.latest_lens_models` in one query,
:func:`add_evidence_columns` the views of migration 0017, :func:`add_observability_columns` computes
:func:`lenscat.proposal.observability.observability` offline. Missing values are masked.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import astropy.units as u
import numpy as np
from astropy.coordinates import SkyCoord
from astropy.table import Column, MaskedColumn, Table
from sqlalchemy.orm import Session

from lenscat.evidence.service import joint_evidence
from lenscat.modelling.service import latest_lens_models
from lenscat.proposal.observability import observability
from lenscat.proposal.sites import Site

# column, attribute of LensModel, unit, description
_MODEL_COLUMNS: tuple[tuple[str, str, Any, str], ...] = (
    ("lm_theta_e", "theta_e", u.arcsec, "Einstein radius of the lens model (SIE)."),
    ("lm_q", "q", None, "Mass axis ratio b/a (dimensionless)."),
    ("lm_pa", "pa_deg", u.deg, "Position angle of the mass major axis, East of North."),
    ("lm_e1", "e1", None, "Ellipticity e1 = (1-q)/(1+q) cos 2phi, phi from East towards North (dimensionless)."),
    ("lm_e2", "e2", None, "Ellipticity e2 = (1-q)/(1+q) sin 2phi (dimensionless)."),
    ("lm_gamma1", "gamma1", None, "External shear gamma1 (dimensionless)."),
    ("lm_gamma2", "gamma2", None, "External shear gamma2 (dimensionless)."),
    ("lm_gamma_ext", "gamma_ext", None, "External shear strength (dimensionless)."),
    ("lm_center_x", "center_x", u.arcsec, "Lens centre East of the catalogue position."),
    ("lm_center_y", "center_y", u.arcsec, "Lens centre North of the catalogue position."),
    ("lm_source_x", "source_x", u.arcsec, "Unlensed source position East of the catalogue position."),
    ("lm_source_y", "source_y", u.arcsec, "Unlensed source position North of the catalogue position."),
    ("lm_arc_mag", "arc_mag", u.mag, "AB magnitude of the lensed light in lm_arc_band."),
)
_ERRORS = ("theta_e", "e1", "e2", "gamma1", "gamma2", "center_x", "center_y", "source_x", "source_y")
_EVIDENCE = ("evidence_score", "evidence_category", "grade_llr", "image_llr", "spectral_llr", "model_llr")


def _masked(values: list[float | None], name: str, unit: Any, description: str) -> MaskedColumn:
    missing = np.array([v is None for v in values], dtype=bool)
    data = np.array([np.nan if v is None else float(v) for v in values], dtype=np.float64)
    return MaskedColumn(data, mask=missing, name=name, unit=unit, description=description, fill_value=np.nan)


def add_lens_model_columns(table: Table, *, session: Session) -> Table:
    """Add the latest lens model of each row's ``source_id`` (``lm_*`` columns, ``*_err`` = calibrated 1 sigma)."""
    latest = latest_lens_models([int(s) for s in table["source_id"]], session=session)
    models = [latest.get(int(s)) for s in table["source_id"]]
    table["lens_model"] = Column(
        [m.lens_model or "" if m is not None else "" for m in models],
        dtype=str,
        description="Lens-model version name@version ('' when not modelled).",
    )
    for name, attr, unit, description in _MODEL_COLUMNS:
        vals = [None if m is None or getattr(m, attr) is None else float(getattr(m, attr)) for m in models]
        table[name] = _masked(vals, name, unit, description)
        if attr in _ERRORS:
            errs = [None if m is None else float(m.error(attr)) for m in models]
            unit_err = unit
            table[f"{name}_err"] = _masked(
                errs, f"{name}_err", unit_err, f"Calibrated 1-sigma uncertainty of {name} (68 % half-width)."
            )
    table["lm_arc_band"] = Column(
        [(m.arc_band or "") if m is not None else "" for m in models], dtype=str, description="Band of lm_arc_mag."
    )
    table["lm_vet_flags"] = Column(
        [" ".join(m.vet_flags) if m is not None else "" for m in models],
        dtype=str,
        description="Vetting rules the model failed, space separated ('' passed or no model).",
    )
    return table


def add_evidence_columns(table: Table, *, session: Session) -> Table:
    """Add the joint evidence (score, category and contributions, dex of odds) of each row's ``source_id``."""
    ev = joint_evidence(session=session, source_ids=[int(s) for s in table["source_id"]])
    by_id = {int(r["source_id"]): r for r in ev}
    for name in _EVIDENCE:
        src = "category" if name == "evidence_category" else name
        rows = [by_id.get(int(s)) for s in table["source_id"]]
        if name == "evidence_category":
            table[name] = Column(
                [str(r[src]) if r is not None else "" for r in rows], dtype=str, description=ev[src].description
            )
        else:
            table[name] = _masked(
                [float(r[src]) if r is not None else None for r in rows], name, None, ev[src].description
            )
    return table


def add_observability_columns(
    table: Table, site: Site, start: dt.date, end: dt.date, *, min_altitude: u.Quantity = 30 * u.deg
) -> Table:
    """Add the observability summary of each row (``obs_*``) from ``site`` over the evenings ``start``-``end``."""
    coords = SkyCoord(np.asarray(table["ra"], dtype=float) * u.deg, np.asarray(table["dec"], dtype=float) * u.deg)
    obs = observability(coords, site, start, end, min_altitude=min_altitude)
    summ = obs.summary()
    table["obs_hours_total"] = Column(summ["obs_hours_total"], unit=u.hour, description=obs._hours_doc() + " Summed.")
    table["obs_nights"] = Column(summ["obs_nights"], dtype=np.int64, description="Nights with at least 1 h (count).")
    best = summ["obs_best_airmass"]
    table["obs_best_airmass"] = _masked(
        [None if not np.isfinite(b) else float(b) for b in best], "obs_best_airmass", None, "Lowest airmass sec(z)."
    )
    table["obs_best_night"] = Column(summ["obs_best_night"], dtype=str, description="Evening date of that airmass.")
    table["obs_moon_sep"] = Column(summ["obs_moon_sep"], unit=u.deg, description="Moon separation that night.")
    table["obs_moon_illum"] = Column(summ["obs_moon_illumination"], description="Moon illuminated fraction, 0-1.")
    table.meta["OBSSITE"] = site.label
    table.meta["OBSDATES"] = f"{start.isoformat()} to {end.isoformat()} (evenings)"
    table.meta["OBSMINAL"] = obs.min_altitude_deg
    return table
