"""Active learning: the linear probe retrained on human grades after every graded batch.

A *campaign* learns on one encoder version's embeddings. Each *loop* (``lenscat.al_loops``):

1. trains the linear probe (:func:`lenscat.classifiers.classifier.fit_linear_version`: full-batch L-BFGS,
   seconds) with positives = human lens labels (consensus A/B, refreshed by
   :func:`lenscat.grading.grades.record_grades`) plus, when the campaign's settings name them, the lens
   labels of other origins (``seed_origins``: a literature cross-match, an imported list,
   simulation truth), and negatives = human non-lens labels plus sources drawn at random from the
   survey (Stein et al. 2022), more than 25 arcsec from any lens label or literature lens, at
   ``ratio`` per lens label;
2. registers it as the next version of classifier ``al-<campaign>`` (parent encoder, hash of the
   training set, hyper-parameters), so the loop's model is as traceable as any other;
3. scores every embedded source of the encoder in memory, reading the vectors in bulk by
   source-id range (one binary COPY per range), and proposes the ``batch_size`` sources nobody has
   graded, not labelled for training and not proposed before: the highest scores (strategy
   ``top``) or the scores nearest the decision boundary (``uncertainty``: 0.5 once corrected for
   the training set's imbalance, see :func:`uncertainty`);
4. records the labels used (counts and ``labels_sha256``), the model version, the batch in
   proposal order with its scores, and timings (``detail``).

With no lens label at all (no grades yet, no seed labels), loop 1 is a random batch
(``model_id`` NULL, ``detail.random`` true), or, when the campaign names a ``start_classifier``
(e.g. an anomaly score, :mod:`lenscat.embeddings.anomaly`), the top of that classifier's stored scores
(``model_id`` that version).

A loop is *complete* once every source of its batch has been inspected: any grade, a skip
included (a skipped image was looked at; proposing it again would waste the grader's time).
``n_graded`` counts the batch sources with a non-skip grade, ``n_found`` those whose human label is
a lens. :func:`propose_next` never proposes a second loop while the current one is incomplete: it
returns the current loop (so it is safe to call twice, or from two web requests at once: the
campaign row is locked while a loop is proposed). :func:`advance` is what a caller runs after each
submitted batch: it proposes the next loop when the current one is complete.

Functions that touch the database take ``session=``; the caller commits.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from astropy.table import Table
from sqlalchemy import text
from sqlalchemy.orm import Session

from lenscat.catalogue.surveys import get_survey, real_survey_ids
from lenscat.classifiers.classifier import (
    TrainingSplit,
    candidate_ids,
    fit_linear_version,
    negative_pool,
    score_function,
)
from lenscat.classifiers.labels import ORIGINS, resolve_labels
from lenscat.db.session import durable
from lenscat.embeddings.vectors import read_embeddings
from lenscat.errors import LenscatError, NotFoundError
from lenscat.grading.grades import LABEL_PROVENANCE
from lenscat.registry.versions import ModelVersion, check_name, get_model

STRATEGIES = ("top", "uncertainty")
SEED_ORIGINS = tuple(o for o in ORIGINS if o != "human")
SCORE_CHUNK = 100_000  # sources scored per bulk read of the embeddings

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


class CampaignExhausted(LenscatError):
    """Every embedded source of the campaign has been inspected, labelled or proposed."""


@dataclass(frozen=True)
class Campaign:
    """One row of ``lenscat.al_campaigns``."""

    campaign_id: int
    name: str
    encoder_id: int
    encoder: str
    strategy: str
    batch_size: int
    settings: dict[str, Any]
    created_at: dt.datetime

    @property
    def classifier_name(self) -> str:
        """Name its classifier versions are registered under: ``al-<name>``."""
        return f"al-{self.name}"


@dataclass(frozen=True)
class Loop:
    """One row of ``lenscat.al_loops``, with its inspection counts.

    ``batch`` holds the proposed source ids in proposal order and ``scores`` their scores under the
    loop's model (None for a random batch). ``completed`` is True once every batch source has a
    grade (a skip counts as inspected); ``n_inspected`` counts those, ``n_graded`` the ones with a
    non-skip grade, ``n_found`` the ones whose human label is a lens.
    """

    loop_id: int
    loop_no: int
    campaign: str
    campaign_id: int
    batch: list[int]
    scores: list[float] | None
    model: str | None
    model_id: int | None
    n_positive: int
    n_negative: int
    labels_sha256: str | None
    n_inspected: int
    n_graded: int
    n_found: int
    completed: bool
    created_at: dt.datetime
    completed_at: dt.datetime | None
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def random(self) -> bool:
        """True when the batch was drawn at random (no lens label to train on yet)."""
        return self.model_id is None

    @property
    def sample(self) -> str:
        """The ``sample`` to record with the grades of this batch: ``loop:<campaign>/<loop_no>``."""
        return loop_sample(self)


def loop_sample(loop: Loop) -> str:
    """The ``grades.sample`` text of a loop's grades: ``loop:<campaign>/<loop_no>``."""
    return f"loop:{loop.campaign}/{loop.loop_no}"


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
        imbalance-corrected decision boundary, :func:`uncertainty`).
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
            f"no active-learning campaign {name!r}; start one with: lenscat learn start {name} --encoder ENCODER"
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


