"""Literature catalogues in the database: write a validated lens list, look a catalogue up by name.

:func:`write_literature` stores the output of :func:`lenscat.literature.ingest.prepare_literature`
in the caller's transaction (COPY -> staging -> upsert on ``uq_literature_lenses_catalog_row``).
"""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.orm import Session

from lenscat.catalogue import ingest_log
from lenscat.db.session import raw_connection
from lenscat.errors import NotFoundError
from lenscat.literature.types import LiteratureSummary, PreparedLiterature


def write_literature(prep: PreparedLiterature, *, session: Session, citation: str | None = None) -> LiteratureSummary:
    """Upsert the catalogue and its lenses in the caller's transaction (COPY -> staging -> upsert).

    Rows of an earlier version of the same catalogue that the new file no longer has are removed
    (with their cross-matches).
    """
    n_rows = len(prep.rows) + len(prep.rejects) + len(prep.duplicates)
    record = ingest_log.open_ingest(
        session=session,
        kind="literature",
        target=prep.catalog,
        path=prep.path,
        sha256=prep.sha256,
        options=prep.options,
        n_rows=n_rows,
        n_batches=1,
    )
    current = session.execute(
        text("SELECT sha256 FROM lenscat.literature_catalogs WHERE name = :n"), {"n": prep.catalog}
    ).scalar_one_or_none()
    if record.status == "done" and 0 in record.done_batches and current == prep.sha256:
        return LiteratureSummary(
            prep.catalog,
            prep.path,
            prep.layout,
            n_rows,
            len(prep.rows),
            0,
            len(prep.rejects),
            True,
            prep.rejects,
            prep.duplicates,
            prep.repeats,
        )
    catalog_id = session.execute(
        text(
            """
            INSERT INTO lenscat.literature_catalogs (name, citation, path, sha256, format, n_lenses)
            VALUES (:n, :c, :p, :s, :f, :k)
            ON CONFLICT ON CONSTRAINT uq_literature_catalogs_name DO UPDATE
            SET citation = coalesce(EXCLUDED.citation, lenscat.literature_catalogs.citation),
                path = EXCLUDED.path, sha256 = EXCLUDED.sha256, format = EXCLUDED.format,
                n_lenses = EXCLUDED.n_lenses, ingested_at = now()
            RETURNING catalog_id
            """
        ),
        {
            "n": prep.catalog,
            "c": citation,
            "p": str(prep.path),
            "s": prep.sha256,
            "f": prep.layout,
            "k": len(prep.rows),
        },
    ).scalar_one()
    session.execute(
        text(
            """
            CREATE TEMP TABLE IF NOT EXISTS lenscat_stage_lenses (
                row_number integer, name text, ra double precision, dec double precision, grade text,
                z_lens real, z_source real, lens_type text, source_type text, refs text[], raw text)
            """
        )
    )
    session.execute(text("TRUNCATE lenscat_stage_lenses"))
    cols = ["row_number", "name", "ra", "dec", "grade", "z_lens", "z_source", "lens_type", "source_type", "refs", "raw"]
    conn = raw_connection(session)
    with conn.cursor() as cur, cur.copy(f"COPY lenscat_stage_lenses ({', '.join(cols)}) FROM STDIN") as copy:
        for row in prep.rows:
            copy.write_row([row[c] for c in cols])
    fields = cols[1:]
    session.execute(
        text(
            f"""
            INSERT INTO lenscat.literature_lenses AS l (catalog_id, {", ".join(cols)})
            SELECT :cid, row_number, name, ra, dec, grade, z_lens, z_source, lens_type, source_type,
                   refs, raw::jsonb
            FROM lenscat_stage_lenses
            ON CONFLICT ON CONSTRAINT uq_literature_lenses_catalog_row DO UPDATE
            SET {", ".join(f"{c} = EXCLUDED.{c}" for c in fields)}
            WHERE ({", ".join(f"l.{c}" for c in fields)}) IS DISTINCT FROM
                  ({", ".join(f"EXCLUDED.{c}" for c in fields)})
            """
        ),
        {"cid": catalog_id},
    )
    session.execute(  # no FK cascade (migration 0004): drop the matches of lenses about to go
        text(
            """
            DELETE FROM lenscat.crossmatches x USING lenscat.literature_lenses l
            WHERE x.lens_id = l.lens_id AND l.catalog_id = :cid
              AND NOT EXISTS (SELECT 1 FROM lenscat_stage_lenses s WHERE s.row_number = l.row_number)
            """
        ),
        {"cid": catalog_id},
    )
    removed = session.execute(
        text(
            """
            DELETE FROM lenscat.literature_lenses l
            WHERE l.catalog_id = :cid
              AND NOT EXISTS (SELECT 1 FROM lenscat_stage_lenses s WHERE s.row_number = l.row_number)
            """
        ),
        {"cid": catalog_id},
    ).rowcount  # type: ignore[attr-defined]
    ingest_log.record_rejects(prep.rejects + prep.duplicates, session=session, ingest_id=record.ingest_id)
    ingest_log.record_batch(
        session=session,
        ingest_id=record.ingest_id,
        batch_no=0,
        row_start=1,
        row_stop=n_rows,
        n_inserted=len(prep.rows),
        n_updated=0,
        n_unchanged=0,
        n_rejected=len(prep.rejects) + len(prep.duplicates),
    )
    ingest_log.close_ingest(session=session, ingest_id=record.ingest_id)
    session.execute(text("ANALYZE lenscat.literature_lenses"))
    return LiteratureSummary(
        prep.catalog,
        prep.path,
        prep.layout,
        n_rows,
        len(prep.rows),
        int(removed or 0),
        len(prep.rejects),
        False,
        prep.rejects,
        prep.duplicates,
        prep.repeats,
    )


def get_catalog_id(name: str, *, session: Session) -> int:
    """Id of literature catalogue ``name``; raises NotFoundError listing the known ones."""
    cid = session.execute(
        text("SELECT catalog_id FROM lenscat.literature_catalogs WHERE name = :n"), {"n": name}
    ).scalar_one_or_none()
    if cid is None:
        known = [r[0] for r in session.execute(text("SELECT name FROM lenscat.literature_catalogs ORDER BY 1"))]
        raise NotFoundError(
            f"no literature catalogue named {name!r}; known: {', '.join(known) if known else '(none yet)'}"
        )
    return int(cid)
