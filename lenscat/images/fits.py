"""Read FITS image cutouts (with a WCS) into a :class:`~lenscat.images.cutout.Cutout`.

Layouts understood by :func:`read_fits_cutout`:

* one file per band, e.g. Pan-STARRS ``NAME_PS1_g.fits``, ordered by wavelength (band from the
  ``FILTER``/``BAND``/PS1 ``FPA.FILTER`` header, else from the file name);
* one file with an image HDU per band, e.g. Euclid Q1 ``DES_G_BGSUB``, ``DES_G_PSF``, ``DES_G_RMS``,
  ... (image HDUs are those whose name does not end in PSF, RMS, WHT, ERR, IVAR, MASK, ...;
  ``<PREFIX>_PSF`` becomes the PSF of band ``<PREFIX>``);
* one band in an HDU named ``SCI`` (HST drizzled products; other HDUs are ignored);
* a 3-D cube (bands, H, W) in one HDU with ``BAND0``, ``BAND1``, ... or ``BANDS`` keys
  (Legacy Surveys ``fits-cutout`` files).

Pixel values are converted to nanomaggies (AB 22.5) when the header gives a zero point:
``MAGZERO``/``MAGZPT``/``ZEROPT``/``PHOTZP`` (AB, Euclid: 30.0 for DES bands, 24.6 for VIS);
Pan-STARRS stacks: ``FPA.ZP`` + 2.5 log10(``EXPTIME``) (the stack is in counts summed over
``EXPTIME``; ``BSOFTEN``/``BOFFSET`` asinh-compressed values are linearised first); HST: the AB zero
point from ``PHOTFLAM`` and ``PHOTPLAM`` (-2.5 log10 PHOTFLAM - 5 log10 PHOTPLAM - 2.408) for
electrons/s (divided by ``EXPTIME`` first when ``BUNIT`` is electrons or counts); ``BUNIT``
nanomaggy, or a Legacy Surveys header. Otherwise the values stay in the file's units and
:attr:`Cutout.unit` says so (similarity search only needs shapes and colours up to a scale, but
colours are then only right if every band has the same unit).
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import astropy.units as u
import numpy as np

from lenscat.errors import InputFileError, LenscatError
from lenscat.images.cutout import Cutout, band_wavelength_nm, normalise_band

__all__ = ["nanomaggy_factor", "read_fits_cutout"]

_NOT_IMAGE = (
    "PSF",
    "RMS",
    "WHT",
    "WEIGHT",
    "ERR",
    "ERROR",
    "IVAR",
    "INVVAR",
    "VAR",
    "VARIANCE",
    "MASK",
    "DQ",
    "FLAG",
    "FLAGS",
    "NOISE",
    "MODEL",
    "RESID",
    "CHI",
    "EXP",
    "EXPMAP",
    "CTX",
    "CON",
    "BKG",
    "BACK",
    "BACKGROUND",
    "SIGMA",
    "HDRTAB",
)
_AB_ZP_KEYS = ("MAGZERO", "MAGZPT", "ZEROPT", "PHOTZP", "MAGZP", "ZPAB")
_NMGY_UNITS = {"nanomaggy", "nanomaggies", "nmgy", "nanomaggie"}
_PS_KEYS = ("PIXSCALE", "PIXSCAL1", "SECPIX", "SECPIX1", "PIXSCAL")


def _card(header: Any, key: str) -> Any:
    """A header value, ``HIERARCH`` keys included (``FPA.ZP``), or None."""
    for k in (key, f"HIERARCH {key}"):
        try:
            if k in header:
                return header[k]
        except (KeyError, ValueError):
            continue
    return None


def _float(value: Any) -> float | None:
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def nanomaggy_factor(header: Any) -> float | None:
    """Factor turning pixel values into nanomaggies (AB zero point 22.5), or None if unknown.

    Parameters
    ----------
    header
        The image HDU's header with the primary header's cards merged in (extension wins).

    Returns
    -------
    float or None
        ``10**(-0.4 (ZP - 22.5))`` for the header's AB zero point ZP (see the module docstring for
        the keywords read), 1.0 for a nanomaggy ``BUNIT`` or a Legacy Surveys header.
    """
    bunit = str(_card(header, "BUNIT") or "").strip()
    if bunit.lower() in _NMGY_UNITS:
        return 1.0
    if "legacy" in str(_card(header, "SURVEY") or "").lower():
        return 1.0  # Legacy Surveys images and fits-cutouts are in nanomaggies
    for key in _AB_ZP_KEYS:
        zp = _float(_card(header, key))
        if zp is not None:
            return float(10 ** (-0.4 * (zp - 22.5)))
    zp = _float(_card(header, "FPA.ZP"))
    if zp is not None:  # Pan-STARRS stack: counts summed over EXPTIME, ZP per second
        ps1_exptime = _float(_card(header, "EXPTIME")) or 1.0
        return float(10 ** (-0.4 * (zp + 2.5 * math.log10(ps1_exptime) - 22.5)))
    flam, plam = _float(_card(header, "PHOTFLAM")), _float(_card(header, "PHOTPLAM"))
    if flam and plam and flam > 0 and plam > 0:
        abzp = -2.5 * math.log10(flam) - 5 * math.log10(plam) - 2.408
        factor = 10 ** (-0.4 * (abzp - 22.5))
        if bunit and "/S" not in bunit.upper().replace(" ", "") and bunit.upper() in ("ELECTRONS", "COUNTS"):
            exptime = _float(_card(header, "EXPTIME"))
            if not exptime:
                return None
            factor /= exptime
        return float(factor)
    return None


def _linearise(data: np.ndarray, header: Any) -> np.ndarray:
    """Undo Pan-STARRS' asinh compression (``BSOFTEN``, ``BOFFSET``) if the header uses it."""
    soften, offset = _float(_card(header, "BSOFTEN")), _float(_card(header, "BOFFSET"))
    if soften is None or offset is None:
        return data
    a = 2.5 / math.log(10)
    return (offset + soften * 2 * np.sinh(data.astype(np.float64) / a)).astype(np.float32)


