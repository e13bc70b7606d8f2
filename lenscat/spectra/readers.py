"""Readers for SDSS/BOSS and DESI spectrum files, returning :class:`~lenscat.spectra.spectrum.Spectrum`.

This module owns the file formats: recognising them, finding HDUs and columns by name (any case,
as DR18+ files use UPPERCASE names), applying the pipeline pixel masks, converting big-endian FITS
data to native float32/float64 arrays, and the one-line errors for files it cannot read.

Formats
-------
``sdss-spec``
    SDSS/BOSS ``spec-PLATE-MJD-FIBER.fits``: HDU ``COADD`` (flux, loglam, ivar, and_mask, sky,
    model) and, when present, HDU ``SPECOBJ`` (``SPALL`` in SDSS-V files) for ids and redshift.
``boss-spplate``
    BOSS ``spPlate-PLATE-MJD.fits``: HDU0 flux (nfiber, npix) with log10 lambda = COEFF0 + COEFF1 i;
    the optional HDUs invvar, andmask, ormask, wavedisp, plugmap and sky are found by name or, as
    the format defines them, by position 1-6. Without an inverse variance it is estimated from the
    pixel-to-pixel scatter (:func:`estimate_ivar`, ``ivar_estimated=True``). Redshifts and models
    come from ``spZbest-PLATE-MJD.fits`` next to the plate file (or one directory below) when present.
``desi-coadd``
    DESI ``coadd-*.fits``: arms ``{B,R,Z}_WAVELENGTH/_FLUX/_IVAR/_MASK/_RESOLUTION`` and
    ``FIBERMAP``, with redshifts and redrock fits from ``redrock-*.fits`` (or ``zbest-*.fits``)
    of the same suffix next to it. The arms share DESI's 0.8 A grid, so they are merged pixel by
    pixel with inverse-variance weights on the overlaps (as desispec's ``coadd_cameras`` does);
    arms on different grids are instead used only redward of the previous arm's last pixel (B,
    then R, then Z).

Pipeline models
---------------
``Spectrum.model`` is the pipeline's own best fit, and ``meta['model_source']`` says where it came
from: ``'sdss-model'`` (the ``model`` column of an SDSS/BOSS spec file), ``'spzbest'`` (the model
image of the spZbest file next to an spPlate), ``'redrock'`` (a DESI model rebuilt from the
redrock fit, see :mod:`lenscat.spectra.redrock`; ``meta['model_template']`` names the template
file) or None. Where there is none, or with a caveat, ``meta['model_note']`` says why in one line
(e.g. the redrock fit has more terms than the templates available). DESI models are evaluated per
arm, convolved with the arm's ``*_RESOLUTION`` matrix and merged like the flux.

Masked pixels (SPPIXMASK bits in :data:`SPPIXMASK_REJECT`, any DESI MASK bit), non-finite flux or
ivar and negative ivar all end as ``ivar = 0`` (with flux 0 where it was not finite).

DESI keys: a TARGETID recurs across tiles and coadd groups, so for tile-based coadds
(``coadd-PETAL-TILE-GROUP.fits``, or TILEID in the header) ``meta['program']`` is
``'tile<TILEID>-<GROUP>'`` (e.g. ``tile80613-thru20210324``) and the file's own program, if any,
is kept as ``meta['desi_program']``; healpix coadds (``coadd-SURVEY-PROGRAM-HPX.fits``) keep the
real survey and program. Either way :attr:`Spectrum.key` is unique per spectrum across files.

Errors are :class:`SpectrumReadError` with one line ``<file>: <reason>``. A file that is not a
whole number of 2880-byte blocks is reported truncated; a cut on a block boundary is reported when
it reaches a header or data unit the reader needs (later, unread HDUs are not checked).
"""

from __future__ import annotations

import glob
import os
import re
import warnings
import weakref
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits
from scipy.ndimage import median_filter

from lenscat.errors import InputFileError
from lenscat.spectra.redrock import RedrockFit, coadd_models, header_versions, load_templates
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

#: format names :func:`detect_format` returns
FORMATS: tuple[str, ...] = ("sdss-spec", "boss-spplate", "desi-coadd")

