"""Lens / non-lens labels of catalogue sources: from literature cross-matches, tables, simulation truth.

A label row is keyed by (source, origin, provenance) (``uq_labels_source_origin_provenance``), so
re-importing a list updates it in place and two lists may disagree without overwriting each other.
When labels disagree, :func:`resolve_labels` takes the most trusted origin: human grades, then
simulation truth, then imported tables, then literature cross-matches (an ``injection`` label, the
truth of a lens painted on a survey galaxy by :mod:`lenscat.simulate.injection`, is the only label of its
source, which lives in an injection set).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import astropy.units as u
import numpy as np
from astropy.coordinates import SkyCoord
from sqlalchemy import text
from sqlalchemy.orm import Session

from lenscat.catalogue.ingest_log import file_sha256
from lenscat.catalogue.surveys import REAL_SURVEYS_SQL, get_survey, real_survey_ids
from lenscat.db.session import raw_connection
from lenscat.errors import InputFileError, LenscatError, MissingPrerequisite, NotFoundError, Step
from lenscat.io.columns import angle_column
from lenscat.io.readers import ColumnTable, read_table
from lenscat.sky.service import match_positions, match_query, pairs_within

ORIGINS = ("literature", "simulation", "import", "human", "injection")
LABEL_PROVENANCE = "grades"
"""Provenance of the human labels derived from graders' verdicts (``grading.grades.refresh_human_labels``)."""
PRIORITY = {"human": 0, "simulation": 1, "import": 2, "literature": 3, "injection": 3}
TRUE_WORDS = {"1", "true", "t", "yes", "y", "lens", "a", "b", "c", "sure", "probable", "possible"}
FALSE_WORDS = {"0", "false", "f", "no", "n", "nonlens", "non-lens", "not", "not a lens", "x"}
EXCLUDE_RADIUS = 25 * u.arcsec


