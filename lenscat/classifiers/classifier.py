"""Lens classifiers from the catalogue: training sets, training, versions, and scoring chunks.

Four trained architectures, each a versioned ``classifier`` row of ``lenscat.model_versions``:

* ``linear`` -- logistic regression on an encoder's stored embeddings (Stein et al. 2022's linear
  probe; :mod:`lenscat.models.linear`); ``parent_model_id`` is the encoder version.
* ``finetune`` -- the encoder and a linear head trained together on the cutouts (head learning
  rate 10x the backbone's, lenses oversampled to ~5% of each batch, Stein's augmentations).
* ``cnn`` -- a CNN from scratch on the cutouts with the few-label recipe
  (:data:`lenscat.models.supervised.FEW_LABEL_RECIPE`): every negative, lenses oversampled to a
  quarter of each batch with augmentations, early stopping on the validation split, 8-view scores.
  The default of ``lenscat classifier train``.
* ``radial`` -- the radial colour-profile baseline (:mod:`lenscat.models.radial`): 12 annuli x 3
  bands of normalised surface brightness and logistic regression, scored on the cutouts.

Training sets follow Stein et al.: the positives are the labelled lenses, the negatives are drawn
at random from the survey (excluding sources within 25 arcsec of any known lens) at a chosen
lens:non-lens ratio (1:4000 worked best for them; ``cnn`` and ``radial`` take every negative), and
a validation split at a realistic ratio picks the epoch. Injected lenses (label origin
``injection``) train only. The training and validation source ids are kept in the checkpoint, so
evaluation can leave them out and the training-set hash can be recomputed.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import text
from sqlalchemy.orm import Session

from lenscat.catalogue.surveys import get_survey
from lenscat.classifiers.labels import near_known_lenses, resolve_labels
from lenscat.db.session import raw_connection
from lenscat.embeddings.vectors import read_embeddings
from lenscat.errors import LenscatError
from lenscat.jobs.service import (
    clear_item_failures,
    create_job,
    finish_chunk,
    outside_open_chunks,
    plan_chunks,
    record_item_failures,
    without_failed_items,
)
from lenscat.registry.versions import (
    ModelVersion,
    check_name,
    get_model,
    register_model,
    store_checkpoint,
)

ARCHITECTURES = ("linear", "finetune", "cnn", "radial")
DERIVED_ARCHITECTURES = ("ensemble", "anomaly")
"""Classifier versions whose scores are computed from other stored rows (members' scores,
embeddings) by :mod:`lenscat.classifiers.ensemble` and :mod:`lenscat.embeddings.anomaly`."""
DEFAULT_CHUNK = 20_000


@dataclass
class TrainingSplit:
    """Source ids and labels of the training and validation sets."""

    train_ids: np.ndarray
    train_y: np.ndarray
    val_ids: np.ndarray
    val_y: np.ndarray
    pool_size: int
    notes: list[str] = field(default_factory=list)
    n_hard: int = 0
    hard_weight: int = 1

    def sha256(self, salt: str) -> str:
        """Hash of (salt, sorted ids and labels of both sets): the training-set identity."""
        h = hashlib.sha256(salt.encode())
        for ids, y in ((self.train_ids, self.train_y), (self.val_ids, self.val_y)):
            o = np.argsort(ids)
            h.update(ids[o].astype("<i8").tobytes())
            h.update(y[o].astype("<i1").tobytes())
        return h.hexdigest()

    def summary(self) -> dict[str, Any]:
        """Counts and ratios."""
        tp, vp = int(self.train_y.sum()), int(self.val_y.sum())
        return {
            "train_lenses": tp,
            "train_nonlenses": len(self.train_y) - tp,
            "train_ratio": round((len(self.train_y) - tp) / max(tp, 1), 1),
            "val_lenses": vp,
            "val_nonlenses": len(self.val_y) - vp,
            "val_ratio": round((len(self.val_y) - vp) / max(vp, 1), 1),
            "negative_pool": self.pool_size,
            **({"hard_negatives": self.n_hard, "hard_negative_weight": self.hard_weight} if self.n_hard else {}),
        }


def _survey_ids(surveys: list[str] | None, session: Session) -> list[int] | None:
    return [get_survey(s, session=session).survey_id for s in surveys] if surveys else None


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
    """The origin of the most trusted positive label of each of ``source_ids`` (as :func:`resolve_labels` ranks them)."""
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
        raise LenscatError("--ratio and --val-ratio must be positive")
    if not 0 < val_fraction < 1 or not 0 <= test_fraction < 1 or val_fraction + test_fraction >= 1:
        raise LenscatError(
            f"--val-fraction ({val_fraction}) and --test-fraction ({test_fraction}) must be in [0, 1) "
            "and leave lenses to train on"
        )
    sv = _survey_ids(surveys, session)
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
            "one to validate): add labels with `lenscat labels from-crossmatch` or `lenscat labels import`"
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


def _vectors_for(
    encoder: ModelVersion, ids: np.ndarray, session: Session, vectors: tuple[np.ndarray, np.ndarray] | None = None
) -> np.ndarray:
    """Embeddings of ``ids`` in that order: read from the database, or looked up in ``vectors``
    ((sorted source ids, matrix) already in memory)."""
    if len(ids) == 0:
        return np.zeros((0, int(encoder.output_dim or 0)), dtype=np.float32)
    got, vec = vectors if vectors is not None else read_embeddings(encoder, source_ids=ids, session=session)
    pos = np.searchsorted(got, ids)
    if len(got) == 0 or (pos >= len(got)).any() or (got[np.minimum(pos, len(got) - 1)] != ids).any():
        raise LenscatError(f"some training sources lost their {encoder.label} embedding while training")
    return vec[pos]


@dataclass
class TrainResult:
    """A registered classifier version and its training report."""

    model: ModelVersion
    created: bool
    report: dict[str, Any]


def _register(
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


def train_linear_classifier(
    name: str,
    encoder: str,
    *,
    session: Session,
    surveys: list[str] | None = None,
    ratio: float = 4000,
    val_ratio: float = 10000,
    val_fraction: float = 0.2,
    test_fraction: float = 0.2,
    origins: list[str] | None = None,
    epochs: int = 30,
    l2: float = 1e-4,
    loss: str = "bce",
    focal_gamma: float = 2.0,
    class_weight: str = "none",
    top_n: int | None = None,
    seed: int = 0,
    progress: bool = False,
) -> TrainResult:
    """Train the linear probe on stored embeddings and register it as the next version of ``name``.

    The same labels, embeddings and options give the same checkpoint, so re-running registers
    nothing new (``created`` False).
    """
    check_name(name)
    enc = get_model("encoder", encoder, session=session)
    split = make_split(
        session=session,
        surveys=surveys,
        encoder=enc,
        ratio=ratio,
        val_ratio=val_ratio,
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        origins=origins,
        seed=seed,
    )
    hparams = {
        "ratio": ratio,
        "val_ratio": val_ratio,
        "val_fraction": val_fraction,
        "test_fraction": test_fraction,
        "origins": origins or [],
        "surveys": surveys or [],
    }
    return fit_linear_version(
        name,
        enc,
        split,
        session=session,
        hparams=hparams,
        epochs=epochs,
        l2=l2,
        loss=loss,
        focal_gamma=focal_gamma,
        class_weight=class_weight,
        top_n=top_n,
        seed=seed,
        progress=progress,
    )


def fit_linear_version(
    name: str,
    enc: ModelVersion,
    split: TrainingSplit,
    *,
    session: Session,
    hparams: dict[str, Any],
    vectors: tuple[np.ndarray, np.ndarray] | None = None,
    epochs: int = 30,
    l2: float = 1e-4,
    loss: str = "bce",
    focal_gamma: float = 2.0,
    class_weight: str = "none",
    top_n: int | None = None,
    seed: int = 0,
    progress: bool = False,
) -> TrainResult:
    """Train the linear probe on an explicit training split and register it as the next version of ``name``.

    Parameters
    ----------
    name, enc
        Classifier name; encoder version whose embeddings it learns on (its ``parent_model_id``).
    split
        Training and validation ids and labels; an empty validation set keeps the last epoch.
    hparams
        How the split was made (ratios, origins, ...), stored with the training options.
    vectors
        (sorted source ids, matrix) of the encoder's embeddings already in memory; by default the
        training vectors are read from the database.
    epochs, l2, loss, focal_gamma, class_weight, top_n, seed, progress
        As :func:`lenscat.models.linear.train_linear`.

    Returns
    -------
    TrainResult
        The version (``created`` False when the same checkpoint was already registered) and a report.
    """
    import torch

    from lenscat.models.linear import state_dict, train_linear

    t0 = time.perf_counter()
    x = _vectors_for(enc, split.train_ids, session, vectors)
    xv = _vectors_for(enc, split.val_ids, session, vectors)
    t_read = time.perf_counter() - t0
    fit = train_linear(
        x,
        split.train_y,
        x_val=xv,
        y_val=split.val_y,
        epochs=epochs,
        l2=l2,
        loss=loss,
        focal_gamma=focal_gamma,
        class_weight=class_weight,
        top_n=top_n,
        seed=seed,
        progress=progress,
    )
    hparams = {
        **hparams,
        "epochs": epochs,
        "l2": l2,
        "loss": loss,
        "focal_gamma": focal_gamma,
        "class_weight": class_weight,
        "top_n": top_n,
        "seed": seed,
        "optimizer": "lbfgs",
    }
    last = fit.history[fit.epoch - 1] if fit.epoch else {}
    metrics = {
        **split.summary(),
        "epoch_kept": fit.epoch,
        "seconds": round(fit.seconds, 3),
        "read_seconds": round(t_read, 3),
        **{k: v for k, v in last.items() if k != "epoch"},
    }
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "linear.pt"
        torch.save(
            state_dict(
                fit,
                encoder_id=enc.model_id,
                train_ids=torch.from_numpy(split.train_ids),
                val_ids=torch.from_numpy(split.val_ids),
            ),
            path,
        )
        model, created = _register(
            name,
            "linear",
            path,
            encoder=enc,
            hparams=hparams,
            split=split,
            metrics=metrics,
            input_spec={"input": "embedding", "encoder": enc.label, "dim": int(x.shape[1])},
            session=session,
        )
    return TrainResult(
        model,
        created,
        {
            **metrics,
            "classifier": model.label,
            "encoder": enc.label,
            "created": created,
            "notes": split.notes,
            "history": fit.history,
        },
    )


def train_image_classifier_version(
    name: str,
    *,
    arch: str = "cnn",
    session: Session,
    encoder: str | None = None,
    surveys: list[str] | None = None,
    ratio: float | None = None,
    val_ratio: float = 10000,
    val_fraction: float = 0.2,
    test_fraction: float = 0.2,
    origins: list[str] | None = None,
    epochs: int | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    lens_fraction: float | None = None,
    crop: int | None = None,
    max_steps: int | None = None,
    device: str | None = None,
    seed: int = 0,
    progress: bool = False,
    resume: bool = True,
    recipe: str | None = None,
    patience: int | None = None,
    hard_negatives: list[str] | None = None,
    hard_negative_top: int = 200,
    hard_negative_weight: int = 3,
) -> TrainResult:
    """Train a CNN from scratch with the few-label recipe (``cnn``) or fine-tune an encoder (``finetune``).

    ``cnn`` follows :data:`lenscat.models.supervised.FEW_LABEL_RECIPE` (``recipe='cpu'``) or
    :data:`~lenscat.models.supervised.GPU_RECIPE` (``'gpu'``; by default when ``device`` is, or
    resolves to, CUDA): every non-lens not held out for validation trains (``ratio`` None; a ratio
    draws that many per lens instead, from at most half the survey, as before), every epoch draws
    each of them once with lenses oversampled to ``lens_fraction`` (25 %) of each batch, the
    validation split is scored after every epoch and the best epoch by average precision is kept
    (stopping after ``patience`` epochs without improvement), and scores average the 8 flips and
    quarter turns. Given options override the recipe's.

    ``recipe='legacy'`` trains ``cnn`` with the settings it had before the recipe, as ``finetune``
    does (for comparisons): ``finetune`` trains the encoder with a head at Stein et al.'s settings
    (ratio 100 from at most half the survey, lenses 5 % of each batch, 3 epochs, the encoder's
    augmentations, one validation pass at the end; ``legacy``: ``resnet-small`` from scratch on the
    96-pixel crop with Stein et al.'s augmentations). Meant for a GPU; runs (slowly) on a CPU.
    ``arch='radial'`` trains :func:`train_radial_classifier` (the image options do not apply). ``max_steps`` caps the number of batches. Interrupted (Ctrl-C), it
    raises :class:`~lenscat.errors.Interrupted` after saving its state; the same call resumes
    (``resume=False``: start over).
    """
    from lenscat.embeddings.encoders import DEFAULT_INPUT_SPEC
    from lenscat.models.augment import AugmentConfig
    from lenscat.models.checkpoint import load_encoder
    from lenscat.models.preprocess import Preprocessing
    from lenscat.models.supervised import (
        FEW_LABEL_RECIPE,
        GPU_RECIPE,
        _resolve_device,
        save_classifier,
        score_images,
        train_image_classifier,
    )

    if arch == "radial":
        return train_radial_classifier(
            name,
            session=session,
            surveys=surveys,
            ratio=ratio,
            val_ratio=val_ratio,
            val_fraction=val_fraction,
            test_fraction=test_fraction,
            origins=origins,
            epochs=epochs or 30,
            seed=seed,
            progress=progress,
            hard_negatives=hard_negatives,
            hard_negative_top=hard_negative_top,
            hard_negative_weight=hard_negative_weight,
        )
    if arch not in ("finetune", "cnn"):
        raise LenscatError(f"unknown image classifier {arch!r}; expected cnn, finetune or radial")
    if recipe not in (None, "cpu", "gpu", "legacy"):
        raise LenscatError(f"unknown CNN recipe {recipe!r}; expected cpu, gpu or legacy")
    check_name(name)
    enc = get_model("encoder", encoder, session=session) if encoder else None
    if arch == "finetune" and (enc is None or not enc.checkpoint_path or enc.origin == "external"):
        raise LenscatError("--arch finetune needs --encoder naming a trained or imported encoder (with a checkpoint)")
    rec: dict[str, Any] = {}
    if arch == "cnn" and recipe != "legacy":
        if recipe is None:
            recipe = "gpu" if _resolve_device(device).type == "cuda" else "cpu"
        rec = dict(GPU_RECIPE if recipe == "gpu" else FEW_LABEL_RECIPE)
        epochs, batch_size = epochs or int(rec["epochs"]), batch_size or int(rec["batch_size"])
        lr, lens_fraction = lr or float(rec["lr"]), lens_fraction or float(rec["lens_fraction"])
        patience = patience or int(rec["patience"])
    else:
        ratio = 100 if ratio is None else ratio
        epochs, batch_size, lr, lens_fraction = epochs or 3, batch_size or 64, lr or 1e-3, lens_fraction or 0.05
    split = make_split(
        session=session,
        surveys=surveys,
        encoder=None,
        ratio=ratio,
        val_ratio=val_ratio,
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        origins=origins,
        seed=seed,
    )
    if hard_negatives:
        split = add_hard_negatives(
            split, hard_negatives, session=session, top=hard_negative_top, weight=hard_negative_weight
        )
    backbone = None
    spec = dict(DEFAULT_INPUT_SPEC)
    hp_enc: dict[str, Any] = {}
    if arch == "finetune" and enc is not None:
        backbone, hp_enc = load_encoder(str(enc.checkpoint_path))
        spec = dict(enc.input_spec or spec)
    crop = int(crop or hp_enc.get("crop") or rec.get("crop") or spec.get("crop") or 96)  # type: ignore[arg-type]
    images = catalogue_images(split.train_ids, session=session)
    augment: bool | dict[str, Any] = True
    preprocessing: dict[str, Any] | None = None
    band_notes: list[str] = []
    extra: dict[str, Any] = {}
    if enc is not None and isinstance((enc.hparams or {}).get("augment"), dict):
        augment = dict(enc.hparams["augment"])  # fine-tuning: the encoder's own augmentations
    elif arch == "cnn" and not rec:  # the legacy settings: augmentations and stretch follow the survey's bands
        from lenscat.embeddings.encoders import band_options

        opts, shape = band_options(split.train_ids, images, seed=seed, session=session)
        augment = opts.augment if opts.augment is not None else True
        preprocessing = opts.preprocess(crop) if opts.scales is not None else None
        spec.update(bands=opts.bands, stamp=int(shape[-1]))
        band_notes = opts.notes
    elif arch == "cnn":  # the recipe: channels and stretch follow the survey's bands
        from lenscat.embeddings.encoders import band_options

        opts, shape = band_options(split.train_ids, images, seed=seed, session=session)
        pre = Preprocessing.from_dict(opts.preprocess(crop) if opts.scales is not None else {"crop": crop})
        preprocessing = {**pre.to_dict(), "views": int(rec["views"])}
        augment = AugmentConfig.few_label().to_dict()
        spec.update(bands=opts.bands, stamp=int(shape[-1]))
        band_notes = [n for n in opts.notes if "augmentations" not in n]
        extra = {
            "arch": str(rec["arch"]),
            "encoder_hparams": dict(rec["encoder_hparams"]),
            "weight_decay": float(rec["weight_decay"]),
            "every_negative": bool(rec["every_negative"]),
            "early_stopping": str(rec["early_stopping"]),
            "patience": int(patience or 1),
            "val_views": int(rec["val_views"]),
            "val_images": catalogue_images(split.val_ids, session=session),
            "val_labels": split.val_y,
        }
    from lenscat.models import trainstate
    from lenscat.registry.versions import training_state_dir

    tag = hashlib.sha256(
        np.asarray(split.train_ids, dtype=np.int64).tobytes()
        + np.asarray(split.train_y, dtype=np.int8).tobytes()
        + np.asarray(split.val_ids, dtype=np.int64).tobytes()
        + str(enc.checkpoint_sha256 if enc else "").encode()
    ).hexdigest()
    model, train_metrics = train_image_classifier(
        images,
        split.train_y.astype(np.float32),
        backbone=backbone,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        lens_fraction=lens_fraction,
        crop=crop,
        preprocessing=preprocessing,
        augment=augment,
        device=device,
        seed=seed,
        progress=progress,
        max_steps=max_steps,
        state_dir=training_state_dir(),
        run_tag=tag,
        resume=resume,
        **extra,
    )
    if train_metrics["interrupted"] and train_metrics["state_path"]:
        raise trainstate.interrupted(
            f"at step {train_metrics['steps']} of {train_metrics['steps_planned']}", train_metrics["state_path"]
        )
    # the kept model on the validation split, with every view it scores with
    val_images = extra["val_images"] if "val_images" in extra else catalogue_images(split.val_ids, session=session)
    val_scores = score_images(model, val_images, device=device)
    from lenscat.classifiers.evaluation import ranking_metrics

    val = ranking_metrics(val_scores, split.val_y)
    train_metrics.pop("val_auc", None)  # per-epoch lists: kept in the report's history, not in the metrics
    history = {k: train_metrics.pop(k) for k in ("val_loss", "val_ap", "val_steps") if k in train_metrics}
    train_metrics.update(
        val_auc=round(float(val["auc"]), 4),
        val_average_precision=round(float(val["average_precision"]), 4),
        val_top_n_hits=int(val["top_n"][0]["true_positives"]) if val["top_n"] else 0,
    )
    hparams: dict[str, Any] = {
        "arch": arch,
        "ratio": ratio,
        "val_ratio": val_ratio,
        "val_fraction": val_fraction,
        "test_fraction": test_fraction,
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
        "lens_fraction": lens_fraction,
        "crop": crop,
        "max_steps": max_steps,
        "seed": seed,
        "origins": origins or [],
        "surveys": surveys or [],
    }
    if hard_negatives:
        hparams.update(
            hard_negatives=list(hard_negatives),
            hard_negative_top=hard_negative_top,
            hard_negative_weight=hard_negative_weight,
        )
    if recipe == "legacy":
        hparams["recipe"] = "legacy"
    if rec:
        hparams.update(
            recipe=recipe,
            backbone=str(rec["arch"]),
            backbone_hparams=dict(rec["encoder_hparams"]),
            weight_decay=rec["weight_decay"],
            augment="few_label",
            views=int(rec["views"]),
            early_stopping=rec["early_stopping"],
            patience=patience,
            every_negative=True,
        )
    metrics = {
        **split.summary(),
        **{k: v for k, v in train_metrics.items() if isinstance(v, (int, float, str)) and k != "state_path"},
    }
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{arch}.pt"
        save_classifier(
            model, path, hparams={**hparams, "train_ids": split.train_ids.tolist(), "val_ids": split.val_ids.tolist()}
        )
        version, created = _register(
            name,
            arch,
            path,
            encoder=enc,
            hparams=hparams,
            split=split,
            metrics=metrics,
            input_spec={"input": "image", **spec},
            session=session,
        )
    if train_metrics["state_path"]:  # registered (the caller commits): nothing is left to resume
        Path(train_metrics["state_path"]).unlink(missing_ok=True)
    return TrainResult(
        version,
        created,
        {
            **metrics,
            "classifier": version.label,
            "encoder": enc.label if enc else None,
            "created": created,
            "notes": [*band_notes, *split.notes],
            "history": history,
        },
    )


def train_radial_classifier(
    name: str,
    *,
    session: Session,
    surveys: list[str] | None = None,
    ratio: float | None = None,
    val_ratio: float = 10000,
    val_fraction: float = 0.2,
    test_fraction: float = 0.2,
    origins: list[str] | None = None,
    epochs: int = 30,
    l2: float = 1e-3,
    pixel_scale: float | None = None,
    seed: int = 0,
    progress: bool = False,
    hard_negatives: list[str] | None = None,
    hard_negative_top: int = 200,
    hard_negative_weight: int = 3,
) -> TrainResult:
    """Train the radial colour-profile baseline (:mod:`lenscat.models.radial`) and register it.

    The split is the CNN recipe's (:func:`make_split`; every negative with ``ratio`` None,
    injections training only), so the baseline and the networks learn from the same labels. The
    pixel scale is the cutout files' or else the surveys' ``pixel_scale_arcsec``, else 0.262 arcsec/px.
    The same labels and options give the same checkpoint (``created`` False).
    """
    import torch

    from lenscat.models.radial import RadialProfile, radial_state, train_radial

    check_name(name)
    split = make_split(
        session=session,
        surveys=surveys,
        encoder=None,
        ratio=ratio,
        val_ratio=val_ratio,
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        origins=origins,
        seed=seed,
    )
    if hard_negatives:
        split = add_hard_negatives(
            split, hard_negatives, session=session, top=hard_negative_top, weight=hard_negative_weight
        )
    notes = list(split.notes)
    if pixel_scale is None:
        scales = (
            session.execute(
                text(
                    "SELECT DISTINCT q.scale FROM (SELECT COALESCE(f.pixel_scale_arcsec, v.pixel_scale_arcsec) AS scale "
                    "FROM lenscat.sources s JOIN lenscat.surveys v USING (survey_id) "
                    "LEFT JOIN lenscat.cutout_files f ON f.file_id = s.cutout_file_id WHERE s.source_id = ANY(:ids)) q "
                    "WHERE q.scale IS NOT NULL ORDER BY 1"
                ),
                {"ids": split.train_ids.tolist()},
            )
            .scalars()
            .all()
        )
        if len(scales) > 1:
            notes.append(f'cutouts at {len(scales)} pixel scales; the radial profile uses {float(scales[0]):g}"/px')
        pixel_scale = float(scales[0]) if scales else 0.262
    profile = RadialProfile(pixel_scale=pixel_scale)
    fit = train_radial(
        catalogue_images(split.train_ids, session=session),
        split.train_y,
        val_images=catalogue_images(split.val_ids, session=session),
        val_labels=split.val_y,
        profile=profile,
        epochs=epochs,
        l2=l2,
        seed=seed,
        progress=progress,
    )
    hparams = {
        "ratio": ratio,
        "val_ratio": val_ratio,
        "val_fraction": val_fraction,
        "test_fraction": test_fraction,
        "origins": origins or [],
        "surveys": surveys or [],
        "epochs": epochs,
        "l2": l2,
        "seed": seed,
        "profile": profile.to_dict(),
        "optimizer": "lbfgs",
        **(
            {
                "hard_negatives": list(hard_negatives),
                "hard_negative_top": hard_negative_top,
                "hard_negative_weight": hard_negative_weight,
            }
            if hard_negatives
            else {}
        ),
    }
    last = fit.history[fit.epoch - 1] if fit.epoch else {}
    metrics = {
        **split.summary(),
        "epoch_kept": fit.epoch,
        "seconds": round(fit.seconds, 3),
        "n_features": len(fit.weight),
        **{k: v for k, v in last.items() if k != "epoch"},
    }
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "radial.pt"
        torch.save(
            radial_state(fit, train_ids=torch.from_numpy(split.train_ids), val_ids=torch.from_numpy(split.val_ids)),
            path,
        )
        model, created = _register(
            name,
            "radial",
            path,
            encoder=None,
            hparams=hparams,
            split=split,
            metrics=metrics,
            input_spec={"input": "image", "features": "radial-profile", **profile.to_dict()},
            session=session,
        )
    return TrainResult(
        model,
        created,
        {
            **metrics,
            "classifier": model.label,
            "encoder": None,
            "created": created,
            "notes": notes,
            "history": fit.history,
        },
    )


def catalogue_images(source_ids: np.ndarray, *, session: Session) -> Any:
    """A :class:`lenscat.embeddings.encoders.CatalogueImages` over the cutouts of ``source_ids``, in that order."""
    from lenscat.embeddings.encoders import CatalogueImages

    rows = session.execute(
        text(
            """
            SELECT s.source_id, f.path, f.format, s.cutout_row, s.ebv
            FROM lenscat.sources s JOIN lenscat.cutout_files f ON f.file_id = s.cutout_file_id
            WHERE s.source_id = ANY(:ids)
            """
        ),
        {"ids": np.asarray(source_ids, dtype=np.int64).tolist()},
    ).all()
    by_id = {int(r.source_id): r for r in rows}
    missing = [int(i) for i in source_ids if int(i) not in by_id]
    if missing:
        raise LenscatError(f"{len(missing)} source(s) have no cutout (first: source_id {missing[0]})")
    files = sorted({(r.path, r.format) for r in rows})
    index = {f: i for i, f in enumerate(files)}
    ordered = [by_id[int(i)] for i in source_ids]
    arr = np.array([(index[(r.path, r.format)], int(r.cutout_row)) for r in ordered], dtype=np.int64).reshape(-1, 2)
    ebv = np.array([np.nan if r.ebv is None else float(r.ebv) for r in ordered], dtype=np.float32)
    return CatalogueImages([f[0] for f in files], [f[1] for f in files], arr, ebv)


CLASSIFIER_LIST_COLUMNS = (
    "classifier_id",
    "classifier",
    "version",
    "architecture",
    "encoder",
    "training_set_sha256",
    "n_scores",
    "created_at",
    "members",
)


def list_classifiers(*, session: Session) -> list[list[Any]]:
    """Every classifier version (rows of :data:`CLASSIFIER_LIST_COLUMNS`): encoder, training-set hash,
    number of scores and, for an ensemble, its members' labels (comma-separated)."""
    rows = session.execute(
        text(
            "SELECT c.classifier_id, c.classifier, c.version, c.architecture, c.encoder, c.training_set_sha256, "
            "(SELECT count(*) FROM lenscat.scores x WHERE x.model_id = c.classifier_id) AS n_scores, c.created_at, "
            "(SELECT string_agg(m ->> 'label', ',') FROM jsonb_array_elements(CASE WHEN c.architecture = 'ensemble' "
            "THEN c.hparams -> 'members' ELSE '[]'::jsonb END) m) AS members "
            "FROM public.classifiers c ORDER BY c.classifier, c.version"
        )
    ).all()
    return [list(r) for r in rows]


