"""Spectral detectors: what every detector family implements, and the registry by architecture.

A detector version is a ``lenscat.model_versions`` row of kind ``detector``; its ``architecture``
names the class that runs it. Each family lives in its own module and registers its class with
:func:`register_detector` as the loader of its architecture in the model registry's one table
(:mod:`lenscat.registry.loaders`, which also verifies a version's checkpoint before it loads):

* ``matched-filter`` -- :mod:`lenscat.spectra.detector_mf` (BELLS GALLERY Gaussian kernel bank, Lyα);
* ``specnet`` -- :mod:`lenscat.spectra.detector_specnet` (Li et al. 2018 1-D ResNet, Lyα);
* ``ensemble`` -- :mod:`lenscat.spectra.detector_ensemble` (ResNet + matched filter, Lyα);
* ``oii-filter`` -- :mod:`lenscat.spectra.detector_oii` (background [OII] 3726,3729 doublets).

A detector sees a :class:`SpectrumBatch` (the window arrays with the continuum chosen for it, and
the full-range arrays on demand), returns :class:`Candidates`, and turns them into
:class:`HitRow` s (line fit and per-line vetoes) in :meth:`Detector.characterise`. Scans
(:mod:`lenscat.spectra.scan`) and the injection-recovery evaluation
(:mod:`lenscat.spectra.evaluate`) run detectors only through this interface, so a new family is one
module, ``lenscat/spectra/detector_<family>.py``, whose class carries ``@register_detector``: the
registry's table (:data:`lenscat.registry.loaders.PLUGIN_MODULES` ``['detector']``, re-exported here as
:data:`FAMILY_MODULES`) imports every ``detector_*`` module of this package on first use.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

import numpy as np

from lenscat.errors import LenscatError
from lenscat.registry.loaders import PLUGIN_MODULES, load_model, loader_for, register_loader
from lenscat.registry.versions import ModelVersion
from lenscat.spectra.grid import LYA, VETO, WINDOW
from lenscat.spectra.pack import PackedRows

__all__ = [
    "CONTINUUM_CHOICES",
    "FAMILY_MODULES",
    "Candidates",
    "Detector",
    "HitRow",
    "RedArrays",
    "SpectrumBatch",
    "apply_continuum",
    "detector_class",
    "finite_or_none",
    "load_detector",
    "lya_characterise",
    "register_detector",
    "store_batch",
]

#: modules that define detector classes: every ``lenscat/spectra/detector_*.py`` (imported on first use)
FAMILY_MODULES: tuple[str, ...] = PLUGIN_MODULES["detector"]
#: continua a detector may subtract: the pipeline's best-fit model (where the file has one, else the
#: project's fit) or always the project's fit (:mod:`lenscat.spectra.continuum`)
CONTINUUM_CHOICES: tuple[str, ...] = ("pipeline", "fit")


@dataclass
class Candidates:
    """Per-line detections of a batch, before the line fit (one entry per candidate line).

    Attributes
    ----------
    row : numpy.ndarray
        int64, index of the spectrum within the batch.
    pixel : numpy.ndarray
        int64, peak pixel on the detector's grid (WINDOW for Lyα, FULL for [OII]).
    snr : numpy.ndarray
        Detection S/N (NaN where the detector has none).
    prob : numpy.ndarray
        Probability (NaN where the detector has none).
    best : numpy.ndarray
        (batch,) best statistic of every spectrum of the batch (S/N or probability; NaN: not searched).
    family : str
        ``'lya'`` or ``'oii'``.
    wavelength : numpy.ndarray or None
        Observed wavelength of the (primary) line [Angstrom]; None: the grid wavelength at ``pixel``.
    z_source : numpy.ndarray or None
        Implied source redshift; None: Lyα (``wavelength / 1215.67 - 1``).
    extra : dict
        Per-candidate arrays kept in the hit's ``veto_detail``.
    """

    row: np.ndarray
    pixel: np.ndarray
    snr: np.ndarray
    prob: np.ndarray
    best: np.ndarray
    family: str = "lya"
    wavelength: np.ndarray | None = None
    z_source: np.ndarray | None = None
    extra: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.row.size)

    def take(self, index: np.ndarray) -> Candidates:
        """The candidates ``index`` (``best`` is kept whole: it is per spectrum)."""
        idx = np.asarray(index, dtype=np.int64)
        return replace(
            self,
            row=self.row[idx],
            pixel=self.pixel[idx],
            snr=self.snr[idx],
            prob=self.prob[idx],
            wavelength=None if self.wavelength is None else self.wavelength[idx],
            z_source=None if self.z_source is None else self.z_source[idx],
            extra={k: v[idx] for k, v in self.extra.items()},
        )


@dataclass
class HitRow:
    """One ``lenscat.spectral_hits`` row: natural key (detector, spectrum, pixel) and its columns."""

    spectrum_id: int
    pixel: int
    wavelength: float
    values: dict[str, Any] = field(default_factory=dict)


@dataclass
class RedArrays:
    """The spectrum redward of (and including) the window, for per-hit follow-up (vetoes)."""

    wave: np.ndarray  #: (Q,) wavelengths [Angstrom]
    flux: np.ndarray  #: (N, Q) flux density [1e-17 erg/s/cm^2/A]
    ivar: np.ndarray  #: (N, Q) inverse variance, 0 = masked
    continuum: np.ndarray  #: (N, Q) continuum subtracted [1e-17 erg/s/cm^2/A]


def finite_or_none(x: Any) -> float | None:
    """``float(x)`` when finite, else None (for nullable columns and JSON)."""
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if np.isfinite(v) else None


def apply_continuum(rows: PackedRows, choices: Sequence[str]) -> PackedRows:
    """Window rows whose ``continuum`` is the one chosen per row (``'pipeline'`` or ``'fit'``).

    ``'pipeline'`` keeps the stored continuum (the pipeline model where the file has one, else the
    project's fit); ``'fit'`` takes the project's fit (``rows.continuum_fit``).

    Raises
    ------
    LenscatError
        A row asks for the fit and the store predates storing it.
    """
    ch = np.asarray(list(choices), dtype=object)
    if ch.size != len(rows):
        raise LenscatError(f"{ch.size} continuum choices for {len(rows)} spectra")
    bad = sorted({str(c) for c in ch} - set(CONTINUUM_CHOICES))
    if bad:
        raise LenscatError(f"unknown continuum {bad[0]!r}; expected one of {', '.join(CONTINUUM_CHOICES)}")
    use_fit = ch == "fit"
    if not use_fit.any():
        return rows
    fit = getattr(rows, "continuum_fit", None)
    if fit is None:
        raise LenscatError(
            "this spectrum store predates storing the project's continuum fit beside the pipeline "
            "model: ingest the spectra into a new store to use the 'fit' continuum"
        )
    cont = np.where(use_fit[:, None], fit, rows.continuum).astype(np.float32)
    return replace(rows, continuum=cont)


class SpectrumBatch:
    """A batch of spectra as a detector sees it.

    Parameters
    ----------
    rows : PackedRows
        Window arrays (3800-5000 A); ``rows.continuum`` is the continuum chosen for the detector.
    spectrum_ids : numpy.ndarray
        (N,) int64 database ids (or any labels for in-memory batches).
    surveys : sequence of str, optional
        Survey of each row (``'sdss'``, ``'boss'``, ``'desi'``).
    full : PackedFull, optional
        The full-range arrays of the same rows, in memory (e.g. re-noised copies).
    full_loader : callable, optional
        ``full_loader(index) -> PackedFull`` for the batch rows ``index`` (read from the store on use).
    red_loader : callable, optional
        ``red_loader(index) -> RedArrays`` for stores written before full-range packing (the
        4900-8850 A veto range); default: derived from the full-range arrays.
    continuum : sequence of str, optional
        Per row, the continuum the full-range arrays should use (``'pipeline'`` or ``'fit'``);
        default ``'pipeline'``.
    """

    def __init__(
        self,
        rows: PackedRows,
        spectrum_ids: np.ndarray,
        surveys: Sequence[str] | None = None,
        *,
        full: Any = None,
        full_loader: Callable[[np.ndarray], Any] | None = None,
        red_loader: Callable[[np.ndarray], RedArrays] | None = None,
        continuum: Sequence[str] | None = None,
    ) -> None:
        self.rows = rows
        self.spectrum_ids = np.asarray(spectrum_ids, dtype=np.int64)
        self.surveys = list(surveys) if surveys is not None else [""] * len(rows)
        self._full = full
        self._full_loader = full_loader
        self._red_loader = red_loader
        self.continuum_choice = list(continuum) if continuum is not None else ["pipeline"] * len(rows)
        if not (len(self.spectrum_ids) == len(self.surveys) == len(self.continuum_choice) == len(rows)):
            raise LenscatError("spectrum batch: rows, ids, surveys and continuum choices differ in length")

    def __len__(self) -> int:
        return len(self.rows)

    def has_full(self) -> bool:
        """True when full-range arrays are available."""
        return self._full is not None or self._full_loader is not None

    def full(self) -> Any:
        """The full-range arrays (:class:`lenscat.spectra.pack.PackedFull`) of all the batch's rows."""
        if self._full is None:
            if self._full_loader is None:
                raise LenscatError(
                    "these spectra have no full-range arrays (their store predates full-range "
                    "packing: ingest the spectra into a new store)"
                )
            self._full = self._full_loader(np.arange(len(self), dtype=np.int64))
        return self._full

    def red(self, index: np.ndarray) -> RedArrays:
        """Red-side arrays of the batch rows ``index`` for the per-line vetoes.

        The full range when available (in memory, or read for just these rows), else the old
        4900-8850 A veto range.
        """
        from lenscat.spectra.grid import FULL

        idx = np.asarray(index, dtype=np.int64)
        choice = [self.continuum_choice[i] for i in idx.tolist()]
        if self._full is not None:
            f = self._full
            return RedArrays(
                wave=FULL.wave,
                flux=f.flux[idx],
                ivar=f.ivar[idx],
                continuum=np.asarray(f.continuum(self.continuum_choice))[idx],
            )
        if self._full_loader is not None:
            f = self._full_loader(idx)
            return RedArrays(wave=FULL.wave, flux=f.flux, ivar=f.ivar, continuum=f.continuum(choice))
        if self._red_loader is not None:
            return self._red_loader(idx)
        raise LenscatError("these spectra have no red-side arrays for the line vetoes")


class Detector(ABC):
    """A loaded detector version; subclasses implement :meth:`detect` (and may override :meth:`characterise`).

    Parameters
    ----------
    model : ModelVersion
        The detector version (kind ``'detector'``).
    device : str, optional
        Torch device for networks (default: CUDA when available).
    """

    architecture: ClassVar[str] = ""
    family: ClassVar[str] = "lya"

    def __init__(self, model: ModelVersion, device: str | None = None) -> None:
        self.model = model
        self.device = device

    def continuum_for(self, surveys: Sequence[str]) -> list[str]:
        """The continuum this version subtracts for spectra of the given surveys.

        The version's ``continuum`` hyper-parameter is a choice for every survey (``'pipeline'`` or
        ``'fit'``) or a mapping ``survey -> choice``, frozen at registration from the measured
        per-survey choices; versions from before it existed use the pipeline model.
        """
        spec = self.model.hparams.get("continuum", "pipeline")
        if isinstance(spec, dict):
            return [str(spec.get(s, spec.get("*", "pipeline"))) for s in surveys]
        return [str(spec)] * len(surveys)

    @abstractmethod
    def detect(self, batch: SpectrumBatch) -> Candidates:
        """Candidate lines in the batch."""

    def characterise(self, cands: Candidates, batch: SpectrumBatch) -> list[HitRow]:
        """Line fit and per-line vetoes of each candidate (default: the Lyα follow-up)."""
        return lya_characterise(cands, batch)


def register_detector(cls: type[Detector]) -> type[Detector]:
    """Class decorator: make ``cls`` the loader of detector versions with ``cls.architecture``."""
    if not cls.architecture:
        raise LenscatError(f"{cls.__name__}: a detector class needs an architecture name")
    register_loader("detector", cls.architecture, cls)
    return cls


def detector_class(architecture: str) -> type[Detector]:
    """The class running detector versions of ``architecture``."""
    cls = loader_for("detector", architecture, fallback=False)
    if not (isinstance(cls, type) and issubclass(cls, Detector)):
        raise LenscatError(f"detector architecture {architecture!r} is not loaded by a Detector class")
    return cls


def load_detector(model: ModelVersion, device: str | None = None) -> Detector:
    """A detector, loaded once per process (workers scan many chunks with the same version).

    Through :func:`lenscat.registry.loaders.load_model`: its checkpoint, when it has one, is verified
    first, and ``device`` defaults to ``LENSCAT_DEVICE`` (else CUDA when available).
    """
    det = load_model(model, device)
    if not isinstance(det, Detector):
        raise LenscatError(f"detector {model.label} ({model.architecture}) did not load as a detector")
    return det


#: a Lyα candidate needs this S/N, from its detector (the matched filter's is >= 6 by construction) or
#: from the line fit (a network's probability alone is not a line)
MIN_LINE_SNR = 5.0
#: a Lyα candidate closer than this to one of the foreground galaxy's own emission lines is vetoed [km/s]
FOREGROUND_LINE_KMS = 600.0


def _near_galaxy_line(wavelength: float, z_lens: float) -> bool:
    """True when ``wavelength`` lies within :data:`FOREGROUND_LINE_KMS` of the galaxy's own lines at ``z_lens``.

    The extended list (Balmer lines, [OII], [NeIII], [OIII], HeII... 3300-5100 A rest) is the one
    the matched filter masks; a network reads those pixels too (masked only for Li et al.'s five
    lines), so a residual of the galaxy's own Hγ or Hβ must not become a Lyα candidate.
    """
    from lenscat.spectra.masks import galaxy_line_mask

    if not (np.isfinite(wavelength) and np.isfinite(z_lens)):
        return False
    return bool(galaxy_line_mask(np.array([wavelength]), z_lens, half_width_kms=FOREGROUND_LINE_KMS, extended=True)[0])


def lya_characterise(cands: Candidates, batch: SpectrumBatch) -> list[HitRow]:
    """Fit each Lyα candidate (skew-normal + residual continuum) and apply the per-line vetoes."""
    from lenscat.spectra.linefit import fit_line
    from lenscat.spectra.veto_types import VetoConfig
    from lenscat.spectra.vetoes import lya_vetoes

    if len(cands) == 0:
        return []
    rows = batch.rows
    uniq, inv = np.unique(cands.row, return_inverse=True)
    red = batch.red(uniq)
    wave = WINDOW.wave
    cfg = VetoConfig()
    out: list[HitRow] = []
    for j, (r, px) in enumerate(zip(cands.row.tolist(), cands.pixel.tolist(), strict=True)):
        fit = fit_line(wave, rows.flux[r], rows.ivar[r], rows.continuum[r], float(wave[px]))
        lam = float(fit.wavelength) if fit.ok and np.isfinite(fit.wavelength) else float(wave[px])
        k = int(inv[j])
        vet = lya_vetoes(
            wave,
            rows.flux[r],
            rows.ivar[r],
            rows.continuum[r],
            fit,
            red.wave,
            red.flux[k],
            red.ivar[k],
            red.continuum[k],
            z_lens=float(rows.z[r]),
            config=cfg,
        )
        foreground = _near_galaxy_line(lam, float(rows.z[r]))
        # a probability alone is not a line: the detector's own S/N or the fitted line's must reach MIN_LINE_SNR
        det_snr = float(cands.snr[j]) if np.isfinite(cands.snr[j]) else -np.inf
        fit_snr = float(fit.snr) if fit.ok and np.isfinite(fit.snr) else -np.inf
        weak = max(det_snr, fit_snr) < MIN_LINE_SNR
        snr = cands.snr[j] if np.isfinite(cands.snr[j]) else fit.snr
        detail = {k: (v[j].item() if hasattr(v[j], "item") else v[j]) for k, v in cands.extra.items()}
        detail.update(vet.detail)
        out.append(
            HitRow(
                int(batch.spectrum_ids[r]),
                int(px),
                lam,
                {
                    "line": "lya",
                    "wavelength_err": finite_or_none(fit.wavelength_err),
                    "z_source": lam / LYA - 1.0,
                    "snr": finite_or_none(snr),
                    "prob": finite_or_none(cands.prob[j]),
                    "line_flux": finite_or_none(fit.line_flux),
                    "line_flux_err": finite_or_none(fit.line_flux_err),
                    "fwhm_kms": finite_or_none(fit.fwhm_kms),
                    "skew_alpha": finite_or_none(fit.alpha),
                    "skewness": finite_or_none(fit.skewness),
                    "fit_chi2": finite_or_none(fit.redchi2),
                    "fit_ok": bool(fit.ok),
                    "veto_oii": bool(vet.veto_oii),
                    "veto_skew": bool(vet.veto_skew),
                    "veto_foreground": foreground,
                    "veto_weak": bool(weak),
                    "veto_detail": json.dumps(detail, default=finite_or_none),
                },
            )
        )
    return out


def store_batch(
    store: Any,
    pack_rows: np.ndarray,
    spectrum_ids: np.ndarray,
    surveys: Sequence[str],
    rows: PackedRows,
    continuum: Sequence[str],
) -> SpectrumBatch:
    """A batch over rows of one array store: full-range (or old veto-range) rows are read on demand."""
    prow = np.asarray(pack_rows, dtype=np.int64)
    choice = list(continuum)
    if getattr(store, "has_full", False):
        return SpectrumBatch(
            rows, spectrum_ids, surveys, continuum=choice, full_loader=lambda idx: store.read_full(prow[idx])
        )

    def old_red(idx: np.ndarray) -> RedArrays:
        veto = store.read_veto(prow[idx])
        return RedArrays(wave=VETO.wave, flux=veto.flux, ivar=veto.ivar, continuum=veto.continuum)

    return SpectrumBatch(rows, spectrum_ids, surveys, continuum=choice, red_loader=old_red)
