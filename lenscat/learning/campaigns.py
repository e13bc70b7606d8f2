"""Active-learning campaigns and their loops as stored: create, read, list and refresh.

A campaign (``lenscat.al_campaigns``) names the survey, the encoder, the strategy and the training
settings (:data:`DEFAULT_SETTINGS`) of a sequence of loops (``lenscat.al_loops``); a loop's progress
(how many of its batch were inspected) is refreshed from the grades. New loops are proposed by
:mod:`lenscat.learning.active`.
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session

from lenscat.catalogue.surveys import get_survey
from lenscat.classifiers.labels import LABEL_PROVENANCE, ORIGINS
from lenscat.db.session import durable
from lenscat.errors import LenscatError, NotFoundError, Step
from lenscat.learning.types import Campaign, Loop
from lenscat.registry.versions import ModelVersion, check_name, get_model

STRATEGIES = ("top", "uncertainty")


SEED_ORIGINS = tuple(o for o in ORIGINS if o != "human")


#: Training settings of a campaign (``lenscat.al_campaigns.settings``) and their defaults.
DEFAULT_SETTINGS: dict[str, Any] = {
    "seed_origins": [],  # label origins whose lenses join the human ones (literature, import, simulation)
    "seed_negatives": False,  # also train on those origins' non-lens labels
    "ratio": 1000.0,  # random survey negatives per lens label (Stein et al. 2022 used 1:4000)
    "max_pool_fraction": 0.5,  # at most this fraction of the negative pool is drawn
    "l2": 1e-4,
    "epochs": 20,
    "loss": "bce",
    "class_weight": "none",
    "surveys": [],  # only sources of these surveys (default: every embedded source)
    "start_classifier": "",  # with no lens label yet: propose the top of this classifier (e.g. an anomaly score)
}


# ------------------------------------------------------------------------------------ campaigns
def _settings(settings: dict[str, Any] | None) -> dict[str, Any]:
    """Defaults merged with ``settings``, validated."""
    given = dict(settings or {})
    unknown = sorted(set(given) - set(DEFAULT_SETTINGS))
    if unknown:
        raise LenscatError(
            f"unknown campaign setting(s) {', '.join(unknown)}; known: {', '.join(sorted(DEFAULT_SETTINGS))}"
        )
    out = {**DEFAULT_SETTINGS, **given}
    origins = [str(o).strip() for o in out["seed_origins"] or [] if str(o).strip()]
    bad = [o for o in origins if o not in SEED_ORIGINS]
    if bad:
        raise LenscatError(
            f"unknown seed label origin(s) {', '.join(bad)}; expected {', '.join(SEED_ORIGINS)} "
            "(human grades are always used)"
        )
    out["seed_origins"] = sorted(set(origins))
    out["seed_negatives"] = bool(out["seed_negatives"])
    out["surveys"] = sorted({str(s) for s in out["surveys"] or []})
    out["start_classifier"] = str(out["start_classifier"] or "")
    try:
        out["ratio"], out["l2"] = float(out["ratio"]), float(out["l2"])
        out["max_pool_fraction"], out["epochs"] = float(out["max_pool_fraction"]), int(out["epochs"])
    except (TypeError, ValueError) as exc:
        raise LenscatError(f"campaign settings: {exc}") from exc
    if out["ratio"] <= 0 or out["l2"] < 0 or out["epochs"] < 1 or not 0 < out["max_pool_fraction"] <= 1:
        raise LenscatError("campaign settings: ratio must be > 0, l2 >= 0, epochs >= 1 and max_pool_fraction in (0, 1]")
    if out["loss"] not in ("bce", "focal") or out["class_weight"] not in ("none", "balanced"):
        raise LenscatError("campaign settings: loss must be bce or focal, class_weight none or balanced")
    return out


_CAMPAIGN_SQL = """
    SELECT c.campaign_id, c.name, c.encoder_id, m.name || '@' || m.version AS encoder, c.strategy, c.batch_size,
           c.settings, c.created_at
    FROM lenscat.al_campaigns c JOIN lenscat.model_versions m ON m.model_id = c.encoder_id
