"""``lenscat spectra evaluate``: injection-recovery into real spectra, detectors side by side.

Two protocols; every detector runs in memory through the detector registry
(:func:`lenscat.spectra.detectors.load_detector`: ``detect`` then ``characterise``, the same code
as a scan), and nothing is written to the database.

**Matched S/N** (:func:`evaluate_protocol`, the default; issue 31). Real early-type galaxy spectra
(the *hosts*: galaxies with a pipeline redshift, a pipeline subclass that is not an emission class
-- AGN, STARFORMING, STARBURST, BROADLINE -- and no strong emission line of their own, see
:func:`~lenscat.spectra.evaluate_hosts.emission_line_snr`) are **re-noised** into new realisations: each realisation
takes a random host, adds Gaussian noise of variance ``1/ivar`` to every pixel and halves ``ivar``, so
the realisation is a new, statistically correct draw of a spectrum at half the exposure. The
same noise goes onto every array of a pixel (window, full-range and veto rows are slices of one
log-lambda grid), so a line's follow-up sees what the detector saw. Half of the realisations get
one Lyman-alpha-like line (:func:`lenscat.spectra.synth.lya_profile`, a red-tailed skew-normal):
peak wavelength log-uniform in 3860-4950 A, FWHM uniform in 120-700 km/s, skew uniform in 1-6,
and a **matched-filter S/N** drawn uniformly from 4-15: the line's flux is scaled so that
``sqrt(sum(line**2 * ivar)) = S/N`` with the re-noised ``ivar`` (the S/N an ideal filter of the
exact profile reaches). Lines are kept more than ``600 km/s + FWHM`` away from the galaxy's own
lines (the mask of the matched filter) and on well-covered pixels. A line is *found* when the
detector has a candidate within ``tolerance_px`` pixels (of log-lambda, 69 km/s) of the injected
peak (in source redshift, for [OII] doublets), and *found after vetoes* when that candidate's hit
is a candidate (``fit_ok`` and no veto). Reported per detector: completeness binned in matched
S/N, FWHM and skew, before and after the vetoes; the headline "lines with S/N >= 8 found, before
and after vetoes", with how many each veto removed; the fraction of clean realisations with a
false candidate; and the real spectra as observed (every candidate listed, the strong-emission
galaxies named explicitly).

The hosts are read by :mod:`lenscat.spectra.evaluate_hosts`, re-noised and injected by
:mod:`lenscat.spectra.evaluate_realisations`; this module scores the detectors on them; tables, JSON
and figures are :mod:`lenscat.spectra.evaluate_report`.

**Flux grid** (:func:`~lenscat.spectra.evaluate_fluxgrid.evaluate_detectors`, the original mode): lines injected by flux
into real spectra as observed, completeness per (flux, FWHM) cell and hits per 1,000 real spectra.

Units: wavelength [Angstrom, vacuum], flux density [1e-17 erg/s/cm^2/A], line flux
[1e-17 erg/s/cm^2], velocity [km/s].
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sqlalchemy.orm import Session

from lenscat.registry.versions import ModelVersion
from lenscat.spectra.evaluate_hosts import (
    EMISSION_SNR_MAX,
    EMISSION_SUBCLASSES,
    RealSample,
    host_emission,
    load_hosts,
    load_real_sample,
)
from lenscat.spectra.evaluate_realisations import (
    LYA_FWHM_RANGE,
    LYA_SKEW_RANGE,
    LYA_SNR_RANGE,
    LYA_WAVE_RANGE,
    Realisations,
    make_realisations,
)
from lenscat.spectra.grid import LYA, WINDOW
from lenscat.spectra.pack import PackedRows

#: matched-S/N bins of the protocol's completeness table
SNR_BINS: tuple[float, ...] = (4.0, 6.0, 8.0, 10.0, 12.0, 15.0)
#: the headline cut: lines at matched S/N >= this
HEADLINE_SNR = 8.0
#: order in which a lost line is attributed to one cause (so the per-veto counts add up);
#: other ``veto_*`` flags follow alphabetically
VETO_ORDER: tuple[str, ...] = ("fit_not_ok", "veto_skew", "veto_oii")


# --------------------------------------------------------------------------------------------
# the matched-S/N protocol
# --------------------------------------------------------------------------------------------


def _is_candidate(values: dict[str, Any]) -> bool:
    return bool(values.get("fit_ok")) and not any(
        bool(v) for k, v in values.items() if k.startswith("veto_") and k != "veto_detail"
    )


def _loss_causes(values: dict[str, Any]) -> list[str]:
    """Why a hit is not a candidate, in :data:`VETO_ORDER` (then other vetoes alphabetically)."""
    causes = [] if values.get("fit_ok") else ["fit_not_ok"]
    vetoes = sorted(k for k, v in values.items() if k.startswith("veto_") and k != "veto_detail" and bool(v))
    ordered = [v for v in VETO_ORDER if v in vetoes] + [v for v in vetoes if v not in VETO_ORDER]
    return causes + ordered


@dataclass
class ProtocolResult:
    """Results of one detector (with one continuum) under the matched-S/N protocol."""

    detector: str
    continuum: str  #: 'pipeline', 'fit' or 'chosen' (the detector version's own per-survey choice)
    family: str
    matched_snr: np.ndarray  #: (L,) of the injected lines
    fwhm_kms: np.ndarray
    skew: np.ndarray
    found_before: np.ndarray  #: (L,) bool
    found_after: np.ndarray  #: (L,) bool
    lost_to: list[str]  #: (L,) first cause a found line was lost to ('' if kept or not found)
    fired: list[list[str]]  #: (L,) every veto set on the found line's hit
    n_clean: int
    false_before: int  #: clean realisations with any detection
    false_after: int  #: clean realisations with a candidate after the vetoes
    real_candidates: list[dict[str, Any]] = field(default_factory=list)
    emission_galaxies: list[dict[str, Any]] = field(default_factory=list)
    n_real: int = 0

    # -- summaries -------------------------------------------------------------------------
    def headline(self, snr_min: float = HEADLINE_SNR) -> dict[str, Any]:
        """Lines with matched S/N >= ``snr_min``: found before and after vetoes, lost per cause."""
        hi = self.matched_snr >= snr_min
        n = int(hi.sum())
        before = int((self.found_before & hi).sum())
        after = int((self.found_after & hi).sum())
        removed: dict[str, int] = {}
        fired: dict[str, int] = {}
        for i in np.flatnonzero(hi & self.found_before):
            if self.lost_to[i]:
                removed[self.lost_to[i]] = removed.get(self.lost_to[i], 0) + 1
            for v in self.fired[i]:
                fired[v] = fired.get(v, 0) + 1
        return {
            "snr_min": snr_min,
            "n_lines": n,
            "found_before": before,
            "found_after": after,
            "completeness_before": before / n if n else float("nan"),
            "completeness_after": after / n if n else float("nan"),
            "removed": dict(sorted(removed.items(), key=lambda kv: _cause_rank(kv[0]))),
            "vetoes_fired": dict(sorted(fired.items(), key=lambda kv: _cause_rank(kv[0]))),
        }

    def false_rate(self, after: bool = True) -> float:
        """Fraction of clean realisations with a false candidate (after or before the vetoes)."""
        if not self.n_clean:
            return float("nan")
        return (self.false_after if after else self.false_before) / self.n_clean

    def binned(self, what: str, edges: Sequence[float]) -> list[dict[str, Any]]:
        """Completeness before/after vetoes in bins of ``'snr'``, ``'fwhm'`` or ``'skew'``."""
        x = {"snr": self.matched_snr, "fwhm": self.fwhm_kms, "skew": self.skew}[what]
        out = []
        for j, (lo, hi) in enumerate(zip(edges[:-1], edges[1:], strict=True)):
            last = j == len(edges) - 2
            m = (x >= lo) & ((x <= hi) if last else (x < hi))
            n = int(m.sum())
            out.append(
                {
                    "lo": float(lo),
                    "hi": float(hi),
                    "n": n,
                    "before": float(self.found_before[m].mean()) if n else None,
                    "after": float(self.found_after[m].mean()) if n else None,
                }
            )
        return out

    def as_dict(self, fwhm_edges: Sequence[float], skew_edges: Sequence[float]) -> dict[str, Any]:
        """JSON-friendly form."""
        return {
            "detector": self.detector,
            "continuum": self.continuum,
            "family": self.family,
            "headline": self.headline(),
            "n_lines": int(self.matched_snr.size),
            "n_clean": self.n_clean,
            "false_rate_before": self.false_rate(False),
            "false_rate_after": self.false_rate(True),
            "false_before": self.false_before,
            "false_after": self.false_after,
            "completeness_by_snr": self.binned("snr", SNR_BINS),
            "completeness_by_fwhm": self.binned("fwhm", fwhm_edges),
            "completeness_by_skew": self.binned("skew", skew_edges),
            "n_real_spectra": self.n_real,
            "real_candidates": self.real_candidates,
            "emission_galaxies": self.emission_galaxies,
        }


def _cause_rank(cause: str) -> tuple[int, str]:
    return (VETO_ORDER.index(cause), cause) if cause in VETO_ORDER else (len(VETO_ORDER), cause)


def _source_z(cands: Any, family: str) -> np.ndarray:
    if cands.z_source is not None:
        return np.asarray(cands.z_source, dtype=np.float64)
    if cands.wavelength is not None:
        lam = np.asarray(cands.wavelength, dtype=np.float64)
    else:
        from lenscat.spectra.grid import FULL

        grid = WINDOW if family == "lya" else FULL
        lam = grid.wave[np.asarray(cands.pixel, dtype=np.int64)]
    return lam / LYA - 1.0


def run_detector(
    det: Any, rows: PackedRows, ids: np.ndarray, surveys: list[str], *, full: Any, red: Any, continuum: str | None
) -> tuple[Any, list[Any], list[str]]:
    """Run one loaded detector over in-memory rows (detect + characterise); returns (cands, hits, choices)."""
    from lenscat.spectra.detectors import SpectrumBatch, apply_continuum

    choices = det.continuum_for(surveys) if continuum is None else [continuum] * len(rows)
    red_loader = None
    if full is None and red is not None:
        from lenscat.spectra.detectors import RedArrays

        def red_loader(idx: np.ndarray) -> RedArrays:
            return RedArrays(wave=red.wave, flux=red.flux[idx], ivar=red.ivar[idx], continuum=red.continuum[idx])

    batch = SpectrumBatch(
        apply_continuum(rows, choices), ids, surveys, full=full, red_loader=red_loader, continuum=choices
    )
    cands = det.detect(batch)
    hits = det.characterise(cands, batch)
    return cands, hits, choices


def _score(det: Any, label: str, continuum: str | None, real_set: Realisations, tolerance_px: int) -> ProtocolResult:
    n = len(real_set.host)
    ids = np.arange(n, dtype=np.int64)
    cands, hits, _ = run_detector(
        det, real_set.rows, ids, real_set.surveys, full=real_set.full, red=real_set.red, continuum=continuum
    )
    family = str(getattr(cands, "family", "lya"))
    zc = _source_z(cands, family)
    row = np.asarray(cands.row, dtype=np.int64)
    tol = tolerance_px * WINDOW.dlog
    with np.errstate(invalid="ignore", divide="ignore"):
        match = np.abs(np.log10((1.0 + zc) / (1.0 + real_set.z_source[row]))) <= tol
    match &= real_set.has_line[row]
    by_key = {
        (int(r), int(p)): j for j, (r, p) in enumerate(zip(row.tolist(), np.asarray(cands.pixel).tolist(), strict=True))
    }
    hit_of: dict[int, dict[str, Any]] = {}
    for h in hits:
        j = by_key.get((int(h.spectrum_id), int(h.pixel)))
        if j is not None:
            hit_of[j] = h.values
    found_before = np.zeros(n, dtype=bool)
    found_after = np.zeros(n, dtype=bool)
    any_cand = np.zeros(n, dtype=bool)
    any_kept = np.zeros(n, dtype=bool)
    causes: dict[int, list[str]] = {}
    for j in range(row.size):
        r = int(row[j])
        any_cand[r] = True
        vals = hit_of.get(j)
        kept = vals is not None and _is_candidate(vals)
        any_kept[r] |= kept
        if match[j]:
            found_before[r] = True
            if kept:
                found_after[r] = True
            elif vals is not None:
                causes.setdefault(r, _loss_causes(vals))
            else:
                causes.setdefault(r, ["not_characterised"])
    lines = np.flatnonzero(real_set.has_line)
    lost_to = ["" if found_after[r] or not found_before[r] else causes.get(int(r), ["?"])[0] for r in lines]
    fired = [causes.get(int(r), []) if not found_after[r] else [] for r in lines]
    clean = ~real_set.has_line
    return ProtocolResult(
        detector=label,
        continuum=continuum or "chosen",
        family=family,
        matched_snr=real_set.matched_snr[lines],
        fwhm_kms=real_set.fwhm_kms[lines],
        skew=real_set.skew[lines],
        found_before=found_before[lines],
        found_after=found_after[lines],
        lost_to=lost_to,
        fired=fired,
        n_clean=int(clean.sum()),
        false_before=int((any_cand & clean).sum()),
        false_after=int((any_kept & clean).sum()),
    )


def _real_as_observed(
    det: Any, result: ProtocolResult, real: RealSample, continuum: str | None, emission: np.ndarray
) -> None:
    """Every candidate in the real spectra as observed; the strong-emission galaxies reported by name."""
    cands, hits, _ = run_detector(
        det, real.rows, real.spectrum_ids, real.surveys, full=real.full, red=real.red, continuum=continuum
    )
    key_of = dict(zip(real.spectrum_ids.tolist(), real.keys, strict=True))
    n_hits: dict[int, int] = {}
    n_cand: dict[int, int] = {}
    for h in hits:
        sid = int(h.spectrum_id)
        n_hits[sid] = n_hits.get(sid, 0) + 1
        if _is_candidate(h.values):
            n_cand[sid] = n_cand.get(sid, 0) + 1
            result.real_candidates.append(
                {
                    "spectrum_id": sid,
                    "spectrum": key_of[sid],
                    "wavelength": float(h.wavelength),
                    "line": h.values.get("line", result.family),
                    "snr": h.values.get("snr"),
                    "prob": h.values.get("prob"),
                    "z_source": h.values.get("z_source"),
                }
            )
    for i, sid in enumerate(real.spectrum_ids.tolist()):
        sub = (real.subclasses[i] or "").upper()
        strong = any(s in sub for s in EMISSION_SUBCLASSES) or (
            np.isfinite(emission[i]) and emission[i] > EMISSION_SNR_MAX
        )
        if strong:
            result.emission_galaxies.append(
                {
                    "spectrum_id": int(sid),
                    "spectrum": real.keys[i],
                    "subclass": real.subclasses[i],
                    "emission_snr": float(emission[i]) if np.isfinite(emission[i]) else None,
                    "hits": n_hits.get(int(sid), 0),
                    "candidates": n_cand.get(int(sid), 0),
                }
            )
    result.n_real = len(real.spectrum_ids)


def fwhm_edges(fwhm_range: tuple[float, float], n: int = 4) -> list[float]:
    """Equal-width FWHM bins over the protocol's range [km/s]."""
    return [float(x) for x in np.linspace(fwhm_range[0], fwhm_range[1], n + 1)]