# ------------------------------------------------------------------------------------ loading
def _check_checkpoint(path: str, sha256: str) -> None:
    """A registered classifier checkpoint is where it was stored and unchanged."""
    from lenscat.catalogue.ingest_log import file_sha256

    if not Path(path).is_file():
        raise LenscatError(
            f"{path}: classifier checkpoint not found (is LENSCAT_HOME/models shared with workers? "
            "if it is mounted elsewhere: `lenscat db relocate OLD_DIR NEW_DIR`)"
        )
    if file_sha256(Path(path)) != sha256:
        raise LenscatError(f"{path}: checkpoint sha256 does not match the registered version")


@lru_cache(maxsize=4)
def _load_checkpoint(path: str, sha256: str) -> dict[str, Any]:
    import torch

    _check_checkpoint(path, sha256)
    return dict(torch.load(path, map_location="cpu", weights_only=True))


def training_ids(model: ModelVersion) -> np.ndarray:
    """Source ids the classifier saw in training or validation (left out of evaluation)."""
    if model.architecture in DERIVED_ARCHITECTURES:
        return _derived(model).training_ids(model)
    if model.architecture in ("linear", "radial"):
        ck = _load_checkpoint(str(model.checkpoint_path), str(model.checkpoint_sha256))
        return np.concatenate([ck["train_ids"].numpy(), ck["val_ids"].numpy()]).astype(np.int64)
    from lenscat.models.supervised import load_classifier

    _, meta = load_classifier(str(model.checkpoint_path))
    hp = meta.get("hparams", meta)
    return np.asarray(list(hp.get("train_ids", [])) + list(hp.get("val_ids", [])), dtype=np.int64)


