"""Detector versions, scan jobs over the packed store, and the hits they write.

A detector is a ``lenscat.model_versions`` row of kind ``detector``:

* ``matched-filter`` -- the BELLS GALLERY matched filter (:mod:`lenscat.spectra.matched_filter`);
  its version is the sha256 of its configuration, so the same settings are the same version;
* ``specnet`` -- the Li et al. (2018) 1-D ResNet (:mod:`lenscat.models.specnet`), a checkpoint.

``lenscat spectra scan`` plans a job over the spectra the detector version has not scanned yet
(``lenscat.spectral_scans``), split into spectrum-id chunks for Celery workers. A chunk reads its
rows from the array store, runs the detector, fits every candidate line (skew-normal + continuum),
applies the per-line vetoes, and writes hits and scan rows with the chunk's ``done`` mark in one
transaction: a redelivered chunk changes nothing. After the job, the survey-wide wavelength
over-density veto is refreshed over all hits of the version.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from sqlalchemy import text
from sqlalchemy.orm import Session

from lenscat.errors import LenscatError
from lenscat.jobs import create_job, finish_chunk, outside_open_chunks, plan_chunks
from lenscat.registry import ModelVersion, get_model, register_model
from lenscat.spectra.grid import LYA, VETO, WINDOW
from lenscat.spectra.pack import PackedRows, PackStore

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


# --- detector versions --------------------------------------------------------------------------
def register_matched_filter(name: str, *, session: Session, sample: str = DEFAULT_SAMPLE,
                            **config: Any) -> tuple[ModelVersion, bool]:
    """Register a matched-filter detector version with the given configuration (defaults otherwise).

    ``sample`` names the spectra it scans (:data:`SAMPLES`).
    """
    from lenscat.spectra.matched_filter import MatchedFilterConfig

    sample_sql(sample)
    cfg = MatchedFilterConfig(**config)
    hp = {**json.loads(json.dumps(asdict(cfg), default=list)), "sample": sample}
    sha = hashlib.sha256(json.dumps({"architecture": MATCHED_FILTER, **hp}, sort_keys=True).encode()).hexdigest()
    return register_model("detector", name, architecture=MATCHED_FILTER, output_dim=None, checkpoint_path=None,
                          checkpoint_sha256=sha, origin="configured", hparams=hp,
                          input_spec={"window_k0": WINDOW.k0, "window_n": WINDOW.n, "dlog": WINDOW.dlog},
                          description="BELLS GALLERY matched filter (Gaussian kernel bank)", session=session)


@dataclass
class Candidates:
    """Per-line detections of a batch of packed spectra, before the line fit."""

    row: np.ndarray  #: index within the batch
    pixel: np.ndarray  #: window pixel of the peak
    snr: np.ndarray  #: detection S/N (NaN for the ResNet)
    prob: np.ndarray  #: ResNet probability (NaN for the matched filter)
    best: np.ndarray  #: per spectrum of the batch: best S/N or probability


class Detector:
    """A loaded detector version: ``detect(rows) -> Candidates``."""

    def __init__(self, model: ModelVersion, device: str | None = None):
        self.model = model
        self.device = device
        if model.architecture == MATCHED_FILTER:
            from lenscat.spectra.matched_filter import MatchedFilterConfig

            hp: dict[str, Any] = {k: (tuple(v) if isinstance(v, list) else v) for k, v in model.hparams.items()
                                  if k != "sample"}
            self.config: Any = MatchedFilterConfig(**hp)
        elif model.architecture == SPECNET:
            from lenscat.models.specnet import load_specnet

            if not model.checkpoint_path:
                raise LenscatError(f"detector {model.label} has no checkpoint")
            self.net, self.net_hparams = load_specnet(model.checkpoint_path)
            self.threshold = float(model.hparams.get("threshold", 0.5))
        else:
            raise LenscatError(f"detector {model.label}: unknown architecture {model.architecture!r}")

    def detect(self, rows: PackedRows) -> Candidates:
        """Run the detector over packed window rows."""
        if self.model.architecture == MATCHED_FILTER:
            from lenscat.spectra.matched_filter import scan_batch_with_max

            hits, best = scan_batch_with_max(rows.flux, rows.ivar, rows.continuum, rows.z, wave=WINDOW.wave,
                                             config=self.config)
            return Candidates(row=np.asarray(hits.row), pixel=np.asarray(hits.pixel), snr=np.asarray(hits.snr),
                              prob=np.full(len(hits.row), np.nan), best=np.asarray(best))
        from lenscat.models.specnet import predict, prepare_inputs

        x = prepare_inputs(rows.flux, rows.ivar, rows.continuum, rows.z, wave=WINDOW.wave)
        prob, pixel = predict(self.net, x, device=self.device)
        sel = np.flatnonzero(prob >= self.threshold)
        return Candidates(row=sel, pixel=np.asarray(pixel)[sel], snr=np.full(sel.size, np.nan),
                          prob=np.asarray(prob)[sel], best=np.asarray(prob))


_DETECTORS: dict[tuple[int, str | None], Detector] = {}


def load_detector(model: ModelVersion, device: str | None = None) -> Detector:
    """A detector, loaded once per process (workers scan many chunks with the same version)."""
    key = (model.model_id, device)
    if key not in _DETECTORS:
        _DETECTORS[key] = Detector(model, device)
    return _DETECTORS[key]


# --- line fit and per-line vetoes ---------------------------------------------------------------
@dataclass
class HitRow:
    """One ``lenscat.spectral_hits`` row."""

    spectrum_id: int
    pixel: int
    wavelength: float
    values: dict[str, Any] = field(default_factory=dict)


def _f(x: Any) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if np.isfinite(v) else None


def characterise(cands: Candidates, rows: PackedRows, spectrum_ids: np.ndarray, store: PackStore,
                 pack_rows: np.ndarray) -> list[HitRow]:
    """Fit each candidate line and apply the [OII]-interloper and skew vetoes."""
    from lenscat.spectra.linefit import fit_line, negative_skew, oii_interloper

    if cands.row.size == 0:
        return []
    veto = store.read_veto(pack_rows[cands.row])
    wave = WINDOW.wave
    out: list[HitRow] = []
    for j, (r, px) in enumerate(zip(cands.row.tolist(), cands.pixel.tolist(), strict=True)):
        fit = fit_line(wave, rows.flux[r], rows.ivar[r], rows.continuum[r], float(wave[px]))
        lam = float(fit.wavelength) if fit.ok and np.isfinite(fit.wavelength) else float(wave[px])
        oii, oii_detail = oii_interloper(lam, VETO.wave, veto.flux[j], veto.ivar[j], veto.continuum[j])
        skew = bool(fit.ok and negative_skew(fit))
        snr = cands.snr[j] if np.isfinite(cands.snr[j]) else fit.snr
        out.append(HitRow(int(spectrum_ids[r]), int(px), lam, {
            "wavelength_err": _f(fit.wavelength_err), "z_source": lam / LYA - 1.0, "snr": _f(snr),
            "prob": _f(cands.prob[j]), "line_flux": _f(fit.line_flux), "line_flux_err": _f(fit.line_flux_err),
            "fwhm_kms": _f(fit.fwhm_kms), "skew_alpha": _f(fit.alpha), "skewness": _f(fit.skewness),
            "fit_chi2": _f(fit.redchi2), "fit_ok": bool(fit.ok), "veto_oii": bool(oii), "veto_skew": skew,
            "veto_detail": json.dumps({"oii": {k: _f(v) if not isinstance(v, bool) else v for k, v in oii_detail.items()}}),
        }))
    return out


_HIT_UPSERT = text(
    """
    INSERT INTO lenscat.spectral_hits AS h (model_id, spectrum_id, pixel, wavelength, wavelength_err, z_source,
        snr, prob, line_flux, line_flux_err, fwhm_kms, skew_alpha, skewness, fit_chi2, fit_ok, veto_oii,
        veto_skew, veto_detail, job_id)
    VALUES (:model_id, :spectrum_id, :pixel, :wavelength, :wavelength_err, :z_source, :snr, :prob, :line_flux,
        :line_flux_err, :fwhm_kms, :skew_alpha, :skewness, :fit_chi2, :fit_ok, :veto_oii, :veto_skew,
        CAST(:veto_detail AS jsonb), :job_id)
    ON CONFLICT ON CONSTRAINT uq_spectral_hits_model_spectrum_pixel DO UPDATE SET
        wavelength = EXCLUDED.wavelength, wavelength_err = EXCLUDED.wavelength_err, z_source = EXCLUDED.z_source,
        snr = EXCLUDED.snr, prob = EXCLUDED.prob, line_flux = EXCLUDED.line_flux,
        line_flux_err = EXCLUDED.line_flux_err, fwhm_kms = EXCLUDED.fwhm_kms, skew_alpha = EXCLUDED.skew_alpha,
        skewness = EXCLUDED.skewness, fit_chi2 = EXCLUDED.fit_chi2, fit_ok = EXCLUDED.fit_ok,
        veto_oii = EXCLUDED.veto_oii, veto_skew = EXCLUDED.veto_skew, veto_detail = EXCLUDED.veto_detail,
        job_id = EXCLUDED.job_id
    """
)


def write_scan_results(model: ModelVersion, spectrum_ids: np.ndarray, cands: Candidates, hits: list[HitRow], *,
                       job_id: int | None, session: Session) -> int:
    """Upsert hits and one scan row per spectrum (idempotent); returns the number of spectra scanned."""
    if hits:
        session.execute(_HIT_UPSERT, [{"model_id": model.model_id, "spectrum_id": h.spectrum_id, "pixel": h.pixel,
                                       "wavelength": h.wavelength, "job_id": job_id, **h.values} for h in hits])
    n_hits = np.bincount(cands.row, minlength=len(spectrum_ids)) if len(spectrum_ids) else np.zeros(0, int)
    if len(spectrum_ids):
        session.execute(
            text("""INSERT INTO lenscat.spectral_scans (model_id, spectrum_id, n_hits, best_stat, job_id)
                    SELECT :m, s, n, b, :j FROM unnest(CAST(:s AS bigint[]), CAST(:n AS integer[]),
                                                       CAST(:b AS real[])) AS t(s, n, b)
                    ON CONFLICT ON CONSTRAINT pk_spectral_scans DO UPDATE SET n_hits = EXCLUDED.n_hits,
                        best_stat = EXCLUDED.best_stat, job_id = EXCLUDED.job_id, scanned_at = now()"""),
            {"m": model.model_id, "j": job_id, "s": [int(x) for x in spectrum_ids], "n": [int(x) for x in n_hits],
             "b": [_f(x) for x in cands.best]},
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
        return {"job_id": self.job_id, "detector": self.detector.label, "spectra": self.n_items,
                "chunks": self.n_chunks}


def detector_sample(model: ModelVersion) -> str:
    """The sample a detector version scans (versions from before samples existed: all)."""
    return str(model.hparams.get("sample", "all"))


def unscanned_sql(model: ModelVersion) -> str:
    """Ids of spectra in the detector version's sample that it has not scanned yet."""
    return ("SELECT s.spectrum_id AS id FROM lenscat.spectra s WHERE "
            f"({sample_sql(detector_sample(model))}) AND NOT EXISTS (SELECT 1 FROM "
            f"lenscat.spectral_scans x WHERE x.model_id = {int(model.model_id)} AND x.spectrum_id = s.spectrum_id)")


