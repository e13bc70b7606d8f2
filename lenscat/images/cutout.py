"""The :class:`Cutout` record and band bookkeeping shared by the cutout readers, resampling and RGB.

Band names are normalised to short forms: optical ``u g r i z y`` (lower case, whatever the survey
prefix: ``DECAM_g``, ``DES_G``, PS1 ``g.00000`` -> ``g``), near-infrared ``Y J H K`` (upper case,
Euclid ``NIR_Y`` -> ``Y``), ``VIS`` (Euclid), and HST/JWST filter names as written (``F814W``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import astropy.units as u
import numpy as np

from lenscat.errors import LenscatError

__all__ = [
    "BAND_WAVELENGTH_NM",
    "DEFAULT_BANDS",
    "DEFAULT_PIXEL_SCALE",
    "Cutout",
    "band_wavelength_nm",
    "coord_from_name",
    "nearest_band",
    "normalise_band",
]

DEFAULT_BANDS: tuple[str, ...] = ("g", "r", "z")
DEFAULT_PIXEL_SCALE = 0.262
"""Legacy Surveys / Stein et al. (2022) pixel scale, arcsec per pixel."""

BAND_WAVELENGTH_NM: dict[str, float] = {
    "u": 360.0,
    "g": 480.0,
    "r": 630.0,
    "i": 770.0,
    "z": 900.0,
    "y": 960.0,
    "VIS": 715.0,
    "Y": 1050.0,
    "J": 1250.0,
    "H": 1650.0,
    "K": 2200.0,
    "Ks": 2150.0,
}
"""Rough effective wavelengths (nm) used only to pick the nearest band when one is missing."""

_OPTICAL = {"u", "g", "r", "i", "z", "y"}
_NIR = {"Y", "J", "H", "K", "Ks"}
_HST_FILTER = re.compile(r"F\d{3,4}(?:W2|LP|[WLMNX])")


@dataclass
class Cutout:
    """One multi-band image cutout.

    Attributes
    ----------
    data : ndarray, shape (bands, H, W), float32
        Pixel values (flux per pixel), NaN replaced by 0 by the FITS reader.
    bands : list of str
        Band names in the order of ``data`` (normalised, see the module docstring).
    pixel_scale : Quantity
        Pixel scale, arcsec per pixel (the mean of the two axes).
    wcs : astropy.wcs.WCS or None
        Celestial WCS of ``data``'s pixels (FITS convention: row 0 at the bottom), if known.
    unit : str
        ``'nanomaggy'`` when the values are (or were converted to) nanomaggies, else the file's
        ``BUNIT`` (or ``'counts'``): relative units, fine for shape and colour comparisons.
    source : str
        Where it came from: path(s) and row or HDU names.
    psf : dict of str to ndarray, or None
        Point-spread function image per band when the file has one (Euclid Q1). A dict rather than
        one array because the PSF stamps differ in size between bands (49, 21 and 33 px in Q1).
    meta : dict
        Extras: per-band nanomaggy factors (``'nmgy_factor'``), the band mapping a resample used
        (``'band_map'``), the target pixel, and so on.
    """

    data: np.ndarray
    bands: list[str]
    pixel_scale: u.Quantity
    wcs: Any = None
    unit: str = "nanomaggy"
    source: str = ""
    psf: dict[str, np.ndarray] | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        arr = np.asarray(self.data)
        if arr.ndim == 2:
            arr = arr[None]
        if arr.ndim != 3:
            raise LenscatError(f"a cutout is (bands, H, W); got shape {arr.shape} ({self.source})")
        if arr.dtype != np.float32:
            arr = arr.astype(np.float32)
        self.data = arr
        self.bands = [str(b) for b in self.bands]
        if len(self.bands) != arr.shape[0]:
            raise LenscatError(f"{len(self.bands)} band names for {arr.shape[0]} image planes ({self.source})")
        if not isinstance(self.pixel_scale, u.Quantity):
            self.pixel_scale = float(self.pixel_scale) * u.arcsec

    @property
    def shape(self) -> tuple[int, int]:
        """(H, W) in pixels."""
        return int(self.data.shape[1]), int(self.data.shape[2])

    def band(self, name: str) -> np.ndarray:
        """The (H, W) image of one band (exact name)."""
        if name not in self.bands:
            raise LenscatError(f"no band {name!r} in {self.source or 'the cutout'} (have {', '.join(self.bands)})")
        plane: np.ndarray = self.data[self.bands.index(name)]
        return plane

    def centre_coord(self) -> Any:
        """Sky position (SkyCoord) of the geometric centre pixel ((W-1)/2, (H-1)/2), or None."""
        if self.wcs is None:
            return None
        h, w = self.shape
        return self.wcs.pixel_to_world((w - 1) / 2, (h - 1) / 2)


def normalise_band(text: str | None, *, strict: bool = False) -> str | None:
    """Short band name from a FILTER value, HDU name or file-name token.

    Parameters
    ----------
    text
        E.g. ``'g.00000'`` (PS1), ``'DECAM_g'``, ``'DES_G'``, ``'NIR_Y'``, ``'VIS'``, ``'F814W'``,
        ``'SDSSJ1430_6104_PS1_g'`` (a file stem).
    strict
        If true, return None unless a known band is recognised (for file names); otherwise the
        stripped text is returned as the band name.

    Returns
    -------
    str or None
        ``'g'``, ``'Y'``, ``'VIS'``, ``'F814W'``, ...
    """
    if text is None:
        return None
    t = str(text).strip()
    if not t:
        return None
    m = _HST_FILTER.search(t.upper())
    if m:
        return m.group(0)
    tokens = [x for x in re.split(r"[\s_.\-:/]+", t) if x]
    for tok in reversed(tokens):
        if tok in _OPTICAL or tok in _NIR:
            return tok
        if tok.upper() == "VIS":
            return "VIS"
        if tok in ("U", "G", "R", "I", "Z"):
            return tok.lower()
    return None if strict else t


def band_wavelength_nm(band: str) -> float | None:
    """Rough effective wavelength of a band name in nm (HST ``F814W`` -> 814), or None if unknown.

    HST names in units of 10 nm below F200 (WFC3/IR ``F160W`` -> 1600 nm) follow the HST convention;
    JWST NIRCam long-wavelength names (``F277W``) are not distinguished and read as 277 nm.
    """
    if band in BAND_WAVELENGTH_NM:
        return BAND_WAVELENGTH_NM[band]
    norm = normalise_band(band, strict=True)
    if norm is not None and norm in BAND_WAVELENGTH_NM:
        return BAND_WAVELENGTH_NM[norm]
    m = re.fullmatch(r"F(\d{3,4})\D*", band.upper())
    if m:
        nm = int(m.group(1))
        return float(nm * 10 if nm < 200 else nm)
    return None


def nearest_band(want: str, have: list[str]) -> int:
    """Index in ``have`` of band ``want``, or of the band nearest in wavelength when it is missing.

    Exact names win; then a case-insensitive match among optical letters (``G`` = ``g``); then the
    nearest effective wavelength (:data:`BAND_WAVELENGTH_NM`, HST ``FnnnW`` names), e.g. ``r`` from
    a Pan-STARRS ``grizy`` set is ``r`` but from an HST F814W image it is F814W, and ``z`` from Euclid
    ``g r VIS i z Y J H`` is ``z``. Raises LenscatError if neither name nor wavelength is known.
    """
    if want in have:
        return have.index(want)
    norm = normalise_band(want)
    if norm in have:
        return have.index(norm)
    w = band_wavelength_nm(want)
    known = [band_wavelength_nm(h) for h in have]
    if w is None or all(k is None for k in known):
        raise LenscatError(
            f"no band {want!r} in the cutout and no wavelength to pick the nearest (have {', '.join(have)})"
        )
    dist = [abs(np.log(k / w)) if k is not None else np.inf for k in known]
    return int(np.argmin(dist))


_NAME_LONG = re.compile(r"J(\d{2})(\d{2})(\d{2}(?:[._]\d+)?)([+\-_])(\d{2})(\d{2})(\d{2}(?:[._]\d+)?)")
_NAME_SHORT = re.compile(r"J(\d{2})(\d{2})([+\-_])(\d{2})(\d{2})(?!\d)")


def coord_from_name(name: str) -> Any:
    """Sky position from an IAU-style name (``J120540.43+491029.3``; ``_`` may stand for ``.`` or ``+``).

    ``J120540_43_491029_3`` and ``SDSSJ101129_49_014323_3`` (as in the Pan-STARRS file names) read
    as J120540.43+491029.3 and J101129.49+014323.3. Short names (``SDSSJ1430+6104``) are truncated
    coordinates, good only to about an arcminute. Returns an ICRS SkyCoord, or None.
    """
    from astropy.coordinates import SkyCoord

    m = _NAME_LONG.search(name)
    if m:
        hh, mm, ss, sign, dd, dm, ds = m.groups()
        ss, ds = ss.replace("_", "."), ds.replace("_", ".")
        sgn = "-" if sign == "-" else "+"
        return SkyCoord(f"{hh}h{mm}m{ss}s", f"{sgn}{dd}d{dm}m{ds}s", frame="icrs")
    m = _NAME_SHORT.search(name)
    if m:
        hh, mm, sign, dd, dm = m.groups()
        sgn = "-" if sign == "-" else "+"
        return SkyCoord(f"{hh}h{mm}m0s", f"{sgn}{dd}d{dm}m0s", frame="icrs")
    return None