_FITS_SUFFIXES = (".fits", ".fit", ".fts", ".fits.gz", ".fit.gz", ".fits.fz", ".fits.bz2")
_SPEC_NAME = re.compile(r"^spec-(\d+)-(\d+)-(\d+)", re.IGNORECASE)
_SPPLATE_NAME = re.compile(r"^spPlate-(\d+)-(\d+)", re.IGNORECASE)
_COADD_NAME = re.compile(r"^coadd-", re.IGNORECASE)
_DESI_TILE_NAME = re.compile(r"^coadd-(\d+)-(\d+)-([A-Za-z]*\d+|all)", re.IGNORECASE)
_DESI_HPX_NAME = re.compile(r"^coadd-([A-Za-z][A-Za-z0-9]*)-([A-Za-z][A-Za-z0-9]*)-(\d+)", re.IGNORECASE)
_COMPANION_NAME = re.compile(r"^(redrock|zbest|spZbest|spZline|spZall|spFluxcalib|spFrame|spCFrame)-", re.IGNORECASE)
_TFORM = re.compile(r"^\s*(\d*)\s*([LXBIJKAEDCMPQ])")
_TFORM_DTYPE = {
    "L": "S1",
    "B": "u1",
    "I": ">i2",
    "J": ">i4",
    "K": ">i8",
    "E": ">f4",
    "D": ">f8",
    "C": ">c8",
    "M": ">c16",
}
_TFORM_SIZE = {"L": 1, "B": 1, "I": 2, "J": 4, "K": 8, "E": 4, "D": 8, "C": 8, "M": 16, "A": 1, "P": 8, "Q": 16}


class SpectrumReadError(InputFileError):
    """A spectrum file cannot be read; the message is ``<file>: <reason>`` on one line."""

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        self.path = str(path)
        self.reason = " ".join(str(reason).split())
        super().__init__(f"{self.path}: {self.reason}")


# --------------------------------------------------------------------------------------------
# public API


def detect_format(path: str | os.PathLike[str]) -> str:
    """The format of a spectrum file, from its HDUs and header (not its name).

    Parameters
    ----------
    path : str or os.PathLike
        A FITS file.

    Returns
    -------
    str
        ``'sdss-spec'``, ``'boss-spplate'`` or ``'desi-coadd'``.

    Raises
    ------
    SpectrumReadError
        If the file is missing, not FITS, truncated, or none of these formats.
    """
    p = Path(path)
    return _with_fits(p, lambda h: _detect(h, p))


def read_spectra(path: str | os.PathLike[str]) -> list[Spectrum]:
    """Read every spectrum in one SDSS/BOSS or DESI file.

    Parameters
    ----------
    path : str or os.PathLike
        A ``spec-*``, ``spPlate-*`` or DESI ``coadd-*`` FITS file (the format is detected from the
        file's content; see :func:`detect_format`).

    Returns
    -------
    list of Spectrum
        One per fiber/target, in file order (``Spectrum.index`` is the row).

    Raises
    ------
    SpectrumReadError
        One line naming the file and the reason (not FITS, truncated, missing HDU or column,
        unknown format, wavelengths not increasing...).
    """
    p = Path(path)

    def read(h: fits.HDUList) -> list[Spectrum]:
        fmt = _detect(h, p)
        if fmt == "sdss-spec":
            return [_read_sdss_spec(h, p)]
        if fmt == "boss-spplate":
            return _read_spplate(h, p)
        return _read_desi_coadd(h, p)

    return _with_fits(p, read)


def iter_spectrum_files(paths: str | os.PathLike[str] | Iterable[str | os.PathLike[str]]) -> Iterator[Path]:
    """Expand files, directories (recursively) and glob patterns into the spectrum files among them.

    ``spec-*``, ``spPlate-*`` and ``coadd-*`` FITS files are taken by name; other FITS files are
    probed with :func:`detect_format` and kept when they are spectrum files. Redshift and
    calibration companions (``redrock-*``, ``zbest-*``, ``spZbest-*``...) and non-FITS files are
    skipped. A file named on its own is always yielded, so that reading it says what is wrong with
    it rather than it being dropped unseen. Each file is yielded once, in sorted order within each
    argument.

    Parameters
    ----------
    paths : path, glob pattern, or iterable of them

    Yields
    ------
    pathlib.Path

    Raises
    ------
    SpectrumReadError
        If an argument is neither an existing file or directory nor a pattern matching something.
    """
    if isinstance(paths, str | os.PathLike):
        paths = [paths]
    seen: set[Path] = set()
    for arg in paths:
        p = Path(arg)
        if p.is_dir():
            candidates = sorted(q for q in p.rglob("*") if q.is_file())
        elif p.is_file():
            key = p.absolute()
            if key not in seen:
                seen.add(key)
                yield p
            continue
        else:
            matches = sorted(glob.glob(str(arg), recursive=True)) if glob.has_magic(str(arg)) else []
            if not matches:
                raise SpectrumReadError(p, "no such file or directory")
            candidates = []
            for m in matches:
                mp = Path(m)
                candidates.extend(sorted(q for q in mp.rglob("*") if q.is_file()) if mp.is_dir() else [mp])
        for q in candidates:
            key = q.absolute()
            if key in seen or not _is_spectrum_file(q):
                continue
            seen.add(key)
            yield q


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


