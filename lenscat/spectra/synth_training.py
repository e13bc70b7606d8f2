"""Synthetic training sets of the spectroscopic lens search: :func:`make_training_set`, :func:`iter_training_set`.

Foreground early-type galaxy spectra in the 3800-5000 A window (Li et al. 2018, MNRAS 482, 313),
built from the SDSS eigenspectra, real SDSS sky, photon + read noise (or real continuum-subtracted
residuals) by :mod:`lenscat.spectra.synth_galaxies`, with a skew-normal Lya emission line
(:mod:`lenscat.spectra.synth`) from a source at 2 < z_s < 3 added to ~1 spectrum in 16 under the
priors of :mod:`lenscat.spectra.synth_priors`; reproducible from one seed, in blocks of
``_CHUNK`` spectra.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lenscat.errors import LenscatError
from lenscat.spectra.grid import WINDOW, LogGrid
from lenscat.spectra.synth_galaxies import _sky_on_grid, _synth_chunk
from lenscat.spectra.synth_priors import LINE_PRIORS

__all__ = ["SyntheticSet", "iter_training_set", "make_training_set"]


@dataclass
class SyntheticSet:
    """Synthetic spectra on a grid, as :func:`make_training_set` returns them.

    Attributes
    ----------
    wave : numpy.ndarray, shape (P,)
        Pixel centres [Angstrom].
    flux : numpy.ndarray, shape (N, P), float32
        Sky-subtracted flux density [1e-17 erg/s/cm^2/A]: galaxy + line + sky-subtraction
        residual + noise.
    ivar : numpy.ndarray, shape (N, P), float32
        Inverse variance of the noise actually added; 0 at masked pixels.
    continuum : numpy.ndarray, shape (N, P), float32
        The continuum a search subtracts: the true galaxy with a small template/calibration
        error (``continuum_error``), or the :func:`~lenscat.spectra.continuum.fit_continua`
        fit (``continuum='fit'``).
    z : numpy.ndarray, shape (N,), float64
        Galaxy redshift.
    labels : numpy.ndarray, shape (N,), int8
        1 where a Lyα line was added.
    line : dict of numpy.ndarray, each shape (N,)
        :func:`~lenscat.spectra.synth_priors.draw_lya_params` output for every row, NaN for negatives; ``line['pixel']``
        is the fractional peak pixel.
    line_pixel : numpy.ndarray, shape (N,), int64
        Rounded peak pixel of the line, -1 for negatives.
    truth : numpy.ndarray or None, shape (N, P), float32
        Noise-free flux (galaxy + line + sky residual): ``(flux - truth) * sqrt(ivar)`` is the
        unit-variance noise. None unless kept.
    galaxy : numpy.ndarray or None, shape (N, P), float32
        The true galaxy continuum (kept with ``truth``).
    meta : dict
        Per-row ``snr`` (median continuum S/N per pixel), ``level`` (median galaxy flux
        density), ``sky_index``, ``sky_scale``, ``noise_kind`` (0 synthetic Gaussian, 1 real
        residual), and ``seed``.
    """

    wave: np.ndarray
    flux: np.ndarray
    ivar: np.ndarray
    continuum: np.ndarray
    z: np.ndarray
    labels: np.ndarray
    line: dict[str, np.ndarray]
    line_pixel: np.ndarray
    truth: np.ndarray | None = None
    galaxy: np.ndarray | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.labels)

    def arrays(self) -> dict[str, np.ndarray]:
        """``flux``, ``ivar``, ``continuum``, ``z``, ``labels``, ``line_pixel`` (for training)."""
        return {
            "flux": self.flux,
            "ivar": self.ivar,
            "continuum": self.continuum,
            "z": self.z,
            "labels": self.labels,
            "line_pixel": self.line_pixel,
        }

    def subset(self, index: np.ndarray | slice) -> SyntheticSet:
        """The rows ``index`` as a new set (arrays are copies for index arrays, views for slices)."""
        return SyntheticSet(
            wave=self.wave,
            flux=self.flux[index],
            ivar=self.ivar[index],
            continuum=self.continuum[index],
            z=self.z[index],
            labels=self.labels[index],
            line={k: v[index] for k, v in self.line.items()},
            line_pixel=self.line_pixel[index],
            truth=None if self.truth is None else self.truth[index],
            galaxy=None if self.galaxy is None else self.galaxy[index],
            meta={k: (v[index] if isinstance(v, np.ndarray) else v) for k, v in self.meta.items()},
        )


def make_training_set(
    n: int,
    *,
    positive_fraction: float = 1.0 / 16.0,
    seed: int = 0,
    sky: np.ndarray | None = None,
    residuals: np.ndarray | None = None,
    residual_fraction: float = 0.5,
    grid: LogGrid = WINDOW,
    z_range: tuple[float, float] = (0.3, 0.7),
    level_range: tuple[float, float] = (0.5, 5.0),
    snr_range: tuple[float, float] = (1.0, 5.0),
    sky_scale_range: tuple[float, float] = (0.7, 1.5),
    sky_residual: float = 0.02,
    throughput_slope: tuple[float, float] = (4.0, 7.0),
    read_fraction: tuple[float, float] = (0.05, 0.3),
    bad_pixel_fraction: float = 0.002,
    bad_run_probability: float = 0.05,
    continuum_error: float = 0.02,
    continuum: str = "true",
    line_priors: Mapping[str, Any] | None = None,
    keep_truth: bool = True,
    basis: str = "spEigenGal-55740",
    priors: str = "li2018",
) -> SyntheticSet:
    """Synthetic BOSS early-type spectra, about one in 16 with a background Lyα line.

    Each spectrum is built as follows (all draws from one ``numpy`` generator seeded ``seed``,
    so a seed and the options give identical arrays):

    1. **galaxy**: ``z ~ U(z_range)``; SDSS eigenspectra (``basis``) redshifted onto the grid
       with coefficients ``(1, c1, c2, c3)``, ``c_i`` Gaussian with rms amplitude 8 %, 3 % and
       2 % of component 0 (the early-type mean spectrum), falling back to component 0 alone
       if the mix is not clearly positive; scaled to a median flux density log-uniform in
       ``level_range`` (BOSS CMASS/LOWZ in 3800-5000 A: ~0.5-5e-17 erg/s/cm^2/A);
    2. **sky**: a random row of :func:`~lenscat.spectra.reference.sdss_sky_spectra` (or of
       ``sky``) times ``U(sky_scale_range)``; it enters the noise, and a sky-subtraction
       residual ``eps * lines + delta * d(lines)/d(pixel)`` is added to the flux, ``lines`` being
       the sky row's line part (minus a 31-px running median: Hg I 4047, 4358 etc.),
       ``eps ~ N(0, sky_residual)`` and a wavelength error ``delta ~ N(0, 0.1) px``;
    3. **noise**: variance ``k (galaxy + line + sky) / T + r^2 / T^2`` with a throughput shape
       ``T = (lambda / 5000 A)^beta``, ``beta ~ U(throughput_slope)`` (BOSS's blue end has ~5x
       the variance per unit flux of 5000 A), read noise ``r^2 = rho k median(sky)`` with
       ``rho ~ U(read_fraction)``, and the gain-like ``k`` set so that the median continuum S/N
       per pixel is log-uniform in ``snr_range``; Gaussian noise of that variance is added and
       ``ivar = 1 / variance``. With ``residuals``, a fraction ``residual_fraction`` of the
       spectra get instead ``sigma * r`` with ``r`` a random row of ``residuals``;
    4. **masks**: a fraction ``bad_pixel_fraction`` of single pixels, and with probability
       ``bad_run_probability`` a run of 5-40 pixels, get ``ivar = 0``;
    5. **line** (positives): :func:`~lenscat.spectra.synth.lya_profile` with its photon noise; parameters from
       :func:`~lenscat.spectra.synth_priors.draw_lya_params` (``priors='li2018'``, Li et al.'s peak-flux priors) or
       :func:`~lenscat.spectra.synth_priors.draw_matched_params` (``priors='matched'``: full FWHM range, red tails and
       some symmetric lines, and the line flux set so that the line's matched-filter S/N against the
       spectrum's final ``ivar`` (masks and the line's own photon noise included) is exactly the
       drawn one), with options ``line_priors``; ``line['snr_matched']`` records that S/N for
       either priors;
    6. **continuum**: ``'true'`` -- the true galaxy with a smooth error: eigen coefficients
       perturbed and a cubic Legendre factor, each ~``continuum_error`` rms relative (a
       template/calibration mismatch like a real fit's); ``'fit'`` -- the
       :func:`lenscat.spectra.continuum.fit_continua` fit of the synthetic spectrum (what real
       data get; slower); ``'auto'`` -- ``'fit'`` when that module is installed, else ``'true'``.

    Parameters
    ----------
    n : int
        Number of spectra.
    positive_fraction : float
        Fraction with a line (exactly ``round(n * positive_fraction)`` of them, at random rows).
    seed : int
        Seed of every random draw.
    sky : numpy.ndarray, shape (M, P), optional
        Sky spectra on ``grid`` [1e-17 erg/s/cm^2/A] (default the four real SDSS ones).
    residuals : numpy.ndarray, shape (M, P), optional
        Real continuum-subtracted residuals **in S/N units**, ``(flux - continuum) *
        sqrt(ivar)``, on ``grid`` (e.g. from the packed store); NaN or exactly 0 marks a
        masked pixel (there ``ivar`` is set to 0). They replace the Gaussian noise (scaled by
        the synthetic sigma) for ``residual_fraction`` of the spectra, bringing real
        continuum-fit and sky residual structure into training. They may hold a rare real
        line: label noise at the 1e-3 level.
    priors : {'li2018', 'matched'}
        Line priors (:data:`~lenscat.spectra.synth_priors.LINE_PRIORS`, step 5); ``line_priors`` are the keyword options
        of the corresponding draw function.
    keep_truth : bool
        Keep the noise-free ``truth`` and ``galaxy`` arrays (2 more float32 (N, P) arrays).

    Returns
    -------
    SyntheticSet
        float32 arrays on ``grid``.

    Raises
    ------
    LenscatError
        Bad options or array shapes; ``continuum='fit'`` without the continuum module.
    """
    if n < 1:
        raise LenscatError(f"n must be positive, got {n}")
    p = grid.n
    out = {k: np.empty((n, p), dtype=np.float32) for k in ("flux", "ivar", "continuum")}
    if keep_truth:
        out.update({k: np.empty((n, p), dtype=np.float32) for k in ("truth", "galaxy")})
    z = np.empty(n)
    labels = np.empty(n, dtype=np.int8)
    line_pixel = np.empty(n, dtype=np.int64)
    scalars: dict[str, list[np.ndarray]] = {}
    line_parts: list[dict[str, np.ndarray]] = []
    cont_kind = continuum
    s0 = 0
    for part in iter_training_set(
        n,
        positive_fraction=positive_fraction,
        seed=seed,
        sky=sky,
        residuals=residuals,
        residual_fraction=residual_fraction,
        grid=grid,
        z_range=z_range,
        level_range=level_range,
        snr_range=snr_range,
        sky_scale_range=sky_scale_range,
        sky_residual=sky_residual,
        throughput_slope=throughput_slope,
        read_fraction=read_fraction,
        bad_pixel_fraction=bad_pixel_fraction,
        bad_run_probability=bad_run_probability,
        continuum_error=continuum_error,
        continuum=continuum,
        line_priors=line_priors,
        keep_truth=keep_truth,
        basis=basis,
        priors=priors,
    ):
        sl = slice(s0, s0 + len(part))
        s0 += len(part)
        for k, arr in out.items():
            arr[sl] = getattr(part, k)
        z[sl], labels[sl], line_pixel[sl] = part.z, part.labels, part.line_pixel
        line_parts.append(part.line)
        for k, v in part.meta.items():
            if isinstance(v, np.ndarray):
                scalars.setdefault(k, []).append(v)
        cont_kind = str(part.meta["continuum"])
    meta: dict[str, Any] = {k: np.concatenate(v) for k, v in scalars.items()}
    line = {k: np.concatenate([d[k] for d in line_parts]) for k in line_parts[0]}
    meta.update(seed=seed, continuum=cont_kind, priors=priors)
    return SyntheticSet(
        wave=grid.wave,
        flux=out["flux"],
        ivar=out["ivar"],
        continuum=out["continuum"],
        z=z,
        labels=labels,
        line=line,
        line_pixel=line_pixel,
        truth=out.get("truth"),
        galaxy=out.get("galaxy"),
        meta=meta,
    )


def iter_training_set(
    n: int,
    *,
    positive_fraction: float = 1.0 / 16.0,
    seed: int = 0,
    sky: np.ndarray | None = None,
    residuals: np.ndarray | None = None,
    residual_fraction: float = 0.5,
    grid: LogGrid = WINDOW,
    z_range: tuple[float, float] = (0.3, 0.7),
    level_range: tuple[float, float] = (0.5, 5.0),
    snr_range: tuple[float, float] = (1.0, 5.0),
    sky_scale_range: tuple[float, float] = (0.7, 1.5),
    sky_residual: float = 0.02,
    throughput_slope: tuple[float, float] = (4.0, 7.0),
    read_fraction: tuple[float, float] = (0.05, 0.3),
    bad_pixel_fraction: float = 0.002,
    bad_run_probability: float = 0.05,
    continuum_error: float = 0.02,
    continuum: str = "true",
    line_priors: Mapping[str, Any] | None = None,
    keep_truth: bool = True,
    basis: str = "spEigenGal-55740",
    priors: str = "li2018",
) -> Iterator[SyntheticSet]:
    """:func:`make_training_set` in consecutive blocks of rows, for sets too large to hold twice.

    Takes the options of :func:`make_training_set` and yields :class:`SyntheticSet` blocks of
    at most 4,096 rows in order; concatenated they are exactly ``make_training_set(n, ...)``
    (same seed, same arrays). A caller that turns each block into network input
    (:func:`lenscat.models.specnet_inputs.prepare_inputs`) and drops it holds only the inputs: a
    1.5e5-spectrum set then needs ~2 GB instead of ~6 GB.

    Yields
    ------
    SyntheticSet
        Rows ``[i * 4096, min(n, (i + 1) * 4096))``; ``meta`` holds the per-row arrays and
        ``seed``, ``continuum``, ``priors``, ``start`` (first row).
    """
    if n < 1:
        raise LenscatError(f"n must be positive, got {n}")
    if not 0.0 <= positive_fraction <= 1.0:
        raise LenscatError(f"positive_fraction must be in [0, 1], got {positive_fraction}")
    if continuum not in ("true", "fit", "auto"):
        raise LenscatError(f"continuum must be 'true', 'fit' or 'auto', got {continuum!r}")
    if priors not in LINE_PRIORS:
        raise LenscatError(f"line priors must be one of {', '.join(LINE_PRIORS)}, got {priors!r}")
    for name, r in (
        ("z_range", z_range),
        ("level_range", level_range),
        ("snr_range", snr_range),
        ("sky_scale_range", sky_scale_range),
    ):
        if not 0 < r[0] <= r[1]:
            raise LenscatError(f"{name} must be positive and increasing, got {r}")
    if continuum == "auto":
        try:
            import lenscat.spectra.continuum  # noqa: F401
        except ImportError:
            continuum = "true"
        else:
            continuum = "fit"
    fit: Callable[..., np.ndarray] | None = None
    if continuum == "fit":
        try:
            from lenscat.spectra.continuum import fit_continua
        except ImportError as exc:
            raise LenscatError("continuum='fit' needs lenscat.spectra.continuum") from exc
        fit = fit_continua
    p = grid.n
    wave = grid.wave
    if sky is None:
        sky_rows, sky_lines = _sky_on_grid(grid.k0, grid.n, grid.dlog)
    else:
        sky_rows = np.asarray(sky, dtype=np.float64)
        if sky_rows.ndim != 2 or sky_rows.shape[1] != p or len(sky_rows) == 0:
            raise LenscatError(f"sky must be (M, {p}) with M >= 1, got {sky_rows.shape}")
        sky_lines = sky_rows - np.median(sky_rows, axis=1, keepdims=True)
    res: np.ndarray | None = None
    if residuals is not None:
        res = np.asarray(residuals, dtype=np.float64)
        if res.ndim != 2 or res.shape[1] != p or len(res) == 0:
            raise LenscatError(f"residuals must be (M, {p}) with M >= 1, got {res.shape}")

    # which rows get a line: from the first child of the seed; each chunk of rows from its own
    n_chunks = (n + _CHUNK - 1) // _CHUNK
    seqs = np.random.SeedSequence(seed).spawn(1 + n_chunks)
    n_pos = int(round(n * positive_fraction))
    labels = np.zeros(n, dtype=np.int8)
    if n_pos:
        labels[np.random.default_rng(seqs[0]).choice(n, size=n_pos, replace=False)] = 1

    for j in range(n_chunks):
        sl = slice(j * _CHUNK, min(n, (j + 1) * _CHUNK))
        rng = np.random.default_rng(seqs[1 + j])
        chunk = _synth_chunk(
            rng,
            labels[sl].astype(bool),
            grid,
            sky_rows,
            sky_lines,
            res,
            residual_fraction=residual_fraction,
            z_range=z_range,
            level_range=level_range,
            snr_range=snr_range,
            sky_scale_range=sky_scale_range,
            sky_residual=sky_residual,
            throughput_slope=throughput_slope,
            read_fraction=read_fraction,
            bad_pixel_fraction=bad_pixel_fraction,
            bad_run_probability=bad_run_probability,
            continuum_error=continuum_error,
            line_priors=dict(line_priors or {}),
            basis=basis,
            priors=priors,
        )
        arrays = {
            k: np.asarray(chunk.pop(k), dtype=np.float32) for k in ("flux", "ivar", "continuum", "truth", "galaxy")
        }
        line = chunk.pop("line")
        z = chunk.pop("z")
        lab = labels[sl].copy()
        lpix = np.where(lab == 1, np.rint(np.nan_to_num(line["pixel"], nan=-1.0)), -1)
        if fit is not None:
            arrays["continuum"] = np.asarray(fit(wave, arrays["flux"], arrays["ivar"], z), dtype=np.float32)
        meta: dict[str, Any] = dict(chunk)
        meta.update(seed=seed, continuum=continuum, priors=priors, start=sl.start)
        yield SyntheticSet(
            wave=wave,
            flux=arrays["flux"],
            ivar=arrays["ivar"],
            continuum=arrays["continuum"],
            z=z,
            labels=lab,
            line=line,
            line_pixel=lpix.astype(np.int64),
            truth=arrays["truth"] if keep_truth else None,
            galaxy=arrays["galaxy"] if keep_truth else None,
            meta=meta,
        )


#: rows generated at a time (bounds the float64 temporaries to ~40 MB each)
_CHUNK = 4096