def plan_scan(detector: str | ModelVersion, *, session: Session, chunk_size: int = DEFAULT_CHUNK,
              reason: str = "requested", exclude_open: bool = False) -> PlannedScan:
    """Create a ``spectral_scan`` job over the spectra the detector version has not scanned."""
    model = detector if isinstance(detector, ModelVersion) else get_model("detector", detector, session=session)
    job_id = create_job("spectral_scan", model.model_id, {"detector": model.label, "chunk_size": int(chunk_size),
                                                          "reason": reason}, session=session)
    sql = unscanned_sql(model)
    if exclude_open:
        sql = outside_open_chunks(sql, "spectral_scan", model.model_id)
    n_items, n_chunks = plan_chunks(job_id, sql, {}, chunk_size, session=session)
    return PlannedScan(job_id, model, n_items, n_chunks)


def scan_spectra(model: ModelVersion, spectrum_ids: np.ndarray, *, session: Session, device: str | None = None,
                 job_id: int | None = None, batch_size: int = 4096) -> int:
    """Scan the given spectra with a detector version and write hits and scan rows."""
    ids = np.asarray(spectrum_ids, dtype=np.int64)
    if ids.size == 0:
        return 0
    meta = session.execute(
        text("SELECT spectrum_id, pack_id, pack_row FROM lenscat.spectra WHERE spectrum_id = ANY(:ids) "
             "ORDER BY pack_id, pack_row"), {"ids": ids.tolist()}).all()
    det = load_detector(model, device)
    n = 0
    by_pack: dict[int, list[tuple[int, int]]] = {}
    for sid, pid, prow in meta:
        by_pack.setdefault(int(pid), []).append((int(sid), int(prow)))
    from lenscat.spectra.ingest import pack_store

    for pid, items in by_pack.items():
        store = pack_store(pid, session=session)
        for i in range(0, len(items), batch_size):
            part = items[i:i + batch_size]
            sids = np.array([s for s, _ in part], dtype=np.int64)
            prow = np.array([r for _, r in part], dtype=np.int64)
            rows = store.read(prow, sky=False)
            cands = det.detect(rows)
            hits = characterise(cands, rows, sids, store, prow)
            n += write_scan_results(model, sids, cands, hits, job_id=job_id, session=session)
    return n