"""


def _campaign_row(r: Any) -> Campaign:
    return Campaign(
        int(r.campaign_id),
        r.name,
        int(r.encoder_id),
        r.encoder,
        r.strategy,
        int(r.batch_size),
        dict(r.settings or {}),
        r.created_at,
    )


def create_campaign(
    name: str,
    encoder: str | ModelVersion,
    *,
    session: Session,
    batch_size: int = 100,
    strategy: str = "top",
    settings: dict[str, Any] | None = None,
) -> Campaign:
    """Create an active-learning campaign (idempotent on ``name``).

    Parameters
    ----------
    name
        Campaign name; its classifier versions are ``al-<name>@1, 2, ...``.
    encoder
        Encoder whose embeddings the campaign learns on (``NAME`` means its latest version now;
        the campaign keeps that version).
    batch_size
        Sources proposed per loop.
    strategy
        ``top`` (highest scores among ungraded sources) or ``uncertainty`` (scores nearest the
        imbalance-corrected decision boundary, :func:`~lenscat.learning.active.uncertainty`).
    settings
        Overrides of :data:`DEFAULT_SETTINGS` (``seed_origins``, ``ratio``, ``l2``, ...).

    Returns
    -------
    Campaign
        The new campaign, or the existing one when it has the same encoder version, strategy,
        batch size and settings.

    Raises
    ------
    LenscatError
        A campaign of that name exists with different parameters, or an argument is invalid.
    """
    check_name(f"al-{name}")
    if strategy not in STRATEGIES:
        raise LenscatError(f"unknown strategy {strategy!r}; expected one of {', '.join(STRATEGIES)}")
    if int(batch_size) < 1:
        raise LenscatError("the batch size must be at least 1")
    enc = encoder if isinstance(encoder, ModelVersion) else get_model("encoder", encoder, session=session)
    if enc.kind != "encoder":
        raise LenscatError(f"{enc.label} is a {enc.kind}, not an encoder")
    full = _settings(settings)
    if full["start_classifier"]:  # the version it names now is the one the campaign keeps
        full["start_classifier"] = get_model("classifier", full["start_classifier"], session=session).label
    for sv in full["surveys"]:
        get_survey(sv, session=session)
    existing = session.execute(text(_CAMPAIGN_SQL + " WHERE c.name = :n"), {"n": name}).first()
    if existing is not None:
        camp = _campaign_row(existing)
        diffs = []
        if camp.encoder_id != enc.model_id:
            diffs.append(f"encoder {camp.encoder} (asked: {enc.label})")
        if camp.strategy != strategy:
            diffs.append(f"strategy {camp.strategy} (asked: {strategy})")
        if camp.batch_size != int(batch_size):
            diffs.append(f"batch size {camp.batch_size} (asked: {int(batch_size)})")
        changed = sorted(k for k in set(camp.settings) | set(full) if camp.settings.get(k) != full.get(k))
        if changed:
            diffs.append(
                "settings " + ", ".join(f"{k}={camp.settings.get(k)!r} (asked: {full.get(k)!r})" for k in changed)
            )
        if diffs:
            raise LenscatError(f"campaign {name!r} already exists with " + "; ".join(diffs) + ": choose another name")
        return camp
    durable(session)
    row = session.execute(
        text(
            """
            INSERT INTO lenscat.al_campaigns (name, encoder_id, strategy, batch_size, settings)
            VALUES (:n, :e, :s, :b, CAST(:settings AS jsonb))
            ON CONFLICT ON CONSTRAINT uq_al_campaigns_name DO NOTHING
            RETURNING campaign_id
            """
        ),
        {
            "n": name,
            "e": enc.model_id,
            "s": strategy,
            "b": int(batch_size),
            "settings": json.dumps(full, sort_keys=True),
        },
    ).first()
    if row is None:  # created concurrently since the check: compare with that one
        return create_campaign(name, enc, session=session, batch_size=batch_size, strategy=strategy, settings=settings)
    return get_campaign(name, session=session)


def get_campaign(name: str | Campaign, *, session: Session) -> Campaign:
    """The campaign ``name``.

    Raises
    ------
    NotFoundError
        No campaign of that name.
    """
    if isinstance(name, Campaign):
        return name
    row = session.execute(text(_CAMPAIGN_SQL + " WHERE c.name = :n"), {"n": name}).first()
    if row is None:
        raise NotFoundError(
            f"no active-learning campaign {name!r}; {{step}}",
            step=Step(("learn", "start"), ((None, name), ("encoder", "ENCODER")), "start one with an encoder"),
        )
    return _campaign_row(row)


def list_campaigns(*, session: Session) -> list[dict[str, Any]]:
    """Every campaign with its progress: loops, sources proposed and inspected, lenses found."""
    ids = session.execute(text("SELECT loop_id FROM lenscat.al_loops")).scalars().all()
    _refresh([int(i) for i in ids], session=session)
    rows = (
        session.execute(
            text(
                """
            SELECT c.name, m.name || '@' || m.version AS encoder, c.strategy, c.batch_size,
                   count(l.loop_id) AS n_loops, coalesce(sum(cardinality(l.batch)), 0) AS n_proposed,
                   coalesce(sum(l.n_graded), 0) AS n_graded, coalesce(sum(l.n_found), 0) AS n_found,
                   max(l.loop_no) AS current_loop,
                   (SELECT l2.completed_at IS NOT NULL FROM lenscat.al_loops l2
                    WHERE l2.campaign_id = c.campaign_id ORDER BY l2.loop_no DESC LIMIT 1) AS current_complete,
                   c.settings, c.created_at
            FROM lenscat.al_campaigns c JOIN lenscat.model_versions m ON m.model_id = c.encoder_id
            LEFT JOIN lenscat.al_loops l ON l.campaign_id = c.campaign_id
            GROUP BY c.campaign_id, m.name, m.version ORDER BY c.name
            """
            )
        )
        .mappings()
        .all()
    )
    return [dict(r) for r in rows]


# ------------------------------------------------------------------------------------ loops
_LOOP_SQL = """
    SELECT l.loop_id, l.loop_no, c.name AS campaign, l.campaign_id, l.batch, l.model_id,
           m.name || '@' || m.version AS model, l.n_positive, l.n_negative, l.labels_sha256, l.n_graded, l.n_found,
           l.created_at, l.completed_at, l.detail
    FROM lenscat.al_loops l JOIN lenscat.al_campaigns c USING (campaign_id)
    LEFT JOIN lenscat.model_versions m ON m.model_id = l.model_id
