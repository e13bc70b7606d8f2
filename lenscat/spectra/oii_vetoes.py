"""Vetoes of background [OII] doublet hits (:func:`oii_vetoes`): doublet, foreground and interloper.

The rules are described in :mod:`lenscat.spectra.oii` (section "Vetoes").
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from lenscat.spectra.grid import C_KMS
from lenscat.spectra.oii import (
    HALPHA,
    HBETA,
    NII_6585,
    OII_3727,
    OII_3729,
    OII_MEAN,
    OIII_4959,
    OIII_5007,
    OIIConfig,
    _dlog,
    min_z_source,
)
from lenscat.spectra.oii_fit import DoubletFit, _line_measure

__all__ = ["OIIVetoes", "interloper_tests", "oii_vetoes"]

# --- vetoes -------------------------------------------------------------------------------------------
#: doublet template of [OII] as a partner line: (rest, share of the total flux) at ratio 1
_OII_PAIR = [(OII_3727, 0.5), (OII_3729, 0.5)]


#: interloper hypotheses: the candidate is line ``rest``; partners (name, template [(rest, share)],
#: (min, max) flux ratio partner / line)
INTERLOPERS: dict[str, tuple[float, list[tuple[str, list[tuple[float, float]], tuple[float, float]]]]] = {
    "oiii_5007": (OIII_5007, [("oiii_4959", [(OIII_4959, 1.0)], (0.2, 0.6)), ("oii", _OII_PAIR, (0.3, 20.0))]),
    "oiii_4959": (OIII_4959, [("oiii_5007", [(OIII_5007, 1.0)], (1.7, 5.0))]),
    "hbeta": (HBETA, [("oiii_5007", [(OIII_5007, 1.0)], (0.3, 20.0)), ("oii", _OII_PAIR, (0.3, 10.0))]),
    "halpha": (
        HALPHA,
        [
            ("nii_6585", [(NII_6585, 1.0)], (0.1, 3.0)),
            ("hbeta", [(HBETA, 1.0)], (0.15, 0.6)),
            ("oii", _OII_PAIR, (0.1, 3.0)),
        ],
    ),
}


def interloper_tests(
    wave: np.ndarray,
    r: np.ndarray,
    w: np.ndarray,
    lam_obs: float,
    line_flux: float,
    sigma_kms: float,
    *,
    partner_snr: float = 3.0,
) -> tuple[bool, dict[str, dict[str, float]]]:
    """Is the candidate line another line of a lower-redshift emitter?

    For each hypothesis of :data:`INTERLOPERS` (the candidate is [OIII] 5007, [OIII] 4959, Hbeta or
    Halpha) the partner lines are measured with fixed Gaussians (``sigma_kms``; [OII] as its
    doublet) at ``lam_obs * partner / line`` on the residuals; the hypothesis holds when a covered
    partner has ``S/N >= partner_snr`` and a flux ratio ``partner / line_flux`` inside its range.
    Partners at a foreground or sky line are masked (``w = 0``) and count as not covered.

    Parameters
    ----------
    wave : numpy.ndarray
        (P,) wavelengths [Angstrom].
    r, w : numpy.ndarray
        (P,) residual [1e-17 erg/s/cm^2/A] and weights (:func:`~lenscat.spectra.oii.prepare`).
    lam_obs : float
        Observed wavelength of the candidate line [Angstrom] (a doublet's mean wavelength).
    line_flux : float
        Its flux [1e-17 erg/s/cm^2].
    sigma_kms : float
        Gaussian sigma of the partner lines [km/s].
    partner_snr : float
        S/N at which a partner counts.

    Returns
    -------
    tuple
        ``(flag, detail)``; detail maps hypothesis -> {partner: S/N, partner_ratio: ratio, holds}.
    """
    detail: dict[str, dict[str, float]] = {}
    flag = False
    for name, (rest, partners) in INTERLOPERS.items():
        d: dict[str, float] = {}
        for pname, template, (rmin, rmax) in partners:
            # strict coverage: a partner in the wing of a masked foreground or sky line is not measured
            fl, er = _line_measure(
                wave,
                r,
                w,
                [(lam_obs * pr / rest, wt) for pr, wt in template],
                sigma_kms,
                min_coverage=0.9,
                cover_nsigma=4.0,
            )
            sn = fl / er if np.isfinite(er) and er > 0 else np.nan
            ratio = fl / line_flux if line_flux > 0 else np.nan
            d[pname] = sn
            d[f"{pname}_ratio"] = ratio
            if np.isfinite(sn) and sn >= partner_snr and rmin <= ratio <= rmax:
                flag = True
                d["holds"] = 1.0
        detail[name] = d
    return flag, detail


@dataclass
class OIIVetoes:
    """The [OII]-family veto flags of one hit and their measurements."""

    veto_doublet: bool = False
    veto_foreground: bool = False
    veto_interloper: bool = False
    detail: dict[str, object] = field(default_factory=dict)


def oii_vetoes(
    fit: DoubletFit, wave: np.ndarray, r: np.ndarray, w: np.ndarray, z_lens: float, config: OIIConfig | None = None
) -> OIIVetoes:
    """Apply the [OII]-family per-line vetoes to a fitted hit (see the module docstring).

    Parameters
    ----------
    fit : DoubletFit
        The hit's doublet fit.
    wave : numpy.ndarray
        (P,) wavelengths [Angstrom].
    r, w : numpy.ndarray
        (P,) residual and search weights of the spectrum (:func:`~lenscat.spectra.oii.prepare`).
    z_lens : float
        Foreground redshift (NaN: ``veto_foreground`` never fires).
    config : OIIConfig, optional
        Thresholds.
    """
    cfg = config or OIIConfig()
    out = OIIVetoes()
    if not fit.ok:
        return out
    dpx_kms = C_KMS * np.log(10.0) * _dlog(wave)
    dchi = fit.delta_chi2
    narrow = bool(np.isfinite(fit.single_sigma_kms) and fit.single_sigma_kms < cfg.narrow_sigma_px * dpx_kms)
    if np.isfinite(dchi):
        out.veto_doublet = bool(dchi <= -cfg.doublet_delta_chi2 or (narrow and dchi < cfg.doublet_delta_chi2))
    near_line = np.nan
    if np.isfinite(z_lens):
        from lenscat.spectra.masks import galaxy_lines

        fg = np.array(list(galaxy_lines(full_range=True).values())) * (1.0 + z_lens)
        comps = np.array([OII_MEAN * (1.0 + fit.z)])
        if np.isfinite(fit.single_wavelength):
            comps = np.append(comps, fit.single_wavelength)
        near_line = float(np.min(np.abs(comps[:, None] / fg[None, :] - 1.0)) * C_KMS)
        out.veto_foreground = bool(
            fit.z < float(min_z_source(z_lens, cfg.min_dv_kms)) or near_line < cfg.foreground_clear_kms
        )
    # the candidate as one line, measured like its partners (same template, same width): the ratios
    # compare like with like, whatever the doublet fit did
    sig = float(np.clip(fit.single_sigma_kms if np.isfinite(fit.single_sigma_kms) else fit.sigma_kms, dpx_kms, 500.0))
    lam = float(fit.single_wavelength) if np.isfinite(fit.single_wavelength) else float(fit.wavelength)
    own, _own_err = _line_measure(wave, r, w, [(lam, 1.0)], sig, min_coverage=0.0)
    flag, det = interloper_tests(wave, r, w, lam, own, sig, partner_snr=cfg.partner_snr)
    # a resolved doublet (preferred to one line by the margin) is no single line of an interloper
    resolved = bool(np.isfinite(dchi) and dchi >= cfg.doublet_delta_chi2)
    out.veto_interloper = bool(flag and not resolved)
    out.detail = {
        "delta_chi2": dchi,
        "foreground_line_kms": near_line,
        "single_sigma_kms": fit.single_sigma_kms,
        "narrow": narrow,
        "interloper": det,
    }
    return out