def score_function(model: ModelVersion, device: str | None = None) -> Any:
    """A callable (source_ids, inputs) -> scores for the classifier version (loaded once per process)."""
    if model.architecture in DERIVED_ARCHITECTURES:
        raise LenscatError(
            f"classifier {model.label} ({model.architecture}) is computed from stored rows, not from inputs"
        )
    if model.architecture == "linear":
        from lenscat.models.linear import predict_linear

        ck = _load_checkpoint(str(model.checkpoint_path), str(model.checkpoint_sha256))
        w, b = ck["weight"].numpy(), float(ck["bias"])
        return lambda x: predict_linear(w, b, x)
    if model.architecture == "radial":
        from lenscat.models.radial import fit_from_state, predict_radial

        fit = fit_from_state(_load_checkpoint(str(model.checkpoint_path), str(model.checkpoint_sha256)))
        return lambda x: predict_radial(fit, x)
    from lenscat.models.supervised import score_images

    net = _load_image_model(str(model.checkpoint_path), str(model.checkpoint_sha256))
    return lambda x: score_images(net, x, device=device)


def _derived(model: ModelVersion) -> Any:
    """The module (:mod:`lenscat.classifiers.ensemble` or :mod:`lenscat.embeddings.anomaly`) that scores a derived classifier."""
    if model.architecture == "ensemble":
        from lenscat.classifiers import ensemble

        return ensemble
    from lenscat.embeddings import anomaly

    return anomaly