def skew_edges(skew_range: tuple[float, float], n: int = 4) -> list[float]:
    """Equal-width skew bins over the protocol's range."""
    return [float(x) for x in np.linspace(skew_range[0], skew_range[1], n + 1)]


def evaluate_protocol(
    detectors: Sequence[ModelVersion],
    *,
    session: Session,
    realisations: int = 240,
    line_fraction: float = 0.5,
    snr_range: tuple[float, float] = LYA_SNR_RANGE,
    fwhm_range: tuple[float, float] = LYA_FWHM_RANGE,
    skew_range: tuple[float, float] = LYA_SKEW_RANGE,
    wave_range: tuple[float, float] = LYA_WAVE_RANGE,
    renoise: bool = True,
    hosts: str = "early-type",
    continuum: str | Sequence[str | None] | None = None,
    family: str = "lya",
    seed: int = 0,
    tolerance_px: int = 4,
    survey: str | None = None,
    real_sample: str | None = "galaxies",
    device: str | None = None,
    host_sample: RealSample | None = None,
) -> tuple[list[ProtocolResult], dict[str, Any]]:
    """The issue-31 protocol: re-noised early-type spectra, lines at a drawn matched S/N, every detector in memory.

    Parameters
    ----------
    detectors
        Detector versions (any registered architecture).
    realisations
        Re-noised realisations (the same set for every detector and continuum).
    line_fraction
        Fraction of realisations with one injected line; the rest measure the false-candidate rate.
    snr_range
        Matched-filter S/N of the injected lines, drawn uniformly (dimensionless).
    fwhm_range
        Line FWHM [km/s], drawn uniformly.
    skew_range
        Skew-normal shape (> 0: red tail), drawn uniformly (Lyα only).
    wave_range
        Peak wavelength [Angstrom], log-uniform (Lyα only; [OII] draws its source redshift).
    renoise
        Re-noise the hosts (noise of variance 1/ivar added, ivar halved); False: hosts as observed.
    hosts
        Host sample: ``'early-type'`` (default, see the module docstring), ``'galaxies'`` or ``'all'``.
    continuum
        ``None``: each detector version's own per-survey choice; ``'pipeline'`` or ``'fit'``: that
        continuum for every spectrum; a sequence: each of them in turn (one result per entry).
    family
        ``'lya'`` or ``'oii'`` (the injected line family).
    tolerance_px
        A candidate within this many log-lambda pixels (69 km/s each) of the injected line finds it.
    survey
        Only hosts of this survey.
    real_sample
        Sample of real spectra scanned as observed (every candidate listed); None skips that step.
    host_sample
        Hosts already loaded (:func:`~lenscat.spectra.evaluate_hosts.load_hosts`), to reuse across calls.

    Returns
    -------
    results, info
        One :class:`ProtocolResult` per (detector, continuum), and the protocol's settings.
    """
    from lenscat.spectra.detectors import load_detector

    real = host_sample if host_sample is not None else load_hosts(session=session, hosts=hosts, survey=survey)
    rs = make_realisations(
        real,
        realisations=realisations,
        line_fraction=line_fraction,
        snr_range=snr_range,
        fwhm_range=fwhm_range,
        skew_range=skew_range,
        wave_range=wave_range,
        renoise=renoise,
        family=family,
        seed=seed,
    )
    conts: list[str | None] = [continuum] if continuum is None or isinstance(continuum, str) else list(continuum)
    observed = None
    emission = None
    if real_sample is not None:
        observed = load_real_sample(session=session, sample=real_sample, survey=survey, full=True)
        emission = host_emission(observed)
    results: list[ProtocolResult] = []
    for model in detectors:
        det = load_detector(model, device)
        for cont in conts:
            res = _score(det, model.label, cont, rs, tolerance_px)
            if observed is not None and emission is not None:
                _real_as_observed(det, res, observed, cont, emission)
            results.append(res)
    info = {
        "protocol": "snr",
        "realisations": realisations,
        "line_fraction": line_fraction,
        "n_lines": int(rs.has_line.sum()),
        "n_clean": int((~rs.has_line).sum()),
        "n_hosts": len(real.spectrum_ids),
        "hosts": hosts,
        "host_spectra": real.keys,
        "snr_range": list(snr_range),
        "fwhm_range": list(fwhm_range),
        "skew_range": list(skew_range),
        "wave_range": list(wave_range),
        "renoise": renoise,
        "family": family,
        "seed": seed,
        "tolerance_px": tolerance_px,
        "survey": survey,
        "snr_bins": list(SNR_BINS),
        "fwhm_bins": fwhm_edges(fwhm_range),
        "skew_bins": skew_edges(skew_range),
        "emission_snr_max": EMISSION_SNR_MAX,
    }
    return results, info
