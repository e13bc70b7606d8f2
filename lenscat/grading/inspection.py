"""What an inspection grid shows: the top N of a classifier, similarity results, an SQL sample,
an active-learning batch, or the graders' conflicts, as cells with the values a grader needs."""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, field
from typing import Any

import astropy.units as u
import numpy as np
from sqlalchemy import text
from sqlalchemy.orm import Session

from lenscat.classifiers.ranking import top_candidates
from lenscat.db.usersql import run_readonly_sql
from lenscat.embeddings.similarity import query_from_source, similar
from lenscat.errors import InvalidParameter, MissingPrerequisite, Step
from lenscat.grading.auth import secret_key
from lenscat.grading.grades import Grader, conflicts_table, graded_by
from lenscat.learning.campaigns import current_loop, get_campaign
from lenscat.registry.versions import get_model
from lenscat.settings import get_settings

KINDS = ("top", "similar", "sql", "loop", "conflicts", "sources")
MAX_CELLS = 500


@dataclass
class Sample:
    """A grid's content."""

    kind: str
    title: str
    label: str  # stored with each grade as ``grades.sample``
    source_ids: list[int]
    values: dict[int, str] = field(default_factory=dict)  # per-cell caption (score, similarity)
    loop_id: int | None = None
    loop_complete: bool = False
    campaign: str | None = None
    notes: list[str] = field(default_factory=list)


def _check_n(n: int) -> int:
    if not 1 <= int(n) <= MAX_CELLS:
        raise InvalidParameter("n", f"a grid holds 1 to {MAX_CELLS} images, not {n}")
    return int(n)


def resolve_sample(params: dict[str, str], *, session: Session) -> Sample:
    """The grid for query parameters ``kind`` (top|similar|sql|loop|conflicts|sources) and its options.

    * ``top``: ``classifier`` (name or name@version), ``n``.
    * ``similar``: ``source_id``, ``encoder`` (default: the latest with an embedding of the source), ``n``.
    * ``sql``: ``sql``, a read-only SELECT returning a ``source_id`` column (run as the reader role).
    * ``loop``: ``campaign``, the current batch of an active-learning campaign.
    * ``conflicts``: sources whose graders disagree by 2+ grade points.
    * ``sources``: ``ids``, a comma-separated list of source ids.
    """
    kind = params.get("kind", "top")
    n = _check_n(int(params.get("n") or 100)) if str(params.get("n") or "100").isdigit() else None
    if n is None:
        raise InvalidParameter("n", f"n must be a whole number, not {params.get('n')!r}")
    if kind == "top":
        return _top(params.get("classifier") or "", n, session)
    if kind == "similar":
        return _similar(params, n, session)
    if kind == "sql":
        return _sql(params.get("sql") or "", n)
    if kind == "loop":
        return _loop(params.get("campaign") or "", session)
    if kind == "conflicts":
        t = conflicts_table(session=session, limit=n)
        ids = [int(x) for x in t["source_id"]] if len(t) else []
        vals = {int(r["source_id"]): str(r["grades"]) for r in t} if len(t) else {}
        return Sample("conflicts", "Conflicting grades", "conflicts", ids, vals)
    if kind == "sources":
        raw = [x.strip() for x in (params.get("ids") or "").split(",") if x.strip()]
        if not raw or not all(x.isdigit() for x in raw):
            raise InvalidParameter("ids", "ids must be a comma-separated list of source ids")
        return Sample("sources", f"{len(raw)} sources", "list", [int(x) for x in raw][:MAX_CELLS])
    raise InvalidParameter("kind", f"unknown grid kind {kind!r}; expected one of {', '.join(KINDS)}")


def _top(classifier: str, n: int, session: Session) -> Sample:
    if not classifier:
        raise InvalidParameter("classifier", "choose a classifier for a top-N grid")
    model = get_model("classifier", classifier, session=session)
    t = top_candidates(model, n, session=session)
    ids = [int(x) for x in t["source_id"]] if len(t) else []
    vals = {int(r["source_id"]): f"score {float(r['score']):.3f}" for r in t} if len(t) else {}
    return Sample("top", f"Top {n} of {model.label}", f"top:{model.label}", ids, vals)


def _similar(params: dict[str, str], n: int, session: Session) -> Sample:
    sid_txt = params.get("source_id") or ""
    if not sid_txt.isdigit():
        raise InvalidParameter("source_id", f"source_id must be a source id, not {sid_txt!r}")
    sid = int(sid_txt)
    enc_name = params.get("encoder") or default_encoder(sid, session=session)
    if enc_name is None:
        raise MissingPrerequisite(
            f"source {sid} has no embedding yet; {{step}} first",
            Step(("embed",), (("encoder", "ENCODER"),), "embed its survey with an encoder"),
        )
    model = get_model("encoder", enc_name, session=session)
    q = query_from_source(sid, model, session=session)
    t = similar(q, encoder=model, k=min(n, 1000), mag_window=None, exclude_radius=25 * u.arcsec, session=session)
    ids = [int(x) for x in t["source_id"]] if len(t) else []
    vals = {int(r["source_id"]): f"sim {float(r['similarity']):.3f}" for r in t} if len(t) else {}
    return Sample("similar", f"More like source {sid} ({model.label})", f"similar:{sid}", ids, vals)


