"""Readers for SDSS/BOSS and DESI spectrum files, returning :class:`~lenscat.spectra.spectrum.Spectrum`.

This module is the entry point: :func:`detect_format`, :func:`read_spectra` and
:func:`iter_spectrum_files` look the survey readers up in the reader table.

Formats
-------
Each survey format is a module that registers itself in the reader table
(:mod:`lenscat.spectra.reader_table`, :func:`~lenscat.spectra.reader_table.register_reader`): ``sdss-spec``
(:mod:`~lenscat.spectra.readers_sdss`), ``boss-spplate`` (:mod:`~lenscat.spectra.readers_boss`) and
``desi-coadd`` (:mod:`~lenscat.spectra.readers_desi`); the FITS plumbing they share is
:mod:`~lenscat.spectra.readers_fits`. Adding a survey is one new module ``readers_<survey>.py`` in this
package ending with its ``register_reader(...)`` line: every ``readers_*`` module is imported below.

Pipeline models
---------------
``Spectrum.model`` is the pipeline's own best fit, and ``meta['model_source']`` says where it came
from: ``'sdss-model'`` (the ``model`` column of an SDSS/BOSS spec file), ``'spzbest'`` (the model
image of the spZbest file next to an spPlate), ``'redrock'`` (a DESI model rebuilt from the
redrock fit, see :mod:`lenscat.spectra.redrock`; ``meta['model_template']`` names the template
file) or None. Where there is none, or with a caveat, ``meta['model_note']`` says why in one line
(e.g. the redrock fit has more terms than the templates available). DESI models are evaluated per
arm, convolved with the arm's ``*_RESOLUTION`` matrix and merged like the flux.

Masked pixels (SPPIXMASK bits in :data:`~lenscat.spectra.readers_sdss.SPPIXMASK_REJECT`, any DESI
MASK bit), non-finite flux or ivar and negative ivar all end as ``ivar = 0`` (with flux 0 where it was
not finite).

DESI keys: a TARGETID recurs across tiles and coadd groups, so for tile-based coadds
(``coadd-PETAL-TILE-GROUP.fits``, or TILEID in the header) ``meta['program']`` is
``'tile<TILEID>-<GROUP>'`` (e.g. ``tile80613-thru20210324``) and the file's own program, if any,
is kept as ``meta['desi_program']``; healpix coadds (``coadd-SURVEY-PROGRAM-HPX.fits``) keep the
real survey and program. Either way :attr:`Spectrum.key` is unique per spectrum across files.

Errors are :class:`~lenscat.spectra.readers_fits.SpectrumReadError` with one line ``<file>: <reason>``. A file that is
not a whole number of 2880-byte blocks is reported truncated; a cut on a block boundary is reported when
it reaches a header or data unit the reader needs (later, unread HDUs are not checked).
"""

from __future__ import annotations

import glob
import importlib
import os
import pkgutil
from collections.abc import Iterable, Iterator
from pathlib import Path

from astropy.io import fits

import lenscat.spectra
from lenscat.spectra.reader_table import SpectrumReader, register_reader, spectrum_readers
from lenscat.spectra.readers_fits import SpectrumReadError, _hdu_names, _with_fits
from lenscat.spectra.spectrum import Spectrum

# every survey reader module of this package registers itself on import (readers_<survey>.py)
for _module in pkgutil.iter_modules(lenscat.spectra.__path__):
    if _module.name.startswith("readers_"):
        importlib.import_module(f"lenscat.spectra.{_module.name}")

__all__ = [
    "FORMATS",
    "SpectrumReadError",
    "SpectrumReader",
    "detect_format",
    "iter_spectrum_files",
    "read_spectra",
    "register_reader",
    "spectrum_readers",
]

#: format names :func:`detect_format` returns (the built-in readers', in detection order)
FORMATS: tuple[str, ...] = tuple(r.name for r in spectrum_readers())

_FITS_SUFFIXES = (".fits", ".fit", ".fts", ".fits.gz", ".fit.gz", ".fits.fz", ".fits.bz2")


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
        return _reader(h, p).read(h, p)

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


# --------------------------------------------------------------------------------------------
# format detection and file recognition


def _reader(h: fits.HDUList, path: Path) -> SpectrumReader:
    """The first registered reader whose ``detect`` accepts the open file, else a one-line error."""
    readers = spectrum_readers()
    for r in readers:
        if r.detect(h):
            return r
    names = _hdu_names(h)
    if "REDSHIFTS" in names or "ZBEST" in names:
        raise SpectrumReadError(path, "a redrock/zbest redshift file, not a spectrum file")
    if int(h[0].header.get("NAXIS", 0)) == 2:
        raise SpectrumReadError(path, "unknown format: a 2-D image without COEFF0/COEFF1 (not an spPlate)")
    shown = ", ".join(n or "''" for n in names[:8])
    labels = [r.label for r in readers]
    known = f"{', '.join(labels[:-1])} or {labels[-1]}" if len(labels) > 1 else "".join(labels)
    raise SpectrumReadError(path, f"unknown format: not an {known} file (HDUs: {shown})")


def _detect(h: fits.HDUList, path: Path) -> str:
    return _reader(h, path).name


def _is_fits_name(p: Path) -> bool:
    return p.name.lower().endswith(_FITS_SUFFIXES)


def _is_spectrum_file(p: Path) -> bool:
    if not _is_fits_name(p):
        return False
    readers = spectrum_readers()
    if any(r.companion_name is not None and r.companion_name.match(p.name) for r in readers):
        return False
    if any(r.file_name is not None and r.file_name.match(p.name) for r in readers):
        return True
    try:
        detect_format(p)
    except SpectrumReadError:
        return False
    return True