@lru_cache(maxsize=2)
def _load_image_model(path: str, sha256: str) -> Any:
    from lenscat.models.supervised import load_classifier

    _check_checkpoint(path, sha256)
    net, _ = load_classifier(path)
    return net


# ------------------------------------------------------------------------------------ scoring
def candidates_sql(model: ModelVersion, with_surveys: bool = False) -> str:
    """SQL (one column ``id``) of the sources the classifier version can score: embedded by its
    encoder (linear), or with a cutout (image classifiers); see the ensemble and anomaly modules for theirs."""
    if model.architecture in DERIVED_ARCHITECTURES:
        return str(_derived(model).candidates_sql(model, with_surveys))
    if model.architecture == "linear":
        base = (
            "SELECT e.source_id AS id FROM lenscat.embeddings e "
            + ("JOIN lenscat.sources s USING (source_id) " if with_surveys else "")
            + f"WHERE e.model_id = {int(model.parent_model_id or 0)}"
        )
    else:
        base = "SELECT s.source_id AS id FROM lenscat.sources s WHERE s.cutout_file_id IS NOT NULL"
    return base + (" AND s.survey_id = ANY(:sids)" if with_surveys else "")


def missing_scores_sql(model: ModelVersion, with_surveys: bool = False) -> str:
    """SQL (one column ``id``) of the sources the classifier version can score but has not."""
    return (
        f"SELECT q.id FROM ({candidates_sql(model, with_surveys)}) q WHERE NOT EXISTS "
        f"(SELECT 1 FROM lenscat.scores c WHERE c.model_id = {int(model.model_id)} AND c.source_id = q.id)"
    )


