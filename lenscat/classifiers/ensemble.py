"""Ensembles of classifier versions: several members' stored scores combined into one classifier version.

An ensemble is a ``classifier`` row of ``lenscat.model_versions`` with architecture ``ensemble``.
Its checkpoint is a small JSON file naming the member versions (model id, ``name@version``,
checkpoint and training-set sha256) and holding what the combination needs, so a source scored
later gets exactly the same transform:

* ``rank`` -- each member's score is turned into a rank percentile against that member's score
  distribution (:data:`N_QUANTILES` quantiles of its scores over the sources every member has scored,
  stored in the checkpoint), and the percentiles are averaged. Members whose scores live on
  different scales (a probe's probabilities, a CNN's saturated sigmoid) count equally.
* ``stack`` -- a logistic regression on the members' logit-transformed scores, fitted on labelled
  sources that no member trained or validated on (the members' held-out test lenses): half of them,
  drawn with a fixed seed, are used for the fit and recorded, so evaluation leaves them out too.

An ensemble's score for a source is computed from its members' stored scores by the normal score
job (:func:`lenscat.classifiers.scoring.plan_score_job` / :func:`~lenscat.classifiers.scoring.score_chunk`), whose
candidates are the sources every member has scored; so ``top``, ``classifier evaluate``, the grading
grid and active learning take an ensemble like any classifier. The sources it must leave out of
evaluation (:func:`training_ids`) are the union of its members' and the stacking fit's.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import text
from sqlalchemy.orm import Session

from lenscat.catalogue.surveys import get_survey, real_source_sql, real_survey_ids
from lenscat.classifiers.ensemble_combine import combine, fit_logistic, logit_features
from lenscat.classifiers.labels import resolve_labels
from lenscat.classifiers.loaders import training_ids as member_training_ids
from lenscat.classifiers.scoring import candidates_sql as member_candidates_sql
from lenscat.classifiers.types import Ensemble, TrainResult, score_step
from lenscat.errors import LenscatError, MissingPrerequisite
from lenscat.jobs.failures import without_failed_items
from lenscat.registry.checkpoints import verify_file
from lenscat.registry.versions import (
    ModelVersion,
    check_name,
    get_model,
    register_model,
    store_checkpoint,
)

METHODS = ("rank", "stack")
N_QUANTILES = 1001
"""Quantiles of each member's score distribution kept for the rank transform (0, 0.1, ..., 100 %)."""
MIN_STACK_LENSES = 10
"""Fewest held-out labelled lenses a stacking fit accepts."""
MAX_STACK_NEGATIVES = 200_000
"""Most non-lens sources a stacking fit draws (at random, fixed seed)."""
FORMAT = "lenscat-ensemble/1"


class MissingMemberScores(MissingPrerequisite):
    """A member has not scored every source it can score (of the surveys asked for).

    The step to take first is scoring with that member (the CLI shows its command line).

    Attributes
    ----------
    member : str
        The member's ``name@version``.
    detail : str
        The message without the advice.
    """

    def __init__(self, member: str, detail: str) -> None:
        self.member = member
        self.detail = detail
        super().__init__(f"{detail}: {{step}} first", score_step(member))


# ------------------------------------------------------------------------------------ storage
@lru_cache(maxsize=8)
def _load(path: str, sha256: str) -> Ensemble:
    verify_file(path, sha256, what="its registered ensemble version")
    ck = json.loads(Path(path).read_text())
    if ck.get("format") != FORMAT:
        raise LenscatError(f"{path}: not an ensemble checkpoint ({FORMAT})")
    return Ensemble(
        method=ck["method"],
        members=list(ck["members"]),
        quantiles=np.asarray(ck["quantiles"], dtype=np.float64) if ck.get("quantiles") else None,
        coef=np.asarray(ck["coef"], dtype=np.float64) if ck.get("coef") is not None else None,
        intercept=float(ck.get("intercept", 0.0)),
        fit_ids=np.asarray(ck.get("fit_ids", []), dtype=np.int64),
        seen_ids=np.asarray(ck.get("member_training_ids", []), dtype=np.int64),
    )