# --------------------------------------------------------------------------------------------
# FITS plumbing


def _with_fits(path: Path, fn: Any) -> Any:
    """Open ``path`` lazily and run ``fn(hdulist)``, turning every failure into a SpectrumReadError."""
    if not path.exists():
        raise SpectrumReadError(path, "no such file")
    if not path.is_file():
        raise SpectrumReadError(path, "not a regular file")
    size = path.stat().st_size
    if size == 0:
        raise SpectrumReadError(path, "empty file")
    with open(path, "rb") as fh:
        head = fh.read(9)
    compressed = head[:2] == b"\x1f\x8b" or head[:3] == b"BZh"
    if not compressed and head != b"SIMPLE  =":
        raise SpectrumReadError(path, "not a FITS file (no SIMPLE card at the start)")
    if not compressed and size % 2880:
        # FITS files are whole 2880-byte blocks; a cut-off download almost never is
        raise SpectrumReadError(path, f"truncated FITS file ({size} bytes, not a whole number of 2880-byte blocks)")
    caught: list[warnings.WarningMessage] = []

    def truncation() -> str | None:
        return next((str(w.message) for w in caught if "truncated" in str(w.message).lower()), None)

    try:
        with warnings.catch_warnings(record=True) as rec:
            warnings.simplefilter("always")
            caught = rec if rec is not None else []
            with fits.open(path, memmap=False, lazy_load_hdus=True) as h:
                result = fn(h)
        if (t := truncation()) is not None:
            raise SpectrumReadError(path, f"truncated FITS file ({t})")
        return result
    except SpectrumReadError:
        raise
    except (OSError, ValueError, KeyError, IndexError, TypeError, EOFError) as exc:
        msg = f"{type(exc).__name__}: {exc}" if not isinstance(exc, OSError) else str(exc)
        if (t := truncation()) is not None:
            raise SpectrumReadError(path, f"truncated FITS file ({t}; {msg})") from exc
        if any(s in msg.lower() for s in ("truncat", "end card", "empty or corrupt")):
            raise SpectrumReadError(path, f"truncated or corrupt FITS file ({msg})") from exc
        raise SpectrumReadError(path, f"corrupt FITS file ({msg})") from exc


def _hdus(h: fits.HDUList) -> Iterator[tuple[int, Any]]:
    """(position, HDU) for every HDU, reading headers lazily (stops at the end of the file)."""
    i = 0
    while True:
        try:
            hdu = h[i]
        except IndexError:
            return
        yield i, hdu
        i += 1


def _find_hdu(h: fits.HDUList, names: Iterable[str]) -> Any | None:
    """The first HDU whose EXTNAME equals one of ``names`` (case-insensitive), or None."""
    wanted = [n.upper() for n in names]
    found: dict[str, Any] = {}
    for _, hdu in _hdus(h):
        nm = (hdu.name or "").strip().upper()
        if nm in wanted and nm not in found:
            found[nm] = hdu
            if nm == wanted[0]:
                break
    for n in wanted:
        if n in found:
            return found[n]
    return None


def _require_hdu(h: fits.HDUList, path: Path, names: tuple[str, ...]) -> Any:
    hdu = _find_hdu(h, names)
    if hdu is None:
        raise SpectrumReadError(path, f"missing HDU {' / '.join(names)}")
    return hdu


def _hdu_names(h: fits.HDUList) -> list[str]:
    return [(hdu.name or "").strip().upper() for _, hdu in _hdus(h)]


@dataclass(frozen=True)
class _Field:
    name: str
    code: str  #: TFORM letter
    repeat: int
    offset: int  #: byte offset in the row
    scaled: bool  #: TSCAL or TZERO present


@dataclass(frozen=True)
class _TableInfo:
    rowlen: int
    nrows: int
    fields: tuple[_Field, ...]
    consistent: bool  #: the TFORMs add up to NAXIS1


_CARD = re.compile(r"^(TTYPE|TFORM|TSCAL|TZERO|NAXIS1|NAXIS2|TFIELDS)(\d*)\s*=\s*('(?:[^']|'')*'|[^/]*)")
_TABLE_INFO: weakref.WeakKeyDictionary[Any, _TableInfo] = weakref.WeakKeyDictionary()


