"""``lenscat spectra evaluate``: injection-recovery into real spectra, detectors side by side.

Lines with Lyman-alpha-like profiles (skew-normal, red tail) are injected into copies of real,
ingested spectra (their noise is kept: the injected line adds signal, the ivar stays as observed) on
a grid of line fluxes and widths at random wavelengths, and every detector scans the copies in
memory (nothing is written to the database). A line is recovered when the detector reports a hit
within ``tolerance_px`` pixels of the injected peak. The same detectors scan the real spectra as
observed, which gives the false-hit rate per 1,000 spectra (hits that survive the per-line vetoes;
real spectra hold few real background lines, so this is an upper limit on the false-positive rate).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import text
from sqlalchemy.orm import Session

from lenscat.errors import LenscatError
from lenscat.registry import ModelVersion
from lenscat.spectra.grid import WINDOW
from lenscat.spectra.pack import PackedRows
from lenscat.spectra.scan import Candidates, characterise, load_detector

DEFAULT_FLUXES = (3.0, 5.0, 8.0, 12.0, 20.0, 35.0, 60.0)  # 1e-17 erg/s/cm^2
DEFAULT_FWHMS = (150.0, 300.0, 500.0, 800.0)  # km/s


@dataclass
class RealSample:
    """Real spectra loaded from the array stores, with their identifiers."""

    spectrum_ids: np.ndarray
    keys: list[str]
    rows: PackedRows
    pack_rows: np.ndarray
    stores: list[Any]  # PackStore per spectrum (stores are shared objects)


def load_real_sample(*, session: Session, max_spectra: int | None = None, min_coverage: float = 0.5,
                     seed: int = 0, sample: str = "galaxies") -> RealSample:
    """Packed rows of the ingested spectra of a sample with at least ``min_coverage`` good window pixels."""
    from lenscat.spectra.ingest import pack_store
    from lenscat.spectra.scan import sample_sql

    rows = session.execute(text(
        "SELECT spectrum_id, survey || ':' || spec_key, pack_id, pack_row FROM lenscat.spectra s "
        f"WHERE window_coverage >= :c AND ({sample_sql(sample)}) ORDER BY spectrum_id"),
        {"c": float(min_coverage)}).all()
    if not rows:
        raise LenscatError(f"no ingested spectra in sample {sample!r} with >= {min_coverage:.0%} good window pixels "
                           "to inject lines into: run `lenscat spectra ingest` (or use sample 'all')")
    if max_spectra is not None and len(rows) > max_spectra:
        pick = np.sort(np.random.default_rng(seed).choice(len(rows), size=max_spectra, replace=False))
        rows = [rows[i] for i in pick]
    parts: list[PackedRows] = []
    stores: list[Any] = []
    by_pack: dict[int, list[int]] = {}
    for i, r in enumerate(rows):
        by_pack.setdefault(int(r[2]), []).append(i)
    order: list[int] = []
    for pid, idx in by_pack.items():
        store = pack_store(pid, session=session)
        parts.append(store.read(np.array([rows[i][3] for i in idx], dtype=np.int64)))
        stores.extend([store] * len(idx))
        order.extend(idx)
    cat = PackedRows(*(np.concatenate([getattr(p, f) for p in parts])
                       for f in ("flux", "ivar", "continuum", "sky", "z", "continuum_source")))
    sel = [rows[i] for i in order]
    return RealSample(spectrum_ids=np.array([r[0] for r in sel], dtype=np.int64), keys=[r[1] for r in sel],
                      rows=cat, pack_rows=np.array([r[3] for r in sel], dtype=np.int64), stores=stores)


@dataclass
class DetectorEvaluation:
    """Results for one detector."""

    detector: str
    completeness: np.ndarray  #: (n_flux, n_fwhm) recovered fraction
    n_trials: np.ndarray  #: (n_flux, n_fwhm)
    false_hits_per_1000: float
    false_hits_raw_per_1000: float
    real_candidates: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self, fluxes: tuple[float, ...], fwhms: tuple[float, ...]) -> dict[str, Any]:
        """JSON-friendly form."""
        return {"detector": self.detector,
                "completeness": [{"line_flux": f, "fwhm_kms": w, "completeness": float(self.completeness[i, j]),
                                  "trials": int(self.n_trials[i, j])}
                                 for i, f in enumerate(fluxes) for j, w in enumerate(fwhms)],
                "completeness_by_flux": {str(f): float(np.average(self.completeness[i], weights=np.maximum(self.n_trials[i], 1)))
                                         for i, f in enumerate(fluxes)},
                "false_hits_per_1000": self.false_hits_per_1000,
                "false_hits_before_vetoes_per_1000": self.false_hits_raw_per_1000,
                "real_candidates": self.real_candidates}


def _recovered(c: Candidates, n: int, centre_px: np.ndarray, tol: int) -> np.ndarray:
    rec = np.zeros(n, dtype=bool)
    if c.row.size:
        close = np.abs(c.pixel - centre_px[c.row]) <= tol
        rec[c.row[close]] = True
    return rec


def evaluate_detectors(
    detectors: list[ModelVersion],
    *,
    session: Session,
    fluxes: tuple[float, ...] = DEFAULT_FLUXES,
    fwhms: tuple[float, ...] = DEFAULT_FWHMS,
    injections_per_cell: int = 200,
    max_spectra: int | None = 2000,
    tolerance_px: int = 4,
    seed: int = 0,
    device: str | None = None,
    sample: str = "galaxies",
) -> tuple[list[DetectorEvaluation], dict[str, Any]]:
    """Injection-recovery and false-hit rates of detectors on the ingested real spectra.

    Parameters
    ----------
    detectors
        Detector versions to compare.
    fluxes
        Injected line fluxes [1e-17 erg/s/cm^2].
    fwhms
        Injected line widths, FWHM [km/s].
    injections_per_cell
        Injected lines per (flux, width) cell, spread over the real spectra.
    max_spectra
        Real spectra to use at most (a random subset beyond that).
    tolerance_px
        A hit within this many pixels of the injected peak counts as recovered.
    sample
        Real spectra to use (:data:`lenscat.spectra.scan.SAMPLES`; default the science sample,
        galaxies with a pipeline redshift).
    """
    from lenscat.spectra.synth import inject_lines

    real = load_real_sample(session=session, max_spectra=max_spectra, seed=seed, sample=sample)
    n_real = len(real.spectrum_ids)
    rng = np.random.default_rng(seed)
    wave = WINDOW.wave
    results = []
    # the injected set: the same lines for every detector
    cells = [(i, j) for i in range(len(fluxes)) for j in range(len(fwhms))]
    base = np.concatenate([np.full(injections_per_cell, k) for k in range(len(cells))])
    host = rng.integers(0, n_real, size=base.size)
    margin = 20
    centre_px = rng.integers(margin, WINDOW.n - margin, size=base.size)
    skew = rng.uniform(0.0, 4.0, size=base.size)
    params = {"centre": wave[centre_px], "line_flux": np.array([fluxes[cells[k][0]] for k in base]),
              "fwhm_kms": np.array([fwhms[cells[k][1]] for k in base]), "skew": skew}
    flux_inj, ivar_inj = inject_lines(wave, real.rows.flux[host], real.rows.ivar[host], params)
    inj = PackedRows(flux=np.asarray(flux_inj, dtype=np.float32), ivar=np.asarray(ivar_inj, dtype=np.float32),
                     continuum=real.rows.continuum[host], sky=real.rows.sky[host], z=real.rows.z[host],
                     continuum_source=real.rows.continuum_source[host])
    for model in detectors:
        det = load_detector(model, device)
        c = det.detect(inj)
        rec = _recovered(c, base.size, centre_px, tolerance_px)
        comp = np.zeros((len(fluxes), len(fwhms)))
        ntr = np.zeros((len(fluxes), len(fwhms)), dtype=np.int64)
        for k, (i, j) in enumerate(cells):
            m = base == k
            ntr[i, j] = int(m.sum())
            comp[i, j] = float(rec[m].mean()) if m.any() else np.nan
        # false hits on the real spectra as observed, after the per-line vetoes
        c0 = det.detect(real.rows)
        real_hits = characterise_sample(c0, real)
        kept = [h for h in real_hits if h["fit_ok"] and not (h["veto_oii"] or h["veto_skew"])]
        results.append(DetectorEvaluation(
            detector=model.label, completeness=comp, n_trials=ntr,
            false_hits_per_1000=1000.0 * len(kept) / n_real,
            false_hits_raw_per_1000=1000.0 * int(c0.row.size) / n_real,
            real_candidates=kept))
    info = {"n_real_spectra": n_real, "n_injected": int(base.size), "tolerance_px": tolerance_px,
            "fluxes": list(fluxes), "fwhms_kms": list(fwhms), "seed": seed, "sample": sample}
    return results, info


def characterise_sample(c: Candidates, sample: RealSample) -> list[dict[str, Any]]:
    """Line fits and vetoes of the hits in real spectra, with the spectrum's key."""
    out: list[dict[str, Any]] = []
    if c.row.size == 0:
        return out
    by_store: dict[int, list[int]] = {}
    for j, r in enumerate(c.row.tolist()):
        by_store.setdefault(id(sample.stores[r]), []).append(j)
    for js in by_store.values():
        jj = np.asarray(js)
        sub = Candidates(row=c.row[jj], pixel=c.pixel[jj], snr=c.snr[jj], prob=c.prob[jj], best=c.best)
        store = sample.stores[int(c.row[jj[0]])]
        for h in characterise(sub, sample.rows, sample.spectrum_ids, store, sample.pack_rows):
            key = sample.keys[int(np.flatnonzero(sample.spectrum_ids == h.spectrum_id)[0])]
            out.append({"spectrum_id": h.spectrum_id, "spectrum": key, "wavelength": h.wavelength, **h.values})
    return out


def plot_completeness(results: list[DetectorEvaluation], fluxes: tuple[float, ...], fwhms: tuple[float, ...],
                      path: str | Path) -> Path:
    """Completeness vs line flux, one panel per detector, one curve per width (PNG)."""
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, len(results), figsize=(5 * len(results), 4), squeeze=False, sharey=True)
    for ax, r in zip(axes[0], results, strict=True):
        for j, w in enumerate(fwhms):
            ax.plot(fluxes, r.completeness[:, j], marker="o", label=f"FWHM {w:.0f} km/s")
        ax.set_xscale("log")
        ax.set_xticks(list(fluxes))
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
        ax.set_xlabel(r"injected line flux [$10^{-17}$ erg s$^{-1}$ cm$^{-2}$]")
        ax.set_title(f"{r.detector}: {r.false_hits_per_1000:.0f} hits / 1000 real spectra")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("completeness")
    axes[0][0].set_ylim(0, 1.02)
    axes[0][-1].legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
