"""Read tabular inputs column by column, whatever the file format.

Supported: anything astropy's unified table reader handles (FITS binary tables, CSV/TSV, ECSV,
VOTable, Parquet, astropy HDF5 tables; ``.gz`` compressed text too) and the HDF5 layout of
Stein et al. (2022): one root dataset per catalogue column plus ``images`` (N, bands, H, W).
"""

from __future__ import annotations

import errno
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from lenscat.errors import InputFileError
from lenscat.io.hdf5 import expected_images_shape, hdf5_fingerprint
from lenscat.io.textscan import BadRow, scan_text

# file suffix -> astropy format name
_ASTROPY_FORMATS = {
    ".fits": "fits",
    ".fit": "fits",
    ".fts": "fits",
    ".csv": "ascii.csv",
    ".tsv": "ascii.tab",
    ".tab": "ascii.tab",
    ".txt": "ascii",
    ".dat": "ascii",
    ".ecsv": "ascii.ecsv",
    ".vot": "votable",
    ".votable": "votable",
    ".xml": "votable",
    ".parquet": "parquet",
    ".pq": "parquet",
}
HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf")


def _suffix(path: Path) -> str:
    name = path.name.lower()
    if name.endswith(".gz"):
        name = name[:-3]
    return Path(name).suffix


@dataclass
class ColumnTable:
    """A table held as named numpy columns (masked arrays where values are missing).

    Attributes
    ----------
    path
        The file read.
    format
        Format name (an astropy format, or ``'hdf5-stein'``).
    columns
        Column name -> 1-D (or 2-D for per-band vectors) array, all of length ``n_rows``.
    units
        Column name -> unit string, where the file declares one.
    images_shape
        ``(N, bands, H, W)`` of the ``images`` dataset in a Stein-layout HDF5 file, else None.
    bad_rows
        Rows of a text table with more or fewer fields than its header (read with
        ``bad_rows='keep'``): their cells are all missing here, and the ingest rejects them.
    sha256
        Digest of a Stein-layout HDF5 file, taken while it was read (:func:`~lenscat.io.hdf5.hdf5_fingerprint`).
    image_digests
        ``(N, 16)`` per-row digests of its ``images`` (None without images).
    """

    path: Path
    format: str
    columns: dict[str, np.ndarray]
    units: dict[str, str] = field(default_factory=dict)
    images_shape: tuple[int, ...] | None = None
    bad_rows: list[BadRow] = field(default_factory=list)
    sha256: str | None = None
    image_digests: np.ndarray | None = None

    @property
    def n_rows(self) -> int:
        """Number of data rows."""
        if not self.columns:
            return 0
        return len(next(iter(self.columns.values())))

    def find(self, candidates: list[str] | tuple[str, ...]) -> str | None:
        """First column whose name matches one of ``candidates`` (case-insensitive)."""
        lower = {name.lower(): name for name in self.columns}
        for cand in candidates:
            if cand.lower() in lower:
                return lower[cand.lower()]
        return None

    def require(self, name: str, what: str, param: str | None = None) -> str:
        """Return the real name of column ``name`` or raise a one-line error naming the file.

        ``what`` says what the column is for; ``param``, the caller's parameter that named the column
        (e.g. ``"id_col"``), is added to the message as a parameter the shells spell their own way.
        """
        found = self.find([name])
        if found is None:
            why = f"{what} ({{{param}}})" if param else what
            raise InputFileError(
                f"{self.path}: no column {name!r} for {why}; columns are: {', '.join(self.columns)}",
                params=param or (),
            )
        return found


def read_table(
    path: str | Path,
    format: str | None = None,
    delimiter: str | None = None,
    *,
    bad_rows: Literal["raise", "keep"] = "raise",
) -> ColumnTable:
    """Read a whole table file into a :class:`ColumnTable`.

    Parameters
    ----------
    path
        File to read.
    format
        astropy format name, or ``'hdf5-stein'``; guessed from the suffix when omitted.
    delimiter
        Field delimiter for text tables (default: from the suffix).
    bad_rows
        What to do with text rows that have more or fewer fields than the header: ``'raise'`` an
        error naming the first, or ``'keep'`` them as all-missing rows listed in
        :attr:`ColumnTable.bad_rows` (the ingests reject them row by row).

    Raises
    ------
    InputFileError
        The file is missing, unreadable, empty, truncated, corrupt or not a table, is not UTF-8
        text, or has an absurdly long field; the one-line message names the file (and the row and
        column where there is one).
    """
    path = checked_input_path(path)
    suffix = _suffix(path)
    if format is None and suffix in HDF5_SUFFIXES:
        return _read_hdf5(path)
    if format == "hdf5-stein":
        return _read_hdf5(path)
    fmt = format or _ASTROPY_FORMATS.get(suffix)
    if fmt == "parquet":
        return _read_parquet(path)
    if fmt is None:
        raise InputFileError(
            f"{path}: unknown table format {suffix!r}; pass {{format}} (e.g. fits, ascii.csv, votable, parquet)",
            params="format",
        )
    table = _read_astropy(path, fmt, delimiter)
    if table.bad_rows and bad_rows == "raise":
        first = table.bad_rows[0]
        more = f" (and {len(table.bad_rows) - 1} more such rows)" if len(table.bad_rows) > 1 else ""
        raise InputFileError(f"{first.message(path)}{more}")
    return table


