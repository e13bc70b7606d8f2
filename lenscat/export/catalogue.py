"""The candidate catalogue for follow-up: tables, files, image galleries and a summary by region.

:func:`candidate_table` reads ``public.candidates`` (graded sources with their consensus grade) for
a selection of consensus grades and surveys, and adds what a follow-up proposal or a paper table
needs: an IAU-style name, sexagesimal coordinates, the survey region, and the provenance of the
score (classifier version id, its encoder ``name@version``, the sha256 of its training set and of
its checkpoint). Every column carries a unit where it has one and a description; missing values
are masked (floats hold NaN underneath, strings are ``''``), so the table survives every format
:func:`write_candidates` writes (FITS, VOTable, ECSV, CSV: the table of :mod:`lenscat.export.formats`).

Files are written to a temporary file in the destination directory and renamed into place, so a
reader never sees a half-written file and an interrupted export leaves the old one intact.
:func:`export_bytes` returns the same bytes for a web download.

Grades are A (sure lens, 3 grade points), B (probable, 2), C (possible, 1) and N (not a lens, 0);
the consensus of a source is the mean of each grader's latest non-skip grade, rounded to a letter
(>= 2.5 A, >= 1.5 B, >= 0.5 C, else N; see ``public.grade_consensus``).

Survey regions (:func:`region_of`, :func:`summary_table`): Stein et al. (2022, Table 1) count their
candidates per DECaLS region; lenscat defines a region as the survey plus its Galactic hemisphere,
``NGC`` (Galactic latitude b >= 0) or ``SGC`` (b < 0), which separates the northern and southern
Galactic caps of any survey, whatever its footprint.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterable, Sequence
from typing import Any

import astropy.units as u
import numpy as np
from astropy.table import Column, MaskedColumn, Table
from sqlalchemy import text
from sqlalchemy.orm import Session

from lenscat import __version__
from lenscat.catalogue.surveys import get_survey, real_source_sql
from lenscat.errors import LenscatError
from lenscat.export.formats import (
    EXPORT_FORMATS,
    FILE_SUFFIXES,
    MEDIA_TYPES,
    export_bytes,
    export_format,
    write_candidates,
)
from lenscat.export.gallery import GalleryResult, write_gallery
from lenscat.grading.grades import GRADE_NAMES, GRADE_POINTS, parse_consensus_grades
from lenscat.registry.versions import get_model
from lenscat.sky.coords import iau_names

__all__ = [
    "COLUMN_NAMES",
    "EXPORT_FORMATS",
    "FILE_SUFFIXES",
    "GRADE_DEFINITIONS",
    "GRADE_LETTERS",
    "GalleryResult",
    "MEDIA_TYPES",
    "candidate_table",
    "export_bytes",
    "export_format",
    "region_of",
    "summary_table",
    "write_candidates",
    "write_gallery",
]

GRADE_LETTERS: tuple[str, ...] = tuple(GRADE_POINTS)
"""Consensus grades, best first (the graded letters of :mod:`lenscat.grading.grades`, without skip)."""

GRADE_DEFINITIONS: dict[str, str] = {
    g: f"{GRADE_NAMES[g]} ({p} grade point{'' if p == 1 else 's'})" for g, p in GRADE_POINTS.items()
}

REGION_DEFINITION = "survey + Galactic hemisphere: NGC (Galactic latitude b >= 0) or SGC (b < 0)"

# name, kind ('i' int64, 'f8' / 'f4' float64 / float32 as in the database, 'U' string), unit, nullable,
# description
_COLUMNS: tuple[tuple[str, str, Any, bool, str], ...] = (
    ("source_id", "i", None, False, "lenscat source id (lenscat.sources)."),
    ("name", "U", None, False, "IAU-style designation from the position, JHHMMSS.ss+DDMMSS.s (truncated)."),
    ("survey", "U", None, False, "Survey name."),
    ("objid", "U", None, False, "Survey object id."),
    ("region", "U", None, False, "Galactic hemisphere of the position: NGC (b >= 0) or SGC (b < 0)."),
    ("ra", "f8", u.deg, False, "Right ascension, ICRS."),
    ("dec", "f8", u.deg, False, "Declination, ICRS."),
    ("ra_hms", "U", None, False, "Right ascension, ICRS, sexagesimal hours HH:MM:SS.sss."),
    ("dec_dms", "U", None, False, "Declination, ICRS, sexagesimal degrees +DD:MM:SS.ss."),
    ("mag_g", "f4", u.mag, True, "g magnitude (AB)."),
    ("mag_r", "f4", u.mag, True, "r magnitude (AB)."),
    ("mag_i", "f4", u.mag, True, "i magnitude (AB)."),
    ("mag_z", "f4", u.mag, True, "z magnitude (AB)."),
    ("ebv", "f4", u.mag, True, "Galactic reddening E(B-V)."),
    ("z_spec", "f4", None, True, "Spectroscopic redshift of the source (dimensionless)."),
    ("z_phot", "f4", None, True, "Photometric redshift of the source (dimensionless)."),
    (
        "consensus_grade",
        "U",
        None,
        False,
        "Consensus grade: A sure, B probable, C possible lens, N not a lens (mean_grade rounded).",
    ),
    ("mean_grade", "f4", None, False, "Mean of each grader's latest non-skip grade, A=3 B=2 C=1 N=0 (dimensionless)."),
    ("n_votes", "i", None, False, "Graders whose latest grade of the source is not a skip (count)."),
    ("disagreement", "i", None, False, "Largest minus smallest grade points among the votes (dimensionless)."),
    ("grades", "U", None, False, "Each grader's latest grade, 'name:GRADE', space separated."),
    (
        "best_score",
        "f4",
        None,
        True,
        "Classifier score in [0, 1], higher = more lens-like: the best over every classifier version, "
        "or that of the selected classifier (dimensionless).",
    ),
    ("best_classifier", "U", None, False, "Classifier name@version that gave best_score ('' when unscored)."),
    ("classifier_id", "i", None, True, "model_versions id of that classifier version (provenance)."),
    (
        "classifier_architecture",
        "U",
        None,
        False,
        "Architecture of that classifier: linear, finetune, cnn, radial, ensemble or anomaly.",
    ),
    (
        "classifier_encoder",
        "U",
        None,
        False,
        "Encoder name@version the classifier is built on ('' for a CNN trained from scratch).",
    ),
    (
        "classifier_training_set_sha256",
        "U",
        None,
        False,
        "sha256 of the classifier's training and validation sets (provenance).",
    ),
    ("classifier_checkpoint_sha256", "U", None, False, "sha256 of the classifier's checkpoint file (provenance)."),
    ("literature_status", "U", None, False, "'known' when cross-matched to a literature lens, else 'new'."),
    ("literature_names", "U", None, False, "Names of the matched literature lenses, ' | ' separated."),
    ("literature_catalogs", "U", None, False, "Literature catalogues of those lenses, ' | ' separated."),
    (
        "n_spectral_hits",
        "i",
        None,
        False,
        "Spectral line hits passing every veto in spectra linked to the source (count).",
    ),
    ("best_hit_z_source", "f4", None, True, "z_source of the highest-S/N such hit (dimensionless)."),
    ("last_graded_at", "U", None, False, "Latest grade of the source, ISO 8601 UTC."),
)
COLUMN_NAMES = tuple(c[0] for c in _COLUMNS)
"""Columns of :func:`candidate_table`, in order."""

_CANDIDATES_SQL = """
    SELECT c.source_id, c.survey, c.objid, c.ra, c.dec, c.mag_g, c.mag_r, c.mag_i, c.mag_z, c.ebv,
           c.z_spec, c.z_phot, c.consensus_grade, c.mean_grade, c.n_votes, c.disagreement, c.grades,
           sc.score AS best_score, sc.classifier AS best_classifier, sc.model_id AS classifier_id,
           sc.architecture AS classifier_architecture, sc.encoder AS classifier_encoder,
           sc.training_set_sha256 AS classifier_training_set_sha256,
           sc.checkpoint_sha256 AS classifier_checkpoint_sha256,
           c.literature_status, c.literature_names, c.literature_catalogs, c.n_spectral_hits,
           c.best_hit_z_source, c.last_graded_at
    FROM public.candidates c
    LEFT JOIN LATERAL (
        SELECT s.score, m.model_id, m.name || '@' || m.version AS classifier, m.architecture,
               p.name || '@' || p.version AS encoder, m.training_set_sha256, m.checkpoint_sha256
        FROM lenscat.scores s
        JOIN lenscat.model_versions m ON m.model_id = s.model_id
        LEFT JOIN lenscat.model_versions p ON p.model_id = m.parent_model_id
        WHERE s.source_id = c.source_id {model_filter}
        ORDER BY s.score DESC, s.model_id DESC LIMIT 1
    ) sc ON true
    WHERE c.consensus_grade = ANY(:grades) AND c.n_votes >= :min_votes {survey_filter}
    ORDER BY array_position(CAST(:order AS text[]), c.consensus_grade), c.mean_grade DESC,
             sc.score DESC NULLS LAST, c.source_id