def _inspected_ids(camp: Campaign, *, session: Session) -> np.ndarray:
    """Sources graded by anyone (skips included) or proposed in an earlier loop of the campaign."""
    ids = (
        session.execute(
            text(
                """
            SELECT DISTINCT source_id FROM lenscat.grades
            UNION
            SELECT DISTINCT unnest(batch) FROM lenscat.al_loops WHERE campaign_id = :c
            """
            ),
            {"c": camp.campaign_id},
        )
        .scalars()
        .all()
    )
    return np.asarray(sorted(int(i) for i in ids), dtype=np.int64)


def _training_labels(camp: Campaign, *, session: Session) -> tuple[dict[int, int], dict[str, int]]:
    """Labels to train on: human labels, plus the seed origins' lens (and, if set, non-lens) labels.

    A human label overrides a seed label of the same source.
    """
    human = resolve_labels(session=session, origins=["human"])
    seeds = (
        resolve_labels(session=session, origins=list(camp.settings.get("seed_origins") or []))
        if camp.settings.get("seed_origins")
        else {}
    )
    keep_neg = bool(camp.settings.get("seed_negatives"))
    labels = {s: y for s, y in seeds.items() if y == 1 or keep_neg}
    labels.update(human)
    counts = {
        "human_positive": sum(1 for y in human.values() if y == 1),
        "human_negative": sum(1 for y in human.values() if y == 0),
        "seed_positive": sum(1 for s, y in labels.items() if y == 1 and s not in human),
        "seed_negative": sum(1 for s, y in labels.items() if y == 0 and s not in human),
    }
    return labels, counts


def _score_all(model: ModelVersion, enc: ModelVersion, ids: np.ndarray, *, session: Session) -> np.ndarray:
    """Scores of the sorted source ids ``ids`` under a linear classifier version, reading the
    encoder's vectors in bulk one source-id range at a time (memory bounded by SCORE_CHUNK)."""
    fn = score_function(model)
    out = np.empty(len(ids), dtype=np.float64)
    for i in range(0, len(ids), SCORE_CHUNK):
        part = ids[i : i + SCORE_CHUNK]
        got, vec = read_embeddings(enc, id_range=(int(part[0]), int(part[-1])), session=session)
        pos = np.searchsorted(got, part)
        if len(got) == 0 or (pos >= len(got)).any() or (got[np.minimum(pos, len(got) - 1)] != part).any():
            raise LenscatError(f"some sources lost their {enc.label} embedding while being scored")
        out[i : i + len(part)] = fn(vec[pos])
    return out


def uncertainty(scores: np.ndarray, boundary: float) -> np.ndarray:
    """Distance of each score from the decision boundary, in logit units (smaller = more uncertain).

    The probe is trained at the campaign's lens:non-lens imbalance (1:``ratio`` plus the graded
    non-lenses), so its scores are calibrated to that prior and 0.5 lies beyond nearly every
    source: "nearest 0.5" would then just be "highest score". The boundary used is the prior-
    corrected one (King & Zeng 2001), the score whose odds equal the training set's n_pos / n_neg,
    i.e. where a class-balanced classifier would say 0.5 (0.5 itself when the campaign trains
    with ``class_weight='balanced'``); ``|logit(s) - logit(boundary)|`` is proportional to the
    distance of the embedding from that hyperplane.
    """
    s = np.clip(np.asarray(scores, dtype=np.float64), 1e-12, 1 - 1e-12)
    b = min(max(float(boundary), 1e-12), 1 - 1e-12)
    return np.abs(np.log(s / (1 - s)) - np.log(b / (1 - b)))


