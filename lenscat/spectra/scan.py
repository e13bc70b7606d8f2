"""Detector versions, scan jobs over the packed store, and the hits they write.

A detector is a ``lenscat.model_versions`` row of kind ``detector`` whose ``architecture`` names a
registered detector class (:mod:`lenscat.spectra.detectors`): ``matched-filter``, ``specnet``,
``ensemble`` (Lyα) or ``oii-filter`` ([OII] doublets).

``lenscat spectra scan`` plans a job over the spectra the detector version has not scanned yet
(``lenscat.spectral_scans``), split into spectrum-id chunks for Celery workers. A chunk reads its
rows from the array store, subtracts the continuum the version chose for each survey (the pipeline's
model or the project's fit), runs the detector, fits every candidate line and applies the per-line
vetoes, and writes hits and scan rows with the chunk's ``done`` mark in one transaction: a
redelivered chunk changes nothing. After the job, the survey-wide wavelength over-density veto is
refreshed over all hits of the version.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy import text
from sqlalchemy.orm import Session

from lenscat.errors import LenscatError
from lenscat.jobs.chunks import finish_chunk
from lenscat.jobs.service import create_job, outside_open_chunks, plan_chunks
from lenscat.registry.versions import ModelVersion, get_model, latest_model_ids
from lenscat.spectra.detectors import (
    CONTINUUM_CHOICES,
    Candidates,
    HitRow,
    apply_continuum,
    finite_or_none,
    load_detector,
    store_batch,
)

__all__ = [
    "DEFAULT_CHUNK",
    "SAMPLES",
    "Candidates",
    "HitRow",
    "continuum_snapshot",
    "load_detector",
    "plan_scan",
    "refresh_overdensity",
    "register_matched_filter",
    "sample_sql",
    "scan_chunk",
    "scan_spectra",
    "write_scan_results",
]

DEFAULT_CHUNK = 5000
MATCHED_FILTER = "matched-filter"
SPECNET = "specnet"

#: which spectra a detector version scans (its ``sample`` hyper-parameter): the Li et al. science
#: sample is galaxies with a pipeline redshift (the foreground's own lines are masked at that z, and
#: a background line means z_source > z_lens); ``all`` scans every spectrum
SAMPLES: dict[str, str] = {
    "galaxies": "s.spec_class = 'GALAXY' AND s.z IS NOT NULL",
    "all": "true",
}
DEFAULT_SAMPLE = "galaxies"


def sample_sql(name: str) -> str:
    """SQL condition on ``lenscat.spectra s`` for a named sample."""
    if name not in SAMPLES:
        raise LenscatError(f"unknown spectrum sample {name!r}; expected one of {', '.join(SAMPLES)}")
    return SAMPLES[name]


def continuum_snapshot(continuum: str | dict[str, str] | None, *, session: Session) -> str | dict[str, str]:
    """The continuum a new detector version subtracts: as given, or the measured per-survey choices.

    Parameters
    ----------
    continuum
        ``'pipeline'`` (the pipeline model where the file has one, else the project's fit),
        ``'fit'`` (always the project's fit), a mapping ``survey -> choice``, or None: the choices
        measured by ``lenscat spectra continuum choose`` (:mod:`lenscat.spectra.continuum_choice`),
        ``'pipeline'`` for surveys never measured.

    Returns
    -------
    str or dict
        Frozen into the version's hyper-parameters (so a new choice makes a new version).
    """
    if continuum is None:
        from lenscat.spectra.continuum_choice import current_choices

        measured = {str(k): str(v) for k, v in current_choices(session=session).items()}
        if not measured or all(v == "pipeline" for v in measured.values()):
            return "pipeline"
        return measured
    values = list(continuum.values()) if isinstance(continuum, dict) else [continuum]
    bad = sorted({str(v) for v in values} - set(CONTINUUM_CHOICES))
    if bad:
        raise LenscatError(f"unknown continuum {bad[0]!r}; expected one of {', '.join(CONTINUUM_CHOICES)}")
    return dict(continuum) if isinstance(continuum, dict) else str(continuum)


def register_matched_filter(
    name: str,
    *,
    session: Session,
    sample: str = DEFAULT_SAMPLE,
    continuum: str | dict[str, str] | None = None,
    **config: Any,
) -> tuple[ModelVersion, bool]:
    """Register a matched-filter detector version (:func:`lenscat.spectra.detector_mf.register_matched_filter`)."""
    from lenscat.spectra.detector_mf import register_matched_filter as _register

    return _register(name, session=session, sample=sample, continuum=continuum, **config)


# --- hits ---------------------------------------------------------------------------------------
_HIT_KEY = ("model_id", "spectrum_id", "pixel")
_HIT_COLUMNS_CACHE: set[str] = set()


def _hit_columns(session: Session) -> set[str]:
    """Writable columns of lenscat.spectral_hits (read once per process)."""
    if not _HIT_COLUMNS_CACHE:
        _HIT_COLUMNS_CACHE.update(
            session.execute(
                text(
                    "SELECT column_name FROM information_schema.columns WHERE table_schema = 'lenscat' "
                    "AND table_name = 'spectral_hits' AND column_name NOT IN ('hit_id', 'created_at')"
                )
            ).scalars()
        )
    return _HIT_COLUMNS_CACHE


def _hit_upsert(columns: tuple[str, ...]) -> Any:
    cols = ", ".join(columns)
    vals = ", ".join(f"CAST(:{c} AS jsonb)" if c == "veto_detail" else f":{c}" for c in columns)
    upd = ", ".join(f"{c} = EXCLUDED.{c}" for c in columns if c not in _HIT_KEY)
    return text(
        f"INSERT INTO lenscat.spectral_hits AS h ({cols}) VALUES ({vals}) "
        f"ON CONFLICT ON CONSTRAINT uq_spectral_hits_model_spectrum_pixel DO UPDATE SET {upd}"
    )


def write_scan_results(
    model: ModelVersion,
    spectrum_ids: np.ndarray,
    cands: Candidates,
    hits: list[HitRow],
    *,
    job_id: int | None,
    session: Session,
) -> int:
    """Upsert hits and one scan row per spectrum (idempotent); returns the number of spectra scanned."""
    if hits:
        allowed = _hit_columns(session)
        groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
        for h in hits:
            row = {
                "model_id": model.model_id,
                "spectrum_id": h.spectrum_id,
                "pixel": h.pixel,
                "wavelength": h.wavelength,
                "job_id": job_id,
                **h.values,
            }
            unknown = sorted(set(row) - allowed)
            if unknown:
                raise LenscatError(
                    f"detector {model.label} produced hit values with no column: {', '.join(unknown)} "
                    "(is the database schema up to date? run `lenscat db upgrade`)"
                )
            groups.setdefault(tuple(row), []).append(row)
        for cols, rows in groups.items():
            session.execute(_hit_upsert(cols), rows)
    n_hits = np.bincount(cands.row, minlength=len(spectrum_ids)) if len(spectrum_ids) else np.zeros(0, int)
    if len(spectrum_ids):
        session.execute(
            text("""INSERT INTO lenscat.spectral_scans (model_id, spectrum_id, n_hits, best_stat, job_id)
                    SELECT :m, s, n, b, :j FROM unnest(CAST(:s AS bigint[]), CAST(:n AS integer[]),
                                                       CAST(:b AS real[])) AS t(s, n, b)
                    ON CONFLICT ON CONSTRAINT pk_spectral_scans DO UPDATE SET n_hits = EXCLUDED.n_hits,
                        best_stat = EXCLUDED.best_stat, job_id = EXCLUDED.job_id, scanned_at = now()"""),
            {
                "m": model.model_id,
                "j": job_id,
                "s": [int(x) for x in spectrum_ids],
                "n": [int(x) for x in n_hits],
                "b": [finite_or_none(x) for x in cands.best],
            },
        )
    return len(spectrum_ids)


# --- jobs ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PlannedScan:
    """A planned scan job."""

    job_id: int
    detector: ModelVersion
    n_items: int
    n_chunks: int

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly form."""
        return {
            "job_id": self.job_id,
            "detector": self.detector.label,
            "spectra": self.n_items,
            "chunks": self.n_chunks,
        }


def detector_sample(model: ModelVersion) -> str:
    """The sample a detector version scans (versions from before samples existed: all)."""
    return str(model.hparams.get("sample", "all"))


def unscanned_sql(model: ModelVersion) -> str:
    """Ids of spectra in the detector version's sample that it has not scanned yet."""
    return (
        "SELECT s.spectrum_id AS id FROM lenscat.spectra s WHERE "
        f"({sample_sql(detector_sample(model))}) AND NOT EXISTS (SELECT 1 FROM "
        f"lenscat.spectral_scans x WHERE x.model_id = {int(model.model_id)} AND x.spectrum_id = s.spectrum_id)"
    )


def plan_scan(
    detector: str | ModelVersion,
    *,
    session: Session,
    chunk_size: int = DEFAULT_CHUNK,
    reason: str = "requested",
    exclude_open: bool = False,
) -> PlannedScan:
    """Create a ``spectral_scan`` job over the spectra the detector version has not scanned."""
    model = detector if isinstance(detector, ModelVersion) else get_model("detector", detector, session=session)
    job_id = create_job(
        "spectral_scan",
        model.model_id,
        {"detector": model.label, "chunk_size": int(chunk_size), "reason": reason},
        session=session,
    )
    sql = unscanned_sql(model)
    if exclude_open:
        sql = outside_open_chunks(sql, "spectral_scan", model.model_id)
    n_items, n_chunks = plan_chunks(job_id, sql, {}, chunk_size, session=session)
    return PlannedScan(job_id, model, n_items, n_chunks)


def scan_spectra(
    model: ModelVersion,
    spectrum_ids: np.ndarray,
    *,
    session: Session,
    device: str | None = None,
    job_id: int | None = None,
    batch_size: int = 4096,
) -> int:
    """Scan the given spectra with a detector version and write hits and scan rows."""
    ids = np.asarray(spectrum_ids, dtype=np.int64)
    if ids.size == 0:
        return 0
    meta = session.execute(
        text(
            "SELECT spectrum_id, pack_id, pack_row, survey FROM lenscat.spectra WHERE spectrum_id = ANY(:ids) "
            "ORDER BY pack_id, pack_row"
        ),
        {"ids": ids.tolist()},
    ).all()
    det = load_detector(model, device)
    n = 0
    by_pack: dict[int, list[tuple[int, int, str]]] = {}
    for sid, pid, prow, survey in meta:
        by_pack.setdefault(int(pid), []).append((int(sid), int(prow), str(survey)))
    from lenscat.spectra.ingest import pack_store

    for pid, items in by_pack.items():
        store = pack_store(pid, session=session)
        for i in range(0, len(items), batch_size):
            part = items[i : i + batch_size]
            sids = np.array([s for s, _, _ in part], dtype=np.int64)
            prow = np.array([r for _, r, _ in part], dtype=np.int64)
            surveys = [v for _, _, v in part]
            choice = det.continuum_for(surveys)
            rows = apply_continuum(store.read(prow, sky=False, fit="fit" in choice), choice)
            batch = store_batch(store, prow, sids, surveys, rows, choice)
            cands = det.detect(batch)
            hits = det.characterise(cands, batch)
            n += write_scan_results(model, sids, cands, hits, job_id=job_id, session=session)
    return n


def scan_chunk(
    job_id: int, chunk_no: int, lo_id: int, hi_id: int, *, session: Session, device: str | None = None
) -> int:
    """Scan the not-yet-scanned spectra of one chunk and mark it done (one transaction)."""
    t0 = time.perf_counter()
    mid = session.execute(text("SELECT model_id FROM lenscat.jobs WHERE job_id = :j"), {"j": job_id}).scalar_one()
    model = get_model("detector", int(mid), session=session)
    todo = np.array(
        session.execute(
            text(
                "SELECT s.spectrum_id FROM lenscat.spectra s WHERE s.spectrum_id BETWEEN :lo AND :hi "
                f"AND ({sample_sql(detector_sample(model))}) "
                "AND NOT EXISTS (SELECT 1 FROM lenscat.spectral_scans x WHERE x.model_id = :m "
                "AND x.spectrum_id = s.spectrum_id)"
            ),
            {"lo": lo_id, "hi": hi_id, "m": model.model_id},
        )
        .scalars()
        .all(),
        dtype=np.int64,
    )
    n = scan_spectra(model, todo, session=session, device=device, job_id=job_id)
    finish_chunk(job_id, chunk_no, n, time.perf_counter() - t0, session=session)
    others_open = session.execute(
        text(
            "SELECT EXISTS (SELECT 1 FROM lenscat.job_chunks WHERE job_id = :j AND chunk_no <> :c AND status <> 'done')"
        ),
        {"j": job_id, "c": chunk_no},
    ).scalar()
    if not others_open:  # the job's last chunk: refresh the survey-wide veto (beat does it too)
        refresh_overdensity(model, session=session)
    return n


def refresh_idle_detectors(*, session: Session) -> dict[str, int]:
    """Refresh the over-density veto of every latest detector version with no scan under way.

    Run by Celery beat's re-processing tick, so hits written by chunks that finished concurrently
    still get the survey-wide veto. Returns ``{detector: hits flagged}``.
    """
    out = {}
    for mid in latest_model_ids("detector", session=session):
        busy = session.execute(
            text(
                "SELECT EXISTS (SELECT 1 FROM lenscat.jobs WHERE kind = 'spectral_scan' "
                "AND model_id = :m AND status IN ('queued', 'running'))"
            ),
            {"m": mid},
        ).scalar()
        if not busy:
            model = get_model("detector", mid, session=session)
            out[model.label] = refresh_overdensity(model, session=session)
    return out


def refresh_overdensity(model: ModelVersion, *, session: Session) -> int:
    """Recompute the survey-wide wavelength over-density veto over all hits of a detector version.

    Returns the number of hits flagged.
    """
    from lenscat.spectra.overdensity import wavelength_overdensity

    rows = session.execute(
        text("SELECT hit_id, wavelength FROM lenscat.spectral_hits WHERE model_id = :m"), {"m": model.model_id}
    ).all()
    n_spec = int(
        session.execute(
            text("SELECT count(*) FROM lenscat.spectral_scans WHERE model_id = :m"), {"m": model.model_id}
        ).scalar_one()
    )
    if not rows:
        return 0
    hit_ids = np.array([r[0] for r in rows], dtype=np.int64)
    from lenscat.spectra.detectors import detector_class
    from lenscat.spectra.grid import FULL, WINDOW

    grid = FULL if detector_class(model.architecture).family == "oii" else WINDOW
    flags, _bins = wavelength_overdensity(np.array([r[1] for r in rows], dtype=np.float64), n_spec, grid=grid)
    flags = np.asarray(flags, dtype=bool)
    session.execute(
        text("""UPDATE lenscat.spectral_hits h SET veto_overdensity = t.f
                FROM unnest(CAST(:ids AS bigint[]), CAST(:f AS boolean[])) AS t(id, f)
                WHERE h.hit_id = t.id AND h.veto_overdensity IS DISTINCT FROM t.f"""),
        {"ids": hit_ids.tolist(), "f": flags.tolist()},
    )
    return int(flags.sum())


def analyze_scans(*, session: Session) -> None:
    """Refresh the planner's statistics of the scan and hit tables after a scan job."""
    session.execute(text("ANALYZE lenscat.spectral_scans"))
    session.execute(text("ANALYZE lenscat.spectral_hits"))
