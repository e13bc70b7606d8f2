"""Training options that follow a survey's bands: channels, stretch scales, reddening and noise.

The defaults of :mod:`lenscat.models.augment` and :mod:`lenscat.models.preprocess` are Stein et
al.'s, for DECaLS g, r, z at 0.262"/px: DECam extinction coefficients, the DR9 PSF and sky-noise
distributions, and arcsinh scales at the DR9 sky noise. A survey with other bands (HSC g r i z y,
LSST u g r i z y, Euclid VIS + NISP, one HST filter) gets, from :func:`image_training_options`:

* one input channel per band;
* arcsinh scales and the extra-noise level at the survey's own sky noise per band, measured on
  the training cutouts by :func:`estimate_sky_noise` (a robust standard deviation of the pixels
  in each cutout's outer frame, the median over up to 256 cutouts);
* Galactic re-reddening with ``R_b = A_b / E(B-V)`` per band from :data:`EXTINCTION_R`
  (Schlafly & Finkbeiner 2011, R_V = 3.1; bands not in the table by interpolation in log
  wavelength), or no re-reddening when a band's wavelength is unknown;
* no extra PSF blur: its model is the DR9 g, r, z seeing distribution.

DECaLS-like g, r, z keeps Stein et al.'s options exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lenscat.errors import LenscatError
from lenscat.images.cutout import band_wavelength_nm, normalise_band

__all__ = ["EXTINCTION_R", "BandOptions", "estimate_sky_noise", "extinction_coefficient", "image_training_options"]

EXTINCTION_R: dict[str, float] = {
    "u": 4.239,  # SDSS u
    "g": 3.214,
    "r": 2.165,
    "i": 1.592,
    "z": 1.211,
    "y": 1.064,  # DECam (as the Legacy Surveys use)
    "Y": 1.064,
    "J": 0.709,
    "H": 0.449,
    "K": 0.302,
    "Ks": 0.306,  # DECam Y, UKIRT J H K, 2MASS Ks
}
"""``A_b / E(B-V)`` by band (Schlafly & Finkbeiner 2011, Table 6, R_V = 3.1)."""

DECALS_BANDS = ("g", "r", "z")


def extinction_coefficient(band: str) -> float | None:
    """``A_b / E(B-V)`` of a band name, or None when its wavelength is unknown.

    Names in :data:`EXTINCTION_R` (after :func:`~lenscat.images.cutout.normalise_band`: ``'G'``,
    ``'DECAM_g'``, ``'HSC-G'`` are ``g``) take the table value; others with a known effective
    wavelength (``'VIS'``, ``'F814W'``) are interpolated in log wavelength between the table's
    bands (clamped at its ends).
    """
    norm = normalise_band(band, strict=True) or band
    if norm in EXTINCTION_R:
        return EXTINCTION_R[norm]
    lam = band_wavelength_nm(band)
    if lam is None:
        return None
    pts = sorted({(w, r) for b, r in EXTINCTION_R.items() if (w := band_wavelength_nm(b)) is not None})
    return float(np.interp(np.log(lam), np.log([w for w, _ in pts]), [r for _, r in pts]))


def estimate_sky_noise(images: Any, *, n: int = 256, border: int = 8, seed: int = 0) -> np.ndarray:
    """Per-band sky noise [nanomaggies/pixel] of cutouts, from the pixels of their outer frame.

    Parameters
    ----------
    images : ImageSource
        ``len(images)`` and ``images.get(indices) -> (B, C, H, W)`` (e.g. the training set).
    n : int
        Cutouts sampled (a seeded random subset when there are more).
    border : int
        Width of the frame [pixels] read on each side; sources sit at the centre of a cutout.
    seed : int
        Seeds the subset.

    Returns
    -------
    ndarray, shape (C,)
        The median over cutouts of ``1.4826 * MAD`` of each band's frame pixels (NaN ignored).

    Raises
    ------
    LenscatError
        No cutouts, cutouts too small for the frame, or a band without measurable noise
        (a constant or empty frame).
    """
    total = len(images)
    if total < 1:
        raise LenscatError("no cutouts to measure the sky noise on")
    rng = np.random.default_rng(seed)
    idx = np.arange(total) if total <= n else np.sort(rng.choice(total, size=n, replace=False))
    sigmas: list[np.ndarray] = []
    for i in range(0, len(idx), 64):
        batch = np.asarray(images.get(idx[i : i + 64]), dtype=np.float64)
        if batch.ndim != 4 or min(batch.shape[2:]) <= 2 * border:
            raise LenscatError(
                f"cutouts of shape {batch.shape[1:]} are too small to measure the sky noise in a {border}-pixel frame"
            )
        frame = np.ones(batch.shape[2:], dtype=bool)
        frame[border:-border, border:-border] = False
        pix = batch[:, :, frame]  # (B, C, n_frame)
        med = np.nanmedian(pix, axis=2, keepdims=True)
        sigmas.append(1.4826 * np.nanmedian(np.abs(pix - med), axis=2))
    per_band: np.ndarray = np.nanmedian(np.concatenate(sigmas), axis=0)
    bad = [str(b) for b in np.flatnonzero(~(np.isfinite(per_band) & (per_band > 0)))]
    if bad:
        raise LenscatError(
            f"cannot measure the sky noise of band(s) {', '.join(bad)} (0-based): the cutout "
            "borders are constant or empty"
        )
    return per_band


@dataclass
class BandOptions:
    """What :func:`image_training_options` chose for a set of bands.

    Attributes
    ----------
    bands : list of str
        The survey's bands, in channel order.
    encoder_hparams : dict
        Extra :func:`~lenscat.models.resnet.build_encoder` options (``in_chans``); empty for
        DECaLS g, r, z.
    augment : dict or None
        :class:`~lenscat.models.augment.AugmentConfig` fields; None for Stein et al.'s defaults.
    scales : list of float or None
        Arcsinh scales per band [nanomaggies]; None for the DECaLS defaults.
    notes : list of str
        One line per choice, for the user.
    """

    bands: list[str]
    encoder_hparams: dict[str, Any] = field(default_factory=dict)
    augment: dict[str, Any] | None = None
    scales: list[float] | None = None
    notes: list[str] = field(default_factory=list)

    def preprocess(self, crop: int) -> dict[str, Any]:
        """Preprocessing fields for a ``crop``-pixel input."""
        return {"crop": int(crop), **({"scales": self.scales} if self.scales is not None else {})}


def image_training_options(
    bands: Sequence[str], images: Any, *, seed: int = 0, shape: Sequence[int] | None = None
) -> BandOptions:
    """Channels, stretch scales and augmentations for training on cutouts with ``bands``.

    Parameters
    ----------
    bands : sequence of str
        The survey's band names in channel order; empty when the survey did not name them
        (then three channels are taken to be g, r, z).
    images : ImageSource
        The training cutouts (their channel count must match ``bands``).
    seed : int
        Seeds the sample of cutouts the noise is measured on.
    shape : sequence of int, optional
        ``(B, C, H, W)`` of a batch already read (saves reading one cutout for the channel count).

    Returns
    -------
    BandOptions

    Raises
    ------
    LenscatError
        No measurable sky noise in some band. (Band names that do not match the channel count
        are ignored, with a note: three unnamed channels are g, r, z.)
    """
    nb = int((shape if shape is not None else np.asarray(images.get(np.array([0], dtype=np.int64))).shape)[1])
    names = [str(b) for b in bands]
    ignored = []
    if names and len(names) != nb:
        ignored = [f"{len(names)} band name(s) ({', '.join(names)}) for {nb} cutout channel(s): names ignored"]
        names = []
    if not names and nb == 3:
        names = list(DECALS_BANDS)
    if [normalise_band(b, strict=True) for b in names] == list(DECALS_BANDS):
        return BandOptions(names, notes=[*ignored, "bands g, r, z: Stein et al.'s DECaLS augmentations and stretch"])
    label = ", ".join(names) if names else f"{nb} unnamed"
    sigma = estimate_sky_noise(images, seed=seed)
    r_b = [extinction_coefficient(b) for b in names] if names else [None] * nb
    augment: dict[str, Any] = {"blur": False, "noise": "fixed", "noise_sigma": [float(s) for s in sigma]}
    notes = [
        *ignored,
        f"bands {label}: sky noise measured on the cutout borders "
        + ", ".join(f"{b} {s:.3g}" for b, s in zip(names or range(nb), sigma, strict=True))
        + " nanomaggies/pixel (the arcsinh scales and the extra noise)",
        "extra PSF blur off (its seeing model is DECaLS g, r, z)",
    ]
    if all(r is not None for r in r_b):
        augment.update(reddening=True, extinction=[float(r) for r in r_b if r is not None])
        notes.append(
            "re-reddening with A_b/E(B-V) " + ", ".join(f"{b} {r:.3f}" for b, r in zip(names, r_b, strict=True))
        )
    elif not names:
        augment["reddening"] = False
        notes.append("re-reddening off: the cutout channels are not named (ingest the survey with its bands named)")
    else:
        unknown = [b for b, r in zip(names, r_b, strict=True) if r is None]
        augment["reddening"] = False
        notes.append(f"re-reddening off: no extinction coefficient for band(s) {', '.join(unknown)}")
    return BandOptions(names, {"in_chans": nb}, augment, [float(s) for s in sigma], notes)