def _merged(primary: Any, header: Any) -> Any:
    """The extension header with the primary header's cards it lacks (FITS INHERIT convention)."""
    if primary is header:
        return header
    out = header.copy()
    for card in primary.cards:
        key = card.keyword
        if (
            key
            and key not in ("COMMENT", "HISTORY", "")
            and key not in out
            and not key.startswith("NAXIS")
            and key not in ("SIMPLE", "BITPIX", "EXTEND", "XTENSION", "PCOUNT", "GCOUNT")
        ):
            try:
                out[key] = card.value
            except (ValueError, KeyError):
                continue
    return out


def _hdu_kind(name: str) -> str:
    """'image' or 'aux' (PSF, RMS, weights, masks ...) from an HDU name."""
    n = name.upper()
    last = re.split(r"[_\-.\s]+", n)[-1] if n else ""
    return "aux" if last in _NOT_IMAGE or n in _NOT_IMAGE else "image"


def _prefix(name: str) -> str:
    """HDU name without a trailing image/aux qualifier (``DES_G_BGSUB`` -> ``DES_G``)."""
    n = name.upper()
    for suf in ("_BGSUB", "_SCI", "_IMAGE", "_IMG", "_FLUX", "_DATA", "_PSF", "_RMS", "_WHT"):
        if n.endswith(suf):
            return n[: -len(suf)]
    return n


def _cube_bands(header: Any, n: int) -> list[str | None]:
    names: list[str | None] = []
    bands_key = str(_card(header, "BANDS") or "").strip()
    for i in range(n):
        b = _card(header, f"BAND{i}")
        if b is not None:
            names.append(normalise_band(str(b)))
        elif len(bands_key.replace(",", "").replace(" ", "")) == n:
            names.append(normalise_band(bands_key.replace(",", "").replace(" ", "")[i]))
        else:
            names.append(None)
    return names


def _celestial_wcs(header: Any) -> Any:
    from astropy.wcs import WCS, FITSFixedWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        try:
            w = WCS(header)
        except Exception:  # noqa: BLE001 - a broken WCS is treated as no WCS
            return None
    return w.celestial if w.has_celestial else None