def _table_info(hdu: Any) -> _TableInfo:
    """Column layout of a binary table from its raw header cards.

    Reading the header bytes directly avoids parsing every card value through astropy, which
    dominates the cost of wide tables such as SPECOBJ (~150 columns).
    """
    if hdu in _TABLE_INFO:
        return _TABLE_INFO[hdu]
    cards: dict[tuple[str, int], str] = {}
    try:
        info = hdu.fileinfo()
        fobj = info["file"]
        fobj.seek(info["hdrLoc"])
        raw = fobj.read(info["datLoc"] - info["hdrLoc"])
        text = raw.decode("ascii", "replace") if isinstance(raw, bytes) else str(raw)
        for k in range(0, len(text) - 79, 80):
            m = _CARD.match(text[k : k + 80])
            if m:
                v = m.group(3).strip()
                v = v[1:-1].replace("''", "'").rstrip() if v.startswith("'") else v
                cards[(m.group(1), int(m.group(2) or 0))] = v
    except (AttributeError, KeyError, TypeError, OSError):
        cards = {}
    if not cards:
        hd = hdu.header
        for i in range(1, int(hd.get("TFIELDS", 0)) + 1):
            for kw in ("TTYPE", "TFORM", "TSCAL", "TZERO"):
                if f"{kw}{i}" in hd:
                    cards[(kw, i)] = str(hd[f"{kw}{i}"])
        for kw in ("NAXIS1", "NAXIS2", "TFIELDS"):
            cards[(kw, 0)] = str(hd.get(kw, 0))
    nfields = int(cards.get(("TFIELDS", 0), "0") or 0)
    fields: list[_Field] = []
    offset = 0
    consistent = True
    for i in range(1, nfields + 1):
        m = _TFORM.match(cards.get(("TFORM", i), ""))
        if m is None:
            consistent = False
            break
        rep = int(m.group(1)) if m.group(1) else 1
        code = m.group(2)
        nbytes = (rep + 7) // 8 if code == "X" else _TFORM_SIZE[code] * rep
        fields.append(
            _Field(
                name=cards.get(("TTYPE", i), "").strip(),
                code=code,
                repeat=rep,
                offset=offset,
                scaled=("TSCAL", i) in cards or ("TZERO", i) in cards,
            )
        )
        offset += nbytes
    rowlen = int(cards.get(("NAXIS1", 0), "0") or 0)
    out = _TableInfo(
        rowlen=rowlen,
        nrows=int(cards.get(("NAXIS2", 0), "0") or 0),
        fields=tuple(fields),
        consistent=consistent and offset == rowlen,
    )
    _TABLE_INFO[hdu] = out
    return out


def _columns(hdu: Any) -> dict[str, str]:
    """Upper-case name -> actual TTYPE of each column of a table HDU (header only)."""
    out: dict[str, str] = {}
    for f in _table_info(hdu).fields:
        if f.name:
            out.setdefault(f.name.upper(), f.name)
    return out


def _pick(cols: dict[str, str], aliases: Iterable[str]) -> str | None:
    for a in aliases:
        if a.upper() in cols:
            return cols[a.upper()]
    return None


def _native(a: Any, dtype: Any = None) -> np.ndarray:
    arr = np.asarray(a)
    if dtype is not None:
        return np.ascontiguousarray(arr, dtype=dtype)
    if not arr.dtype.isnative:
        arr = arr.astype(arr.dtype.newbyteorder("="))
    return np.ascontiguousarray(arr)


def _read_fields(path: Path, hdu: Any, names: Iterable[str]) -> dict[str, np.ndarray]:
    """Read only ``names`` (actual TTYPEs) of a binary table, native byte order.

    Builds the record layout from the TFORMs and reads the raw table bytes once, which avoids
    astropy's per-column setup of wide tables (SPECOBJ has ~150 columns). Falls back to
    ``hdu.data.field`` for scaled columns, bit or variable-length arrays, or odd layouts.
    """
    names = list(dict.fromkeys(names))
    if not names:
        return {}
    ti = _table_info(hdu)
    layout = {f.name: f for f in ti.fields if f.name in names}
    simple = (
        ti.consistent and set(layout) == set(names) and not any(f.scaled or f.code in "XPQ" for f in layout.values())
    )
    if not simple:
        data = hdu.data
        return {n: _native(data.field(n)) for n in names}
    info = hdu.fileinfo()
    fobj = info["file"]
    fobj.seek(info["datLoc"])
    nbytes = ti.rowlen * ti.nrows
    buf = fobj.read(nbytes)
    if len(buf) < nbytes:
        raise SpectrumReadError(
            path, f"truncated FITS file (HDU {hdu.name} data cut short: {len(buf)} of {nbytes} bytes)"
        )

    def fmt(f: _Field) -> str:
        if f.code == "A":
            return f"S{f.repeat}"
        base = _TFORM_DTYPE[f.code]
        return base if f.repeat == 1 else f"({f.repeat},){base}"

    dt = np.dtype(
        {
            "names": names,
            "formats": [fmt(layout[n]) for n in names],
            "offsets": [layout[n].offset for n in names],
            "itemsize": ti.rowlen,
        }
    )
    rec = np.frombuffer(buf, dtype=dt, count=ti.nrows)
    out = {}
    for n in names:
        v = _native(rec[n])
        out[n] = v == b"T" if layout[n].code == "L" else v
    return out