def _top_scored(model: ModelVersion, ids: np.ndarray, n: int, *, session: Session) -> tuple[np.ndarray, np.ndarray]:
    """The ``n`` of ``ids`` with the highest stored scores of ``model`` (ties: smaller id first), and their scores."""
    rows = session.execute(
        text(
            f"SELECT source_id, score FROM lenscat.scores WHERE model_id = {int(model.model_id)} "
            "AND source_id = ANY(:ids) ORDER BY score DESC, source_id LIMIT :n"
        ),
        {"ids": [int(i) for i in ids], "n": int(n)},
    ).all()
    if not rows:
        raise LenscatError(
            f"classifier {model.label} has scored none of the {len(ids)} sources left to propose: score it first"
        )
    return np.array([r[0] for r in rows], dtype=np.int64), np.array([r[1] for r in rows], dtype=np.float64)


def propose_next(campaign: str | Campaign, *, session: Session, seed: int = 0) -> Loop:
    """Train the campaign's classifier on the labels so far and propose the next batch.

    Returns the current loop unchanged when it is not complete (every batch source needs a grade,
    a skip included, before a new loop is proposed), so calling it twice is safe. The campaign row
    is locked while a loop is proposed, so concurrent callers get the same loop.

    Parameters
    ----------
    campaign
        Campaign (or its name).
    seed
        Seed of the random negatives and weight initialisation (combined with the loop number), or
        of the random first batch.

    Returns
    -------
    Loop
        The loop proposed (or the incomplete current one).

    Raises
    ------
    CampaignExhausted
        Every embedded source has been inspected, labelled for training or proposed already.
    LenscatError
        The encoder has no embeddings, or there is nothing to draw negatives from.
    """
    t_start = time.perf_counter()
    camp = get_campaign(campaign, session=session)
    session.execute(
        text("SELECT 1 FROM lenscat.al_campaigns WHERE campaign_id = :c FOR UPDATE"), {"c": camp.campaign_id}
    )
    cur = current_loop(camp, session=session)
    if cur is not None and not cur.completed:
        return cur
    loop_no = cur.loop_no + 1 if cur is not None else 1
    st = camp.settings
    enc = get_model("encoder", camp.encoder_id, session=session)
    # no surveys named: every real survey (injected lenses are never proposed to graders)
    sv = [get_survey(s, session=session).survey_id for s in st.get("surveys") or []] or real_survey_ids(session=session)
    cand = candidate_ids(session=session, surveys=sv, encoder=enc)
    if len(cand) == 0:
        raise LenscatError(
            f"encoder {enc.label} has no embeddings{' in ' + ', '.join(st['surveys']) if st.get('surveys') else ''}"
            f": run lenscat embed --encoder {enc.name}"
        )
    rng = np.random.default_rng([int(seed), loop_no])
    labels, counts = _training_labels(camp, session=session)
    lab_ids = np.fromiter(labels, np.int64, len(labels))
    lab_y = np.fromiter(labels.values(), np.int8, len(labels))
    in_cand = np.isin(lab_ids, cand)
    pos = np.sort(lab_ids[in_cand & (lab_y == 1)])
    neg = np.sort(lab_ids[in_cand & (lab_y == 0)])
    free = cand[~np.isin(cand, _inspected_ids(camp, session=session)) & ~np.isin(cand, lab_ids)]
    if len(free) == 0:
        raise CampaignExhausted(
            f"campaign {camp.name!r}: every one of the {len(cand)} sources embedded by "
            f"{enc.label} has been inspected, labelled or proposed; nothing left to propose"
        )
    t_labels = time.perf_counter() - t_start
    detail: dict[str, Any] = {
        "strategy": camp.strategy,
        "seed": int(seed),
        "n_embedded": len(cand),
        "n_candidates": len(free),
        "labels": counts,
    }
    model: ModelVersion | None = None
    labels_sha = None
    n_neg = 0
    if len(pos) == 0 and st.get("start_classifier"):  # e.g. an anomaly score: the most unusual sources first
        model = get_model("classifier", str(st["start_classifier"]), session=session)
        batch, scores = _top_scored(model, free, camp.batch_size, session=session)
        detail.update(
            random=False,
            start_classifier=model.label,
            reason=f"no lens labels yet: the top of {model.label} among the sources not yet inspected",
        )
        timings = {"labels": t_labels}
    elif len(pos) == 0:
        batch = rng.permutation(free)[: camp.batch_size]
        scores = None
        detail.update(
            random=True, reason="no lens labels yet (no human lens grades and no seed labels): a random batch"
        )
        timings = {"labels": t_labels}
    else:
        t0 = time.perf_counter()
        pool = negative_pool(cand, pos, session=session, surveys=sv)
        pool = pool[~np.isin(pool, lab_ids)]
        want = int(round(float(st["ratio"]) * len(pos)))
        usable = int(float(st["max_pool_fraction"]) * len(pool))
        n_random = min(want, usable)
        notes = (
            []
            if n_random == want
            else [
                f"{len(pool)} unlabelled sources far from known lenses, "
                f"{usable} usable: 1:{n_random / len(pos):.3g} random negatives "
                f"instead of 1:{float(st['ratio']):g}"
            ]
        )
        random_neg = np.sort(rng.choice(pool, n_random, replace=False)) if n_random else pool[:0]
        if len(neg) + len(random_neg) == 0:
            raise LenscatError(
                f"campaign {camp.name!r}: no non-lens labels and no unlabelled sources to draw negatives from"
            )
        n_neg = len(neg) + len(random_neg)
        counts["random_negative"] = len(random_neg)
        split = TrainingSplit(
            train_ids=np.concatenate([pos, neg, random_neg]),
            train_y=np.r_[np.ones(len(pos)), np.zeros(n_neg)].astype(np.int8),
            val_ids=pos[:0],
            val_y=np.zeros(0, np.int8),
            pool_size=len(pool),
            notes=notes,
        )
        labels_sha = split.sha256("")
        t_split = time.perf_counter() - t0
        hparams = {
            "campaign": camp.name,
            "strategy": camp.strategy,
            "ratio": float(st["ratio"]),
            "max_pool_fraction": float(st["max_pool_fraction"]),
            "origins": ["human", *st["seed_origins"]],
            "seed_negatives": bool(st["seed_negatives"]),
            "surveys": st["surveys"],
            "labels_sha256": labels_sha,
        }
        res = fit_linear_version(
            camp.classifier_name,
            enc,
            split,
            session=session,
            hparams=hparams,
            epochs=int(st["epochs"]),
            l2=float(st["l2"]),
            loss=str(st["loss"]),
            class_weight=str(st["class_weight"]),
            seed=int(seed) * 1000 + loop_no,
        )
        model = res.model
        t1 = time.perf_counter()
        sc = _score_all(model, enc, free, session=session)
        t_score = time.perf_counter() - t1
        # a class-weighted fit is balanced already; otherwise correct 0.5 for the training prior
        boundary = 0.5 if st["class_weight"] == "balanced" else len(pos) / (len(pos) + n_neg)
        key = uncertainty(sc, boundary) if camp.strategy == "uncertainty" else -sc
        order = np.lexsort((free, key))[: camp.batch_size]  # ties: smaller source id first
        batch, scores = free[order], sc[order]
        if camp.strategy == "uncertainty":
            detail["boundary"] = boundary
        detail.update(
            random=False,
            notes=notes,
            created_version=res.created,
            train={"epoch_kept": res.report["epoch_kept"], "train_loss": res.report.get("train_loss")},
            batch_score_min=float(scores.min()),
            batch_score_max=float(scores.max()),
            n_score_ge_half=int((sc >= 0.5).sum()),
        )
        timings = {
            "labels": t_labels,
            "split": t_split,
            "train": float(res.report["seconds"]),
            "read_training_vectors": float(res.report["read_seconds"]),
            "score": t_score,
        }
    timings["total"] = time.perf_counter() - t_start
    detail["seconds"] = {k: round(float(v), 3) for k, v in timings.items()}
    detail["scores"] = [float(f"{s:.7g}") for s in scores] if scores is not None else None
    durable(session)  # the batch graders are shown is part of their record
    row = session.execute(
        text(
            """
            INSERT INTO lenscat.al_loops (campaign_id, loop_no, model_id, n_positive, n_negative, labels_sha256,
                                          batch, detail)
            VALUES (:c, :n, :m, :p, :q, :h, :b, CAST(:d AS jsonb))
            RETURNING loop_id
            """
        ),
        {
            "c": camp.campaign_id,
            "n": loop_no,
            "m": model.model_id if model else None,
            "p": len(pos),
            "q": n_neg,
            "h": labels_sha,
            "b": [int(x) for x in batch],
            "d": json.dumps(detail),
        },
    ).one()
    return refresh_loop(int(row.loop_id), session=session)