def _ids_in_range(id_sql: str, lo: int, hi: int, sids: list[int] | None, session: Session) -> np.ndarray:
    """Sorted ids of ``id_sql`` within [lo, hi] (a range index scan)."""
    return np.asarray(
        session.execute(
            text(f"SELECT id FROM ({id_sql}) q WHERE id BETWEEN :lo AND :hi ORDER BY id"),
            {"lo": lo, "hi": hi, **({"sids": sids} if sids else {})},
        )
        .scalars()
        .all(),
        dtype=np.int64,
    )


@dataclass
class PlannedScoreJob:
    """A planned ``score`` job."""

    job_id: int
    model: ModelVersion
    n_items: int
    n_chunks: int


def plan_score_job(
    classifier: str | ModelVersion,
    *,
    session: Session,
    surveys: list[str] | None = None,
    chunk_size: int = DEFAULT_CHUNK,
    reason: str = "requested",
    exclude_open: bool = False,
    retry_failed: bool = True,
) -> PlannedScoreJob:
    """Create a ``score`` job over the sources lacking a score from the classifier version.

    ``exclude_open`` leaves out sources already in a queued or running chunk of the same version;
    ``retry_failed=False`` leaves out sources whose scoring failed before under this version until
    their input changes (:func:`lenscat.jobs.service.without_failed_items`).
    """
    model = classifier if isinstance(classifier, ModelVersion) else get_model("classifier", classifier, session=session)
    sids = _survey_ids(surveys, session)
    if model.architecture == "ensemble" and reason == "requested":  # members must have scored first
        from lenscat.classifiers.ensemble import check_members_scored, load_ensemble

        check_members_scored(
            [get_model("classifier", i, session=session) for i in load_ensemble(model).member_ids],
            session=session,
            surveys=surveys,
        )
    job_id = create_job(
        "score",
        model.model_id,
        {"classifier": model.label, "surveys": surveys or [], "chunk_size": int(chunk_size), "reason": reason},
        session=session,
    )
    id_sql = missing_scores_sql(model, bool(sids))
    if not retry_failed:
        id_sql = without_failed_items(id_sql, model.model_id)
    if exclude_open:
        id_sql = outside_open_chunks(id_sql, "score", model.model_id)
    n_items, n_chunks = plan_chunks(job_id, id_sql, {"sids": sids} if sids else {}, chunk_size, session=session)
    return PlannedScoreJob(job_id, model, n_items, n_chunks)