"""


# ------------------------------------------------------------------------------------ selection
def region_of(ra_deg: np.ndarray | Sequence[float], dec_deg: np.ndarray | Sequence[float]) -> np.ndarray:
    """Galactic hemisphere of ICRS positions [deg]: ``'NGC'`` (b >= 0) or ``'SGC'`` (b < 0)."""
    from astropy.coordinates import SkyCoord

    ra = np.asarray(ra_deg, dtype=float)
    if ra.size == 0:
        return np.array([], dtype="U3")
    b = SkyCoord(ra * u.deg, np.asarray(dec_deg, dtype=float) * u.deg, frame="icrs").galactic.b.deg
    return np.where(np.asarray(b) >= 0, "NGC", "SGC").astype("U3")


def _sexagesimal(ra: np.ndarray, dec: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from astropy.coordinates import SkyCoord

    if ra.size == 0:
        return np.array([], dtype="U12"), np.array([], dtype="U12")
    c = SkyCoord(ra * u.deg, dec * u.deg, frame="icrs")
    ra_s = c.ra.to_string(unit=u.hourangle, sep=":", precision=3, pad=True)
    dec_s = c.dec.to_string(unit=u.deg, sep=":", precision=2, pad=True, alwayssign=True)
    return np.atleast_1d(np.asarray(ra_s, dtype=str)), np.atleast_1d(np.asarray(dec_s, dtype=str))


def _iso_utc(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, dt.datetime):
        when: dt.datetime = value
        if when.tzinfo is not None:
            when = when.astimezone(dt.UTC).replace(tzinfo=None)
        return when.isoformat(timespec="seconds") + "Z"
    return str(value)


def _column(name: str, kind: str, unit: Any, nullable: bool, description: str, values: list[Any]) -> Column:
    if kind == "U":
        strings = ["" if v is None else str(v) for v in values]
        width = max([1] + [len(s) for s in strings])
        return Column(np.array(strings, dtype=f"U{width}"), name=name, unit=unit, description=description)
    missing = np.array([v is None or (isinstance(v, float) and math.isnan(v)) for v in values], dtype=bool)
    if kind.startswith("f"):
        data = np.array(
            [np.nan if m else float(v) for v, m in zip(values, missing, strict=True)],
            dtype=np.float32 if kind == "f4" else np.float64,
        )
    else:
        data = np.array([0 if m else int(v) for v, m in zip(values, missing, strict=True)], dtype=np.int64)
    if not nullable:
        return Column(data, name=name, unit=unit, description=description)
    return MaskedColumn(
        data,
        mask=missing,
        name=name,
        unit=unit,
        description=description,
        fill_value=np.nan if kind.startswith("f") else 0,
    )


def candidate_table(
    *,
    session: Session,
    grades: str | Iterable[str] = ("A", "B"),
    surveys: Sequence[str] | None = None,
    min_votes: int = 1,
    classifier: str | int | None = None,
) -> Table:
    """The candidate catalogue: graded sources with the chosen consensus grades, best first.

    Parameters
    ----------
    session
        Database session (read only).
    grades
        Consensus grades to keep: letters or ``'A,B'`` (A sure, B probable, C possible lens, N not a lens).
    surveys
        Keep only these surveys (default: all real surveys; injection sets only when named).
    min_votes
        Keep sources with at least this many non-skip votes.
    classifier
        Take ``best_score`` and the provenance columns from this classifier (``NAME`` = latest
        version, ``NAME@VERSION`` or a model id); default: each source's highest score over every
        classifier version.

    Returns
    -------
    astropy.table.Table
        Columns :data:`COLUMN_NAMES` with units (``ra``, ``dec`` [deg], magnitudes and ``ebv`` [mag])
        and descriptions; nullable columns are masked. Sorted by consensus grade (A first), then
        ``mean_grade`` and ``best_score``, both descending. ``meta`` holds ``description``,
        ``EXPORTED`` (UTC), ``LENSCAT`` (version), the selection (``GRADES``, ``SURVEYS``,
        ``MINVOTES``, ``CLASSIF``, ``SELECT``), the grade definitions (``GRADE_A`` ... ``GRADE_N``),
        the consensus rule (``CONSENS``) and the region definition (``REGION``). An empty selection
        gives an empty table with the same columns.

    Raises
    ------
    LenscatError
        For an unknown grade, survey or classifier, or ``min_votes`` below 1.
    """
    letters = parse_consensus_grades(grades)
    if int(min_votes) < 1:
        raise LenscatError(f"min_votes must be at least 1, not {min_votes}")
    survey_names = [get_survey(s, session=session).name for s in (surveys or [])]
    model = get_model("classifier", classifier, session=session) if classifier is not None else None
    params: dict[str, Any] = {"grades": list(letters), "min_votes": int(min_votes), "order": list(GRADE_LETTERS)}
    if model is not None:
        params["model_id"] = model.model_id
    if survey_names:
        params["surveys"] = survey_names
    # injection sets (simulated lenses on survey galaxies) are exported only when named
    real = (
        "AND EXISTS (SELECT 1 FROM lenscat.sources rs WHERE rs.source_id = c.source_id "
        f"AND {real_source_sql('rs.survey_id')})"
    )
    sql = _CANDIDATES_SQL.format(
        model_filter="AND s.model_id = :model_id" if model is not None else "",
        survey_filter="AND c.survey = ANY(:surveys)" if survey_names else real,
    )
    result = session.execute(text(sql), params)
    keys = list(result.keys())
    rows = [dict(zip(keys, r, strict=True)) for r in result.fetchall()]
    ra = np.array([float(r["ra"]) for r in rows], dtype=np.float64)
    dec = np.array([float(r["dec"]) for r in rows], dtype=np.float64)
    ra_hms, dec_dms = _sexagesimal(ra, dec)
    derived: dict[str, list[Any]] = {
        "name": iau_names(ra, dec) if rows else [],
        "region": region_of(ra, dec).tolist(),
        "ra_hms": ra_hms.tolist(),
        "dec_dms": dec_dms.tolist(),
        "last_graded_at": [_iso_utc(r["last_graded_at"]) for r in rows],
    }
    table = Table()
    for name, kind, unit, nullable, description in _COLUMNS:
        values = derived[name] if name in derived else [r[name] for r in rows]
        table.add_column(_column(name, kind, unit, nullable, description, values))
    now = dt.datetime.now(dt.UTC).replace(microsecond=0, tzinfo=None).isoformat() + "Z"
    clf = (
        f"{model.label} (model_id {model.model_id})"
        if model is not None
        else "best score over every classifier version"
    )
    select = f"consensus_grade IN ({', '.join(letters)}) AND n_votes >= {int(min_votes)}" + (
        f" AND survey IN ({', '.join(survey_names)})" if survey_names else ""
    )
    table.meta["description"] = (
        f"lenscat candidate catalogue for follow-up: {len(table)} graded sources with consensus grade "
        f"{' or '.join(letters)} and at least {int(min_votes)} vote(s)"
        + (f" in {', '.join(survey_names)}" if survey_names else "")
        + f"; scores: {clf}; exported {now} by lenscat {__version__}. Grades: "
        + "; ".join(f"{k} = {v}" for k, v in GRADE_DEFINITIONS.items())
        + "."
    )
    table.meta["EXPORTED"] = now
    table.meta["LENSCAT"] = __version__
    table.meta["GRADES"] = ",".join(letters)
    table.meta["SURVEYS"] = ",".join(survey_names) if survey_names else "all"
    table.meta["MINVOTES"] = int(min_votes)
    table.meta["CLASSIF"] = clf
    table.meta["SELECT"] = select
    for k, v in GRADE_DEFINITIONS.items():
        table.meta[f"GRADE_{k}"] = v
    table.meta["CONSENS"] = (
        "mean of each grader's latest non-skip grade (A=3, B=2, C=1, N=0), "
        "rounded: >= 2.5 A, >= 1.5 B, >= 0.5 C, else N"
    )
    table.meta["REGION"] = REGION_DEFINITION
    return table


# ------------------------------------------------------------------------------------ summary
def summary_table(
    table: Table | None = None,
    *,
    session: Session | None = None,
    grades: str | Iterable[str] = GRADE_LETTERS,
    surveys: Sequence[str] | None = None,
    min_votes: int = 1,
) -> Table:
    """Candidates counted by consensus grade and survey region, like Stein et al. (2022) Table 1.

    Parameters
    ----------
    table
        A candidate table (:func:`candidate_table`); when None it is read with ``session``,
        ``grades`` (default every consensus grade), ``surveys`` and ``min_votes``.
    session, grades, surveys, min_votes
        The selection when ``table`` is None.

    Returns
    -------
    astropy.table.Table
        Columns ``survey``, ``region`` (``NGC``: Galactic latitude b >= 0, ``SGC``: b < 0), counts
        ``A``, ``B``, ``C``, ``N``, ``total``, ``new`` and ``known`` (not / cross-matched to a
        literature lens, over every grade of the row). One row per survey and region, then one
        ``(survey, 'all')`` row per survey seen in more than one region, then ``('all', 'all')``.
    """
    if table is None:
        if session is None:
            raise LenscatError("summary_table needs a candidate table or a session")
        table = candidate_table(session=session, grades=grades, surveys=surveys, min_votes=min_votes)
    for need in ("survey", "consensus_grade", "ra", "dec"):
        if need not in table.colnames:
            raise LenscatError(f"summary_table needs a candidate table; column {need!r} is missing")
    n = len(table)
    survey = np.asarray(table["survey"], dtype=str) if n else np.array([], dtype=str)
    region = (
        np.asarray(table["region"], dtype=str)
        if "region" in table.colnames
        else region_of(np.asarray(table["ra"], dtype=float), np.asarray(table["dec"], dtype=float))
    )
    grade = np.asarray(table["consensus_grade"], dtype=str) if n else np.array([], dtype=str)
    status = (
        np.asarray(table["literature_status"], dtype=str)
        if "literature_status" in table.colnames
        else np.full(n, "new")
    )

    def counts(sel: np.ndarray) -> list[int]:
        return [int(np.sum(sel & (grade == g))) for g in GRADE_LETTERS] + [
            int(np.sum(sel)),
            int(np.sum(sel & (status == "new"))),
            int(np.sum(sel & (status == "known"))),
        ]

    rows: list[tuple[str, str, list[int]]] = []
    names = sorted(set(survey.tolist()))
    for s in names:
        for r in ("NGC", "SGC"):
            sel = (survey == s) & (region == r)
            if sel.any():
                rows.append((s, r, counts(sel)))
    for s in names:
        if len(set(region[survey == s].tolist())) > 1:
            rows.append((s, "all", counts(survey == s)))
    rows.append(("all", "all", counts(np.ones(n, dtype=bool))))
    out = Table()
    out["survey"] = Column(np.array([r[0] for r in rows], dtype=str), description="Survey name ('all' = every survey).")
    out["region"] = Column(
        np.array([r[1] for r in rows], dtype=str), description="NGC (Galactic b >= 0), SGC (b < 0) or all."
    )
    labels = [*GRADE_LETTERS, "total", "new", "known"]
    descr = {
        **{g: f"Consensus grade {g}: {GRADE_DEFINITIONS[g]} (count)." for g in GRADE_LETTERS},
        "total": "Candidates of the row (count).",
        "new": "Not cross-matched to any literature lens (count).",
        "known": "Cross-matched to a literature lens (count).",
    }
    for j, lab in enumerate(labels):
        out[lab] = Column(np.array([r[2][j] for r in rows], dtype=np.int64), description=descr[lab])
    out.meta["description"] = (
        f"Candidates by consensus grade and survey region ({REGION_DEFINITION}); "
        f"selection: {table.meta.get('SELECT', 'as given')}."
    )
    out.meta["REGION"] = REGION_DEFINITION
    return out


def add_ucds(table: Table, *, session: Session) -> Table:
    """Give each column the UCD (IVOA UCD1+) that the TAP service publishes for a column of that name.

    The one answer is TAP_SCHEMA.columns (:func:`lenscat.tap.service.column_meta`); an ``lm_`` column
    takes its lens-model parameter's UCD. VOTable and ECSV exports write them (``column.info.meta``);
    columns without a published namesake keep none. Returns ``table`` (changed in place).
    """
    from lenscat.tap.service import column_meta

    ucds: dict[str, str] = {}
    for c in column_meta(session=session):
        if c.ucd and not c.table_name.startswith("tap_schema"):
            ucds.setdefault(c.column_name, c.ucd)
    for name in table.colnames:
        ucd = ucds.get(name) or (ucds.get(name[3:]) if name.startswith("lm_") else None)
        if ucd:
            table[name].info.meta = {**(table[name].info.meta or {}), "ucd": ucd}
    return table
