"""The candidate catalogue for follow-up: tables, files, image galleries and a summary by region.

:func:`candidate_table` reads ``public.candidates`` (graded sources with their consensus grade) for
a selection of consensus grades and surveys, and adds what a follow-up proposal or a paper table
needs: an IAU-style name, sexagesimal coordinates, the survey region, and the provenance of the
score (classifier version id, its encoder ``name@version``, the sha256 of its training set and of
its checkpoint). Every column carries a unit where it has one and a description; missing values
are masked (floats hold NaN underneath, strings are ``''``), so the table survives every format
:func:`write_candidates` writes:

* ``fits`` (``.fits``, ``.fit``, ``.fts``, optionally ``.gz``): units and descriptions kept,
  table metadata in the header; strings are ASCII (other characters are transliterated).
* ``votable`` (``.xml``, ``.vot``, ``.votable``): units and descriptions kept; the metadata is
  written as ``INFO`` elements and summarised in the table ``DESCRIPTION``.
* ``ecsv`` (``.ecsv``): units, descriptions and metadata kept.
* ``csv`` (``.csv``): values only (one header line of column names), for spreadsheets.

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

import contextlib
import datetime as dt
import math
import os
import tempfile
import unicodedata
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import astropy.units as u
import numpy as np
from astropy.table import Column, MaskedColumn, Table
from sqlalchemy import text
from sqlalchemy.orm import Session

from lenscat.errors import LenscatError

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
    "parse_export_grades",
    "region_of",
    "summary_table",
    "write_candidates",
    "write_gallery",
]

GRADE_LETTERS = ("A", "B", "C", "N")
"""Consensus grades, best first."""

GRADE_DEFINITIONS = {
    "A": "sure lens (3 grade points)",
    "B": "probable lens (2 grade points)",
    "C": "possible lens (1 grade point)",
    "N": "not a lens (0 grade points)",
}

EXPORT_FORMATS = {"fits": "fits", "votable": "votable", "ecsv": "ascii.ecsv", "csv": "ascii.csv"}
"""Export format name -> astropy format."""

MEDIA_TYPES = {
    "fits": "application/fits",
    "votable": "application/x-votable+xml",
    "ecsv": "text/x-ecsv",
    "csv": "text/csv",
}
"""Media type of each export format (for a web download)."""

FILE_SUFFIXES = {"fits": ".fits", "votable": ".vot", "ecsv": ".ecsv", "csv": ".csv"}
"""The usual file name suffix of each export format."""

_SUFFIX_FORMATS = (
    (".fits.gz", "fits"),
    (".fit.gz", "fits"),
    (".fts.gz", "fits"),
    (".fits", "fits"),
    (".fit", "fits"),
    (".fts", "fits"),
    (".votable", "votable"),
    (".vot", "votable"),
    (".xml", "votable"),
    (".ecsv", "ecsv"),
    (".csv", "csv"),
)

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
def parse_export_grades(grades: str | Iterable[str]) -> tuple[str, ...]:
    """Consensus grades to export, best first, from ``'A,B'`` or a sequence of letters.

    Raises
    ------
    LenscatError
        For an unknown grade, a skip (S is never a consensus grade) or an empty selection.
    """
    from lenscat.grading.grades import parse_grade

    items = [g.strip() for g in grades.split(",")] if isinstance(grades, str) else [str(g).strip() for g in grades]
    items = [g for g in items if g]
    if not items:
        raise LenscatError("no grades given; expected some of A, B, C, N (e.g. --grades A,B)")
    chosen = set()
    for g in items:
        try:
            letter = parse_grade(g)
        except LenscatError:
            raise LenscatError(
                f"unknown grade {g!r}; expected A (sure lens), B (probable), C (possible) "
                "or N (not a lens), e.g. --grades A,B"
            ) from None
        if letter == "S":
            raise LenscatError(f"grade {g!r} (skip) is never a consensus grade; expected A, B, C or N")
        chosen.add(letter)
    return tuple(g for g in GRADE_LETTERS if g in chosen)


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
        if value.tzinfo is not None:
            value = value.astimezone(dt.UTC).replace(tzinfo=None)
        return value.isoformat(timespec="seconds") + "Z"
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
    from lenscat import __version__
    from lenscat.catalogue.surveys import get_survey, real_source_sql
    from lenscat.registry.versions import get_model
    from lenscat.sky.coords import iau_names

    letters = parse_export_grades(grades)
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
    real = f"AND EXISTS (SELECT 1 FROM lenscat.sources rs WHERE rs.source_id = c.source_id AND {real_source_sql('rs.survey_id')})"
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


# ------------------------------------------------------------------------------------ files
def export_format(path: str | Path, fmt: str | None = None) -> str:
    """The export format (``fits``, ``votable``, ``ecsv``, ``csv``) for ``path`` and an optional ``fmt``.

    Raises
    ------
    LenscatError
        For an unknown format, a format the file name's extension contradicts, or (without
        ``fmt``) an extension that names no format.
    """
    name = Path(path).name.lower()
    by_suffix = next((f for sfx, f in _SUFFIX_FORMATS if name.endswith(sfx)), None)
    if fmt is not None:
        key = fmt.lower()
        if key not in EXPORT_FORMATS:
            raise LenscatError(f"unknown export format {fmt!r}; expected {', '.join(EXPORT_FORMATS)}")
        if by_suffix is not None and by_suffix != key:
            raise LenscatError(
                f"{path}: the extension says {by_suffix} but the format is {key}; "
                f"use a {FILE_SUFFIXES[key]} file name or --format {by_suffix}"
            )
        return key
    if by_suffix is None:
        raise LenscatError(
            f"{path}: cannot tell the format from the extension; use .fits, .vot/.xml, .ecsv "
            "or .csv, or give the format (--format fits|votable|ecsv|csv)"
        )
    return by_suffix


def _ascii_only(table: Table) -> Table:
    """A copy whose string columns hold only ASCII (FITS cannot store other characters)."""
    out = table.copy(copy_data=False)
    for name in out.colnames:
        col = out[name]
        if col.dtype.kind != "U" or len(col) == 0:
            continue
        values = [str(v) for v in np.asarray(col)]
        if all(v.isascii() for v in values):
            continue
        fixed = [
            unicodedata.normalize("NFKD", v).encode("ascii", "ignore").decode("ascii") if not v.isascii() else v
            for v in values
        ]
        width = max([1] + [len(v) for v in fixed])
        new = Column(np.array(fixed, dtype=f"U{width}"), name=name, unit=col.unit, description=col.description)
        out.replace_column(name, new)
    return out


def _float32_as_written(table: Table) -> Table:
    """A copy whose float32 columns print their shortest round-trip form (0.95, not 0.949999988)."""
    out = table.copy(copy_data=False)
    for name in out.colnames:
        if out[name].dtype == np.float32 and out[name].info.format is None:
            out[name].info.format = _float32_text
    return out


def _float32_text(value: Any) -> str:
    return str(np.float32(value))


def _write_fits(table: Table, path: str) -> None:
    from astropy.io.fits.verify import VerifyWarning

    with warnings.catch_warnings():
        # 'description' is longer than 8 characters: written (and read back) as a HIERARCH card
        warnings.filterwarnings(
            "ignore", message=r"Keyword name .* is greater than 8 characters", category=VerifyWarning
        )
        _ascii_only(table).write(path, format="fits", overwrite=True)


def _write_votable(table: Table, path: str) -> None:
    from astropy.io.votable import from_table, writeto
    from astropy.io.votable.tree import Info

    vot = from_table(table)
    resource = vot.resources[0]
    for key, value in table.meta.items():
        if key != "description" and isinstance(value, str | int | float):
            resource.infos.append(Info(name=str(key), value=str(value)))
    writeto(vot, path)


def write_candidates(table: Table, path: str | Path, fmt: str | None = None) -> Path:
    """Write a candidate table as FITS, VOTable, ECSV or CSV, replacing ``path`` atomically.

    Parameters
    ----------
    table
        Usually from :func:`candidate_table` (any astropy Table without object columns works).
    path
        Output file; its directory is created if needed. An existing file is replaced only once
        the new one is completely written (temporary file in the same directory, then a rename).
    fmt
        ``'fits'``, ``'votable'``, ``'ecsv'`` or ``'csv'``; default from the extension (``.fits``,
        ``.fits.gz``, ``.fit``, ``.xml``, ``.vot``, ``.votable``, ``.ecsv``, ``.csv``). A ``.gz``
        FITS name is gzip-compressed.

    Returns
    -------
    Path
        The file written.

    Raises
    ------
    LenscatError
        When the format is unknown or contradicts the extension, or the file cannot be written.
    """
    key = export_format(path, fmt)
    dest = Path(path).expanduser()
    name = dest.name.lower()
    suffix = next((sfx for sfx, f in _SUFFIX_FORMATS if name.endswith(sfx)), FILE_SUFFIXES[key])
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        mode = dest.stat().st_mode & 0o777 if dest.exists() else 0o644
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=f".part{suffix}")
        os.close(fd)
    except OSError as exc:
        raise LenscatError(f"{dest}: cannot write here ({exc.strerror or exc})") from exc
    try:
        if key == "fits":
            _write_fits(table, tmp)
        elif key == "votable":
            _write_votable(table, tmp)
        elif key == "csv":
            _float32_as_written(table).write(tmp, format="ascii.csv", overwrite=True)
        else:
            table.write(tmp, format=EXPORT_FORMATS[key], overwrite=True)
        os.chmod(tmp, mode)
        os.replace(tmp, dest)
    except OSError as exc:
        raise LenscatError(f"{dest}: cannot write the {key} file ({exc.strerror or exc})") from exc
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    return dest


def export_bytes(table: Table, fmt: str) -> bytes:
    """The bytes :func:`write_candidates` would write in ``fmt`` (for a web download).

    See :data:`MEDIA_TYPES` and :data:`FILE_SUFFIXES` for the response headers.
    """
    key = export_format(f"candidates{FILE_SUFFIXES.get(str(fmt).lower(), '')}", fmt)
    with tempfile.TemporaryDirectory(prefix="lenscat-export-") as d:
        p = write_candidates(table, Path(d) / f"candidates{FILE_SUFFIXES[key]}", key)
        return p.read_bytes()


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


# ------------------------------------------------------------------------------------ gallery
@dataclass
class GalleryResult:
    """What :func:`write_gallery` drew.

    Attributes
    ----------
    path
        The PNG or PDF written.
    n_panels
        Panels drawn (at most ``max_images``).
    n_images
        Panels with a cutout image.
    n_blank
        Labelled blank panels: no cutout registered, or the cutout file could not be read.
    n_left_out
        Candidates beyond ``max_images`` (not drawn).
    n_pages
        Pages (1 for a PNG).
    blank_source_ids
        Source ids of the blank panels.
    problems
        One line per unreadable cutout file.
    """

    path: Path
    n_panels: int
    n_images: int
    n_blank: int
    n_left_out: int
    n_pages: int
    blank_source_ids: list[int] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


_GRADE_COLOURS = {"A": "#1a9850", "B": "#91cf60", "C": "#fdae61", "N": "#d73027"}
_TILE_IN, _LABEL_IN, _GAP_IN, _HEADER_IN = 1.6, 0.42, 0.12, 0.45  # gallery layout [inch]


def _cutout_images(
    source_ids: list[int], *, session: Session, crop_arcsec: float | None, stretch: str
) -> tuple[dict[int, np.ndarray], dict[int, str]]:
    """RGB (H, W, 3) uint8 images, north up, of the sources that have a readable cutout; reasons for the rest."""
    from lenscat.images.rgb import rgb_image
    from lenscat.images.store import open_store

    rows = session.execute(
        text(
            """
            SELECT s.source_id, s.cutout_row, f.path, f.format, f.member_paths, f.bands AS file_bands,
                   f.pixel_scale_arcsec AS file_scale, v.bands AS survey_bands, v.pixel_scale_arcsec AS survey_scale
            FROM lenscat.sources s JOIN lenscat.surveys v USING (survey_id)
            LEFT JOIN lenscat.cutout_files f ON f.file_id = s.cutout_file_id
            WHERE s.source_id = ANY(:ids)
            """
        ),
        {"ids": [int(i) for i in source_ids]},
    ).all()
    by_id = {int(r.source_id): r for r in rows}
    images: dict[int, np.ndarray] = {}
    reasons: dict[int, str] = {}
    groups: dict[tuple[str, str, tuple[str, ...]], list[Any]] = {}
    for sid in source_ids:
        r = by_id.get(int(sid))
        if r is None or r.path is None:
            reasons[int(sid)] = "no cutout"
            continue
        groups.setdefault((r.path, r.format, tuple(r.member_paths or ())), []).append(r)
    for (path, fmt, members), group in groups.items():
        try:
            store = open_store(path, fmt, member_paths=list(members) or None)
            if fmt == "fits":
                cut = store.get_one(0)
                planes = [(cut.data, list(cut.bands), float(cut.pixel_scale.to_value(u.arcsec)))] * len(group)
            else:
                data = store.get([int(r.cutout_row) for r in group])
                bands = list(group[0].file_bands or store.bands or group[0].survey_bands or ["g", "r", "z"])
                scale = group[0].file_scale or group[0].survey_scale or 0.262
                planes = [(data[k], bands, float(scale)) for k in range(len(group))]
        except (LenscatError, OSError, ValueError, KeyError) as exc:
            for r in group:
                reasons[int(r.source_id)] = f"cutout unreadable: {path}: {exc}"
            continue
        for r, (arr, bands, scale) in zip(group, planes, strict=True):
            img = rgb_image(arr, bands, stretch=stretch)
            if crop_arcsec:
                n = max(4, int(round(crop_arcsec / max(scale, 1e-6))))
                h, w = img.shape[:2]
                y0, x0 = max(0, (h - n) // 2), max(0, (w - n) // 2)
                img = img[y0 : y0 + n, x0 : x0 + n]
            images[int(r.source_id)] = np.ascontiguousarray(img[::-1])  # FITS orientation -> north up
    return images, reasons


def _label(row: Any) -> str:
    """Three caption lines: object id; grade, mean grade and votes; score and literature status."""
    objid = str(row["objid"])
    first = objid if len(objid) <= 22 else objid[:21] + "~"
    second = f"{row['consensus_grade']}  mean {float(row['mean_grade']):.2f}  n={int(row['n_votes'])}"
    score = row["best_score"]
    missing = score is np.ma.masked or not np.isfinite(float(score))
    third = "no score" if missing else f"score {float(score):.3f}"
    if "literature_status" in row.colnames:
        third += f"  {row['literature_status']}"
    return f"{first}\n{second}\n{third}"


def write_gallery(
    table: Table,
    path: str | Path,
    *,
    session: Session,
    ncols: int = 8,
    max_images: int = 200,
    rows_per_page: int = 8,
    crop_arcsec: float | None = None,
    stretch: str = "asinh",
    progress: bool = False,
) -> GalleryResult:
    """Draw the candidates as a labelled grid of RGB cutouts, in table order: a PNG or a PDF.

    Parameters
    ----------
    table
        A candidate table (:func:`candidate_table`): needs ``source_id``, ``objid``,
        ``consensus_grade``, ``mean_grade``, ``n_votes`` and ``best_score``.
    path
        ``.png`` (one image) or ``.pdf`` (``ncols`` x ``rows_per_page`` panels per page); replaced
        atomically.
    session
        Database session (to find each source's cutout).
    ncols
        Panels per row.
    max_images
        Draw at most this many candidates (the first ones of the table); the rest are counted in
        :attr:`GalleryResult.n_left_out`.
    rows_per_page
        Rows per PDF page.
    crop_arcsec
        Show the central ``crop_arcsec`` x ``crop_arcsec`` of each cutout (default: all of it).
    stretch
        ``'asinh'`` (Legacy Surveys viewer) or ``'lupton'``; see :func:`lenscat.images.rgb.rgb_image`.
    progress
        Show a progress bar on stderr.

    Returns
    -------
    GalleryResult
        Panels drawn; a source without a (readable) cutout gets a labelled grey panel and is counted
        in ``n_blank``.

    Raises
    ------
    LenscatError
        For an empty table, a path that is neither .png nor .pdf, or bad ``ncols``/``max_images``.
    """
    from matplotlib.figure import Figure
    from tqdm import tqdm

    dest = Path(path).expanduser()
    kind = dest.suffix.lower().lstrip(".")
    if kind not in ("png", "pdf"):
        raise LenscatError(f"{path}: a gallery is a .png or .pdf file")
    if ncols < 1 or max_images < 1 or rows_per_page < 1:
        raise LenscatError("ncols, max_images and rows_per_page must be at least 1")
    if len(table) == 0:
        raise LenscatError("no candidates to draw in a gallery")
    for need in ("source_id", "objid", "consensus_grade", "mean_grade", "n_votes", "best_score"):
        if need not in table.colnames:
            raise LenscatError(f"write_gallery needs a candidate table; column {need!r} is missing")
    shown = table[: int(max_images)]
    ids = [int(i) for i in shown["source_id"]]
    images, reasons = _cutout_images(ids, session=session, crop_arcsec=crop_arcsec, stretch=stretch)
    ncols = min(int(ncols), len(shown))
    per_page = ncols * int(rows_per_page) if kind == "pdf" else len(shown)
    pages = [list(range(k, min(k + per_page, len(shown)))) for k in range(0, len(shown), per_page)]
    grades = table.meta.get("GRADES", ",".join(sorted(set(np.asarray(table["consensus_grade"], dtype=str)))))
    title = f"lenscat candidates, grade {grades}: {len(shown)} of {len(table)}"
    figures = []
    bar = tqdm(total=len(shown), unit="img", desc="gallery", disable=not progress, leave=False)
    try:
        for p, members in enumerate(pages):
            nrows = -(-len(members) // ncols)
            width = ncols * (_TILE_IN + _GAP_IN) + _GAP_IN
            height = _HEADER_IN + nrows * (_LABEL_IN + _TILE_IN + _GAP_IN) + _GAP_IN
            fig = Figure(figsize=(width, height))
            page = f" (page {p + 1} of {len(pages)})" if len(pages) > 1 else ""
            fig.text(0.5, 1 - 0.35 * _HEADER_IN / height, title + page, ha="center", va="center", fontsize=9, wrap=True)
            fig.text(
                0.5,
                1 - 0.75 * _HEADER_IN / height,
                "frame: A dark green, B light green, C orange, N red",
                ha="center",
                va="center",
                fontsize=6.5,
                color="#444444",
                wrap=True,
            )
            for k, i in enumerate(members):
                r, c = divmod(k, ncols)
                left = _GAP_IN + c * (_TILE_IN + _GAP_IN)
                top = height - _HEADER_IN - r * (_LABEL_IN + _TILE_IN + _GAP_IN)
                ax = fig.add_axes(
                    (left / width, (top - _LABEL_IN - _TILE_IN) / height, _TILE_IN / width, _TILE_IN / height)
                )
                row = shown[i]
                sid = int(row["source_id"])
                img = images.get(sid)
                ax.set_xticks([])
                ax.set_yticks([])
                for spine in ax.spines.values():
                    spine.set_edgecolor(_GRADE_COLOURS.get(str(row["consensus_grade"]), "black"))
                    spine.set_linewidth(2.0)
                if img is None:
                    ax.imshow(np.full((64, 64, 3), 205, dtype=np.uint8))
                    ax.text(
                        32,
                        32,
                        reasons.get(sid, "no cutout").split(":")[0],
                        ha="center",
                        va="center",
                        fontsize=7,
                        color="#444444",
                    )
                else:
                    ax.imshow(img, interpolation="nearest")
                fig.text(
                    left / width,
                    (top - 0.03) / height,
                    _label(row),
                    ha="left",
                    va="top",
                    fontsize=6.5,
                    family="monospace",
                )
                bar.update(1)
            figures.append(fig)
    finally:
        bar.close()
    _save_figures(figures, dest, kind)
    blank = [i for i in ids if i not in images]
    problems = sorted({reasons[i] for i in blank if reasons[i] != "no cutout"})
    return GalleryResult(
        path=dest,
        n_panels=len(shown),
        n_images=len(shown) - len(blank),
        n_blank=len(blank),
        n_left_out=len(table) - len(shown),
        n_pages=len(pages),
        blank_source_ids=blank,
        problems=problems,
    )


def _save_figures(figures: list[Any], dest: Path, kind: str) -> None:
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        mode = dest.stat().st_mode & 0o777 if dest.exists() else 0o644
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=f".part.{kind}")
        os.close(fd)
    except OSError as exc:
        raise LenscatError(f"{dest}: cannot write here ({exc.strerror or exc})") from exc
    try:
        if kind == "pdf":
            from matplotlib.backends.backend_pdf import PdfPages

            with PdfPages(tmp, metadata={"Title": "lenscat candidates", "Creator": "lenscat"}) as pdf:
                for fig in figures:
                    pdf.savefig(fig)
        else:
            figures[0].savefig(tmp, format="png", dpi=110)
        os.chmod(tmp, mode)
        os.replace(tmp, dest)
    except OSError as exc:
        raise LenscatError(f"{dest}: cannot write the gallery ({exc.strerror or exc})") from exc
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