def advance(campaign: str | Campaign, *, session: Session, seed: int = 0) -> Loop | None:
    """After a submitted batch: propose the next loop if the current one is complete.

    Returns
    -------
    Loop or None
        The loop just proposed (the first one when the campaign has none); None when the current
        loop still has uninspected sources, or when nothing is left to propose (every embedded
        source inspected: :func:`propose_next` would raise :class:`CampaignExhausted`).
    """
    cur = current_loop(campaign, session=session)
    if cur is not None and not cur.completed:
        return None
    try:
        return propose_next(campaign, session=session, seed=seed)
    except CampaignExhausted:
        return None


LOOP_COLUMNS = (
    "loop_no",
    "model",
    "strategy",
    "n_positive",
    "n_negative",
    "batch_size",
    "n_inspected",
    "n_graded",
    "n_found",
    "cumulative_found",
    "cumulative_inspected",
    "propose_s",
    "train_s",
    "created_at",
    "completed_at",
)


def loops_table(campaign: str | Campaign, *, session: Session) -> Table:
    """One row per loop: model version, labels used, batch size, inspection counts, lenses found
    (and cumulated), proposal and training seconds, when proposed and completed."""
    from lenscat.literature.crossmatch import rows_to_table

    camp = get_campaign(campaign, session=session)
    rows = []
    found = inspected = 0
    for lp in campaign_loops(camp, session=session):
        found += lp.n_found
        inspected += lp.n_inspected
        sec = lp.detail.get("seconds") or {}
        rows.append(
            (
                lp.loop_no,
                lp.model or "(random)",
                camp.strategy if lp.model else "random",
                lp.n_positive,
                lp.n_negative,
                len(lp.batch),
                lp.n_inspected,
                lp.n_graded,
                lp.n_found,
                found,
                inspected,
                float(sec.get("total", np.nan)),
                float(sec.get("train", np.nan)),
                str(lp.created_at),
                str(lp.completed_at) if lp.completed_at else None,
            )
        )
    return rows_to_table(LOOP_COLUMNS, rows)