def default_encoder(source_id: int, *, session: Session) -> str | None:
    """name@version of the newest encoder holding an embedding of ``source_id``."""
    row = session.execute(
        text(
            """
            SELECT m.name || '@' || m.version FROM lenscat.embeddings e
            JOIN lenscat.model_versions m ON m.model_id = e.model_id
            WHERE e.source_id = :i ORDER BY m.created_at DESC, m.model_id DESC LIMIT 1
            """
        ),
        {"i": int(source_id)},
    ).scalar()
    return str(row) if row else None


def sql_grid_signature(sql: str, csrf: str) -> str:
    """The signature that lets a grid link run ``sql``: an HMAC of the SQL and the login's CSRF token.

    The query page signs the link it shows after a POST; a link made anywhere else (another site,
    another login) does not carry a valid signature, so a GET cannot make the server run SQL.
    """
    return hmac.new(secret_key(), f"sql-grid\0{csrf}\0{sql}".encode(), hashlib.sha256).hexdigest()


def sql_grid_ok(sql: str, signature: str | None, csrf: str) -> bool:
    """Whether ``signature`` is :func:`sql_grid_signature` of ``sql`` for this login."""
    return bool(signature) and hmac.compare_digest(sql_grid_signature(sql, csrf), str(signature))


def _sql(sql: str, n: int) -> Sample:
    if not sql.strip():
        raise InvalidParameter("sql", "write a SELECT that returns a source_id column")
    columns, rows, _ = run_readonly_sql(sql, max_rows=n, timeout_s=get_settings().web_statement_timeout_s)
    if "source_id" not in columns:
        raise InvalidParameter(
            "sql", f"the query must return a source_id column (it returned {', '.join(columns) or 'none'})"
        )
    j = columns.index("source_id")
    ids: list[int] = []
    for r in rows:
        if r[j] is not None and int(r[j]) not in ids:
            ids.append(int(r[j]))
    return Sample("sql", f"SQL sample ({len(ids)} sources)", "sql", ids)


def _loop(campaign: str, session: Session) -> Sample:
    if not campaign:
        raise InvalidParameter("campaign", "choose an active-learning campaign")
    camp = get_campaign(campaign, session=session)
    loop = current_loop(camp, session=session)
    if loop is None:
        raise MissingPrerequisite(
            f"campaign {campaign!r} has no batch yet; {{step}} first",
            Step(("learn", "next"), ((None, campaign),), "propose its first batch"),
        )
    model = f" ({loop.model})" if getattr(loop, "model", None) else " (random batch)"
    return Sample(
        "loop",
        f"Campaign {campaign}, loop {loop.loop_no}{model}",
        f"loop:{campaign}/{loop.loop_no}",
        list(loop.batch),
        loop_id=loop.loop_id,
        loop_complete=bool(loop.completed),
        campaign=campaign,
    )


def cells(sample: Sample, grader: Grader | None, *, session: Session) -> list[dict[str, Any]]:
    """One dict per grid cell: ids, position, r magnitude, caption, this grader's grade, consensus."""
    ids = sample.source_ids
    if not ids:
        return []
    rows = (
        session.execute(
            text(
                """
            SELECT v.source_id, v.objid, v.survey, v.ra, v.dec, v.mag_r, v.cutout_file IS NOT NULL AS has_cutout,
                   c.consensus_grade, c.n_votes
            FROM public.sources v LEFT JOIN public.grade_consensus c USING (source_id)
            WHERE v.source_id = ANY(:ids)
            """
            ),
            {"ids": ids},
        )
        .mappings()
        .all()
    )
    by_id = {int(r["source_id"]): dict(r) for r in rows}
    mine = graded_by(grader, ids, session=session) if grader else {}
    out = []
    for i, sid in enumerate(ids):
        r = by_id.get(sid)
        if r is None:
            continue
        mag = r["mag_r"]
        out.append(
            {
                "index": i,
                "source_id": sid,
                "objid": r["objid"],
                "survey": r["survey"],
                "ra": float(r["ra"]),
                "dec": float(r["dec"]),
                "mag_r": None if mag is None or not np.isfinite(mag) else float(mag),
                "has_cutout": bool(r["has_cutout"]),
                "caption": sample.values.get(sid, ""),
                "my_grade": mine.get(sid),
                "consensus": r["consensus_grade"],
                "n_votes": r["n_votes"] or 0,
            }
        )
    return out
