"""The cutout format table: which reader opens each ``lenscat.cutout_files.format``.

Every module of this package is one format: it defines a store class (see
:class:`lenscat.images.types.CutoutStore`) and ends with one registration line, e.g.::

    register_format(NAME, HDF5CutoutStore, description="...", row_digests=True, aliases=("hdf5",))

The table imports every module of this package the first time it is consulted, so the modules
register themselves; :func:`lenscat.images.store.open_store`, the FITS and HDF5 ingest, the gallery
and ``lenscat db files`` look formats up here rather than naming them.

Where to add a format
---------------------
1. A new module ``lenscat/images/formats/<name>.py`` with the store class (``__len__``, ``get``,
   ``get_one``, ``iter_batches``, ``close``; rows checked with :func:`lenscat.images.rows.check_rows`).
2. Its last line: ``register_format("<name>", TheStore, description=..., single_object=...)``.
3. The ingest that registers such files writes ``format = '<name>'`` into ``lenscat.cutout_files``.
   The schema checks only the name's shape (migration 0015): no migration is needed for a new format.
"""

from __future__ import annotations

import importlib
import pkgutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from lenscat.errors import LenscatError
from lenscat.images.types import CutoutFormat

__all__ = ["CutoutFormat", "format_names", "get_format", "register_format", "registered_format", "unregister_format"]

_TABLE: dict[str, CutoutFormat] = {}
_ALIASES: dict[str, str] = {}
_LOCK = threading.RLock()
_loaded = False


def _load_builtin() -> None:
    """Import every module of this package once (each registers its format)."""
    global _loaded
    if _loaded:
        return
    with _LOCK:
        if _loaded:
            return
        for mod in pkgutil.iter_modules(__path__):
            importlib.import_module(f"{__name__}.{mod.name}")
        _loaded = True


def register_format(
    name: str,
    reader: Any,
    *,
    description: str = "",
    single_object: bool = False,
    member_files: bool = False,
    row_digests: bool = False,
    aliases: tuple[str, ...] = (),
) -> CutoutFormat:
    """Add (or replace) a cutout format in the table.

    Parameters
    ----------
    name
        The ``lenscat.cutout_files.format`` value.
    reader
        Store class; see :class:`lenscat.images.types.CutoutFormat` for the other parameters.

    Returns
    -------
    CutoutFormat
        The table entry.
    """
    fmt = CutoutFormat(name, reader, description, single_object, member_files, row_digests, tuple(aliases))
    with _LOCK:
        _TABLE[name] = fmt
        for alias in fmt.aliases:
            _ALIASES[alias] = name
    return fmt


def unregister_format(name: str) -> None:
    """Remove a format and its aliases (for tests and plug-ins that withdraw)."""
    with _LOCK:
        fmt = _TABLE.pop(name, None)
        for alias in fmt.aliases if fmt else ():
            _ALIASES.pop(alias, None)


@contextmanager
def registered_format(name: str, reader: Any, **options: Any) -> Iterator[CutoutFormat]:
    """A format registered for the duration of a ``with`` block (a replaced one is restored)."""
    _load_builtin()
    old = _TABLE.get(name)
    fmt = register_format(name, reader, **options)
    try:
        yield fmt
    finally:
        unregister_format(name)
        if old is not None:
            register_format(
                old.name,
                old.reader,
                description=old.description,
                single_object=old.single_object,
                member_files=old.member_files,
                row_digests=old.row_digests,
                aliases=old.aliases,
            )


def format_names() -> tuple[str, ...]:
    """Registered format names, in registration order."""
    _load_builtin()
    return tuple(_TABLE)


def get_format(name: str) -> CutoutFormat:
    """The table entry of a format name (or alias).

    Raises
    ------
    LenscatError
        An unknown format (the message lists the known ones).
    """
    _load_builtin()
    fmt = _TABLE.get(_ALIASES.get(name, name))
    if fmt is None:
        raise LenscatError(f"unknown cutout format {name!r} (expected {' or '.join(_TABLE)})")
    return fmt