BATCH_COLUMNS = ("rank", "source_id", "survey", "objid", "ra", "dec", "score", "graded", "consensus_grade")


def batch_table(loop: Loop, *, session: Session) -> Table:
    """The sources of a loop's batch in proposal order: position, score, whether graded (any grade,
    skips included) and the consensus grade so far."""
    import astropy.units as u

    from lenscat.literature.crossmatch import rows_to_table

    info = {
        int(r.source_id): r
        for r in session.execute(
            text(
                """
            SELECT s.source_id, s.survey, s.objid, s.ra, s.dec, c.consensus_grade,
                   EXISTS (SELECT 1 FROM lenscat.grades g WHERE g.source_id = s.source_id) AS graded
            FROM public.sources s LEFT JOIN public.grade_consensus c ON c.source_id = s.source_id
            WHERE s.source_id = ANY(:ids)
            """
            ),
            {"ids": loop.batch},
        ).all()
    }
    rows = []
    for i, sid in enumerate(loop.batch):
        r = info.get(sid)
        rows.append(
            (
                i + 1,
                sid,
                r.survey if r else None,
                r.objid if r else None,
                float(r.ra) if r else None,
                float(r.dec) if r else None,
                loop.scores[i] if loop.scores is not None else None,
                bool(r.graded) if r else False,
                r.consensus_grade if r else None,
            )
        )
    return rows_to_table(BATCH_COLUMNS, rows, {"ra": u.deg, "dec": u.deg})