def checked_input_path(path: str | Path) -> Path:
    """The absolute, resolved path of a readable, non-empty regular file.

    Raises
    ------
    InputFileError
        One line: no such file, a symbolic-link loop, a directory, not a regular file, not
        readable, or empty.
    """
    given = Path(path).expanduser().absolute()
    try:
        resolved = given.resolve(strict=True)
        st = resolved.stat()
    except FileNotFoundError:
        raise InputFileError(f"{given}: no such file") from None
    except RuntimeError as exc:  # Python < 3.13: "Symlink loop from ..."
        raise InputFileError(f"{given}: symbolic link loop; cannot read it") from exc
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise InputFileError(f"{given}: symbolic link loop; cannot read it") from exc
        raise InputFileError(f"{given}: cannot open: {exc.strerror or exc}") from exc
    if stat.S_ISDIR(st.st_mode):
        raise InputFileError(f"{resolved}: is a directory, not a table file")
    if not stat.S_ISREG(st.st_mode):
        raise InputFileError(f"{resolved}: not a regular file")
    try:
        with resolved.open("rb"):
            pass
    except OSError as exc:
        raise InputFileError(f"{resolved}: cannot open: {exc.strerror or exc}") from exc
    if st.st_size == 0:
        raise InputFileError(f"{resolved}: the file is empty")
    return resolved


def _text_bytes(path: Path) -> bytes:
    """A text table's bytes, decompressed when the name ends in ``.gz``."""
    if not path.name.lower().endswith(".gz"):
        return path.read_bytes()
    import gzip
    import zlib

    try:
        with gzip.open(path, "rb") as fh:
            raw = fh.read()
    except (OSError, EOFError, zlib.error) as exc:
        raise InputFileError(f"{path}: not a valid gzip file (truncated or not compressed?): {exc}") from exc
    if not raw:
        raise InputFileError(f"{path}: the file is empty (after decompression)")
    return raw


def _expand_rows(col: np.ndarray, keep: np.ndarray, n: int) -> np.ndarray:
    """A column read without the bad rows, back at full length with those rows missing."""
    out = np.ma.masked_all((n, *col.shape[1:]), dtype=col.dtype)
    out[keep] = col
    return out


def _read_astropy(path: Path, fmt: str, delimiter: str | None) -> ColumnTable:
    import warnings

    from astropy.table import Table
    from astropy.utils.exceptions import AstropyWarning

    kwargs: dict[str, Any] = {"format": fmt}
    source: Any = str(path)
    scan = None
    if fmt.startswith("ascii"):
        if delimiter is not None:
            kwargs["delimiter"] = delimiter
        # Keep text columns as text; never guess a different format than asked for.
        kwargs["guess"] = False
        # Structure, encoding and field lengths first, in linear time (astropy's own header
        # parsing is quadratic in a field's length and its messages give byte offsets).
        raw = _text_bytes(path)
        scan = scan_text(path, raw, fmt, delimiter)
        text = scan.text
        if text is None and path.name.lower().endswith(".gz"):
            text = raw.decode("ascii")  # astropy's fast reader does not decompress: hand it the text
        if text is not None:  # a string without a newline would be taken for a file name
            source = text if text.endswith("\n") else text + "\n"
        del raw, text
        if not scan.ascii:
            kwargs["fast_reader"] = False  # the C reader is ASCII-only (its header parser fails on UTF-8)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", AstropyWarning)
            table = Table.read(source, **kwargs)
    except Exception as exc:  # astropy raises many types for bad files
        msg = " ".join(str(exc).split())
        raise InputFileError(f"{path}: cannot read as {fmt}: {msg}") from exc
    keep = None
    if scan is not None and scan.bad_rows:
        keep = np.ones(scan.n_rows, dtype=bool)
        keep[[b.row - 1 for b in scan.bad_rows]] = False
        if len(table) != int(keep.sum()):
            raise InputFileError(
                f"{path}: read {len(table)} rows where {int(keep.sum())} were expected "
                f"(an unusual layout for {fmt}?); pass {{format}}",
                params="format",
            )
    columns: dict[str, np.ndarray] = {}
    units: dict[str, str] = {}
    for name in table.colnames:
        col = table[name]
        if getattr(col, "unit", None) is not None:
            units[name] = str(col.unit)
        # plain numpy masked arrays: astropy Column element access is ~30x slower
        mask = np.ma.getmaskarray(col)
        data = np.array(np.ma.getdata(col))
        if data.dtype.kind == "S":
            ascii_only = data.size == 0 or bool((np.frombuffer(data.tobytes(), np.uint8) < 128).all())
            data = (
                data.astype(str)
                if ascii_only  # a C cast; ~10x faster than decoding
                else np.char.decode(data, "utf-8", errors="replace")
            )
        elif data.dtype.kind == "O":
            data = np.array([("" if v is None else str(v)) for v in data], dtype=str)
        columns[name] = np.ma.MaskedArray(data, mask=mask)
        if keep is not None:
            columns[name] = _expand_rows(columns[name], keep, len(keep))
    return ColumnTable(
        path=path, format=fmt, columns=columns, units=units, bad_rows=scan.bad_rows if scan is not None else []
    )


