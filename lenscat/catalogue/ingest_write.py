"""Write one batch of a validated source catalogue into ``lenscat.sources``, as one upsert would.

:func:`write_batch` first tries one binary ``COPY`` straight into ``lenscat.sources``; when a key
exists already it goes through a temporary staging table and ``INSERT ... ON CONFLICT DO UPDATE``
on ``uq_sources_survey_objid``.
"""

from __future__ import annotations

import numpy as np
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from lenscat.catalogue.ingest_validate import BAND_FIELDS
from lenscat.catalogue.types import PreparedSources
from lenscat.db.pgbinary import Column, encode_copy_binary
from lenscat.db.session import raw_connection


def _stage_table(nbands: int) -> str:
    return f"lenscat_stage_sources_{nbands}"


def _ensure_stage(session: Session, nbands: int) -> str:
    name = _stage_table(nbands)
    band_cols = ", ".join(f"{f}_{j} real" for f in BAND_FIELDS for j in range(nbands))
    session.execute(
        text(
            f"""
            CREATE TEMP TABLE IF NOT EXISTS {name} (
                row_number bigint, objid text, ra double precision, dec double precision,
                ebv real, source_type text, z_spec real, z_phot real, z_phot_l68 real, z_phot_u68 real,
                cutout_row integer, extra text{", " + band_cols if band_cols else ""}
            )"""
        )
    )
    session.execute(text(f"TRUNCATE {name}"))
    return name


def _value_columns(prep: PreparedSources, rows: np.ndarray) -> dict[str, Column]:
    """The columns both COPY streams share: object id, position, scalar fields."""
    cols: dict[str, Column] = {
        "objid": Column("text", prep.objid[rows], np.zeros(len(rows), bool)),
        "ra": Column("float8", prep.ra[rows]),
        "dec": Column("float8", prep.dec[rows]),
    }
    for name, values in prep.scalars.items():
        v = values[rows]
        cols[name] = Column("text", v) if v.dtype == object else Column("float4", v)
    return cols


def _batch_copy(prep: PreparedSources, rows: np.ndarray, with_cutouts: bool) -> tuple[list[str], bytes]:
    """The staging rows of ``rows`` as one binary COPY stream (non-finite floats as NULL).

    Columns carry the staging table's types: bigint row numbers, float8 positions, real
    (float4) photometry and redshifts, integer cutout rows and text ids, types and extras.
    """
    cols = {"row_number": Column("int8", rows + 1), **_value_columns(prep, rows)}
    if with_cutouts:
        cols["cutout_row"] = Column("int4", rows)
    if prep.extra is not None:
        cols["extra"] = Column("text", [prep.extra[i] for i in rows])
    for fieldname, values in prep.band_values.items():
        for j in range(values.shape[1]):
            cols[f"{fieldname}_{j}"] = Column("float4", values[rows, j])
    return list(cols), encode_copy_binary(list(cols.values()))


def _sources_copy(
    prep: PreparedSources, rows: np.ndarray, *, survey_id: int, ingest_id: int, cutout_file_id: int | None
) -> tuple[list[str], bytes]:
    """The rows ``rows`` as a binary COPY stream in ``lenscat.sources``'s own columns and types.

    The same values the staging path writes: smallint survey, integer ingest and cutout columns,
    real photometry (an array per field, NULL when every band is missing), jsonb extras.
    """
    n = len(rows)
    cols = {
        "survey_id": Column("int2", np.full(n, survey_id)),
        "ingest_id": Column("int4", np.full(n, ingest_id)),
        **_value_columns(prep, rows),
    }
    for fieldname, values in prep.band_values.items():
        cols[fieldname] = Column("float4[]", values[rows])
    if cutout_file_id is not None:
        cols["cutout_file_id"] = Column("int4", np.full(n, cutout_file_id))
        cols["cutout_row"] = Column("int4", rows)
    if prep.extra is not None:
        cols["extra"] = Column("jsonb", [prep.extra[i] for i in rows])
    return list(cols), encode_copy_binary(list(cols.values()))


def _array_expr(fieldname: str, nbands: int) -> str:
    cols = ", ".join(f"{fieldname}_{j}" for j in range(nbands))
    return f"CASE WHEN num_nonnulls({cols}) = 0 THEN NULL ELSE ARRAY[{cols}]::real[] END"


