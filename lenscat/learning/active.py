"""Active learning: the linear probe retrained on human grades after every graded batch.

A *campaign* learns on one encoder version's embeddings. Each *loop* (``lenscat.al_loops``):

1. trains the linear probe (:func:`lenscat.classifiers.train_linear.fit_linear_version`: full-batch L-BFGS,
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

import json
import time
from typing import Any

import numpy as np
from sqlalchemy import text
from sqlalchemy.orm import Session

from lenscat.catalogue.surveys import get_survey, real_survey_ids
from lenscat.classifiers.labels import resolve_labels
from lenscat.classifiers.loaders import score_function
from lenscat.classifiers.train_linear import fit_linear_version
from lenscat.classifiers.training_sets import candidate_ids, negative_pool
from lenscat.classifiers.types import TrainingSplit
from lenscat.db.session import durable
from lenscat.embeddings.vectors import embed_step, read_embeddings
from lenscat.errors import LenscatError, MissingPrerequisite
from lenscat.learning.campaigns import current_loop, get_campaign, refresh_loop
from lenscat.learning.types import Campaign, CampaignExhausted, Loop
from lenscat.registry.versions import ModelVersion, get_model

SCORE_CHUNK = 100_000  # sources scored per bulk read of the embeddings


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
        raise MissingPrerequisite(
            f"encoder {enc.label} has no embeddings{' in ' + ', '.join(st['surveys']) if st.get('surveys') else ''}"
            ": {step}",
            embed_step(enc.name),
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
        source inspected: :func:`propose_next` would raise :class:`~lenscat.learning.types.CampaignExhausted`).
    """
    cur = current_loop(campaign, session=session)
    if cur is not None and not cur.completed:
        return None
    try:
        return propose_next(campaign, session=session, seed=seed)
    except CampaignExhausted:
        return None