def _read_image(path: Path, hdu: Any, label: str) -> np.ndarray:
    data = hdu.data
    if data is None:
        raise SpectrumReadError(path, f"HDU {label} has no data")
    return _native(data)


def _str(v: Any) -> str | None:
    if v is None:
        return None
    if isinstance(v, bytes | np.bytes_):
        v = v.decode("ascii", "replace")
    s = str(v).strip()
    return s or None


def _float(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if np.isfinite(f) else None


def _int(v: Any) -> int | None:
    try:
        return int(v)
    except (TypeError, ValueError):
        return None


def _clean(
    flux: np.ndarray, ivar: np.ndarray, *others: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, list[np.ndarray | None]]:
    """float32 copies; ivar 0 where flux or ivar is non-finite or ivar < 0; non-finite values -> 0."""
    f = np.array(flux, dtype=np.float32)
    iv = np.array(ivar, dtype=np.float32)
    bad = ~np.isfinite(f) | ~np.isfinite(iv) | (iv < 0)
    f[~np.isfinite(f)] = 0.0
    iv[bad] = 0.0
    outs: list[np.ndarray | None] = []
    for o in others:
        if o is None:
            outs.append(None)
        else:
            a = np.array(o, dtype=np.float32)
            a[~np.isfinite(a)] = 0.0
            outs.append(a)
    return f, iv, outs


def _check_wave(path: Path, wave: np.ndarray, what: str = "") -> None:
    if wave.ndim != 1 or wave.size < 2:
        raise SpectrumReadError(path, f"wavelength array{what} has fewer than 2 pixels")
    if not np.all(np.isfinite(wave)) or not np.all(np.diff(wave) > 0):
        raise SpectrumReadError(path, f"wavelength not increasing{what}")


# --------------------------------------------------------------------------------------------
# format detection and file recognition


def _detect(h: fits.HDUList, path: Path) -> str:
    hdr0 = h[0].header
    if int(hdr0.get("NAXIS", 0)) == 2 and "COEFF0" in hdr0 and "COEFF1" in hdr0:
        return "boss-spplate"
    names = []
    for _, hdu in _hdus(h):
        names.append((hdu.name or "").strip().upper())
        if names[-1] == "COADD":
            return "sdss-spec"
    if any(n.endswith("_WAVELENGTH") and n[: -len("_WAVELENGTH")] + "_FLUX" in names for n in names):
        return "desi-coadd"
    if "REDSHIFTS" in names or "ZBEST" in names:
        raise SpectrumReadError(path, "a redrock/zbest redshift file, not a spectrum file")
    if int(hdr0.get("NAXIS", 0)) == 2:
        raise SpectrumReadError(path, "unknown format: a 2-D image without COEFF0/COEFF1 (not an spPlate)")
    shown = ", ".join(n or "''" for n in names[:8])
    raise SpectrumReadError(path, f"unknown format: not an SDSS spec, BOSS spPlate or DESI coadd file (HDUs: {shown})")


def _is_fits_name(p: Path) -> bool:
    return p.name.lower().endswith(_FITS_SUFFIXES)


def _is_spectrum_file(p: Path) -> bool:
    if not _is_fits_name(p) or _COMPANION_NAME.match(p.name):
        return False
    if _SPEC_NAME.match(p.name) or _SPPLATE_NAME.match(p.name) or _COADD_NAME.match(p.name):
        return True
    try:
        detect_format(p)
    except SpectrumReadError:
        return False
    return True


# --------------------------------------------------------------------------------------------
# SDSS / BOSS spec-PLATE-MJD-FIBER


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


# --------------------------------------------------------------------------------------------
# BOSS spPlate (+ spZbest)

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


# --------------------------------------------------------------------------------------------
# DESI coadd (+ redrock / zbest)


def _find_redrock(path: Path) -> Path | None:
    m = _COADD_NAME.match(path.name)
    if m is None:
        return None
    suffix = path.name[m.end() :]
    for prefix in ("redrock-", "zbest-"):
        for suf in (suffix, suffix + ".gz", suffix.removesuffix(".gz")):
            cand = path.parent / (prefix + suf)
            if cand.is_file():
                return cand
    return None


def _read_redrock(zpath: Path) -> tuple[dict[int, dict[str, Any]], dict[str, str]]:
    """Per-TARGETID redshift rows (with COEFF/NCOEFF when present) and the header's template versions."""

    def read(h: fits.HDUList) -> tuple[dict[int, dict[str, Any]], dict[str, str]]:
        tab = _find_hdu(h, ("REDSHIFTS", "ZBEST"))
        if tab is None:
            raise SpectrumReadError(zpath, "missing HDU REDSHIFTS / ZBEST")
        cols = _columns(tab)
        for req in ("TARGETID", "Z"):
            if req not in cols:
                raise SpectrumReadError(zpath, f"missing column {req} in HDU {tab.name}")
        picks = {
            k: n
            for k, a in {
                "targetid": ("TARGETID",),
                "z": ("Z",),
                "z_err": ("ZERR", "Z_ERR"),
                "spectype": ("SPECTYPE",),
                "subtype": ("SUBTYPE",),
                "zwarn": ("ZWARN", "ZWARNING"),
                "chi2": ("CHI2",),
                "deltachi2": ("DELTACHI2",),
                "coeff": ("COEFF",),
                "ncoeff": ("NCOEFF",),
            }.items()
            if (n := _pick(cols, a)) is not None
        }
        vals = _read_fields(zpath, tab, picks.values())
        tids = vals[picks["targetid"]]
        rows = {int(t): {k: vals[n][r] for k, n in picks.items()} for r, t in enumerate(tids)}
        return rows, header_versions(h[0].header)

    return _with_fits(zpath, read)


def _desi_models(
    h: fits.HDUList,
    path: Path,
    arms: list[tuple[str, np.ndarray, np.ndarray, np.ndarray]],
    targetids: np.ndarray,
    zrows: dict[int, dict[str, Any]],
    versions: dict[str, str],
    zpath: Path | None,
) -> tuple[list[list[np.ndarray] | None], list[str | None], list[str | None]]:
    """Per target: the redrock model of each arm (or None), a one-line note, the template used."""
    n = int(targetids.size)
    if zpath is None:
        return [None] * n, ["no redrock/zbest file next to the coadd"] * n, [None] * n
    fits_: list[RedrockFit | None] = []
    for t in targetids:
        zr = zrows.get(int(t))
        if zr is None:
            fits_.append(None)
            continue
        coeff = np.asarray(zr["coeff"], dtype=np.float64).ravel() if "coeff" in zr else None
        ncoeff = _int(zr.get("ncoeff"))
        if ncoeff is not None and (coeff is None or not 0 < ncoeff <= coeff.size):
            ncoeff = None  # TNULL or nonsense: infer from COEFF
        fits_.append(
            RedrockFit(
                z=_float(zr.get("z")),
                coeff=coeff,
                spectype=_str(zr.get("spectype")),
                subtype=_str(zr.get("subtype")),
                ncoeff=ncoeff,
            )
        )

    def resolution(a: int, rows: np.ndarray) -> np.ndarray | None:
        name, wave = arms[a][0], arms[a][1]
        hdu = _find_hdu(h, (f"{name}_RESOLUTION",))
        if hdu is None:
            return None
        if hdu.data is None:
            raise SpectrumReadError(path, f"HDU {name}_RESOLUTION has no data")
        data = np.asarray(hdu.data)  # FITS byte order: apply_resolution reads it as is, no copy
        if data.ndim == 2:
            data = data[None]
        if data.ndim != 3 or data.shape[0] != n or data.shape[2] != wave.size or data.shape[1] % 2 != 1:
            raise SpectrumReadError(
                path,
                f"HDU {name}_RESOLUTION has shape {data.shape}, expected ({n}, odd number of diagonals, {wave.size})",
            )
        return data if rows.size == n else data[rows]

    return coadd_models(
        fits_, [w for _, w, _, _ in arms], resolution, load_templates(), versions, arm_names=[a for a, _, _, _ in arms]
    )


def _merge_arms(
    arms: list[tuple[np.ndarray, np.ndarray, np.ndarray]], models: list[np.ndarray] | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """One increasing spectrum from arms sorted by start wavelength (see the module docstring).

    ``models`` (one array per arm, or None) are merged with the same inverse-variance weights as
    the flux; the fourth value is the merged model (None without ``models``).
    """
    if len(arms) == 1:
        return (*arms[0], None if models is None else models[0])
    w0 = arms[0][0]
    dw = float(np.median(np.diff(w0)))
    offsets: list[int] = []
    aligned = dw > 0
    for w, _, _ in arms:
        d = np.diff(w)
        off = (w[0] - w0[0]) / dw if dw > 0 else 0.0
        if not (np.allclose(d, dw, rtol=1e-6, atol=1e-9) and abs(off - round(off)) < 1e-3):
            aligned = False
            break
        offsets.append(int(round(off)))
    mods = models if models is not None else [None] * len(arms)
    if aligned:
        n = max(o + w.size for o, (w, _, _) in zip(offsets, arms, strict=True))
        wave = np.full(n, np.nan)
        num = np.zeros(n)
        den = np.zeros(n)
        first = np.full(n, np.nan)
        mnum = np.zeros(n) if models is not None else None
        mfirst = np.full(n, np.nan) if models is not None else None
        for o, (w, f, iv), m in zip(offsets, arms, mods, strict=True):
            sl = slice(o, o + w.size)
            unset = np.isnan(wave[sl])
            wave[sl][unset] = w[unset]
            first[sl][unset] = f[unset]
            num[sl] += f.astype(np.float64) * iv
            den[sl] += iv
            if m is not None and mnum is not None and mfirst is not None:
                mfirst[sl][unset] = m[unset]
                mnum[sl] += m.astype(np.float64) * iv
        if not np.isnan(wave).any():
            with np.errstate(invalid="ignore", divide="ignore"):
                flux = np.where(den > 0, num / den, first)
                model = (
                    None if mnum is None or mfirst is None else np.where(den > 0, mnum / den, mfirst).astype(np.float32)
                )
            return wave, flux.astype(np.float32), den.astype(np.float32), model
    # different grids: each arm only redward of the previous one's last pixel
    ws, fs, ivs, ms = [arms[0][0]], [arms[0][1]], [arms[0][2]], [mods[0]]
    for (w, f, iv), m in zip(arms[1:], mods[1:], strict=True):
        keep = w > ws[-1][-1]
        ws.append(w[keep])
        fs.append(f[keep])
        ivs.append(iv[keep])
        ms.append(None if m is None else m[keep])
    merged = None if models is None else np.concatenate([m for m in ms if m is not None])
    return np.concatenate(ws), np.concatenate(fs), np.concatenate(ivs), merged


def _read_desi_coadd(h: fits.HDUList, path: Path) -> list[Spectrum]:
    hdr0 = h[0].header
    names = _hdu_names(h)
    arm_names = [
        n[: -len("_WAVELENGTH")]
        for n in names
        if n.endswith("_WAVELENGTH") and n[: -len("_WAVELENGTH")] + "_FLUX" in names
    ]
    fmap = _require_hdu(h, path, ("FIBERMAP",))
    fcols = _columns(fmap)
    if "TARGETID" not in fcols:
        raise SpectrumReadError(path, f"missing column TARGETID in HDU {fmap.name}")
    picks = {
        k: n
        for k, a in {
            "targetid": ("TARGETID",),
            "ra": ("TARGET_RA", "RA"),
            "dec": ("TARGET_DEC", "DEC"),
            "fiber": ("FIBER",),
            "objtype": ("OBJTYPE",),
            "fiberstatus": ("COADD_FIBERSTATUS", "FIBERSTATUS"),
            "tileid": ("TILEID",),
            "petal": ("PETAL_LOC",),
            "survey": ("SURVEY",),
            "program": ("PROGRAM",),
        }.items()
        if (n := _pick(fcols, a)) is not None
    }
    fm = _read_fields(path, fmap, picks.values())
    fm = {k: fm[n] for k, n in picks.items()}
    ntarget = fm["targetid"].size

    arms: list[tuple[str, np.ndarray, np.ndarray, np.ndarray]] = []
    for a in arm_names:
        wave = _read_image(path, _require_hdu(h, path, (f"{a}_WAVELENGTH",)), f"{a}_WAVELENGTH")
        wave = np.asarray(wave, dtype=np.float64).ravel()
        _check_wave(path, wave, f" in HDU {a}_WAVELENGTH")
        flux = np.atleast_2d(_read_image(path, _require_hdu(h, path, (f"{a}_FLUX",)), f"{a}_FLUX"))
        ivar = np.atleast_2d(_read_image(path, _require_hdu(h, path, (f"{a}_IVAR",)), f"{a}_IVAR"))
        if flux.shape != (ntarget, wave.size) or ivar.shape != flux.shape:
            raise SpectrumReadError(
                path,
                f"arm {a}: flux {flux.shape} / ivar {ivar.shape} do not match "
                f"{ntarget} FIBERMAP rows x {wave.size} wavelengths",
            )
        ivar = np.array(ivar, dtype=np.float32)
        mhdu = _find_hdu(h, (f"{a}_MASK",))
        if mhdu is not None:
            mask = np.atleast_2d(_read_image(path, mhdu, f"{a}_MASK"))
            if mask.shape == flux.shape:
                ivar[mask != 0] = 0.0
        arms.append((a, wave, flux, ivar))
    arms.sort(key=lambda t: float(t[1][0]))

    # identifiers that make Spectrum.key unique across files
    base: dict[str, Any] = {}
    survey_h, program_h = _str(hdr0.get("SURVEY")), _str(hdr0.get("PROGRAM")) or _str(hdr0.get("FAPRGRM"))
    mt, mh = _DESI_TILE_NAME.match(path.name), _DESI_HPX_NAME.match(path.name)
    tile = _int(hdr0.get("TILEID"))
    petal = _int(hdr0.get("PETAL"))
    if tile is None and mt is not None:
        tile, petal = int(mt.group(2)), int(mt.group(1)) if petal is None else petal
    if (
        tile is None
        and "tileid" in fm
        and ntarget
        and np.all(fm["tileid"] == fm["tileid"][0])
        and mh is None
        and hdr0.get("HPXPIXEL") is None
    ):
        tile = int(fm["tileid"][0])
    if tile is not None:
        spgrp, spval = _str(hdr0.get("SPGRP")), _str(hdr0.get("SPGRPVAL"))
        if mt is not None and mt.group(3):
            group = mt.group(3)
        elif spgrp == "cumulative" and spval:
            group = f"thru{spval}"
        else:
            group = f"{spgrp or ''}{spval or ''}"
        base["tileid"] = tile
        if petal is not None:
            base["petal"] = petal
        if spgrp:
            base["spgrp"] = spgrp
        if spval:
            base["spgrpval"] = spval
        base["program"] = f"tile{tile}-{group}" if group else f"tile{tile}"
        if program_h:
            base["desi_program"] = program_h
        if survey_h:
            base["survey"] = survey_h
    else:
        hpx = _int(hdr0.get("HPXPIXEL"))
        if mh is not None:
            survey_h = survey_h or mh.group(1).lower()
            program_h = program_h or mh.group(2).lower()
            hpx = hpx if hpx is not None else int(mh.group(3))
        if survey_h:
            base["survey"] = survey_h
        if program_h:
            base["program"] = program_h
        if hpx is not None:
            base["healpix"] = hpx

    zpath = _find_redrock(path)
    zrows, versions = _read_redrock(zpath) if zpath is not None else ({}, {})
    models, notes, templates = _desi_models(h, path, arms, fm["targetid"], zrows, versions, zpath)
    abspath = str(path.absolute())
    out: list[Spectrum] = []
    for r in range(ntarget):
        tid = int(fm["targetid"][r])
        wave, flux, ivar, model = _merge_arms([(w, f[r].astype(np.float32), iv[r]) for _, w, f, iv in arms], models[r])
        flux, ivar, (model,) = _clean(flux, ivar, model)
        meta = dict(base)
        meta["model_source"] = "redrock" if model is not None else None
        if templates[r] is not None:
            meta["model_template"] = templates[r]
        if notes[r] is not None:
            meta["model_note"] = notes[r]
        if tile is None:
            for k in ("survey", "program"):
                if k in fm and (s := _str(fm[k][r])) and k not in meta:
                    meta[k] = s
        for k in ("fiber", "fiberstatus"):
            if k in fm:
                meta[k] = int(fm[k][r])
        if "objtype" in fm and (ot := _str(fm["objtype"][r])):
            meta["objtype"] = ot
        zr = zrows.get(tid, {})
        for k in ("zwarn",):
            if k in zr:
                meta[k] = int(zr[k])
        for k in ("chi2", "deltachi2"):
            if k in zr and (v := _float(zr[k])) is not None:
                meta[k] = v
        if zpath is not None:
            meta["redshift_file"] = zpath.name
        out.append(
            Spectrum(
                survey="desi",
                wave=wave,
                flux=flux,
                ivar=ivar,
                model=model,
                ra=_float(fm["ra"][r]) if "ra" in fm else None,
                dec=_float(fm["dec"][r]) if "dec" in fm else None,
                z=_float(zr.get("z")),
                z_err=_float(zr.get("z_err")),
                spec_class=_str(zr.get("spectype")) if zr else None,
                subclass=_str(zr.get("subtype")) if zr else None,
                targetid=tid,
                path=abspath,
                index=r,
                meta=meta,
            )
        )
    return out