@dataclass
class LabelSummary:
    """What a label write did."""

    origin: str
    provenance: str
    n_rows: int = 0
    n_positive: int = 0
    n_negative: int = 0
    n_written: int = 0
    n_removed: int = 0
    rejects: list[tuple[int, str]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """Plain dict for JSON output."""
        return {
            "origin": self.origin,
            "provenance": self.provenance,
            "rows": self.n_rows,
            "positive": self.n_positive,
            "negative": self.n_negative,
            "written": self.n_written,
            "removed": self.n_removed,
            "rejected": len(self.rejects),
        }


def _upsert(
    source_ids: np.ndarray,
    labels: np.ndarray,
    details: list[dict[str, Any]],
    origin: str,
    provenance: str,
    *,
    session: Session,
    replace: bool,
) -> tuple[int, int]:
    """COPY (source, label, detail) into staging, one upsert; with ``replace`` drop rows not in the set."""
    if origin not in ORIGINS:
        raise LenscatError(f"unknown label origin {origin!r}; expected one of {', '.join(ORIGINS)}")
    conn = raw_connection(session)
    with conn.cursor() as cur:
        cur.execute(
            "CREATE TEMP TABLE IF NOT EXISTS labels_stage (source_id bigint, label smallint, detail jsonb) "
            "ON COMMIT DELETE ROWS"
        )
        cur.execute("TRUNCATE labels_stage")
        with cur.copy("COPY labels_stage (source_id, label, detail) FROM STDIN") as copy:
            for sid, lab, det in zip(source_ids, labels, details, strict=True):
                copy.write_row((int(sid), int(lab), json.dumps(det, sort_keys=True)))
        cur.execute(
            """
            INSERT INTO lenscat.labels AS l (source_id, label, origin, provenance, detail)
            SELECT source_id, label, %s, %s, detail FROM labels_stage
            ON CONFLICT ON CONSTRAINT uq_labels_source_origin_provenance DO UPDATE
            SET label = EXCLUDED.label, detail = EXCLUDED.detail, updated_at = now()
            WHERE (l.label, l.detail) IS DISTINCT FROM (EXCLUDED.label, EXCLUDED.detail)
            """,
            (origin, provenance),
        )
        written = cur.rowcount
        removed = 0
        if replace:
            cur.execute(
                "DELETE FROM lenscat.labels l WHERE l.origin = %s AND l.provenance = %s "
                "AND NOT EXISTS (SELECT 1 FROM labels_stage t WHERE t.source_id = l.source_id)",
                (origin, provenance),
            )
            removed = cur.rowcount
        cur.execute("TRUNCATE labels_stage")
    return int(written), int(removed)


def labels_from_crossmatch(catalog: str, *, session: Session) -> LabelSummary:
    """Positive labels (origin ``literature``) for the nearest source of every lens of a catalogue.

    Uses the catalogue's stored cross-match (``lenscat crossmatch``); labels of sources no longer
    matched are removed, so the labels follow the latest cross-match.
    """
    cid = session.execute(
        text("SELECT catalog_id FROM lenscat.literature_catalogs WHERE name = :n"), {"n": catalog}
    ).scalar()
    if cid is None:
        raise NotFoundError(
            f"no literature catalogue {catalog!r}; {{step}} first",
            step=Step(("ingest", "literature"), ((None, "FILE"), ("catalog", catalog)), "ingest the lens list"),
        )
    rows = session.execute(
        text(
            """
            SELECT DISTINCT ON (x.source_id) x.source_id, l.name, l.grade, x.separation_arcsec
            FROM lenscat.crossmatches x JOIN lenscat.literature_lenses l USING (lens_id)
            WHERE l.catalog_id = :c AND x.is_nearest
            ORDER BY x.source_id, x.separation_arcsec
            """
        ),
        {"c": cid},
    ).all()
    if not rows:
        n_lenses = session.execute(
            text("SELECT count(*) FROM lenscat.literature_lenses WHERE catalog_id = :c"), {"c": cid}
        ).scalar()
        raise MissingPrerequisite(
            f"catalogue {catalog!r} ({n_lenses} lenses) has no cross-matches; {{step}} first",
            Step(("crossmatch",), (("catalog", catalog),), f"cross-match catalogue {catalog!r} with the sources"),
        )
    summary = LabelSummary("literature", catalog, n_rows=len(rows), n_positive=len(rows))
    ids = np.array([r.source_id for r in rows], dtype=np.int64)
    det = [{"lens": r.name, "grade": r.grade, "separation_arcsec": round(float(r.separation_arcsec), 4)} for r in rows]
    summary.n_written, summary.n_removed = _upsert(
        ids, np.ones(len(ids), np.int16), det, "literature", catalog, session=session, replace=True
    )
    return summary


def parse_label(value: Any) -> int | None:
    """1 for a lens, 0 for a non-lens, None when the value cannot be read as either."""
    if isinstance(value, (bool, np.bool_)):
        return int(bool(value))
    if isinstance(value, (int, np.integer)):
        return int(value) if int(value) in (0, 1) else None
    if isinstance(value, (float, np.floating)):
        return int(value) if value in (0.0, 1.0) else None
    word = str(value).strip().lower()
    if word in TRUE_WORDS:
        return 1
    if word in FALSE_WORDS:
        return 0
    return None


def import_labels(
    path: str | Path,
    *,
    label_col: str = "label",
    survey: str | None = None,
    id_col: str | None = None,
    ra_col: str | None = None,
    dec_col: str | None = None,
    radius: u.Quantity = 2 * u.arcsec,
    origin: str = "import",
    provenance: str | None = None,
    session: Session,
) -> LabelSummary:
    """Labels from a table with (survey object id) or (ra, dec) and a label column.

    Parameters
    ----------
    path
        Any table :func:`lenscat.io.readers.read_table` reads (CSV, FITS, ECSV, VOTable, Parquet, or a
        Stein-layout HDF5 file, e.g. a simulated survey with its ``is_lens`` truth).
    label_col
        Column holding the label: 1/0, true/false, yes/no, lens/non-lens, grades A/B/C (= lens).
    survey, id_col
        Match rows to sources by (survey, object id). ``id_col`` defaults to ``objid``.
    ra_col, dec_col, radius
        Otherwise match each row to the nearest source within ``radius`` of its position [deg].
    origin
        ``import`` (default) or ``simulation`` (truth of a simulated survey).
    provenance
        Defaults to the file name and ``sha256:`` with the first 12 hex digits of its hash.

    Returns
    -------
    LabelSummary
        Counts; rows whose label is unreadable or that match no source are in ``rejects`` as
        (row number from 1, reason), and are not written.
    """
    path = Path(path).expanduser().resolve()
    table = read_table(path)
    lab_name = table.require(label_col, "the label", "label_col")
    # a Stein-layout file's digest was taken while reading it (pixels included): no second pass
    provenance = provenance or f"{path.name} sha256:{(table.sha256 or file_sha256(path))[:12]}"
    summary = LabelSummary(origin, provenance, n_rows=table.n_rows)
    raw = table.columns[lab_name]
    mask = np.ma.getmaskarray(raw)
    values: list[int | None] = [None if mask[i] else parse_label(np.ma.getdata(raw)[i]) for i in range(len(raw))]
    for i, v in enumerate(values):
        if v is None:
            summary.rejects.append(
                (
                    i + 1,
                    f"column {lab_name!r}: cannot read "
                    f"{'an empty value' if mask[i] else repr(str(np.ma.getdata(raw)[i]))} "
                    "as lens (1) or non-lens (0)",
                )
            )
    n = table.n_rows
    sid = np.full(n, -1, dtype=np.int64)
    if survey is not None:
        sv = get_survey(survey, session=session)
        id_name = table.require(id_col or "objid", "the survey object id", "id_col")
        objids = [str(x) for x in np.ma.getdata(table.columns[id_name])]
        found: dict[str, int] = dict(
            session.execute(
                text("SELECT objid, source_id FROM lenscat.sources WHERE survey_id = :s AND objid = ANY(:o)"),
                {"s": sv.survey_id, "o": objids},
            ).all()
        )
        for i, o in enumerate(objids):
            if o in found:
                sid[i] = int(found[o])
        how = f"no source {{}} in survey {survey!r} (column {id_name!r})"
        keys = objids
    else:
        ra_name = table.find([ra_col] if ra_col else ["ra", "RA [deg]", "raj2000", "ra_deg"])
        dec_name = table.find([dec_col] if dec_col else ["dec", "DEC [deg]", "dej2000", "decj2000", "dec_deg"])
        if ra_name is None or dec_name is None:
            raise InputFileError(
                f"{path}: no ra/dec columns to match labels by position; pass {{ra_col}}/{{dec_col}}, "
                "or {survey} with {id_col} to match by object id",
                params=("ra_col", "dec_col", "survey", "id_col"),
            )
        ra, bad_ra = angle_column(table, ra_name, hours=True)
        dec, bad_dec = angle_column(table, dec_name, hours=False)
        ra = np.where(ra == 360.0, 0.0, ra)
        ok = (
            np.isfinite(ra)
            & np.isfinite(dec)
            & (np.abs(dec) <= 90)  # NaN for missing or unreadable
            & (ra >= 0)
            & (ra < 360)
        )
        rejected = {r for r, _ in summary.rejects}
        for i in np.flatnonzero(~ok).tolist():
            if i + 1 not in rejected:
                summary.rejects.append(
                    (i + 1, _position_problem(ra[i], dec[i], bad_ra[i], bad_dec[i], ra_name, dec_name, table, i))
                )
        r_arcsec = float(radius.to_value(u.arcsec))
        rows_ok = np.flatnonzero(ok)
        match = match_positions(SkyCoord(ra[ok] * u.deg, dec[ok] * u.deg), radius, session=session, nearest=True)
        sid[rows_ok[match.index]] = match.source_id
        how = f"no source within {r_arcsec:g} arcsec of {{}} (columns {ra_name!r}, {dec_name!r})"
        keys = [f"({ra[i]:.6f}, {dec[i]:.6f})" for i in range(n)]
    rejected = {r for r, _ in summary.rejects}
    for i in range(n):
        if sid[i] < 0 and i + 1 not in rejected:
            summary.rejects.append((i + 1, how.format(keys[i])))
    good = np.array([sid[i] >= 0 and values[i] is not None for i in range(n)], dtype=bool)
    # one label per source: a source matched by two rows keeps the first and rejects the others
    _, first = np.unique(sid[good], return_index=True)
    keep = np.flatnonzero(good)[np.sort(first)]
    for j in sorted(set(np.flatnonzero(good).tolist()) - set(keep.tolist())):
        summary.rejects.append((j + 1, f"source {sid[j]} already labelled by an earlier row"))
    summary.rejects.sort()
    lab = np.array([values[i] for i in keep], dtype=np.int16)
    summary.n_positive, summary.n_negative = int((lab == 1).sum()), int((lab == 0).sum())
    det = [{"row": int(i) + 1} for i in keep]
    summary.n_written, summary.n_removed = _upsert(
        sid[keep], lab, det, origin, provenance, session=session, replace=True
    )
    return summary


def _position_problem(
    ra: float, dec: float, bad_ra: bool, bad_dec: bool, ra_name: str, dec_name: str, table: ColumnTable, i: int
) -> str:
    """Why row ``i``'s position (NaN where missing or unreadable, RA outside [0, 360) or |dec| > 90)
    cannot be matched."""

    def raw(name: str) -> str:
        return repr(str(np.ma.getdata(table.columns[name])[i]))

    if bad_ra:
        return f"column {ra_name!r}: cannot read {raw(ra_name)} as a right ascension (degrees or h:m:s)"
    if bad_dec:
        return f"column {dec_name!r}: cannot read {raw(dec_name)} as a declination (degrees or d:m:s)"
    if not np.isfinite(ra):
        return f"column {ra_name!r}: right ascension missing"
    if not np.isfinite(dec):
        return f"column {dec_name!r}: declination missing"
    if not 0.0 <= ra < 360.0:
        return f"column {ra_name!r}: right ascension {ra:g} deg out of range [0, 360)"
    return f"column {dec_name!r}: declination {dec:g} deg outside [-90, 90]"


def resolve_labels(
    *, session: Session, origins: list[str] | None = None, surveys: list[int] | None = None
) -> dict[int, int]:
    """One label per source: the most trusted origin wins (human, simulation, import, literature)."""
    bad = [o for o in origins or [] if o not in ORIGINS]
    if bad:
        raise LenscatError(f"unknown label origin(s) {', '.join(bad)}; expected {', '.join(ORIGINS)}")
    rows = session.execute(
        text(
            """
            SELECT DISTINCT ON (l.source_id) l.source_id, l.label
            FROM lenscat.labels l JOIN lenscat.sources s USING (source_id)
            WHERE (CAST(:o AS text[]) IS NULL OR l.origin = ANY(CAST(:o AS text[])))
              AND (CAST(:sv AS int[]) IS NULL OR s.survey_id = ANY(CAST(:sv AS int[])))
            ORDER BY l.source_id,
                     CASE l.origin WHEN 'human' THEN 0 WHEN 'simulation' THEN 1 WHEN 'import' THEN 2 ELSE 3 END,
                     l.updated_at DESC
            """
        ),
        {"o": origins or None, "sv": surveys or None},
    ).all()
    return {int(r.source_id): int(r.label) for r in rows}


# positives of real surveys only: an injected lens sits on its host's position, and the host (and
# its neighbours) must stay usable as negatives
_CENTRES_SQL = (
    """
    SELECT s.ra, s.dec FROM lenscat.labels l JOIN lenscat.sources s USING (source_id)
    WHERE l.label = 1 AND l.origin <> 'injection' AND s.survey_id IN ("""
    + REAL_SURVEYS_SQL
    + """)
    UNION ALL
    SELECT l.ra, l.dec FROM lenscat.literature_lenses l
"""
)


def near_known_lenses(
    *,
    session: Session,
    radius: u.Quantity = EXCLUDE_RADIUS,
    surveys: list[int] | None = None,
    candidates: np.ndarray | None = None,
) -> set[int]:
    """Sources within ``radius`` of a positive label or of any literature lens (not to be sampled as negatives).

    Positives of injection sets (origin ``injection``) do not count: they sit on their host galaxy's
    position, and the host stays an ordinary negative of its survey.

    With ``candidates`` (source ids), only those are tested, in memory (a KD-tree match of their
    positions against the lens positions): much faster than one cone search per literature lens when
    the candidates are a small part of the catalogue (e.g. the embedded sources of one survey).
    """
    if candidates is not None:
        return _near_in_memory(np.asarray(candidates, dtype=np.int64), radius, session)
    sids: list[int] | None = None
    if surveys:  # injection sets never count, named or not
        real = set(real_survey_ids(session=session))
        sids = [int(s) for s in surveys if int(s) in real]
        if not sids:
            return set()
    centres = f"SELECT row_number() OVER () AS pos_id, p.ra, p.dec FROM ({_CENTRES_SQL}) p"
    sql, params = match_query(centres, radius, session=session, surveys=sids)
    rows = session.execute(text(f"SELECT DISTINCT m.source_id FROM ({sql}) m"), params).scalars().all()
    return {int(x) for x in rows}


def _near_in_memory(candidates: np.ndarray, radius: u.Quantity, session: Session) -> set[int]:
    centres = np.array(session.execute(text(_CENTRES_SQL)).all(), dtype=np.float64).reshape(-1, 2)
    if len(centres) == 0 or len(candidates) == 0:
        return set()
    rows = np.array(
        session.execute(
            text(
                "SELECT s.source_id, s.ra, s.dec FROM unnest(CAST(:ids AS bigint[])) AS c(source_id) "
                "JOIN lenscat.sources s USING (source_id)"
            ),
            {"ids": candidates.tolist()},
        ).all(),
        dtype=np.float64,
    ).reshape(-1, 3)
    if len(rows) == 0:
        return set()
    cand = SkyCoord(rows[:, 1] * u.deg, rows[:, 2] * u.deg)
    pairs = pairs_within(cand, SkyCoord(centres[:, 0] * u.deg, centres[:, 1] * u.deg), radius)
    return {int(x) for x in rows[np.unique(pairs.index), 0]}


def label_counts(*, session: Session) -> list[dict[str, Any]]:
    """Labels per (origin, provenance): positives, negatives, last change."""
    rows = (
        session.execute(
            text(
                """
            SELECT origin, provenance, count(*) FILTER (WHERE label = 1) AS positive,
                   count(*) FILTER (WHERE label = 0) AS negative, max(updated_at) AS updated_at
            FROM lenscat.labels GROUP BY origin, provenance ORDER BY origin, provenance
            """
            )
        )
        .mappings()
        .all()
    )
    return [dict(r) for r in rows]
