"""Read tabular inputs column by column, whatever the file format.

Supported: anything astropy's unified table reader handles (FITS binary tables, CSV/TSV, ECSV,
VOTable, Parquet, astropy HDF5 tables; ``.gz`` compressed text too) and the HDF5 layout of
Stein et al. (2022): one root dataset per catalogue column plus ``images`` (N, bands, H, W).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lenscat.errors import InputFileError

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
    """

    path: Path
    format: str
    columns: dict[str, np.ndarray]
    units: dict[str, str] = field(default_factory=dict)
    images_shape: tuple[int, ...] | None = None

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

    def require(self, name: str, what: str) -> str:
        """Return the real name of column ``name`` or raise a one-line error naming the file."""
        found = self.find([name])
        if found is None:
            raise InputFileError(
                f"{self.path}: no column {name!r} for {what}; "
                f"columns are: {', '.join(self.columns)}"
            )
        return found


def read_table(path: str | Path, format: str | None = None, delimiter: str | None = None) -> ColumnTable:
    """Read a whole table file into a :class:`ColumnTable`.

    Parameters
    ----------
    path
        File to read.
    format
        astropy format name, or ``'hdf5-stein'``; guessed from the suffix when omitted.
    delimiter
        Field delimiter for text tables (default: from the suffix).

    Raises
    ------
    InputFileError
        The file is missing, truncated, corrupt or not a table; the message names the file.
    """
    path = Path(path).expanduser().resolve()
    if not path.exists():
        raise InputFileError(f"{path}: no such file")
    if not path.is_file():
        raise InputFileError(f"{path}: not a regular file")
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
            f"{path}: unknown table format {suffix!r}; pass --format (e.g. fits, ascii.csv, votable, parquet)"
        )
    return _read_astropy(path, fmt, delimiter)


def _read_astropy(path: Path, fmt: str, delimiter: str | None) -> ColumnTable:
    import warnings

    from astropy.table import Table
    from astropy.utils.exceptions import AstropyWarning

    kwargs: dict[str, Any] = {"format": fmt}
    if fmt.startswith("ascii"):
        if delimiter is not None:
            kwargs["delimiter"] = delimiter
        # Keep text columns as text; never guess a different format than asked for.
        kwargs["guess"] = False
    source: Any = str(path)
    try:
        if fmt.startswith("ascii") and path.name.lower().endswith(".gz"):
            # astropy's fast reader does not decompress: hand it the text.
            import gzip

            with gzip.open(path, "rt", encoding="utf-8") as fh:
                source = fh.read()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", AstropyWarning)
            try:
                table = Table.read(source, **kwargs)
            except UnicodeDecodeError:
                if not fmt.startswith("ascii"):
                    raise
                # astropy's fast C reader is ASCII-only; the Python reader decodes UTF-8.
                table = Table.read(source, encoding="utf-8", **kwargs)
    except Exception as exc:  # astropy raises many types for bad files
        msg = " ".join(str(exc).split())
        raise InputFileError(f"{path}: cannot read as {fmt}: {msg}") from exc
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
            data = (data.astype(str) if ascii_only  # a C cast; ~10x faster than decoding
                    else np.char.decode(data, "utf-8", errors="replace"))
        elif data.dtype.kind == "O":
            data = np.array([("" if v is None else str(v)) for v in data], dtype=str)
        columns[name] = np.ma.MaskedArray(data, mask=mask)
    return ColumnTable(path=path, format=fmt, columns=columns, units=units)


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
        lengths = {k: d.shape[0] for k, d in datasets.items() if d.ndim >= 1 and k != "images"}
        if not lengths:
            raise InputFileError(f"{path}: HDF5 file has no 1-D catalogue datasets at its root")
        n = max(set(lengths.values()), key=list(lengths.values()).count)
        if images_shape is not None and images_shape[0] != n:
            raise InputFileError(
                f"{path}: 'images' has {images_shape[0]} rows but the catalogue datasets have {n}"
            )
        columns: dict[str, np.ndarray] = {}
        units: dict[str, str] = {}
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
            if arr.dtype.kind in "SO":
                arr = np.array([v.decode() if isinstance(v, bytes) else str(v) for v in arr], dtype=str)
            columns[name] = np.ma.asarray(arr)
            unit = ds.attrs.get("unit")
            if unit is not None:
                units[name] = unit.decode() if isinstance(unit, bytes) else str(unit)
    return ColumnTable(path=path, format="hdf5-stein", columns=columns, units=units, images_shape=images_shape)


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