def upsert_scores(
    model: ModelVersion, source_ids: np.ndarray, scores: np.ndarray, *, job_id: int | None, session: Session
) -> int:
    """COPY (source, score) into staging, then one upsert on ``pk_scores``; returns rows written."""
    ids = np.asarray(source_ids, dtype=np.int64)
    sc = np.asarray(scores, dtype=np.float64)
    if len(ids) != len(sc):
        raise LenscatError(f"{len(ids)} source ids but {len(sc)} scores")
    if len(ids) == 0:
        return 0
    if not np.isfinite(sc).all() or (sc < 0).any() or (sc > 1).any():
        raise LenscatError(f"classifier {model.label} produced scores outside [0, 1]")
    conn = raw_connection(session)
    with conn.cursor() as cur:
        cur.execute("CREATE TEMP TABLE IF NOT EXISTS scores_stage (source_id bigint, score real) ON COMMIT DELETE ROWS")
        cur.execute("TRUNCATE scores_stage")
        with cur.copy("COPY scores_stage (source_id, score) FROM STDIN") as copy:
            copy.write("".join(f"{i}\t{s:.9g}\n" for i, s in zip(ids.tolist(), sc.tolist(), strict=True)))
        cur.execute(
            f"""
            INSERT INTO lenscat.scores AS c (model_id, source_id, score, job_id)
            SELECT {int(model.model_id)}, source_id, score, %s FROM scores_stage
            ON CONFLICT ON CONSTRAINT pk_scores DO UPDATE
            SET score = EXCLUDED.score, job_id = EXCLUDED.job_id, created_at = now()
            WHERE c.score IS DISTINCT FROM EXCLUDED.score
            """,
            (job_id,),
        )
        n = cur.rowcount
        cur.execute("TRUNCATE scores_stage")
    return int(n)