def _read_hdf5(path: Path) -> ColumnTable:
    import h5py

    try:
        fh = h5py.File(path, "r")
    except OSError as exc:
        raise InputFileError(f"{path}: cannot open as HDF5 (truncated or corrupt?): {exc}") from exc
    with fh:
        datasets = {k: v for k, v in fh.items() if isinstance(v, h5py.Dataset)}
        if not datasets:
            # Not Stein's layout: maybe an astropy-written HDF5 table.
            return _read_astropy(path, "hdf5", None)
        images_shape = tuple(datasets["images"].shape) if "images" in datasets else None
        if images_shape is not None:  # refused before anything is read or written
            expected_images_shape(path, datasets["images"])
        lengths = {k: d.shape[0] for k, d in datasets.items() if d.ndim >= 1 and k != "images"}
        if not lengths:
            raise InputFileError(f"{path}: HDF5 file has no 1-D catalogue datasets at its root")
        n = max(set(lengths.values()), key=list(lengths.values()).count)
        if images_shape is not None and images_shape[0] != n:
            raise InputFileError(f"{path}: 'images' has {images_shape[0]} rows but the catalogue datasets have {n}")
        columns: dict[str, np.ndarray] = {}
        units: dict[str, str] = {}
        raw: dict[str, np.ndarray] = {}
        for name, ds in datasets.items():
            if name == "images" or ds.ndim == 0 or ds.ndim > 2:
                continue
            if ds.shape[0] != n:
                raise InputFileError(
                    f"{path}: dataset {name!r} has {ds.shape[0]} rows, the others {n} (truncated file?)"
                )
            try:
                arr = ds[()]
            except OSError as exc:
                raise InputFileError(f"{path}: dataset {name!r} cannot be read (corrupt?): {exc}") from exc
            raw[name] = arr
            if arr.dtype.kind in "SO":
                arr = np.array([v.decode() if isinstance(v, bytes) else str(v) for v in arr], dtype=str)
            columns[name] = np.ma.asarray(arr)
            unit = ds.attrs.get("unit")
            if unit is not None:
                units[name] = unit.decode() if isinstance(unit, bytes) else str(unit)
        try:  # the digest covers the catalogue as read above, and every image row, read once here
            fingerprint = hdf5_fingerprint(fh, raw)
        except OSError as exc:
            raise InputFileError(f"{path}: dataset 'images' cannot be read (corrupt?): {exc}") from exc
    return ColumnTable(
        path=path,
        format="hdf5-stein",
        columns=columns,
        units=units,
        images_shape=images_shape,
        sha256=fingerprint.sha256,
        image_digests=fingerprint.image_digests,
    )


def _read_parquet(path: Path) -> ColumnTable:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as exc:
        raise InputFileError(f"{path}: cannot read as parquet: {' '.join(str(exc).split())}") from exc
    columns: dict[str, np.ndarray] = {}
    for name in table.column_names:
        col = table.column(name).combine_chunks()
        mask = np.asarray(col.is_null())
        if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
            arr = np.array(["" if v is None else v for v in col.to_pylist()], dtype=str)
        elif pa.types.is_list(col.type) or pa.types.is_fixed_size_list(col.type):
            arr = np.array([np.nan if v is None else v for v in col.to_pylist()], dtype=float)
        else:
            arr = col.to_numpy(zero_copy_only=False)
            if arr.dtype.kind == "O":
                arr = arr.astype(str)
        columns[name] = np.ma.masked_array(arr, mask=mask if arr.ndim == 1 else np.zeros(arr.shape, bool))
    units: dict[str, str] = {}
    yaml_meta = (table.schema.metadata or {}).get(b"table_meta_yaml")
    if yaml_meta:  # written by astropy: column units live in its YAML header
        from astropy.table.meta import get_header_from_yaml

        try:
            header = get_header_from_yaml(yaml_meta.decode().splitlines())
            units = {d["name"]: str(d["unit"]) for d in header.get("datatype", []) if d.get("unit")}
        except Exception:  # units are optional metadata; a bad header must not block the data
            units = {}
    return ColumnTable(path=path, format="parquet", columns=columns, units=units)