def scan_chunk(job_id: int, chunk_no: int, lo_id: int, hi_id: int, *, session: Session,
               device: str | None = None) -> int:
    """Scan the not-yet-scanned spectra of one chunk and mark it done (one transaction)."""
    t0 = time.perf_counter()
    mid = session.execute(text("SELECT model_id FROM lenscat.jobs WHERE job_id = :j"), {"j": job_id}).scalar_one()
    model = get_model("detector", int(mid), session=session)
    todo = np.array(session.execute(
        text("SELECT s.spectrum_id FROM lenscat.spectra s WHERE s.spectrum_id BETWEEN :lo AND :hi "
             f"AND ({sample_sql(detector_sample(model))}) AND NOT EXISTS (SELECT 1 FROM lenscat.spectral_scans x WHERE x.model_id = :m "
             "AND x.spectrum_id = s.spectrum_id)"), {"lo": lo_id, "hi": hi_id, "m": model.model_id}).scalars().all(),
        dtype=np.int64)
    n = scan_spectra(model, todo, session=session, device=device, job_id=job_id)
    finish_chunk(job_id, chunk_no, n, time.perf_counter() - t0, session=session)
    others_open = session.execute(text("SELECT EXISTS (SELECT 1 FROM lenscat.job_chunks WHERE job_id = :j "
                                       "AND chunk_no <> :c AND status <> 'done')"),
                                  {"j": job_id, "c": chunk_no}).scalar()
    if not others_open:  # the job's last chunk: refresh the survey-wide veto (beat does it too)
        refresh_overdensity(model, session=session)
    return n