_ITEM_ERRORS = (LenscatError, OSError, ValueError, KeyError, IndexError)
"""What reading or scoring one source's cutout can raise for a reason of that source."""


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _score_images(
    fn: Any, imgs: Any, positions: np.ndarray, ids: np.ndarray, failures: list[tuple[int, str]]
) -> tuple[np.ndarray, np.ndarray]:
    """Scores of the cutouts at ``positions`` of ``imgs``; a batch that fails is retried one by one,
    and the sources that fail alone (unreadable cutout, NaN pixels, wrong shape) go to ``failures``."""
    try:
        x = imgs.get(positions)
        finite = np.isfinite(x.reshape(len(x), -1)).all(axis=1)
        if finite.all():
            return ids, np.asarray(fn(x), dtype=np.float64).reshape(-1)
    except _ITEM_ERRORS:
        pass
    keep: list[int] = []
    scores: list[float] = []
    for pos, sid in zip(positions.tolist(), ids.tolist(), strict=True):
        try:
            x = imgs.get(np.array([pos], dtype=np.int64))
            if not np.isfinite(x).all():
                failures.append((int(sid), "cutout has NaN or infinite pixels"))
                continue
            scores.append(float(np.asarray(fn(x), dtype=np.float64).reshape(-1)[0]))
            keep.append(int(sid))
        except _ITEM_ERRORS as exc:
            failures.append((int(sid), _one_line(exc)))
    return np.array(keep, dtype=np.int64), np.array(scores, dtype=np.float64)


