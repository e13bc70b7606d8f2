"""The SDSS/BOSS ``spec-PLATE-MJD-FIBER`` reader (format ``sdss-spec``) and the SDSS pixel masks.

``sdss-spec``
    SDSS/BOSS ``spec-PLATE-MJD-FIBER.fits``: HDU ``COADD`` (flux, loglam, ivar, and_mask, sky,
    model) and, when present, HDU ``SPECOBJ`` (``SPALL`` in SDSS-V files) for ids and redshift.

The BOSS plate files (``boss-spplate``) are read by :mod:`lenscat.spectra.readers_boss`, which shares
this module's pixel mask bits and :func:`estimate_ivar`.

Masked pixels (SPPIXMASK bits in :data:`SPPIXMASK_REJECT`) end as ``ivar = 0``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits
from scipy.ndimage import median_filter

from lenscat.spectra.reader_table import register_reader
from lenscat.spectra.readers_fits import (
    SpectrumReadError,
    _check_wave,
    _clean,
    _columns,
    _find_hdu,
    _float,
    _hdus,
    _int,
    _pick,
    _read_fields,
    _require_hdu,
    _str,
)
from lenscat.spectra.spectrum import Spectrum

#: SPPIXMASK bit numbers (idlspec2d ``sdssMaskbits.par``)
SPPIXMASK_BITS: dict[str, int] = {
    "NOPLUG": 0,
    "BADTRACE": 1,
    "BADFLAT": 2,
    "BADARC": 3,
    "MANYBADCOLUMNS": 4,
    "MANYREJECTED": 5,
    "LARGESHIFT": 6,
    "BADSKYFIBER": 7,
    "NEARWHOPPER": 8,
    "WHOPPER": 9,
    "SMEARIMAGE": 10,
    "SMEARHIGHSN": 11,
    "SMEARMEDSN": 12,
    "NEARBADPIXEL": 16,
    "LOWFLAT": 17,
    "FULLREJECT": 18,
    "PARTIALREJECT": 19,
    "SCATTEREDLIGHT": 20,
    "CROSSTALK": 21,
    "NOSKY": 22,
    "BRIGHTSKY": 23,
    "NODATA": 24,
    "COMBINEREJ": 25,
    "BADFLUXFACTOR": 26,
    "BADSKYCHI": 27,
    "REDMONSTER": 28,
}


#: and_mask bits that set ``ivar = 0`` by default. The fiber-level failures (no plug, bad trace,
#: flat or arc, many bad columns or rejected pixels, a whopping fiber) and the pixel-level
#: rejections (FULLREJECT, NOSKY, NODATA, COMBINEREJ, BADFLUXFACTOR, BADSKYCHI), plus BRIGHTSKY:
#: bright-sky residuals are the classic false emission line. Not rejected: informational or mild
#: bits (LARGESHIFT, BADSKYFIBER, NEARWHOPPER, SMEAR*, NEARBADPIXEL, LOWFLAT, PARTIALREJECT,
#: SCATTEREDLIGHT, CROSSTALK, REDMONSTER). The and_mask (set in every exposure) is used, not the
#: or_mask, as the idlspec2d documentation recommends.
SPPIXMASK_REJECT: frozenset[str] = frozenset(
    {
        "NOPLUG",
        "BADTRACE",
        "BADFLAT",
        "BADARC",
        "MANYBADCOLUMNS",
        "MANYREJECTED",
        "WHOPPER",
        "FULLREJECT",
        "NOSKY",
        "BRIGHTSKY",
        "NODATA",
        "COMBINEREJ",
        "BADFLUXFACTOR",
        "BADSKYCHI",
    }
)


#: the integer mask of :data:`SPPIXMASK_REJECT`
SPPIXMASK_REJECT_VALUE: int = sum(1 << SPPIXMASK_BITS[n] for n in SPPIXMASK_REJECT)


_SPEC_NAME = re.compile(r"^spec-(\d+)-(\d+)-(\d+)", re.IGNORECASE)


def estimate_ivar(flux: np.ndarray, window: int = 101) -> np.ndarray:
    """Inverse variance from the pixel-to-pixel scatter, for files that carry none.

    The noise sigma at each pixel is ``1.4826 * median(|f[i+1] - f[i]|) / sqrt(2)`` over a running
    window of ``window`` pixels (the median absolute first difference, robust to lines and
    outliers; first differences remove the continuum). Pixels with non-finite or exactly zero flux
    (no data) are left out and get ``ivar = 0``.

    Parameters
    ----------
    flux : numpy.ndarray
        One spectrum, 1-D.
    window : int
        Running-median width [pixels].

    Returns
    -------
    numpy.ndarray
        float32 inverse variance, same length as ``flux``.
    """
    f = np.asarray(flux, dtype=np.float64)
    out = np.zeros(f.shape, dtype=np.float32)
    good = np.isfinite(f) & (f != 0.0)
    fg = f[good]
    if fg.size < 5:
        return out
    ad = np.abs(np.diff(fg))
    md = median_filter(ad, size=max(min(window, ad.size) | 1, 1), mode="nearest")
    med = np.empty(fg.size)
    med[0], med[-1] = md[0], md[-1]
    med[1:-1] = 0.5 * (md[:-1] + md[1:])  # a pixel sits between two differences
    sigma = 1.4826 * med / np.sqrt(2.0)
    with np.errstate(divide="ignore"):
        iv = np.where(sigma > 0, 1.0 / (sigma * sigma), 0.0)
    out[good] = iv
    return out


_SPECOBJ_FIELDS: dict[str, tuple[str, ...]] = {
    "plate": ("PLATE", "FIELD"),
    "mjd": ("MJD",),
    "fiber": ("FIBERID", "FIBER"),
    "ra": ("PLUG_RA", "FIBER_RA", "RA"),
    "dec": ("PLUG_DEC", "FIBER_DEC", "DEC"),
    "z": ("Z",),
    "z_err": ("Z_ERR",),
    "class": ("CLASS",),
    "subclass": ("SUBCLASS",),
    "vdisp": ("VDISP",),
    "vdisp_err": ("VDISP_ERR",),
    "zwarning": ("ZWARNING",),
    "sdss_survey": ("SURVEY",),
    "run2d": ("RUN2D",),
}


def _sdss_wave(loglam: np.ndarray, hdr0: Any) -> np.ndarray:
    """Vacuum wavelengths from a coadd's (float32) loglam column, exact on the log10 grid.

    float32 loglam near 3.6 is good to ~2e-7 dex (0.002 px), so ``10**loglam`` is not exactly on
    the BOSS grid; when COEFF0 + COEFF1 i reproduces loglam (or loglam rounds to a 1e-4 grid), the
    exact float64 grid is used instead.
    """
    ll = np.asarray(loglam, dtype=np.float64)
    i = np.arange(ll.size, dtype=np.float64)
    c0, c1 = _float(hdr0.get("COEFF0")), _float(hdr0.get("COEFF1"))
    if c0 is not None and c1 is not None and c1 > 0 and ll.size:
        exact = c0 + c1 * i
        if np.max(np.abs(exact - ll)) < 1e-5:
            return np.asarray(10.0**exact)
    if ll.size > 1:
        k = ll * 1e4
        kr = np.rint(k)
        if np.all(np.abs(k - kr) < 0.05) and np.all(np.diff(kr) == 1):
            return np.asarray(10.0 ** ((kr[0] + i) * 1e-4))
    return np.asarray(10.0**ll)


def _read_sdss_spec(h: fits.HDUList, path: Path) -> Spectrum:
    coadd = _require_hdu(h, path, ("COADD",))
    cols = _columns(coadd)
    need = {}
    for key in ("flux", "loglam", "ivar"):
        name = _pick(cols, (key,))
        if name is None:
            raise SpectrumReadError(path, f"missing column {key} in HDU {coadd.name}")
        need[key] = name
    for key in ("and_mask", "sky", "model"):
        name = _pick(cols, (key,))
        if name is not None:
            need[key] = name
    arr = _read_fields(path, coadd, need.values())
    v = {k: arr[n] for k, n in need.items()}
    wave = _sdss_wave(v["loglam"], h[0].header)
    _check_wave(path, wave)
    ivar = np.array(v["ivar"], dtype=np.float32)
    if "and_mask" in v:
        ivar[(v["and_mask"].astype(np.int64) & SPPIXMASK_REJECT_VALUE) != 0] = 0.0
    flux, ivar, (sky, model) = _clean(v["flux"], ivar, v.get("sky"), v.get("model"))

    info: dict[str, Any] = {}
    obj = _find_hdu(h, ("SPECOBJ", "SPALL"))
    if obj is not None:
        ocols = _columns(obj)
        picks = {k: n for k, a in _SPECOBJ_FIELDS.items() if (n := _pick(ocols, a)) is not None}
        if int(obj.header.get("NAXIS2", 0)) >= 1 and picks:
            vals = _read_fields(path, obj, picks.values())
            info = {k: vals[n][0] for k, n in picks.items()}
    m = _SPEC_NAME.match(path.name)
    plate, mjd, fiber = (_int(info.get(k)) for k in ("plate", "mjd", "fiber"))
    if m is not None:
        plate = plate if plate is not None else int(m.group(1))
        mjd = mjd if mjd is not None else int(m.group(2))
        fiber = fiber if fiber is not None else int(m.group(3))
    if plate is None or mjd is None or fiber is None:
        where = "HDU SPECOBJ" if obj is not None else "a SPECOBJ HDU"
        raise SpectrumReadError(path, f"no PLATE/MJD/FIBERID in {where} nor in the file name")
    meta: dict[str, Any] = {"model_source": None}
    if model is None:
        meta["model_note"] = f"no model column in HDU {coadd.name}"
    elif not np.any(model):
        model = None
        meta["model_note"] = f"the model column of HDU {coadd.name} is all zero"
    else:
        meta["model_source"] = "sdss-model"
    for k in ("vdisp", "vdisp_err"):
        if (f := _float(info.get(k))) is not None:
            meta[k] = f
    if (zw := _int(info.get("zwarning"))) is not None:
        meta["zwarning"] = zw
    for k in ("sdss_survey", "run2d"):
        if (s := _str(info.get(k))) is not None:
            meta[k] = s
    return Spectrum(
        survey="sdss",
        wave=wave,
        flux=flux,
        ivar=ivar,
        model=model,
        sky=sky,
        ra=_float(info.get("ra")),
        dec=_float(info.get("dec")),
        z=_float(info.get("z")),
        z_err=_float(info.get("z_err")),
        spec_class=_str(info.get("class")),
        subclass=_str(info.get("subclass")),
        plate=plate,
        mjd=mjd,
        fiber=fiber,
        path=str(path.absolute()),
        index=0,
        meta=meta,
    )


def _is_spplate(h: fits.HDUList) -> bool:
    hdr0 = h[0].header
    return int(hdr0.get("NAXIS", 0)) == 2 and "COEFF0" in hdr0 and "COEFF1" in hdr0


def _is_sdss_spec(h: fits.HDUList) -> bool:
    # an spPlate is told by its primary header alone: never scan its HDUs
    return not _is_spplate(h) and any((hdu.name or "").strip().upper() == "COADD" for _, hdu in _hdus(h))


def _read_sdss_spec_file(h: fits.HDUList, path: Path) -> list[Spectrum]:
    return [_read_sdss_spec(h, path)]


register_reader(
    "sdss-spec", label="SDSS spec", detect=_is_sdss_spec, read=_read_sdss_spec_file, file_name=_SPEC_NAME, order=10
)
