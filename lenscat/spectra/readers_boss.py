"""The BOSS plate reader (format ``boss-spplate``).

BOSS ``spPlate-PLATE-MJD.fits``: HDU0 flux (nfiber, npix) with log10 lambda = COEFF0 + COEFF1 i; the
optional HDUs invvar, andmask, ormask, wavedisp, plugmap and sky are found by name or, as the format
defines them, by position 1-6. Without an inverse variance it is estimated from the pixel-to-pixel
scatter (:func:`~lenscat.spectra.readers_sdss.estimate_ivar`, ``ivar_estimated=True``). Redshifts and
models (``meta['model_source'] == 'spzbest'``) come from ``spZbest-PLATE-MJD.fits`` next to the plate
file (or one directory below) when present.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits

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
    _read_image,
    _str,
    _with_fits,
)
from lenscat.spectra.readers_sdss import SPPIXMASK_REJECT_VALUE, _is_spplate, estimate_ivar
from lenscat.spectra.spectrum import Spectrum

_SPPLATE_NAME = re.compile(r"^spPlate-(\d+)-(\d+)", re.IGNORECASE)


#: spPlate extensions: accepted EXTNAMEs and the position the format gives each
_SPPLATE_HDUS: dict[str, tuple[tuple[str, ...], int]] = {
    "ivar": (("IVAR", "INVVAR"), 1),
    "andmask": (("ANDMASK", "AND_MASK"), 2),
    "ormask": (("ORMASK", "OR_MASK"), 3),
    "wavedisp": (("WAVEDISP", "WDISP", "DISP"), 4),
    "plugmap": (("PLUGMAP",), 5),
    "sky": (("SKY",), 6),
}


def _spplate_hdu(h: fits.HDUList, kind: str, shape: tuple[int, int]) -> Any | None:
    """An optional spPlate HDU, by name, else at its format-defined position if it fits."""
    names, pos = _SPPLATE_HDUS[kind]
    hdu = _find_hdu(h, names)
    if hdu is None:
        try:
            cand = h[pos]
        except IndexError:
            return None
        known = {n for ns, _ in _SPPLATE_HDUS.values() for n in ns}
        if (cand.name or "").strip().upper() in known:
            return None  # it is another named extension
        hdu = cand
    hd = hdu.header
    if kind == "plugmap":
        ok = isinstance(hdu, fits.BinTableHDU) and int(hd.get("NAXIS2", 0)) == shape[0]
    else:
        ok = (
            not isinstance(hdu, fits.BinTableHDU)
            and int(hd.get("NAXIS", 0)) == 2
            and (int(hd.get("NAXIS2", 0)), int(hd.get("NAXIS1", 0))) == shape
        )
    return hdu if ok else None


def _find_spzbest(path: Path, plate: int, mjd: int) -> Path | None:
    base = f"spZbest-{plate:04d}-{mjd:05d}"
    stem = path.name
    for suf in (".fits.gz", ".fits"):
        if stem.endswith(suf):
            stem = stem[: -len(suf)]
            break
    tail = stem[len("spPlate") :] if stem.lower().startswith("spplate") else None
    names = ([f"spZbest{tail}.fits"] if tail else []) + [f"{base}.fits", f"{base}.fits.gz"]
    for n in names:
        if (path.parent / n).is_file():
            return path.parent / n
    for n in names:
        below = sorted(path.parent.glob(f"*/{n}"))
        if below:
            return below[0]
    return None


def _read_spzbest(zpath: Path, nfiber: int, npix: int) -> tuple[dict[int, dict[str, Any]], np.ndarray | None]:
    """Per-fiber redshift info keyed by FIBERID (or row + 1) and the model array, if any."""

    def read(h: fits.HDUList) -> tuple[dict[int, dict[str, Any]], np.ndarray | None]:
        tab = None
        for _, hdu in _hdus(h):
            if isinstance(hdu, fits.BinTableHDU) and "Z" in _columns(hdu):
                tab = hdu
                break
        if tab is None:
            raise SpectrumReadError(zpath, "no table with a Z column (not an spZbest file)")
        cols = _columns(tab)
        picks = {
            k: n
            for k, a in {
                "fiber": ("FIBERID",),
                "z": ("Z",),
                "z_err": ("Z_ERR",),
                "class": ("CLASS",),
                "subclass": ("SUBCLASS",),
                "zwarning": ("ZWARNING",),
            }.items()
            if (n := _pick(cols, a)) is not None
        }
        vals = _read_fields(zpath, tab, picks.values())
        nrow = int(tab.header.get("NAXIS2", 0))
        fibers = vals[picks["fiber"]] if "fiber" in picks else np.arange(1, nrow + 1)
        rows: dict[int, dict[str, Any]] = {}
        for r in range(nrow):
            rows[int(fibers[r])] = {"row": r, **{k: vals[n][r] for k, n in picks.items()}}
        model = None
        mhdu = _find_hdu(h, ("MODEL",))
        if mhdu is None:
            try:
                cand = h[2]
                mhdu = cand if not isinstance(cand, fits.BinTableHDU) else None
            except IndexError:
                mhdu = None
        if mhdu is not None and int(mhdu.header.get("NAXIS", 0)) == 2:
            m = _read_image(zpath, mhdu, "MODEL")
            if m.shape[1] == npix:
                model = m
        return rows, model

    return _with_fits(zpath, read)


def _read_spplate(h: fits.HDUList, path: Path) -> list[Spectrum]:
    hdr0 = h[0].header
    flux2 = _read_image(path, h[0], "0 (flux)")
    if flux2.ndim != 2:
        raise SpectrumReadError(path, f"HDU 0 flux is {flux2.ndim}-D, expected (nfiber, npix)")
    nfiber, npix = flux2.shape
    c0, c1 = _float(hdr0.get("COEFF0")), _float(hdr0.get("COEFF1"))
    if c0 is None or c1 is None:
        raise SpectrumReadError(path, "missing header keyword COEFF0/COEFF1")
    if c1 <= 0:
        raise SpectrumReadError(path, f"wavelength not increasing (COEFF1 = {c1})")
    wave = np.asarray(10.0 ** (c0 + c1 * np.arange(npix, dtype=np.float64)))
    _check_wave(path, wave)
    m = _SPPLATE_NAME.match(path.name)
    plate = _int(hdr0.get("PLATEID")) or (int(m.group(1)) if m else None)
    mjd = _int(hdr0.get("MJD")) or (int(m.group(2)) if m else None)
    if plate is None or mjd is None:
        raise SpectrumReadError(path, "no PLATEID/MJD in the header nor in the file name")

    shape = (nfiber, npix)
    ivar2 = andmask2 = sky2 = None
    if (hd := _spplate_hdu(h, "ivar", shape)) is not None:
        ivar2 = _read_image(path, hd, "IVAR")
    if (hd := _spplate_hdu(h, "andmask", shape)) is not None:
        andmask2 = _read_image(path, hd, "ANDMASK")
    if (hd := _spplate_hdu(h, "sky", shape)) is not None:
        sky2 = _read_image(path, hd, "SKY")
    plug: dict[str, np.ndarray] = {}
    if (hd := _spplate_hdu(h, "plugmap", shape)) is not None:
        pcols = _columns(hd)
        picks = {
            k: n
            for k, a in {"fiber": ("FIBERID",), "ra": ("RA",), "dec": ("DEC",), "objtype": ("OBJTYPE",)}.items()
            if (n := _pick(pcols, a)) is not None
        }
        vals = _read_fields(path, hd, picks.values())
        plug = {k: vals[n] for k, n in picks.items()}

    zrows: dict[int, dict[str, Any]] = {}
    model2 = None
    zpath = _find_spzbest(path, plate, mjd)
    if zpath is not None:
        zrows, model2 = _read_spzbest(zpath, nfiber, npix)

    out: list[Spectrum] = []
    abspath = str(path.absolute())
    run2d = _str(hdr0.get("RUN2D"))
    for r in range(nfiber):
        fiber = int(plug["fiber"][r]) if "fiber" in plug else r + 1
        f = flux2[r]
        estimated = ivar2 is None
        iv = estimate_ivar(f) if ivar2 is None else np.array(ivar2[r], dtype=np.float32)
        if andmask2 is not None:
            iv = np.where((andmask2[r].astype(np.int64) & SPPIXMASK_REJECT_VALUE) != 0, 0.0, iv)
        zr = zrows.get(fiber, {})
        # the spZbest model rows run parallel to its table rows
        mrow = model2[zr["row"]] if model2 is not None and zr and zr["row"] < model2.shape[0] else None
        fl, iv, (sky, model) = _clean(f, iv, None if sky2 is None else sky2[r], mrow)
        meta: dict[str, Any] = {"model_source": "spzbest" if model is not None else None}
        if model is None:
            meta["model_note"] = (
                "no spZbest file next to the spPlate"
                if zpath is None
                else f"{zpath.name} has no MODEL image of {npix} pixels"
                if model2 is None
                else f"fiber {fiber} has no row in {zpath.name}"
            )
        if run2d:
            meta["run2d"] = run2d
        if "objtype" in plug and (ot := _str(plug["objtype"][r])):
            meta["objtype"] = ot
        if (zw := _int(zr.get("zwarning"))) is not None:
            meta["zwarning"] = zw
        if zpath is not None:
            meta["zbest_file"] = zpath.name
        out.append(
            Spectrum(
                survey="boss",
                wave=wave,
                flux=fl,
                ivar=iv,
                model=model,
                sky=sky,
                ra=_float(plug["ra"][r]) if "ra" in plug else None,
                dec=_float(plug["dec"][r]) if "dec" in plug else None,
                z=_float(zr.get("z")),
                z_err=_float(zr.get("z_err")),
                spec_class=_str(zr.get("class")) if zr else None,
                subclass=_str(zr.get("subclass")) if zr else None,
                plate=plate,
                mjd=mjd,
                fiber=fiber,
                path=abspath,
                index=r,
                ivar_estimated=estimated,
                meta=meta,
            )
        )
    return out


_SDSS_COMPANION_NAME = re.compile(r"^(spZbest|spZline|spZall|spFluxcalib|spFrame|spCFrame)-", re.IGNORECASE)


register_reader(
    "boss-spplate",
    label="BOSS spPlate",
    detect=_is_spplate,
    read=_read_spplate,
    file_name=_SPPLATE_NAME,
    companion_name=_SDSS_COMPANION_NAME,
    order=20,
)