def load_ensemble(model: ModelVersion) -> Ensemble:
    """The checkpoint of an ensemble version (checked against its sha256; cached per process)."""
    if model.architecture != "ensemble":
        raise LenscatError(f"classifier {model.label} is a {model.architecture} classifier, not an ensemble")
    return _load(str(model.checkpoint_path), str(model.checkpoint_sha256))


def member_labels(model: ModelVersion) -> list[str]:
    """``name@version`` of each member of an ensemble version."""
    return [str(m["label"]) for m in load_ensemble(model).members]


# ------------------------------------------------------------------------------------ scores
def _member_scores(
    member: ModelVersion, session: Session, sids: list[int] | None, ids: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(sorted source ids, scores) of a member: all of them in ``sids`` (or the real surveys), or those of ``ids``."""
    if ids is not None:
        rows = session.execute(
            text(
                f"SELECT source_id, score FROM lenscat.scores WHERE model_id = {int(member.model_id)} "
                "AND source_id = ANY(:ids) ORDER BY source_id"
            ),
            {"ids": np.asarray(ids, np.int64).tolist()},
        ).all()
    else:
        cond = "s.survey_id = ANY(:sv)" if sids else real_source_sql()
        rows = session.execute(
            text(
                f"SELECT c.source_id, c.score FROM lenscat.scores c JOIN lenscat.sources s USING (source_id) "
                f"WHERE c.model_id = {int(member.model_id)} AND {cond} ORDER BY c.source_id"
            ),
            {"sv": sids} if sids else {},
        ).all()
    return (np.array([r[0] for r in rows], dtype=np.int64), np.array([r[1] for r in rows], dtype=np.float64))


def check_members_scored(members: list[ModelVersion], *, session: Session, surveys: list[str] | None = None) -> None:
    """Raise :class:`MissingMemberScores` for the first member that has not scored every source it can.

    Sources whose scoring failed under the member (an unreadable cutout, recorded in
    ``lenscat.job_item_failures``) do not count: they will not be scored until their input changes.

    Parameters
    ----------
    members : list of ModelVersion
        The classifier versions.
    surveys : list of str, optional
        Only these surveys (default: every real survey, not the injection sets).
    """
    # injection sets are never required: they train, they are not ranked
    sids = [get_survey(x, session=session).survey_id for x in surveys] if surveys else real_survey_ids(session=session)
    where = f" of survey{'s' if len(surveys or []) > 1 else ''} {', '.join(surveys)}" if surveys else ""
    for m in members:
        total, scored = session.execute(
            text(
                f"SELECT count(*), count(*) FILTER (WHERE EXISTS (SELECT 1 FROM lenscat.scores c WHERE c.model_id = "
                f"{int(m.model_id)} AND c.source_id = q.id)) "
                f"FROM ({without_failed_items(member_candidates_sql(m, bool(sids)), m.model_id)}) q"
            ),
            {"sids": sids} if sids else {},
        ).one()
        if int(total) == 0:
            raise LenscatError(f"member {m.label} has no sources to score{where}")
        if int(scored) < int(total):
            raise MissingMemberScores(
                m.label,
                f"member {m.label} has scored {int(scored):,} of the {int(total):,} sources{where} it can score",
            )


def _common(data: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Source ids every member scored, and the (n, n_members) score matrix over them."""
    common = data[0][0]
    for ids, _ in data[1:]:
        common = np.intersect1d(common, ids, assume_unique=True)
    return common, np.stack([sc[np.searchsorted(ids, common)] for ids, sc in data], axis=1)


def _training_set_sha(method: str, members: list[ModelVersion], fit_ids: np.ndarray) -> str:
    h = hashlib.sha256(f"ensemble/{method}".encode())
    for m in members:
        h.update(f"\0{m.model_id}\0{m.checkpoint_sha256}\0{m.training_set_sha256}".encode())
    h.update(np.sort(np.asarray(fit_ids, dtype=np.int64)).astype("<i8").tobytes())
    return h.hexdigest()


def train_ensemble(
    name: str,
    members: list[str],
    *,
    session: Session,
    method: str = "rank",
    surveys: list[str] | None = None,
    origins: list[str] | None = None,
    seed: int = 0,
) -> TrainResult:
    """Combine classifier versions into an ensemble and register it as the next version of ``name``.

    Parameters
    ----------
    name : str
        Ensemble name; a new checkpoint becomes its next version.
    members : list of str
        Member classifiers (``NAME`` = latest version, or ``NAME@VERSION``); at least two.
    session : Session
        Database session (the caller commits).
    method : {'rank', 'stack'}
        Rank-percentile average, or logistic regression on the members' logits (fitted on held-out
        labelled sources).
    surveys : list of str, optional
        Sources whose member scores define the quantiles / the stacking fit (default: every real
        survey).
    origins : list of str, optional
        Label origins counted as truth for stacking (default: all).
    seed : int
        Seed of the stacking half-split.

    Returns
    -------
    TrainResult
        The version (``created`` False when the same checkpoint was registered already) and a report.

    Raises
    ------
    MissingMemberScores
        A member has not scored every source it can score.
    LenscatError
        Fewer than two distinct members, an unknown method, no source scored by every member, or
        (stacking) fewer than :data:`MIN_STACK_LENSES` held-out lenses.
    """
    check_name(name)
    if method not in METHODS:
        raise LenscatError(f"unknown ensemble method {method!r}; expected one of {', '.join(METHODS)}")
    models = {m.model_id: m for m in (get_model("classifier", ref, session=session) for ref in members)}
    if len(models) < 2:
        raise LenscatError(f"an ensemble needs at least two distinct member versions, got {len(models)}")
    mv = [models[k] for k in sorted(models)]
    for m in mv:
        if m.name == name:
            raise LenscatError(f"member {m.label} has the ensemble's own name {name!r}: choose another name")
    check_members_scored(mv, session=session, surveys=surveys)
    sids = [get_survey(x, session=session).survey_id for x in surveys] if surveys else None
    common, s = _common([_member_scores(m, session, sids) for m in mv])
    if len(common) == 0:
        raise LenscatError(f"no source is scored by all of {', '.join(m.label for m in mv)}")
    grid = np.linspace(0.0, 1.0, N_QUANTILES)
    seen = np.unique(np.concatenate([member_training_ids(m) for m in mv])).astype(np.int64)
    ck: dict[str, Any] = {
        "format": FORMAT,
        "method": method,
        "surveys": sorted(surveys or []),
        "members": [
            {
                "model_id": m.model_id,
                "label": m.label,
                "architecture": m.architecture,
                "checkpoint_sha256": m.checkpoint_sha256,
                "training_set_sha256": m.training_set_sha256,
            }
            for m in mv
        ],
        "n_reference": int(len(common)),
        "member_training_ids": [int(i) for i in seen],
    }
    report: dict[str, Any] = {"method": method, "members": [m.label for m in mv], "n_reference": int(len(common))}
    fit_ids = np.zeros(0, dtype=np.int64)
    if method == "rank":
        ck["quantiles"] = [[float(v) for v in np.quantile(s[:, j], grid)] for j in range(len(mv))]
    else:
        held = ~np.isin(common, seen)
        labels = resolve_labels(session=session, origins=origins, surveys=sids)
        y = np.array([labels.get(int(i), 0) for i in common], dtype=np.int8)
        pos = np.flatnonzero(held & (y == 1))
        neg = np.flatnonzero(held & (y == 0))
        if len(pos) < MIN_STACK_LENSES:
            raise LenscatError(
                f"stacking needs at least {MIN_STACK_LENSES} labelled lenses that no member trained or validated on; "
                f"{len(pos)} of the sources scored by every member are: use the rank method, or label more lenses"
            )
        rng = np.random.default_rng(seed)
        fit_pos = np.sort(rng.permutation(pos)[: len(pos) // 2])
        fit_neg = np.sort(rng.permutation(neg)[: min(len(neg) // 2, MAX_STACK_NEGATIVES)])
        rows = np.r_[fit_pos, fit_neg]
        coef, intercept = fit_logistic(logit_features(s[rows]), np.r_[np.ones(len(fit_pos)), np.zeros(len(fit_neg))])
        fit_ids = np.sort(common[rows])
        ck.update(
            coef=[float(c) for c in coef],
            intercept=intercept,
            seed=int(seed),
            origins=sorted(origins or []),
            fit_ids=[int(i) for i in fit_ids],
        )
        report.update(
            fit_lenses=int(len(fit_pos)),
            fit_nonlenses=int(len(fit_neg)),
            held_out_lenses_left=int(len(pos) - len(fit_pos)),
            coef={m.label: round(float(c), 6) for m, c in zip(mv, coef, strict=True)},
            intercept=round(intercept, 6),
        )
    hparams = {
        "method": method,
        "members": [{"label": m.label, "checkpoint_sha256": m.checkpoint_sha256} for m in mv],
        "surveys": sorted(surveys or []),
        **({"seed": int(seed), "origins": sorted(origins or [])} if method == "stack" else {}),
    }
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "ensemble.json"
        path.write_text(json.dumps(ck, sort_keys=True))
        stored, sha = store_checkpoint(path)
    model, created = register_model(
        "classifier",
        name,
        architecture="ensemble",
        output_dim=1,
        checkpoint_path=stored,
        checkpoint_sha256=sha,
        origin="trained",
        hparams=hparams,
        input_spec={"input": "scores", "members": [m.label for m in mv]},
        training_set_sha256=_training_set_sha(method, mv, fit_ids),
        parent_model_id=None,
        metrics={k: v for k, v in report.items() if k not in ("members",)},
        session=session,
    )
    return TrainResult(model, created, {**report, "classifier": model.label, "created": created, "notes": []})


# ------------------------------------------------------------------------------------ score-job hooks
def candidates_sql(model: ModelVersion, with_surveys: bool = False) -> str:
    """SQL (one column ``id``) of the sources the ensemble can score: those every member has scored."""
    ids = load_ensemble(model).member_ids
    joins = "".join(
        f" JOIN lenscat.scores c{j} ON c{j}.source_id = c0.source_id AND c{j}.model_id = {mid}"
        for j, mid in enumerate(ids)
        if j
    )
    return (
        "SELECT c0.source_id AS id FROM lenscat.scores c0"
        + joins
        + (" JOIN lenscat.sources s ON s.source_id = c0.source_id" if with_surveys else "")
        + f" WHERE c0.model_id = {ids[0]}"
        + (" AND s.survey_id = ANY(:sids)" if with_surveys else "")
    )


def score_sources(model: ModelVersion, source_ids: np.ndarray, *, session: Session) -> tuple[np.ndarray, np.ndarray]:
    """The ensemble's scores of those ``source_ids`` every member has scored: (ids, scores)."""
    ens = load_ensemble(model)
    data = [
        _member_scores(get_model("classifier", mid, session=session), session, None, ids=source_ids)
        for mid in ens.member_ids
    ]
    common, s = _common(data)
    return common, combine(ens, s)


def training_ids(model: ModelVersion) -> np.ndarray:
    """Sources any member trained or validated on (recorded when the ensemble was made), and the
    stacking fit's sources: what evaluation leaves out."""
    ens = load_ensemble(model)
    return np.union1d(ens.seen_ids, ens.fit_ids).astype(np.int64)