"""


def _refresh(loop_ids: list[int], *, session: Session) -> dict[int, int]:
    """Recount the loops' n_graded and n_found from the grades and human labels of their batch
    sources, and set completed_at when every source has been inspected; returns n_inspected per loop."""
    if not loop_ids:
        return {}
    rows = session.execute(
        text(
            """
            WITH b AS (
                SELECT l.loop_id, u.source_id FROM lenscat.al_loops l
                CROSS JOIN LATERAL unnest(l.batch) AS u(source_id) WHERE l.loop_id = ANY(:ids)
            ),
            latest AS (
                SELECT DISTINCT ON (g.source_id, g.grader_id) g.source_id, g.grade FROM lenscat.grades g
                WHERE g.source_id IN (SELECT source_id FROM b)
                ORDER BY g.source_id, g.grader_id, g.grade_id DESC
            ),
            per AS (SELECT source_id, bool_or(grade <> 'S') AS graded FROM latest GROUP BY source_id),
            stats AS (
                SELECT b.loop_id, count(*) AS n_batch, count(p.source_id) AS n_inspected,
                       count(*) FILTER (WHERE p.graded) AS n_graded, count(h.source_id) AS n_found
                FROM b LEFT JOIN per p USING (source_id)
                LEFT JOIN lenscat.labels h ON h.source_id = b.source_id AND h.origin = 'human'
                     AND h.provenance = :prov AND h.label = 1
                GROUP BY b.loop_id
            )
            UPDATE lenscat.al_loops l
            SET n_graded = s.n_graded, n_found = s.n_found,
                completed_at = CASE WHEN l.completed_at IS NULL AND s.n_inspected >= s.n_batch
                                    THEN clock_timestamp() ELSE l.completed_at END
            FROM stats s WHERE s.loop_id = l.loop_id
            RETURNING l.loop_id, s.n_inspected
            """
        ),
        {"ids": loop_ids, "prov": LABEL_PROVENANCE},
    ).all()
    return {int(r.loop_id): int(r.n_inspected) for r in rows}


def _loop_row(r: Any, n_inspected: int) -> Loop:
    detail = dict(r.detail or {})
    scores = detail.pop("scores", None)
    return Loop(
        loop_id=int(r.loop_id),
        loop_no=int(r.loop_no),
        campaign=r.campaign,
        campaign_id=int(r.campaign_id),
        batch=[int(x) for x in r.batch],
        scores=[float(x) for x in scores] if scores is not None else None,
        model=r.model,
        model_id=int(r.model_id) if r.model_id is not None else None,
        n_positive=int(r.n_positive),
        n_negative=int(r.n_negative),
        labels_sha256=r.labels_sha256,
        n_inspected=n_inspected,
        n_graded=int(r.n_graded),
        n_found=int(r.n_found),
        completed=r.completed_at is not None,
        created_at=r.created_at,
        completed_at=r.completed_at,
        detail=detail,
    )


def _loops(where: str, params: dict[str, Any], *, session: Session) -> list[Loop]:
    ids = [
        int(i)
        for i in session.execute(text(f"SELECT l.loop_id FROM lenscat.al_loops l {where}"), params).scalars().all()
    ]
    inspected = _refresh(ids, session=session)
    rows = session.execute(
        text(_LOOP_SQL + " WHERE l.loop_id = ANY(:ids) ORDER BY l.campaign_id, l.loop_no"), {"ids": ids}
    ).all()
    return [_loop_row(r, inspected.get(int(r.loop_id), 0)) for r in rows]


def refresh_loop(loop_id: int, *, session: Session) -> Loop:
    """A loop with its counts brought up to date (``completed_at`` set once every source is inspected).

    Raises
    ------
    NotFoundError
        No loop with that id.
    """
    loops = _loops("WHERE l.loop_id = :l", {"l": int(loop_id)}, session=session)
    if not loops:
        raise NotFoundError(f"no active-learning loop {loop_id}")
    return loops[0]


def current_loop(campaign: str | Campaign, *, session: Session) -> Loop | None:
    """The campaign's latest loop (refreshed), or None before the first proposal."""
    camp = get_campaign(campaign, session=session)
    loops = _loops("WHERE l.campaign_id = :c ORDER BY l.loop_no DESC LIMIT 1", {"c": camp.campaign_id}, session=session)
    return loops[0] if loops else None


def campaign_loops(campaign: str | Campaign, *, session: Session) -> list[Loop]:
    """Every loop of the campaign, first to last, refreshed."""
    camp = get_campaign(campaign, session=session)
    return _loops("WHERE l.campaign_id = :c", {"c": camp.campaign_id}, session=session)
