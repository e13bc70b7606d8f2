"""Joint-evidence columns, their units and descriptions, the categories and the documented weights.

The ranking itself is computed in SQL (the views ``public.joint_evidence`` and
``lenscat.joint_evidence_all``, migration 0017); this module describes it for the tables, the web
page and the documentation. Contributions are in dex of odds (log10 of a likelihood-ratio-like
factor): +1 means "ten times more likely a lens than before this piece of evidence".
"""

from __future__ import annotations

from typing import Any

import astropy.units as u

CATEGORIES: tuple[str, ...] = (
    "spectroscopically supported",
    "known lens",
    "vetoed by model",
    "rejected by graders",
    "imaging + model",
    "imaging only",
)
"""Evidence categories, in the order of precedence the view applies (the first that applies wins)."""

CONTRIBUTIONS: tuple[str, ...] = ("grade_llr", "image_llr", "spectral_llr", "model_llr", "literature_llr")
"""The columns whose sum is ``evidence_score``."""

SUPPORT_MARGIN = 0.05
"""A line hit supports a lens when ``z_source > z_lens + SUPPORT_MARGIN`` (dimensionless)."""

WEIGHTS: dict[str, str] = {
    "grade_llr": "consensus grade A +2, B +1, C 0, N -2, ungraded 0",
    "image_llr": "0.5 log10(n_scored / (score_rank + 1)), clipped to [0, 2]: half the largest odds factor "
    "a classifier that ranks the source in its top fraction can give; a low score never counts against",
    "spectral_llr": f"+2 for a vetted Lyman-alpha or [OII] hit with z_source > z_lens + {SUPPORT_MARGIN}, "
    "+2.5 for two or more",
    "model_llr": "lens model passed vetting with theta_E >= 0.5 arcsec +0.5, passed with a smaller theta_E 0, "
    "failed vetting -1.5, no model 0",
    "literature_llr": "literature lens confirmed +3 (grade A/confirmed/definite/sure or a source redshift), "
    "known +1, new 0",
}
"""The weights of each contribution, as the view computes them (dex of odds)."""

# name, unit, description
COLUMNS: tuple[tuple[str, Any, str], ...] = (
    ("source_id", None, "lenscat source id."),
    ("survey", None, "Survey name."),
    ("objid", None, "Survey object id."),
    ("ra", u.deg, "Right ascension, ICRS."),
    ("dec", u.deg, "Declination, ICRS."),
    ("consensus_grade", None, "Consensus grade A/B/C/N ('' when ungraded)."),
    ("mean_grade", None, "Mean grade, A=3 B=2 C=1 N=0 (dimensionless)."),
    ("n_votes", None, "Non-skip votes (count)."),
    ("image_score", None, "Best classifier score over every classifier version, 0-1 (dimensionless)."),
    ("image_classifier", None, "Classifier name@version of image_score."),
    ("score_rank", None, "Sources that version scored strictly higher (count)."),
    ("n_scored", None, "Sources that version scored (count)."),
    ("score_percentile", None, "Percentile of image_score among the version's scores (percent, 0-100)."),
    ("n_supporting_hits", None, f"Vetted line hits with z_source > z_lens + {SUPPORT_MARGIN} (count)."),
    ("best_hit_line", None, "Line of the best supporting hit: lya or oii."),
    ("best_hit_z_source", None, "Source redshift of that hit (dimensionless)."),
    ("best_hit_z_lens", None, "Redshift of the galaxy whose spectrum holds the hit (dimensionless)."),
    ("best_hit_snr", None, "Detection S/N of that hit (dimensionless)."),
    ("lens_model", None, "Latest lens-model version name@version."),
    ("theta_e", u.arcsec, "Einstein radius of the model."),
    ("theta_e_err", u.arcsec, "Calibrated 1-sigma uncertainty of theta_e."),
    ("arc_mag", u.mag, "AB magnitude of the lensed light in arc_band."),
    ("arc_band", None, "Band of arc_mag."),
    ("passed_vetting", None, "The model passed every vetting rule ('' without a model)."),
    ("vet_flags", None, "Vetting rules the model failed, space separated."),
    ("literature_status", None, "confirmed, known or new."),
    ("literature_names", None, "Matched literature lenses, ' | ' separated."),
    ("grade_llr", None, f"Grade contribution (dex of odds): {WEIGHTS['grade_llr']}."),
    ("image_llr", None, f"Image contribution (dex of odds): {WEIGHTS['image_llr']}."),
    ("spectral_llr", None, f"Spectral contribution (dex of odds): {WEIGHTS['spectral_llr']}."),
    ("model_llr", None, f"Lens-model contribution (dex of odds): {WEIGHTS['model_llr']}."),
    ("literature_llr", None, f"Literature contribution (dex of odds): {WEIGHTS['literature_llr']}."),
    ("evidence_score", None, "Ranking score, the sum of the five contributions (dex of odds)."),
    ("category", None, "Evidence category: " + ", ".join(CATEGORIES) + " (first that applies)."),
)
"""Columns of :func:`lenscat.evidence.service.joint_evidence`, in order."""

COLUMN_NAMES: tuple[str, ...] = tuple(c[0] for c in COLUMNS)
UNITS: dict[str, Any] = {c[0]: c[1] for c in COLUMNS if c[1] is not None}
DESCRIPTIONS: dict[str, str] = {c[0]: c[2] for c in COLUMNS}