def score_chunk(
    job_id: int,
    chunk_no: int,
    lo_id: int,
    hi_id: int,
    *,
    session: Session,
    device: str | None = None,
    batch_size: int = 256,
) -> int:
    """Score the sources of one chunk that still lack a score, and mark the chunk done (one transaction).

    What is missing is the set difference of two range scans (scorable ids, scored ids), done in
    numpy: an anti-join planned on statistics taken before this job wrote its first scores can
    degrade into a nested loop over every score of the version (quadratic in the job's size).
    A source that cannot be scored (its cutout unreadable or with NaN pixels, a non-finite score)
    is recorded in ``lenscat.job_item_failures`` with the reason; the others are written.
    """
    t0 = time.perf_counter()
    row = session.execute(text("SELECT model_id, params FROM lenscat.jobs WHERE job_id = :j"), {"j": job_id}).one()
    model = get_model("classifier", int(row.model_id), session=session)
    sids = _survey_ids(list(row.params.get("surveys") or []) or None, session)
    todo = np.setdiff1d(
        _ids_in_range(candidates_sql(model, bool(sids)), lo_id, hi_id, sids, session),
        _ids_in_range(
            f"SELECT c.source_id AS id FROM lenscat.scores c WHERE c.model_id = {int(model.model_id)}",
            lo_id,
            hi_id,
            None,
            session,
        ),
    )
    n = 0
    failures: list[tuple[int, str]] = []
    if len(todo):
        fn: Any = None if model.architecture in DERIVED_ARCHITECTURES else score_function(model, device)
        if model.architecture in DERIVED_ARCHITECTURES:
            ids, scores = _derived(model).score_sources(model, todo, session=session)
        elif model.architecture == "linear":
            enc = get_model("encoder", int(model.parent_model_id or 0), session=session)
            ids, vec = read_embeddings(enc, source_ids=todo, session=session)
            scores = np.asarray(fn(vec), dtype=np.float64).reshape(-1)
        else:
            imgs = catalogue_images(todo, session=session)
            parts = [
                _score_images(
                    fn, imgs, np.arange(i, min(i + batch_size, len(todo))), todo[i : i + batch_size], failures
                )
                for i in range(0, len(todo), batch_size)
            ]
            ids = np.concatenate([p[0] for p in parts])
            scores = np.concatenate([p[1] for p in parts])
        ok = np.isfinite(scores)
        failures += [(int(i), f"classifier {model.label} gave a non-finite score") for i in np.asarray(ids)[~ok]]
        ids, scores = np.asarray(ids)[ok], scores[ok]
        n = upsert_scores(model, ids, scores, job_id=job_id, session=session)
        clear_item_failures(model.model_id, ids, lo_id, hi_id, session=session)
    n_failed = record_item_failures(job_id, model.model_id, "score", failures, session=session)
    finish_chunk(job_id, chunk_no, n, time.perf_counter() - t0, session=session, n_failed=n_failed)
    return n


def classifier_lineage(model: ModelVersion, *, session: Session) -> dict[str, Any]:
    """The provenance chain of a classifier version: itself, its encoder, their training sets."""
    out: dict[str, Any] = {
        "classifier": model.label,
        "architecture": model.architecture,
        "checkpoint_sha256": model.checkpoint_sha256,
        "training_set_sha256": model.training_set_sha256,
        "hparams": model.hparams,
    }
    if model.parent_model_id:
        enc = get_model("encoder", int(model.parent_model_id), session=session)
        out["encoder"] = {
            "encoder": enc.label,
            "architecture": enc.architecture,
            "checkpoint_sha256": enc.checkpoint_sha256,
            "training_set_sha256": enc.training_set_sha256,
            "hparams": enc.hparams,
        }
    return out


def hparams_json(model: ModelVersion) -> str:
    """Hyper-parameters as sorted JSON (for display)."""
    return json.dumps(model.hparams, sort_keys=True)
