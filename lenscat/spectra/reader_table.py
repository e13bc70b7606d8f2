"""The table of spectrum-file readers: one entry per survey format, registered by its own module.

A new survey is one new module under :mod:`lenscat.spectra` that defines how to recognise its files
and read them, and registers itself with one call::

    register_reader("desi-coadd", label="DESI coadd", detect=_is_desi_coadd, read=_read_desi_coadd,
                    file_name=re.compile(r"^coadd-"), companion_name=re.compile(r"^(redrock|zbest)-"))

plus one import line in :mod:`lenscat.spectra.readers` (which loads the built-in readers).
:func:`lenscat.spectra.readers.detect_format` tries the readers' ``detect`` in ``order`` and
:func:`lenscat.spectra.readers.read_spectra` calls the ``read`` of the first that matches.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from astropy.io import fits

from lenscat.spectra.spectrum import Spectrum

__all__ = ["SpectrumReader", "register_reader", "spectrum_readers"]


@dataclass(frozen=True)
class SpectrumReader:
    """One survey file format.

    Attributes
    ----------
    name : str
        Format name (what :func:`~lenscat.spectra.readers.detect_format` returns), e.g. ``'sdss-spec'``.
    label : str
        Short human name used in the "unknown format" message, e.g. ``'SDSS spec'``.
    detect : callable
        ``detect(hdulist) -> bool``: whether an open (lazily loaded) FITS file is of this format,
        from its HDUs and headers, not its name.
    read : callable
        ``read(hdulist, path) -> list[Spectrum]``: every spectrum of the file, in file order; raises
        :class:`~lenscat.spectra.readers_fits.SpectrumReadError`.
    file_name : re.Pattern or None
        File names taken as this format without opening them when directories are expanded.
    companion_name : re.Pattern or None
        File names of this survey's companions (redshift, calibration files) that are never
        spectrum files.
    order : int
        Detection order (lower first).
    """

    name: str
    label: str
    detect: Callable[[fits.HDUList], bool]
    read: Callable[[fits.HDUList, Path], list[Spectrum]]
    file_name: re.Pattern[str] | None = None
    companion_name: re.Pattern[str] | None = None
    order: int = 100


_READERS: dict[str, SpectrumReader] = {}


def register_reader(
    name: str,
    *,
    label: str,
    detect: Callable[[fits.HDUList], bool],
    read: Callable[[fits.HDUList, Path], list[Spectrum]],
    file_name: re.Pattern[str] | None = None,
    companion_name: re.Pattern[str] | None = None,
    order: int = 100,
) -> SpectrumReader:
    """Add a survey reader to the table (see :class:`SpectrumReader` for the parameters).

    Returns
    -------
    SpectrumReader
        The registered entry.

    Raises
    ------
    ValueError
        If a reader of another module is already registered under ``name`` (a module registering
        again, e.g. on reload, replaces its entry).
    """
    entry = SpectrumReader(name, label, detect, read, file_name, companion_name, order)
    old = _READERS.get(name)
    if old is not None and old.read.__module__ != read.__module__:
        raise ValueError(f"a spectrum reader {name!r} is already registered")
    _READERS[name] = entry
    return entry


def spectrum_readers() -> list[SpectrumReader]:
    """The registered readers in detection order."""
    return sorted(_READERS.values(), key=lambda r: (r.order, r.name))