def _file_band(path: Path, header: Any, hdu_name: str) -> str | None:
    for key in ("FILTER", "BAND", "FILTNAM1", "FPA.FILTER", "FILTER1", "FILTER2", "PHOTMODE"):
        val = _card(header, key)
        if val is None or not str(val).strip() or "CLEAR" in str(val).upper():
            continue
        return normalise_band(str(val), strict=key in ("PHOTMODE",)) or str(val).strip()
    if hdu_name and hdu_name not in ("PRIMARY", "SCI"):
        b = normalise_band(_prefix(hdu_name), strict=True)
        if b:
            return b
    stem = path.name
    for suffix in (".fits.fz", ".fits.gz", ".fits", ".fit", ".fz", ".fts"):
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    return normalise_band(stem, strict=True)


def read_fits_cutout(
    paths: str | Path | Sequence[str | Path],
    bands: Sequence[str] | None = None,
    *,
    pixel_scale: u.Quantity | float | None = None,
    to_nanomaggies: bool = True,
) -> Cutout:
    """A multi-band cutout from FITS file(s).

    Parameters
    ----------
    paths
        One file (an image HDU per band, a single band in ``SCI`` or the primary HDU, or a
        (bands, H, W) cube), or one file per band (any order). A band found twice is an error.
    bands
        Keep these bands in this order (exact normalised names, e.g. ``['g', 'r', 'z']``); default
        all: in HDU order for one file, by wavelength for a set of per-band files.
    pixel_scale
        Arcsec per pixel (Quantity or float) to use instead of the WCS; needed for a file without
        a WCS and without a ``PIXSCALE``/``SECPIX`` keyword.
    to_nanomaggies
        Convert to nanomaggies where the header gives a zero point (default); if false, keep the
        file's values.

    Returns
    -------
    Cutout
        ``data`` (bands, H, W) float32 with NaN/inf set to 0 (their count is ``meta['n_bad']``),
        the first band's celestial WCS, pixel scale from the WCS (``proj_plane_pixel_scales``,
        mean of both axes), ``unit`` ``'nanomaggy'`` if every band was converted, otherwise the
        distinct units joined by ``','``; ``psf`` per band when the file has ``<PREFIX>_PSF``
        HDUs (or a ``PSF`` HDU beside a single image); ``meta['nmgy_factor']`` per band.

    Raises
    ------
    InputFileError
        A file is missing or unreadable, has no 2-D image, bands differ in shape or are misaligned
        by more than a pixel, a band appears twice, or no pixel scale is known.
    LenscatError
        A requested band is not in the files.
    """
    from astropy.io import fits
    from astropy.wcs.utils import proj_plane_pixel_scales

    files = [Path(paths)] if isinstance(paths, str | Path) else [Path(p) for p in paths]
    if not files:
        raise LenscatError("no FITS file given")
    planes: list[np.ndarray] = []
    names: list[str] = []
    where: list[str] = []
    wcss: list[Any] = []
    units: list[str] = []
    factors: list[float | None] = []
    psf: dict[str, np.ndarray] = {}
    header_ps: float | None = None
    for path in files:
        if not path.is_file():
            raise InputFileError(f"{path}: file not found")
        try:
            hdul = fits.open(path, memmap=False)
        except (OSError, ValueError) as exc:
            raise InputFileError(f"{path}: not a readable FITS file: {exc}") from exc
        with hdul, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # astropy's VerifyWarning on odd legacy cards
            try:
                hdul.verify("silentfix")
                hdus = [
                    (i, h, (h.name or "").upper())
                    for i, h in enumerate(hdul)
                    if h.is_image and h.data is not None and h.data.ndim in (2, 3)
                ]
            except (OSError, ValueError, TypeError) as exc:
                raise InputFileError(f"{path}: cannot read its HDUs: {exc}") from exc
            primary = hdul[0].header
            sci = [t for t in hdus if t[2] == "SCI"]
            images = sci or [t for t in hdus if _hdu_kind(t[2]) == "image"]
            if not images:
                raise InputFileError(f"{path}: no 2-D image HDU (found {', '.join(t[2] for t in hdus) or 'none'})")
            aux = {t[2]: t[1] for t in hdus if _hdu_kind(t[2]) == "aux"}
            for i, h, name in images:
                hdr = _merged(primary, h.header)
                data = np.asarray(h.data)
                cube = data.ndim == 3
                if cube and data.shape[0] == 1:
                    data, cube = data[0], False
                layer_names = _cube_bands(hdr, data.shape[0]) if cube else [_file_band(path, hdr, name)]
                stack = data if cube else data[None]
                factor = nanomaggy_factor(hdr) if to_nanomaggies else None
                wcs = _celestial_wcs(h.header)
                for k, raw in enumerate(stack):
                    band = layer_names[k] or f"band{len(names)}"
                    plane = _linearise(np.asarray(raw, dtype=np.float32), hdr)
                    if factor is not None:
                        plane = plane * np.float32(factor)
                    if names and plane.shape != planes[0].shape:
                        raise InputFileError(
                            f"{path}: band {band} is {plane.shape[1]}x{plane.shape[0]} pixels but {names[0]} is "
                            f"{planes[0].shape[1]}x{planes[0].shape[0]} ({where[0]}); all bands must share a shape"
                        )
                    if band in names:
                        raise InputFileError(f"{path}: band {band} appears twice (also in {where[names.index(band)]})")
                    planes.append(plane)
                    names.append(band)
                    where.append(f"{path.name}[{name or i}]" + (f"[{k}]" if cube else ""))
                    wcss.append(wcs)
                    units.append("nanomaggy" if factor is not None else str(hdr.get("BUNIT", "") or "counts").strip())
                    factors.append(factor)
                    psf_hdu = aux.get(f"{_prefix(name)}_PSF") if name else None
                    if psf_hdu is None and len(images) == 1 and not cube:
                        psf_hdu = aux.get("PSF")
                    if psf_hdu is not None and psf_hdu.data is not None and psf_hdu.data.ndim == 2:
                        psf[band] = np.asarray(psf_hdu.data, dtype=np.float32)
                if header_ps is None:
                    for key in _PS_KEYS:
                        header_ps = _float(_card(hdr, key))
                        if header_ps:
                            break
    wcs0 = next((w for w in wcss if w is not None), None)
    h0, w0 = planes[0].shape
    if wcs0 is not None:  # every band must point at the same sky within a pixel
        cx, cy = (w0 - 1) / 2, (h0 - 1) / 2
        ref = wcs0.pixel_to_world(cx, cy)
        for w, nm, wh in zip(wcss, names, where, strict=True):
            if w is None or w is wcs0:
                continue
            px = w.world_to_pixel(ref)
            off = math.hypot(float(px[0]) - cx, float(px[1]) - cy)
            if off > 1.0:
                raise InputFileError(
                    f"{wh}: band {nm} is offset by {off:.1f} pixels from band {names[0]} "
                    f"({where[0]}); the bands must be aligned"
                )
    if pixel_scale is not None:
        scale = float(pixel_scale.to_value(u.arcsec)) if isinstance(pixel_scale, u.Quantity) else float(pixel_scale)
    elif wcs0 is not None:
        scale = float(np.mean(proj_plane_pixel_scales(wcs0)) * 3600.0)
    elif header_ps:
        scale = header_ps
    else:
        raise InputFileError(
            f"{files[0]}: no celestial WCS and no PIXSCALE/SECPIX keyword; the pixel scale is "
            "unknown (pass pixel_scale)"
        )
    order = list(range(len(names)))
    if len(files) > 1:  # a set of per-band files: bands by wavelength (unknown ones last, as given)
        order.sort(key=lambda i: (band_wavelength_nm(names[i]) or np.inf, i))
    if bands is not None:
        missing = [b for b in bands if b not in names]
        if missing:
            raise LenscatError(f"{files[0]}: band(s) {', '.join(missing)} not found (have {', '.join(names)})")
        order = [names.index(b) for b in bands]
    data = np.stack([planes[i] for i in order])
    bad = ~np.isfinite(data)
    n_bad = int(bad.sum())
    if n_bad:
        data[bad] = 0.0
    kept_units = {units[i] for i in order}
    unit = "nanomaggy" if kept_units == {"nanomaggy"} else ",".join(sorted(kept_units))
    kept = [names[i] for i in order]
    psfs = {b: psf[b] for b in kept if b in psf}
    return Cutout(
        data,
        kept,
        scale * u.arcsec,
        wcs0,
        unit,
        ", ".join(where[i] for i in order) if len(files) == 1 else ", ".join(str(f) for f in files),
        psfs or None,
        {"nmgy_factor": {names[i]: factors[i] for i in order}, "n_bad": n_bad, "files": [str(f) for f in files]},
    )
