"""Training sets (Stein et al.): labelled lenses, negatives drawn at a ratio, validation and held-out
splits, hard negatives; and the registration of a trained version with its training-set hash."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import text
from sqlalchemy.orm import Session

from lenscat.classifiers.inputs import survey_ids
from lenscat.classifiers.labels import near_known_lenses, resolve_labels
from lenscat.classifiers.types import TrainingSplit
from lenscat.errors import InvalidParameter, LenscatError, Step
from lenscat.registry.versions import ModelVersion, get_model, register_model, store_checkpoint


def candidate_ids(*, session: Session, surveys: list[int] | None, encoder: ModelVersion | None) -> np.ndarray:
    """Sources a classifier can be trained on: with an embedding of ``encoder``, else with a cutout."""
    if encoder is not None:
        sql = (
            f"SELECT e.source_id FROM lenscat.embeddings e JOIN lenscat.sources s USING (source_id) "
            f"WHERE e.model_id = {int(encoder.model_id)}"
        )
    else:
        sql = "SELECT s.source_id FROM lenscat.sources s WHERE s.cutout_file_id IS NOT NULL"
    if surveys:
        sql += " AND s.survey_id = ANY(:sv)"
    ids = session.execute(text(sql + " ORDER BY 1"), {"sv": surveys} if surveys else {}).scalars().all()
    return np.asarray(ids, dtype=np.int64)


def negative_pool(
    candidates: np.ndarray, positives: np.ndarray, *, session: Session, surveys: list[int] | None = None
) -> np.ndarray:
    """The ``candidates`` that may be drawn as negatives: not a positive, and more than 25 arcsec
    from every positive label and literature lens (:func:`lenscat.classifiers.labels.near_known_lenses`)."""
    excluded = near_known_lenses(session=session, surveys=surveys, candidates=candidates)
    return candidates[
        ~np.isin(candidates, positives) & ~np.isin(candidates, np.fromiter(excluded, np.int64, len(excluded)))
    ]


INJECTION_ORIGIN = "injection"
"""Label origin of lenses painted onto the survey's own galaxies (:mod:`lenscat.simulate.injection`): they
train, but never validate or test."""


def positive_origins(source_ids: np.ndarray, *, session: Session, origins: list[str] | None = None) -> dict[int, str]:
    """The origin of the most trusted positive label of each of ``source_ids`` (as :func:`resolve_labels` ranks
    them)."""
    if len(source_ids) == 0:
        return {}
    rows = session.execute(
        text(
            """
            SELECT DISTINCT ON (l.source_id) l.source_id, l.origin
            FROM lenscat.labels l
            WHERE l.source_id = ANY(:ids) AND l.label = 1
              AND (CAST(:o AS text[]) IS NULL OR l.origin = ANY(CAST(:o AS text[])))
            ORDER BY l.source_id,
                     CASE l.origin WHEN 'human' THEN 0 WHEN 'simulation' THEN 1 WHEN 'import' THEN 2 ELSE 3 END,
                     l.updated_at DESC
            """
        ),
        {"ids": [int(i) for i in source_ids], "o": origins or None},
    ).all()
    return {int(r.source_id): str(r.origin) for r in rows}


def split_positives(
    pos: np.ndarray, injected: np.ndarray, *, val_fraction: float, test_fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """Lenses for (training, validation, held-out test): injections train only.

    The real lenses (``pos`` not in ``injected``) are shuffled and split by ``val_fraction`` (at least
    one) and ``test_fraction`` (leaving at least one to train on when there are no injections);
    every injection is a training lens. With fewer than two real lenses, a ``val_fraction`` of the
    injections validates instead (a note says so: validating on the training distribution is optimistic).

    Returns
    -------
    train, val, test : ndarray of int64
        Source ids.
    notes : list of str
    """
    notes: list[str] = []
    inj = np.asarray(pos[np.isin(pos, injected)], dtype=np.int64)
    inj = rng.permutation(inj) if len(inj) else inj  # no draw without injections: the split of real labels is unchanged
    real = rng.permutation(np.asarray(pos[~np.isin(pos, injected)], dtype=np.int64))
    if len(real) < 2 and len(inj):
        n_val = max(1, int(round(val_fraction * len(inj))))
        if n_val >= len(inj):
            n_val = len(inj) - 1
        if n_val < 1:
            raise LenscatError(
                f"{len(inj)} injected and {len(real)} real labelled lens(es): need at least 2 to train and validate"
            )
        notes.append(
            f"{len(real)} real labelled lens(es): validating on {n_val} of the {len(inj)} injected lenses "
            "(optimistic; label real lenses for an honest validation), none held out for evaluation"
        )
        return np.concatenate([real, inj[n_val:]]), inj[:n_val], np.empty(0, np.int64), notes
    n_val = max(1, int(round(val_fraction * len(real))))
    spare = len(real) - n_val - (0 if len(inj) else 1)
    n_test = max(min(int(round(test_fraction * len(real))), spare), 0)
    if test_fraction > 0 and n_test < 1:
        notes.append(f"only {len(real)} lenses: none held out for evaluation")
    val, test = real[:n_val], real[n_val : n_val + n_test]
    return np.concatenate([real[n_val + n_test :], inj]), val, test, notes


def make_split(
    *,
    session: Session,
    surveys: list[str] | None,
    encoder: ModelVersion | None,
    ratio: float | None = 4000,
    val_ratio: float = 10000,
    val_fraction: float = 0.2,
    test_fraction: float = 0.2,
    max_pool_fraction: float = 0.5,
    origins: list[str] | None = None,
    seed: int = 0,
) -> TrainingSplit:
    """Positives from the labels; negatives drawn from the survey at the requested ratios.

    A fraction ``test_fraction`` of the lenses is used neither for training nor validation, so the
    evaluation (every source not in either set) has lenses it never saw. Lenses labelled with origin
    ``injection`` (painted onto the survey's galaxies) only ever train: validation and held-out lenses
    come from the other labels (:func:`split_positives`). Negatives are sources labelled non-lens or
    unlabelled, more than 25 arcsec from every positive label and literature lens
    (:func:`lenscat.classifiers.labels.near_known_lenses`: injections do not count, so their hosts stay negatives).

    With a ``ratio``, at most ``max_pool_fraction`` of the negatives are drawn: when the survey is too
    small for the requested ratios both sets shrink (training keeping at least half) and a note says
    so. With ``ratio`` None every negative is used: ``min(val_ratio`` per validation lens,
    ``val_fraction`` of them``)`` validate and all the others train.
    """
    if (ratio is not None and ratio <= 0) or val_ratio <= 0:
        raise InvalidParameter(("ratio", "val_ratio"), "{ratio} and {val_ratio} must be positive")
    if not 0 < val_fraction < 1 or not 0 <= test_fraction < 1 or val_fraction + test_fraction >= 1:
        raise InvalidParameter(
            ("val_fraction", "test_fraction"),
            f"{{val_fraction}} ({val_fraction}) and {{test_fraction}} ({test_fraction}) must be in [0, 1) "
            "and leave lenses to train on",
        )
    sv = survey_ids(surveys, session)
    cand = candidate_ids(session=session, surveys=sv, encoder=encoder)
    if len(cand) == 0:
        what = f"an embedding from {encoder.label}" if encoder else "a cutout"
        raise LenscatError(f"no sources with {what}{' in ' + ', '.join(surveys) if surveys else ''}")
    labels = resolve_labels(session=session, origins=origins, surveys=sv)
    pos = np.array(sorted(s for s, y in labels.items() if y == 1), dtype=np.int64)
    pos = pos[np.isin(pos, cand)]
    if len(pos) < 2:
        raise LenscatError(
            f"{len(pos)} labelled lens(es) among the {len(cand)} candidate sources; need at least 2 (one to train, "
            "one to validate): add labels ({step})",
            step=Step(
                ("labels", "import"), ((None, "FILE"),), "import them, or derive them from a literature cross-match"
            ),
        )
    by_origin = positive_origins(pos, session=session, origins=origins)
    injected = np.array([i for i in pos.tolist() if by_origin.get(i) == INJECTION_ORIGIN], dtype=np.int64)
    pool = negative_pool(cand, pos, session=session, surveys=sv)  # an injection's host stays a negative
    rng = np.random.default_rng(seed)
    train_pos, val_pos, _test_pos, notes = split_positives(
        pos, injected, val_fraction=val_fraction, test_fraction=test_fraction, rng=rng
    )
    if len(injected):
        notes.append(
            f"{len(injected)} injected lenses train only; {len(train_pos) - len(injected)} real lenses "
            f"train, {len(val_pos)} validate"
        )
    want_val = int(round(val_ratio * len(val_pos)))
    if ratio is None:  # every negative: a validation share, the rest to train
        want_val = min(want_val, max(1, int(round(val_fraction * len(pool)))))
        want_train = len(pool) - want_val
    else:
        want_train = int(round(ratio * len(train_pos)))
        usable = int(max_pool_fraction * len(pool))
        if want_train + want_val > usable:  # too few: training keeps at least half of what is usable
            train_n = min(want_train, max(usable // 2, usable - want_val))
            val_n = min(want_val, usable - train_n)
            notes.append(
                f"{len(pool)} negatives in the survey, {usable} usable: training 1:{train_n / len(train_pos):.3g} "
                f"instead of 1:{ratio:g}, validation 1:{val_n / len(val_pos):.3g} instead of 1:{val_ratio:g}"
            )
            want_train, want_val = train_n, val_n
    neg = rng.permutation(pool)
    train_neg, val_neg = neg[:want_train], neg[want_train : want_train + want_val]
    if len(train_neg) == 0 or len(val_neg) == 0:
        raise LenscatError(f"not enough non-lens sources to sample negatives from ({len(pool)} in the pool)")
    train_ids = np.concatenate([train_pos, train_neg])
    val_ids = np.concatenate([val_pos, val_neg])
    return TrainingSplit(
        train_ids=train_ids,
        train_y=np.r_[np.ones(len(train_pos)), np.zeros(len(train_neg))].astype(np.int8),
        val_ids=val_ids,
        val_y=np.r_[np.ones(len(val_pos)), np.zeros(len(val_neg))].astype(np.int8),
        pool_size=len(pool),
        notes=notes,
    )


HUMAN_NEGATIVES = "human"
"""Hard-negative source meaning "every training non-lens a human graded as not a lens"."""


def add_hard_negatives(
    split: TrainingSplit, sources: list[str], *, session: Session, top: int = 200, weight: int = 3
) -> TrainingSplit:
    """Oversample the hard negatives of a training split: each is drawn ``weight`` times per epoch.

    Hard negatives are training non-lenses that looked like lenses: the ``top`` highest-scored
    training non-lenses of each classifier named in ``sources`` (its stored scores; the training
    non-lenses it has not scored are skipped), and with :data:`HUMAN_NEGATIVES` every training
    non-lens a human graded as not a lens (label origin ``human``, label 0). They are repeated
    ``weight - 1`` more times in the training ids, so the epoch that draws every negative once
    draws these ``weight`` times (and the training-set hash records it). Validation is unchanged.

    Raises
    ------
    LenscatError
        A classifier that has scored none of the training non-lenses, ``top`` or ``weight`` below 1,
        or no hard negative found at all.
    """
    if top < 1 or weight < 1:
        raise LenscatError(f"hard negatives: top ({top}) and weight ({weight}) must be at least 1")
    negatives = np.unique(split.train_ids[split.train_y == 0])
    hard: set[int] = set()
    notes = list(split.notes)
    for src in sources:
        if src == HUMAN_NEGATIVES:
            ids = (
                session.execute(
                    text(
                        "SELECT DISTINCT source_id FROM lenscat.labels WHERE origin = 'human' AND label = 0 "
                        "AND source_id = ANY(:ids)"
                    ),
                    {"ids": negatives.tolist()},
                )
                .scalars()
                .all()
            )
            notes.append(f"hard negatives: {len(ids)} training non-lenses graded not a lens by a human")
        else:
            model = get_model("classifier", src, session=session)
            ids = (
                session.execute(
                    text(
                        "SELECT source_id FROM lenscat.scores WHERE model_id = :m AND source_id = ANY(:ids) "
                        "ORDER BY score DESC, source_id LIMIT :n"
                    ),
                    {"m": model.model_id, "ids": negatives.tolist(), "n": int(top)},
                )
                .scalars()
                .all()
            )
            if not ids:
                raise LenscatError(
                    f"hard negatives: classifier {model.label} has scored none of the "
                    f"{len(negatives):,} training non-lenses"
                )
            notes.append(f"hard negatives: the top {len(ids)} training non-lenses of {model.label}")
        hard.update(int(i) for i in ids)
    if not hard:
        raise LenscatError(
            f"hard negatives: none found among the {len(negatives):,} training non-lenses ({', '.join(sources)})"
        )
    extra = np.repeat(np.array(sorted(hard), dtype=np.int64), weight - 1)
    notes.append(f"{len(hard)} hard negatives drawn {weight}x per epoch")
    return TrainingSplit(
        train_ids=np.concatenate([split.train_ids, extra]),
        train_y=np.concatenate([split.train_y, np.zeros(len(extra), split.train_y.dtype)]),
        val_ids=split.val_ids,
        val_y=split.val_y,
        pool_size=split.pool_size,
        notes=notes,
        n_hard=len(hard),
        hard_weight=weight,
    )


def register_trained(
    name: str,
    arch: str,
    payload_path: Path,
    *,
    encoder: ModelVersion | None,
    hparams: dict[str, Any],
    split: TrainingSplit,
    metrics: dict[str, Any],
    input_spec: dict[str, Any],
    session: Session,
) -> tuple[ModelVersion, bool]:
    """Store the checkpoint at ``payload_path`` and register it as the next version of classifier ``name``,
    with the training-set hash of ``split`` (salted with the encoder's checkpoint hash, else ``images``)."""
    stored, sha = store_checkpoint(payload_path)
    return register_model(
        "classifier",
        name,
        architecture=arch,
        output_dim=1,
        checkpoint_path=stored,
        checkpoint_sha256=sha,
        origin="trained",
        hparams=hparams,
        input_spec=input_spec,
        training_set_sha256=split.sha256(encoder.checkpoint_sha256 or encoder.label if encoder else "images"),
        parent_model_id=encoder.model_id if encoder else None,
        metrics=metrics,
        session=session,
    )
