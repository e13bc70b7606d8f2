"""The export format table: name -> writer, file name suffixes, media type, description.

:func:`write_candidates` writes a candidate table (:func:`lenscat.export.catalogue.candidate_table`)
in any registered format, atomically; :func:`export_bytes` returns the same bytes for a web
download; ``lenscat export --format`` offers the registered names. The built-in formats:

* ``fits`` (``.fits``, ``.fit``, ``.fts``, optionally ``.gz``): units and descriptions kept,
  table metadata in the header; strings are ASCII (other characters are transliterated).
* ``votable`` (``.xml``, ``.vot``, ``.votable``): units and descriptions kept; the metadata is
  written as ``INFO`` elements and summarised in the table ``DESCRIPTION``.
* ``ecsv`` (``.ecsv``): units, descriptions and metadata kept.
* ``csv`` (``.csv``): values only (one header line of column names), for spreadsheets.

Where to add a format
---------------------
One writer ``def _write_x(table: Table, path: str) -> None`` (in this module, or in a new module
of this package that imports :func:`register_export_format`) and one registration line::

    register_export_format("x", _write_x, suffixes=(".x",), media_type="...", description="...")

The first suffix is the one a download gets; every suffix is recognised in output file names.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import unicodedata
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from astropy.table import Column, Table

from lenscat.errors import InvalidParameter, LenscatError

__all__ = [
    "EXPORT_FORMATS",
    "FILE_SUFFIXES",
    "MEDIA_TYPES",
    "ExportFormat",
    "export_bytes",
    "export_format",
    "export_format_names",
    "get_export_format",
    "register_export_format",
    "unregister_export_format",
    "write_candidates",
]

Writer = Callable[[Table, str], None]
"""Writes a table to a path (the temporary file :func:`write_candidates` renames into place)."""


@dataclass(frozen=True)
class ExportFormat:
    """One row of the export format table.

    Attributes
    ----------
    name
        Format name (``--format``, the web's ``format=``).
    writer
        Writes a table to a path.
    suffixes
        File name endings that mean this format (lower case); the first is the usual one.
    media_type
        Media type of a download.
    description
        One line for help texts.
    astropy_format
        The astropy format that reads the file back (None if none does).
    hint
        How an error message names the suffixes (default: the usual one).
    """

    name: str
    writer: Writer
    suffixes: tuple[str, ...]
    media_type: str
    description: str = ""
    astropy_format: str | None = None
    hint: str = ""

    @property
    def suffix(self) -> str:
        """The usual file name suffix."""
        return self.suffixes[0]


_TABLE: dict[str, ExportFormat] = {}


def register_export_format(
    name: str,
    writer: Writer,
    *,
    suffixes: tuple[str, ...],
    media_type: str,
    description: str = "",
    astropy_format: str | None = None,
    hint: str = "",
) -> ExportFormat:
    """Add (or replace) an export format; returns its table row (see :class:`ExportFormat`)."""
    if not suffixes:
        raise LenscatError(f"export format {name!r} needs at least one file name suffix")
    low = tuple(s.lower() for s in suffixes)
    fmt = ExportFormat(name, writer, low, media_type, description, astropy_format, hint or low[0])
    _TABLE[name] = fmt
    return fmt


def unregister_export_format(name: str) -> None:
    """Remove an export format (for tests and plug-ins that withdraw)."""
    _TABLE.pop(name, None)


def export_format_names() -> tuple[str, ...]:
    """Registered export format names, in registration order."""
    return tuple(_TABLE)


def get_export_format(name: str) -> ExportFormat:
    """The table row of ``name`` (case-insensitive).

    Raises
    ------
    LenscatError
        An unknown format (the message lists the known ones).
    """
    fmt = _TABLE.get(name.lower())
    if fmt is None:
        raise LenscatError(f"unknown export format {name!r}; expected {', '.join(_TABLE)}")
    return fmt


class _Column(Mapping[str, str]):
    """A live read-only view of one attribute of the table (name -> value)."""

    def __init__(self, attribute: Callable[[ExportFormat], str | None]) -> None:
        self._attribute = attribute

    def __getitem__(self, key: str) -> str:
        value = self._attribute(_TABLE[key])
        if value is None:
            raise KeyError(key)
        return value

    def __iter__(self) -> Iterator[str]:
        return iter([k for k, f in _TABLE.items() if self._attribute(f) is not None])

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def __repr__(self) -> str:
        return repr(dict(self))


EXPORT_FORMATS: Mapping[str, str] = _Column(lambda f: f.astropy_format)
"""Export format name -> astropy format (a live view of the table)."""

MEDIA_TYPES: Mapping[str, str] = _Column(lambda f: f.media_type)
"""Media type of each export format (for a web download; a live view of the table)."""

FILE_SUFFIXES: Mapping[str, str] = _Column(lambda f: f.suffix)
"""The usual file name suffix of each export format (a live view of the table)."""


def _by_suffix(name: str) -> tuple[str, str] | None:
    """(suffix, format) of the longest registered suffix ``name`` (lower case) ends with."""
    pairs = sorted(((s, f.name) for f in _TABLE.values() for s in f.suffixes), key=lambda p: -len(p[0]))
    return next(((s, f) for s, f in pairs if name.endswith(s)), None)


def export_format(path: str | Path, fmt: str | None = None) -> str:
    """The export format (``fits``, ``votable``, ``ecsv``, ``csv``, ...) for ``path`` and an optional ``fmt``.

    Raises
    ------
    LenscatError
        For an unknown format, a format the file name's extension contradicts, or (without
        ``fmt``) an extension that names no format.
    """
    found = _by_suffix(Path(path).name.lower())
    by_suffix = None if found is None else found[1]
    if fmt is not None:
        key = get_export_format(fmt).name
        if by_suffix is not None and by_suffix != key:
            raise InvalidParameter(
                "format",
                f"{path}: the extension says {by_suffix} but the format is {key}; "
                f"use a {_TABLE[key].suffix} file name or {{format}} {by_suffix}",
            )
        return key
    if by_suffix is None:
        usual = [f.hint for f in _TABLE.values()]
        raise LenscatError(
            f"{path}: cannot tell the format from the extension; use {', '.join(usual[:-1])} "
            f"or {usual[-1]}, or give the format ({{format}} {'|'.join(_TABLE)})",
            params="format",
        )
    return by_suffix


# ------------------------------------------------------------------------------------ writers
def _ascii_only(table: Table) -> Table:
    """A copy whose string columns hold only ASCII (FITS cannot store other characters)."""
    out = table.copy(copy_data=False)
    for name in out.colnames:
        col = out[name]
        if col.dtype.kind != "U" or len(col) == 0:
            continue
        values = [str(v) for v in np.asarray(col)]
        if all(v.isascii() for v in values):
            continue
        fixed = [
            unicodedata.normalize("NFKD", v).encode("ascii", "ignore").decode("ascii") if not v.isascii() else v
            for v in values
        ]
        width = max([1] + [len(v) for v in fixed])
        new = Column(np.array(fixed, dtype=f"U{width}"), name=name, unit=col.unit, description=col.description)
        out.replace_column(name, new)
    return out


def _float32_as_written(table: Table) -> Table:
    """A copy whose float32 columns print their shortest round-trip form (0.95, not 0.949999988)."""
    out = table.copy(copy_data=False)
    for name in out.colnames:
        if out[name].dtype == np.float32 and out[name].info.format is None:
            out[name].info.format = _float32_text
    return out


def _float32_text(value: Any) -> str:
    return str(np.float32(value))


def _write_fits(table: Table, path: str) -> None:
    from astropy.io.fits.verify import VerifyWarning

    with warnings.catch_warnings():
        # 'description' is longer than 8 characters: written (and read back) as a HIERARCH card
        warnings.filterwarnings(
            "ignore", message=r"Keyword name .* is greater than 8 characters", category=VerifyWarning
        )
        _ascii_only(table).write(path, format="fits", overwrite=True)


def _write_votable(table: Table, path: str) -> None:
    from astropy.io.votable import from_table, writeto
    from astropy.io.votable.tree import Info

    vot = from_table(table)
    resource = vot.resources[0]
    for key, value in table.meta.items():
        if key != "description" and isinstance(value, str | int | float):
            resource.infos.append(Info(name=str(key), value=str(value)))
    writeto(vot, path)


def _write_ecsv(table: Table, path: str) -> None:
    table.write(path, format="ascii.ecsv", overwrite=True)


def _write_csv(table: Table, path: str) -> None:
    _float32_as_written(table).write(path, format="ascii.csv", overwrite=True)


register_export_format(
    "fits",
    _write_fits,
    suffixes=(".fits", ".fits.gz", ".fit.gz", ".fts.gz", ".fit", ".fts"),
    media_type="application/fits",
    description="FITS binary table: units, descriptions, metadata in the header; ASCII strings",
    astropy_format="fits",
)
register_export_format(
    "votable",
    _write_votable,
    suffixes=(".vot", ".votable", ".xml"),
    media_type="application/x-votable+xml",
    hint=".vot/.xml",
    description="VOTable: units and descriptions; metadata as INFO elements",
    astropy_format="votable",
)
register_export_format(
    "ecsv",
    _write_ecsv,
    suffixes=(".ecsv",),
    media_type="text/x-ecsv",
    description="ECSV: units, descriptions and metadata",
    astropy_format="ascii.ecsv",
)
register_export_format(
    "csv",
    _write_csv,
    suffixes=(".csv",),
    media_type="text/csv",
    description="CSV: values only, for spreadsheets",
    astropy_format="ascii.csv",
)


# ------------------------------------------------------------------------------------ files
def write_candidates(table: Table, path: str | Path, fmt: str | None = None) -> Path:
    """Write a candidate table in a registered format, replacing ``path`` atomically.

    Parameters
    ----------
    table
        Usually from :func:`lenscat.export.catalogue.candidate_table` (any astropy Table without
        object columns works).
    path
        Output file; its directory is created if needed. An existing file is replaced only once
        the new one is completely written (temporary file in the same directory, then a rename).
    fmt
        ``'fits'``, ``'votable'``, ``'ecsv'``, ``'csv'`` or another registered format; default
        from the extension (``.fits``, ``.fits.gz``, ``.fit``, ``.xml``, ``.vot``, ``.votable``,
        ``.ecsv``, ``.csv``). A ``.gz`` FITS name is gzip-compressed.

    Returns
    -------
    Path
        The file written.

    Raises
    ------
    LenscatError
        When the format is unknown or contradicts the extension, or the file cannot be written.
    """
    key = export_format(path, fmt)
    dest = Path(path).expanduser()
    found = _by_suffix(dest.name.lower())
    suffix = found[0] if found is not None else _TABLE[key].suffix
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        mode = dest.stat().st_mode & 0o777 if dest.exists() else 0o644
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=f".part{suffix}")
        os.close(fd)
    except OSError as exc:
        raise LenscatError(f"{dest}: cannot write here ({exc.strerror or exc})") from exc
    try:
        _TABLE[key].writer(table, tmp)
        os.chmod(tmp, mode)
        os.replace(tmp, dest)
    except OSError as exc:
        raise LenscatError(f"{dest}: cannot write the {key} file ({exc.strerror or exc})") from exc
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    return dest


def export_bytes(table: Table, fmt: str) -> bytes:
    """The bytes :func:`write_candidates` would write in ``fmt`` (for a web download).

    See :data:`MEDIA_TYPES` and :data:`FILE_SUFFIXES` for the response headers.
    """
    key = export_format(f"candidates{FILE_SUFFIXES.get(str(fmt).lower(), '')}", fmt)
    with tempfile.TemporaryDirectory(prefix="lenscat-export-") as d:
        p = write_candidates(table, Path(d) / f"candidates{FILE_SUFFIXES[key]}", key)
        return p.read_bytes()