def _target_columns(prep: PreparedSources, with_cutouts: bool) -> tuple[list[str], list[str]]:
    """(sources columns written, staging expressions that fill them)."""
    nb = len(prep.bands)
    target: list[str] = ["ra", "dec"]
    select: list[str] = ["ra", "dec"]
    for name in prep.scalars:
        target.append(name)
        select.append(name)
    for fieldname in prep.band_values:
        target.append(fieldname)
        select.append(_array_expr(fieldname, nb))
    if with_cutouts:
        target += ["cutout_file_id", "cutout_row"]
        select += [":file_id", "cutout_row"]
    if prep.extra is not None:
        target.append("extra")
        select.append("extra::jsonb")
    return target, select


def _is_key_conflict(exc: Exception) -> bool:
    """True when ``exc`` is a unique violation of the natural key (survey_id, objid)."""
    orig = getattr(exc, "orig", exc)  # SQLAlchemy's wrapper, or psycopg's own error from a COPY
    diag = getattr(orig, "diag", None)
    return (
        getattr(orig, "sqlstate", None) == "23505"
        and getattr(diag, "constraint_name", None) == "uq_sources_survey_objid"
    )


def write_batch(
    prep: PreparedSources,
    rows: np.ndarray,
    *,
    session: Session,
    survey_id: int,
    ingest_id: int,
    cutout_file_id: int | None,
) -> tuple[int, int, int]:
    """Write ``rows`` (indices of good rows) into ``lenscat.sources``, as one upsert would.

    Unless the batch's first key exists already, the rows first go in with one binary ``COPY``
    straight into ``lenscat.sources`` inside a SAVEPOINT: when none of their keys exists yet (a
    first load, the common case) that is all, with no staging table, no INSERT ... SELECT and no
    speculative insertion. If any key exists (a re-ingest, a concurrent writer), the unique index
    refuses the COPY, the savepoint is rolled back, and the batch goes through staging: a binary
    COPY into a temporary table, then ``INSERT ... ON CONFLICT DO UPDATE`` of the changed rows
    only. Either way the rows and the counts are those of the upsert, and source ids follow the
    file's row order.

    Returns
    -------
    inserted, updated, unchanged
    """
    import psycopg

    if len(rows) == 0:
        return 0, 0, 0
    conn = raw_connection(session)
    # a re-ingest is seen at its first row: then go straight to the upsert
    known = session.execute(
        text("SELECT EXISTS (SELECT 1 FROM lenscat.sources WHERE survey_id = :s AND objid = :o)"),
        {"s": survey_id, "o": str(prep.objid[rows[0]])},
    ).scalar()
    if not known:
        names, data = _sources_copy(prep, rows, survey_id=survey_id, ingest_id=ingest_id, cutout_file_id=cutout_file_id)
        try:
            with session.begin_nested():
                session.connection()  # emits the SAVEPOINT before the raw COPY
                with (
                    conn.cursor() as cur,
                    cur.copy(f"COPY lenscat.sources ({', '.join(names)}) FROM STDIN (FORMAT binary)") as copy,
                ):
                    copy.write(data)
            return len(rows), 0, 0  # a COPY writes every row or none
        except (IntegrityError, psycopg.errors.UniqueViolation) as exc:
            if not _is_key_conflict(exc):
                raise
        del data
    stage = _ensure_stage(session, len(prep.bands))
    names, data = _batch_copy(prep, rows, cutout_file_id is not None)
    with conn.cursor() as cur, cur.copy(f"COPY {stage} ({', '.join(names)}) FROM STDIN (FORMAT binary)") as copy:
        copy.write(data)
    target, select = _target_columns(prep, cutout_file_id is not None)
    params = {"survey_id": survey_id, "ingest_id": ingest_id, "file_id": cutout_file_id}
    insert = f"""
        INSERT INTO lenscat.sources AS s (survey_id, objid, ingest_id, {", ".join(target)})
        SELECT :survey_id, objid, :ingest_id, {", ".join(select)}
        FROM {stage} ORDER BY row_number
    """
    sets = ", ".join(f"{c} = EXCLUDED.{c}" for c in target)
    changed = " OR ".join(f"s.{c} IS DISTINCT FROM EXCLUDED.{c}" for c in target)
    sql = f"""
        WITH up AS (
            {insert}
            ON CONFLICT ON CONSTRAINT uq_sources_survey_objid DO UPDATE
            SET {sets}, ingest_id = EXCLUDED.ingest_id, updated_at = now()
            WHERE {changed}
            RETURNING (xmax = 0) AS inserted
        )
        SELECT count(*) FILTER (WHERE inserted), count(*) FILTER (WHERE NOT inserted) FROM up
    """
    ins, upd = session.execute(text(sql), params).one()
    return int(ins), int(upd), len(rows) - int(ins) - int(upd)
