"""Top-N selection for inspection, and evaluation of a classifier's ranking at the survey's imbalance.

``top_candidates`` reads ``ix_scores_model_score`` (model_id, score DESC, source_id), so the N best
of 10^6-10^9 scores come from an index scan, not a sort. ``evaluate_classifier`` scores the ranking
on every scored source the classifier did not train or validate on, treating labelled lenses as
positives and everything else as negatives (as Stein et al. do on real surveys, where unlabelled
sources are overwhelmingly non-lenses), and reports precision in the top N, recall against the
number of images inspected, AUC, TPR0 and TPR10.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import astropy.units as u
import numpy as np
from astropy.table import Table
from sqlalchemy import text
from sqlalchemy.orm import Session

from lenscat.catalogue.surveys import get_survey, real_source_sql, real_survey_ids
from lenscat.classifiers.labels import resolve_labels
from lenscat.classifiers.loaders import training_ids
from lenscat.classifiers.types import score_step
from lenscat.errors import LenscatError, MissingPrerequisite
from lenscat.registry.versions import ModelVersion, get_model
from lenscat.sky.units import rows_to_table

TOP_UNITS = {"ra": u.deg, "dec": u.deg, "mag_g": u.mag, "mag_r": u.mag, "mag_z": u.mag}


def top_candidates(
    classifier: str | ModelVersion,
    n: int = 100,
    *,
    session: Session,
    surveys: list[str] | None = None,
    min_score: float | None = None,
    exclude_known: bool = False,
    exclude_labelled: bool = False,
) -> Table:
    """The ``n`` highest-scoring sources of a classifier version, after filters.

    Parameters
    ----------
    classifier
        Name (latest version), ``name@version`` or a ModelVersion.
    n
        Rows wanted (Stein et al. inspected the top 1,139 of each of their samples).
    surveys
        Only these surveys (default: every real survey; the injection sets made by
        :func:`lenscat.simulate.injection.inject_survey` are ranked only when named here).
    min_score
        Only scores at or above this.
    exclude_known
        Drop sources matched to a literature lens.
    exclude_labelled
        Drop sources that already carry a label (graded or listed).

    Returns
    -------
    astropy.table.Table
        ``rank, source_id, survey, objid, ra [deg], dec [deg], score, mag_g/r/z [mag], known_lens,
        label``, best first; ``meta`` names the classifier version and its encoder.
    """
    model = classifier if isinstance(classifier, ModelVersion) else get_model("classifier", classifier, session=session)
    if n < 1:
        raise LenscatError(f"-n must be at least 1, got {n}")
    where = [f"c.model_id = {int(model.model_id)}"]
    params: dict[str, Any] = {"n": int(n)}
    if surveys:
        where.append("s.survey_id = ANY(:sids)")
        params["sids"] = [get_survey(x, session=session).survey_id for x in surveys]
    else:  # the sources of injection sets are ranked only when their set is named
        where.append(real_source_sql("s.survey_id"))
    if min_score is not None:
        where.append("c.score >= :smin")
        params["smin"] = float(min_score)
    if exclude_known:
        where.append("NOT EXISTS (SELECT 1 FROM lenscat.crossmatches x WHERE x.source_id = c.source_id)")
    if exclude_labelled:
        where.append("NOT EXISTS (SELECT 1 FROM lenscat.labels l WHERE l.source_id = c.source_id)")
    rows = session.execute(
        text(
            f"""
            WITH top AS MATERIALIZED (
                SELECT c.source_id, c.score FROM lenscat.scores c
                JOIN lenscat.sources s ON s.source_id = c.source_id
                WHERE {" AND ".join(where)}
                ORDER BY c.score DESC, c.source_id LIMIT :n
            )
            SELECT row_number() OVER (ORDER BY t.score DESC, t.source_id) AS rank, t.source_id, v.survey, v.objid,
                   v.ra, v.dec, t.score, v.mag_g, v.mag_r, v.mag_z,
                   EXISTS (SELECT 1 FROM lenscat.crossmatches x WHERE x.source_id = t.source_id) AS known_lens,
                   (SELECT max(l.label) FROM lenscat.labels l WHERE l.source_id = t.source_id) AS label,
                   v.cutout_file, v.cutout_row
            FROM top t JOIN public.sources v ON v.source_id = t.source_id
            ORDER BY t.score DESC, t.source_id
            """
        ),
        params,
    )
    out = rows_to_table(rows.keys(), rows.fetchall(), TOP_UNITS)
    out.meta.update(
        {
            "classifier": model.label,
            "n": n,
            "surveys": surveys or [],
            "min_score": min_score,
            "exclude_known": exclude_known,
            "exclude_labelled": exclude_labelled,
        }
    )
    return out


def _scores(model: ModelVersion, session: Session, sids: list[int] | None) -> tuple[np.ndarray, np.ndarray]:
    rows = session.execute(
        text(
            "SELECT c.source_id, c.score FROM lenscat.scores c "
            + ("JOIN lenscat.sources s USING (source_id) " if sids else "")
            + f"WHERE c.model_id = {int(model.model_id)}"
            + (" AND s.survey_id = ANY(:sv)" if sids else "")
            + " ORDER BY c.source_id"
        ),
        {"sv": sids} if sids else {},
    ).all()
    return (np.array([r[0] for r in rows], dtype=np.int64), np.array([r[1] for r in rows], dtype=np.float64))


def evaluate_classifier(
    classifier: str,
    *,
    session: Session,
    baselines: list[str] | None = None,
    surveys: list[str] | None = None,
    origins: list[str] | None = None,
    top_n: list[int] | None = None,
    plots: str | Path | None = None,
) -> dict[str, Any]:
    """Metrics of a classifier's ranking (and of baselines on exactly the same sources).

    The evaluation set is every source scored by all the models compared, minus every source any of
    them trained or validated on. Labels come from :func:`lenscat.classifiers.labels.resolve_labels` (``origins``
    restricts them, e.g. ``['simulation']`` for the truth of a simulated survey).

    Returns
    -------
    dict
        ``{"models": {label: metrics}, "n_eval": ..., "n_lenses": ..., "plots": [paths]}`` where each
        metrics dict is :func:`lenscat.classifiers.evaluation.ranking_metrics` plus the model's provenance.
    """
    from lenscat.classifiers.evaluation import ranking_metrics
    from lenscat.classifiers.evaluation_plot import plot_evaluation

    # the injection sets train; they are evaluated on only when named
    sids = [get_survey(x, session=session).survey_id for x in surveys] if surveys else real_survey_ids(session=session)
    models = [get_model("classifier", c, session=session) for c in [classifier, *(baselines or [])]]
    data = {m.label: _scores(m, session, sids) for m in models}
    for m in models:
        if len(data[m.label][0]) == 0:
            raise MissingPrerequisite(f"classifier {m.label} has no scores yet: {{step}}", score_step(m.name))
    common = data[models[0].label][0]
    for ids, _ in data.values():
        common = np.intersect1d(common, ids)
    seen = np.unique(np.concatenate([training_ids(m) for m in models]))
    eval_ids = common[~np.isin(common, seen)]
    labels = resolve_labels(session=session, origins=origins, surveys=sids)
    y = np.array([labels.get(int(i), 0) for i in eval_ids], dtype=np.int8)
    if y.sum() == 0:
        raise LenscatError(
            f"no labelled lenses among the {len(eval_ids)} scored sources left out of training; "
            "label more lenses or evaluate on another survey"
        )
    result: dict[str, Any] = {
        "n_eval": int(len(eval_ids)),
        "n_lenses": int(y.sum()),
        "excluded_training_sources": int(np.isin(common, seen).sum()),
        "models": {},
    }
    curves = {}
    for m in models:
        ids, sc = data[m.label]
        s = sc[np.searchsorted(ids, eval_ids)]
        metrics = ranking_metrics(s, y, top_n=top_n)
        metrics.update(
            {
                "architecture": m.architecture,
                "checkpoint_sha256": m.checkpoint_sha256,
                "training_set_sha256": m.training_set_sha256,
            }
        )
        result["models"][m.label] = metrics
        curves[m.label] = (s, y)
    if plots is not None:
        result["plots"] = [str(p) for p in plot_evaluation(curves, Path(plots), prefix=models[0].name)]
    return result
