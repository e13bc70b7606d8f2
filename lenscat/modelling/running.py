"""Running a lensmodel version over candidates: ``lensmodel`` jobs, their chunks, the stored rows.

``lenscat model run`` selects sources (the top N of a classifier version, or the consensus grades
A, B ...), creates a job of kind ``lensmodel`` whose parameters list the selected ids, and splits
them into id-range chunks. A chunk (:func:`model_chunk`, run by the Celery task
:data:`lenscat.tasks.names.LENSMODEL_CHUNK` or in process by :func:`lenscat.jobs.service.run_here`)
reads the cutouts, predicts, vets (:mod:`lenscat.modelling.vetting`) and upserts the rows
(:func:`lenscat.modelling.service.store_lens_models`) in the transaction that marks it done, so a
redelivered chunk rewrites identical values (idempotent). Sources whose cutout cannot be read or
modelled are recorded as item failures with the reason.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from sqlalchemy import text
from sqlalchemy.orm import Session

from lenscat.classifiers.inputs import catalogue_images
from lenscat.errors import InvalidParameter, LenscatError
from lenscat.grading.grades import parse_consensus_grades
from lenscat.jobs.chunks import finish_chunk
from lenscat.jobs.failures import clear_item_failures, record_item_failures
from lenscat.jobs.service import create_job, plan_chunks
from lenscat.modelling import sql
from lenscat.modelling.service import store_lens_models
from lenscat.modelling.types import PARAMS as _PARAMS
from lenscat.modelling.types import LensModel
from lenscat.modelling.vetting import VetRules, vet
from lenscat.registry.loaders import load_model
from lenscat.registry.versions import ModelVersion, get_model

JOB_KIND = "lensmodel"
DEFAULT_CHUNK = 500


@dataclass
class PlannedLensJob:
    """A planned ``lensmodel`` job."""

    job_id: int
    model: ModelVersion
    n_items: int
    n_chunks: int


def select_sources(
    *, session: Session, classifier: str | None = None, top: int | None = None, grades: Sequence[str] = ()
) -> np.ndarray:
    """Source ids to model: the ``top`` of a classifier version, or those with a consensus grade in ``grades``.

    Raises
    ------
    InvalidParameter
        Neither or both selections given, or ``top`` below 1.
    """
    if bool(grades) == (classifier is not None or top is not None):
        raise InvalidParameter(("classifier", "grades"), "give {classifier} with a top N, or {grades}, not both")
    if grades:
        chosen = list(parse_consensus_grades(list(grades)))
        rows = session.execute(text(sql.SOURCES_WITH_GRADES), {"grades": chosen}).scalars().all()
        return np.asarray(rows, dtype=np.int64)
    if classifier is None or top is None:
        raise InvalidParameter(("classifier", "top"), "{classifier} needs {top} N (and the other way round)")
    if top < 1:
        raise InvalidParameter("top", "{top} must be at least 1")
    from lenscat.classifiers.ranking import top_candidates

    table = top_candidates(classifier, top, session=session)
    return np.sort(np.asarray(table["source_id"], dtype=np.int64))


def plan_lensmodel_job(
    model: str | ModelVersion,
    source_ids: np.ndarray,
    *,
    session: Session,
    chunk_size: int = DEFAULT_CHUNK,
    selection: dict[str, object] | None = None,
) -> PlannedLensJob:
    """Create a ``lensmodel`` job over ``source_ids`` in id-range chunks of ``chunk_size``."""
    mv = model if isinstance(model, ModelVersion) else get_model("lensmodel", model, session=session)
    if chunk_size < 1:
        raise InvalidParameter("chunk_size", "{chunk_size} must be at least 1")
    ids = sorted({int(i) for i in np.asarray(source_ids, dtype=np.int64)})
    job_id = create_job(
        JOB_KIND,
        mv.model_id,
        {"lensmodel": mv.label, "source_ids": ids, "chunk_size": int(chunk_size), **(selection or {})},
        session=session,
    )
    n_items, n_chunks = plan_chunks(job_id, sql.SELECTED_IDS, {"ids": ids}, chunk_size, session=session)
    return PlannedLensJob(job_id, mv, n_items, n_chunks)


_ITEM_ERRORS = (LenscatError, OSError, ValueError, KeyError, IndexError)


def _window(batch: np.ndarray, crop: int) -> np.ndarray:
    h, w = batch.shape[-2:]
    if h < crop or w < crop:
        raise LenscatError(f"cutouts of {h}x{w} pixels are smaller than the {crop}-pixel window of the model")
    oy, ox = (h - crop) // 2, (w - crop) // 2
    return np.asarray(batch[:, :, oy : oy + crop, ox : ox + crop], dtype=np.float32)


def psf_fwhm_of(source_ids: np.ndarray, *, session: Session) -> np.ndarray:
    """Each source's PSF FWHM [arcsec], the mean of its g and r ``psf_fwhm_<band>`` kept in ``extra``.

    NaN where the catalogue has none (the vetting then uses its default).
    """
    ids = np.asarray(source_ids, dtype=np.int64)
    rows = session.execute(text(sql.SOURCE_PSF_FWHM), {"ids": ids.tolist()}).all()
    found = {}
    for r in rows:
        vals = [float(v) for v in (r.g, r.r) if v is not None and float(v) > 0]
        if vals:
            found[int(r.source_id)] = float(np.mean(vals))
    return np.array([found.get(int(i), np.nan) for i in ids], dtype=np.float64)


def model_sources(
    model: ModelVersion,
    source_ids: np.ndarray,
    *,
    session: Session,
    device: str | None = None,
    batch_size: int = 256,
    refine: bool = False,
) -> tuple[list[LensModel], list[tuple[int, str]]]:
    """Lens models (vetted) of sources with cutouts, and (source, reason) for those that failed.

    With ``refine`` the network's values are refined by a forward-model fit to the cutout
    (:meth:`lenscat.modelling.modeller.Modeller.refine`); ``vet_detail`` says ``refined`` (true or
    false) and, when the fit was rejected, ``refine_rejected`` (why the network's values were kept).
    """
    modeller = load_model(model, device)
    rules = VetRules(**{k: v for k, v in model.hparams.get("vet_rules", {}).items() if k in VetRules.__annotations__})
    if modeller.lens_probability is not None:
        # the threshold stored in the checkpoint (chosen on held-out simulations at training)
        rules = replace(rules, min_lens_probability=float(modeller.lens_probability["threshold"]))
    ids = np.asarray(source_ids, dtype=np.int64)
    failures: list[tuple[int, str]] = []
    out: list[LensModel] = []
    if not len(ids):
        return out, failures
    imgs = catalogue_images(ids, session=session)
    psf = psf_fwhm_of(ids, session=session)
    for start in range(0, len(ids), batch_size):
        pos = np.arange(start, min(start + batch_size, len(ids)))
        try:
            win = _window(imgs.get(pos), modeller.crop)
        except _ITEM_ERRORS as exc:
            failures += [(int(i), " ".join(str(exc).split())) for i in ids[pos]]
            continue
        finite = np.isfinite(win.reshape(len(win), -1)).all(axis=1)
        failures += [(int(i), "cutout has NaN or infinite pixels") for i in ids[pos][~finite]]
        if not finite.any():
            continue
        mu, sig, prob = modeller.predict_with_lens_probability(win[finite], batch_size=batch_size)
        probs = [None] * len(mu) if prob is None else [float(p) for p in prob]
        refined: list[dict[str, Any]] = [{} for _ in mu]
        good = np.isfinite(mu).all(axis=1) & np.isfinite(sig).all(axis=1)
        if refine and good.any():
            r = modeller.refine(win[finite][good], mu[good], sig[good])
            mu[good], sig[good] = r.mu, r.sigma
            for k, ok, why in zip(np.flatnonzero(good), r.refined, r.reasons, strict=True):
                refined[k] = {"refined": bool(ok)} if ok else {"refined": False, "refine_rejected": why}
        for sid, w, m, s, p, fw, rf in zip(
            ids[pos][finite], win[finite], mu, sig, probs, psf[pos][finite], refined, strict=True
        ):
            if not (np.isfinite(m).all() and np.isfinite(s).all()):
                failures.append((int(sid), f"lensmodel {model.label} gave a non-finite prediction"))
                continue
            v = vet(w, m, s, rules=rules, lens_probability=p, psf_fwhm=None if np.isnan(fw) else float(fw))
            vals: dict[str, Any] = {p: float(m[k]) for k, p in enumerate(_PARAMS)}
            errs: dict[str, Any] = {f"{p}_err": float(s[k]) for k, p in enumerate(_PARAMS)}
            vals["theta_e"] = max(vals["theta_e"], 0.0)
            out.append(
                LensModel(
                    model_id=model.model_id,
                    source_id=int(sid),
                    **vals,
                    **errs,
                    arc_mag=v.arc_mag,
                    arc_band=v.arc_band,
                    vet_flags=tuple(v.flags),
                    vet_detail={**v.detail, **rf},
                )
            )
    return out, failures


def model_chunk(
    job_id: int, chunk_no: int, lo_id: int, hi_id: int, *, session: Session, device: str | None = None
) -> int:
    """Model the job's sources in ``[lo_id, hi_id]``, store them and mark the chunk done (one transaction)."""
    t0 = time.perf_counter()
    model_id, refine = session.execute(text(sql.JOB_MODEL), {"j": job_id}).one()
    model = get_model("lensmodel", int(model_id), session=session)
    ids = np.asarray(
        session.execute(text(sql.JOB_IDS_IN_RANGE), {"j": job_id, "lo": lo_id, "hi": hi_id}).scalars().all(),
        dtype=np.int64,
    )
    rows: list[LensModel] = []
    failures: list[tuple[int, str]] = []
    try:
        rows, failures = model_sources(model, ids, session=session, device=device, refine=bool(refine))
    except LenscatError as exc:
        if "no cutout" not in str(exc):
            raise
        # some sources lack a cutout: model the others one by one
        for sid in ids:
            try:
                r, f = model_sources(model, np.array([sid]), session=session, device=device, refine=bool(refine))
            except LenscatError as one:
                r, f = [], [(int(sid), " ".join(str(one).split()))]
            rows += r
            failures += f
    store_lens_models(rows, model_id=model.model_id, job_id=job_id, session=session)
    clear_item_failures(model.model_id, [r.source_id for r in rows], lo_id, hi_id, session=session)
    n_failed = record_item_failures(job_id, model.model_id, JOB_KIND, failures, session=session)
    finish_chunk(job_id, chunk_no, len(rows), time.perf_counter() - t0, session=session, n_failed=n_failed)
    return len(rows)
