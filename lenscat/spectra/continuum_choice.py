"""Which continuum the line detectors subtract, per survey: measured, stored, read back.

The residual line search subtracts either the pipeline's own best-fit model (SDSS/BOSS ``model``,
DESI redrock template; ``'pipeline'``, which falls back to the project's fit for a spectrum whose
file has no model) or the project's eigenspectrum + polynomial fit (``'fit'``,
:mod:`lenscat.spectra.continuum`). :func:`measure_continua` runs the matched-S/N
injection-recovery protocol (:func:`lenscat.spectra.evaluate.evaluate_protocol`) with each
continuum on a survey's early-type hosts (the same re-noised realisations for both), and
:func:`choose_continua` keeps the better one per survey in ``lenscat.continuum_choices``:

* the continuum with the **higher completeness** (injected lines with matched S/N >= 8 found after
  the vetoes) wins, unless its false-candidate rate (clean realisations with a candidate after the
  vetoes) is worse than the other's by more than :data:`FALSE_RATE_MARGIN` (1 percentage point,
  the issue's false-rate goal); on a tie the pipeline model stays (today's behaviour);
* a survey whose host spectra carry no pipeline model gets ``'fit'`` with that reason (the
  ``'pipeline'`` continuum would be the fit anyway).

:func:`current_choices` gives the choice of every survey, ``'pipeline'`` for surveys never
measured. Detector registration snapshots it into the version's hyper-parameters.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
from astropy.table import Table
from sqlalchemy import text
from sqlalchemy.orm import Session

from lenscat.errors import LenscatError
from lenscat.registry.versions import ModelVersion
from lenscat.sky.units import rows_to_table

__all__ = [
    "FALSE_RATE_MARGIN",
    "SURVEYS",
    "choose_continua",
    "current_choices",
    "decide",
    "measure_continua",
    "show_choices",
]

#: surveys with a continuum choice
SURVEYS: tuple[str, ...] = ("sdss", "boss", "desi")
#: a continuum with higher completeness is chosen unless its false-candidate rate is worse by more
#: than this (fraction of clean spectra; 0.01 = one percentage point)
FALSE_RATE_MARGIN = 0.01

_COLUMNS = (
    "survey",
    "choice",
    "reason",
    "completeness_pipeline",
    "completeness_fit",
    "false_rate_pipeline",
    "false_rate_fit",
    "margin",
    "n_spectra",
    "n_realisations",
    "detector",
)


def decide(
    comp_pipeline: float | None,
    comp_fit: float,
    false_pipeline: float | None,
    false_fit: float,
    *,
    has_model: bool,
    margin: float = FALSE_RATE_MARGIN,
) -> tuple[str, str]:
    """The rule: (choice, reason) from completeness and false rates of both continua (fractions 0-1)."""
    if not has_model or comp_pipeline is None or false_pipeline is None:
        return "fit", "no pipeline model in this survey's spectra"

    def better(a: str, ca: float, fa: float, cb: float, fb: float) -> tuple[str, str] | None:
        if ca > cb and fa - fb <= margin:
            return a, (
                f"completeness {ca:.3f} vs {cb:.3f}, false rate {fa:.3f} vs {fb:.3f} (within the margin {margin:g})"
            )
        return None

    for got in (
        better("fit", comp_fit, false_fit, comp_pipeline, false_pipeline),
        better("pipeline", comp_pipeline, false_pipeline, comp_fit, false_fit),
    ):
        if got is not None:
            return got
    if comp_fit > comp_pipeline:  # more complete but too many false candidates
        return "pipeline", (
            f"the fit's completeness {comp_fit:.3f} > {comp_pipeline:.3f} costs false rate "
            f"{false_fit:.3f} vs {false_pipeline:.3f} (more than the margin {margin:g})"
        )
    if comp_pipeline > comp_fit:
        return "fit", (
            f"the pipeline's completeness {comp_pipeline:.3f} > {comp_fit:.3f} costs false rate "
            f"{false_pipeline:.3f} vs {false_fit:.3f} (more than the margin {margin:g})"
        )
    if false_fit < false_pipeline - margin:
        return "fit", f"equal completeness {comp_fit:.3f}; false rate {false_fit:.3f} vs {false_pipeline:.3f}"
    return "pipeline", f"equal completeness {comp_fit:.3f}: the pipeline model stays"


def _surveys_present(*, session: Session, hosts: str) -> list[str]:
    from lenscat.spectra.evaluate_hosts import HOST_SAMPLES

    return list(
        session.execute(
            text(f"SELECT DISTINCT survey FROM lenscat.spectra s WHERE {HOST_SAMPLES[hosts]} ORDER BY survey")
        ).scalars()
    )


def measure_continua(
    detector: ModelVersion,
    *,
    session: Session,
    surveys: list[str] | None = None,
    margin: float = FALSE_RATE_MARGIN,
    **protocol: Any,
) -> Table:
    """Completeness and false-candidate rate with each continuum, per survey, and the rule's choice.

    Parameters
    ----------
    detector
        Detector version to measure with.
    surveys
        Surveys to measure (default: every survey with early-type hosts; a survey whose candidate
        hosts all fail the early-type test is skipped and listed in ``meta['skipped']``).
    margin
        :data:`FALSE_RATE_MARGIN`.
    **protocol
        Settings of :func:`lenscat.spectra.evaluate.evaluate_protocol` (realisations, seed, ...).

    Returns
    -------
    astropy.table.Table
        One row per survey: ``survey, choice, reason, completeness_pipeline, completeness_fit,
        false_rate_pipeline, false_rate_fit, margin, n_spectra, n_realisations, detector`` (rates
        are fractions; completeness at matched S/N >= 8 after the vetoes).
    """
    from lenscat.spectra.evaluate import evaluate_protocol
    from lenscat.spectra.evaluate_hosts import load_hosts

    hosts = str(protocol.pop("hosts", "early-type"))
    protocol.pop("continuum", None)
    protocol.setdefault("real_sample", None)
    todo = surveys if surveys else _surveys_present(session=session, hosts=hosts)
    bad = sorted(set(todo) - set(SURVEYS))
    if bad:
        raise LenscatError(f"unknown survey {bad[0]!r}; expected one of {', '.join(SURVEYS)}")
    if not todo:
        raise LenscatError("no ingested host spectra to measure the continua on: ingest spectra first")
    rows: list[dict[str, Any]] = []
    skipped: list[tuple[str, str]] = []
    for sv in todo:
        try:
            real = load_hosts(session=session, hosts=hosts, survey=sv)
        except LenscatError as exc:
            if surveys:  # asked for by name: say why it cannot be measured
                raise
            skipped.append((sv, str(exc)))  # e.g. its only galaxies have strong emission lines
            continue
        has = getattr(real.rows, "has_model", None)
        has_model = bool(np.any(has)) if has is not None else bool(np.any(np.asarray(real.rows.continuum_source) == 0))
        conts = ["pipeline", "fit"] if has_model else ["fit"]
        results, info = evaluate_protocol(
            [detector], session=session, hosts=hosts, survey=sv, continuum=conts, host_sample=real, **protocol
        )
        by = {r.continuum: r for r in results}
        comp = {c: float(r.headline()["completeness_after"]) for c, r in by.items()}
        false = {c: float(r.false_rate(True)) for c, r in by.items()}
        choice, reason = decide(
            comp.get("pipeline"), comp["fit"], false.get("pipeline"), false["fit"], has_model=has_model, margin=margin
        )
        rows.append(
            {
                "survey": sv,
                "choice": choice,
                "reason": reason,
                "completeness_pipeline": comp.get("pipeline"),
                "completeness_fit": comp["fit"],
                "false_rate_pipeline": false.get("pipeline"),
                "false_rate_fit": false["fit"],
                "margin": margin,
                "n_spectra": info["n_hosts"],
                "n_realisations": info["realisations"],
                "detector": detector.label,
                "model_id": detector.model_id,
                "protocol": {
                    k: info[k]
                    for k in (
                        "realisations",
                        "line_fraction",
                        "snr_range",
                        "fwhm_range",
                        "skew_range",
                        "wave_range",
                        "seed",
                        "hosts",
                        "family",
                    )
                },
            }
        )
    if not rows:
        raise LenscatError(
            "no survey has early-type host spectra to measure the continua on: "
            + "; ".join(f"{sv}: {why}" for sv, why in skipped)
        )
    t = rows_to_table(_COLUMNS, [[r[c] for c in _COLUMNS] for r in rows])
    t.meta["rows"] = rows
    t.meta["skipped"] = skipped
    return t


_UPSERT = text(
    """
    INSERT INTO lenscat.continuum_choices AS c (survey, choice, reason, completeness_pipeline, completeness_fit,
        false_rate_pipeline, false_rate_fit, margin, n_spectra, n_realisations, model_id, detector, protocol,
        measured_at)
    VALUES (:survey, :choice, :reason, :completeness_pipeline, :completeness_fit, :false_rate_pipeline,
        :false_rate_fit, :margin, :n_spectra, :n_realisations, :model_id, :detector, CAST(:protocol AS jsonb), now())
    ON CONFLICT ON CONSTRAINT pk_continuum_choices DO UPDATE SET choice = EXCLUDED.choice, reason = EXCLUDED.reason,
        completeness_pipeline = EXCLUDED.completeness_pipeline, completeness_fit = EXCLUDED.completeness_fit,
        false_rate_pipeline = EXCLUDED.false_rate_pipeline, false_rate_fit = EXCLUDED.false_rate_fit,
        margin = EXCLUDED.margin, n_spectra = EXCLUDED.n_spectra, n_realisations = EXCLUDED.n_realisations,
        model_id = EXCLUDED.model_id, detector = EXCLUDED.detector, protocol = EXCLUDED.protocol,
        measured_at = now()
    """
)


def choose_continua(
    detector: ModelVersion,
    *,
    session: Session,
    surveys: list[str] | None = None,
    margin: float = FALSE_RATE_MARGIN,
    **protocol: Any,
) -> Table:
    """:func:`measure_continua` and store the choices (one row per survey, replaced when re-measured).

    The caller commits.
    """
    t = measure_continua(detector, session=session, surveys=surveys, margin=margin, **protocol)
    for r in t.meta["rows"]:
        session.execute(_UPSERT, {**r, "protocol": json.dumps(r["protocol"])})
    return t


def current_choices(*, session: Session) -> dict[str, str]:
    """``{survey: 'pipeline' | 'fit'}`` for every survey; surveys never measured: ``'pipeline'``."""
    got: dict[str, str] = {
        str(k): str(v) for k, v in session.execute(text("SELECT survey, choice FROM lenscat.continuum_choices")).all()
    }
    return {sv: str(got.get(sv, "pipeline")) for sv in SURVEYS}


def show_choices(*, session: Session) -> Table:
    """The stored choices with their measurements (surveys never measured: ``'pipeline'``, not measured)."""
    res = {
        r.survey: r
        for r in session.execute(
            text(
                "SELECT survey, choice, reason, completeness_pipeline, completeness_fit, "
                "false_rate_pipeline, false_rate_fit, "
                "margin, n_spectra, n_realisations, detector, measured_at FROM lenscat.continuum_choices"
            )
        ).all()
    }
    rows = []
    for sv in SURVEYS:
        r = res.get(sv)
        if r is None:
            rows.append(
                [
                    sv,
                    "pipeline",
                    "not measured: the pipeline model where the spectrum has one",
                    None,
                    None,
                    None,
                    None,
                    None,
                    None,
                    None,
                    None,
                    None,
                ]
            )
        else:
            rows.append(
                [
                    sv,
                    r.choice,
                    r.reason,
                    r.completeness_pipeline,
                    r.completeness_fit,
                    r.false_rate_pipeline,
                    r.false_rate_fit,
                    r.margin,
                    r.n_spectra,
                    r.n_realisations,
                    r.detector,
                    r.measured_at.isoformat(timespec="seconds"),
                ]
            )
    return rows_to_table((*_COLUMNS, "measured_at"), rows)