def refresh_idle_detectors(*, session: Session) -> dict[str, int]:
    """Refresh the over-density veto of every latest detector version with no scan under way.

    Run by Celery beat's re-processing tick, so hits written by chunks that finished concurrently
    still get the survey-wide veto. Returns ``{detector: hits flagged}``.
    """
    from lenscat.reprocess import _latest

    out = {}
    for mid in _latest("detector", session):
        busy = session.execute(text("SELECT EXISTS (SELECT 1 FROM lenscat.jobs WHERE kind = 'spectral_scan' "
                                    "AND model_id = :m AND status IN ('queued', 'running'))"), {"m": mid}).scalar()
        if not busy:
            model = get_model("detector", mid, session=session)
            out[model.label] = refresh_overdensity(model, session=session)
    return out


def refresh_overdensity(model: ModelVersion, *, session: Session) -> int:
    """Recompute the survey-wide wavelength over-density veto over all hits of a detector version.

    Returns the number of hits flagged.
    """
    from lenscat.spectra.linefit import wavelength_overdensity

    rows = session.execute(text("SELECT hit_id, wavelength FROM lenscat.spectral_hits WHERE model_id = :m"),
                           {"m": model.model_id}).all()
    n_spec = int(session.execute(text("SELECT count(*) FROM lenscat.spectral_scans WHERE model_id = :m"),
                                 {"m": model.model_id}).scalar_one())
    if not rows:
        return 0
    hit_ids = np.array([r[0] for r in rows], dtype=np.int64)
    flags, _bins = wavelength_overdensity(np.array([r[1] for r in rows], dtype=np.float64), n_spec)
    flags = np.asarray(flags, dtype=bool)
    session.execute(
        text("""UPDATE lenscat.spectral_hits h SET veto_overdensity = t.f
                FROM unnest(CAST(:ids AS bigint[]), CAST(:f AS boolean[])) AS t(id, f)
                WHERE h.hit_id = t.id AND h.veto_overdensity IS DISTINCT FROM t.f"""),
        {"ids": hit_ids.tolist(), "f": flags.tolist()},
    )
    return int(flags.sum())
