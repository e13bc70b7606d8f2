"""The packed array store: every spectrum's pixels as contiguous float32 rows in HDF5.

Reading one SDSS FITS file costs 4-40 ms; a scan of 10^6 spectra must not pay that again for every
detector. At ingest each spectrum is put once onto :data:`~lenscat.spectra.grid.FULL` (3600-10400 A,
the whole SDSS/BOSS/DESI range) and appended to ``LENSCAT_HOME/spectra/<name>.h5``. The Lyman-alpha
detectors read only the compact window datasets (3800-5000 A, a column slice of FULL); the [OII]
detector and the per-hit follow-up (vetoes) read the full-range datasets:

========================  ==============  ===========================================
dataset                   shape           content
========================  ==============  ===========================================
``flux``                  (N, 1193) f4    flux [1e-17 erg/s/cm^2/A] on WINDOW
``ivar``                  (N, 1193) f4    inverse variance, 0 = masked or not covered
``continuum``             (N, 1193) f4    pipeline model where the file has one, else ``continuum_fit``
``continuum_fit``         (N, 1193) f4    the project's continuum fit (always present)
``sky``                   (N, 1193) f4    sky flux the pipeline subtracted (0 if unknown)
``full_flux``             (N, 4608) f4    flux on FULL
``full_ivar``             (N, 4608) f4    inverse variance on FULL, 0 = masked or not covered
``full_model``            (N, 4608) f4    pipeline best-fit model on FULL (0 where the file has none)
``full_fit``              (N, 4608) f4    the project's continuum fit on FULL
``z``                     (N,) f8         pipeline redshift of the galaxy (NaN if unknown)
``continuum_source``      (N,) u1         0 = pipeline model, 1 = the project's fit
``has_model``             (N,) bool       the file has a pipeline model
========================  ==============  ===========================================

The window datasets equal the FULL datasets' window columns (``full_*[:, PackedFull.window()]``),
``continuum_fit`` included: the project's fit is one fit over the full range
(:func:`lenscat.spectra.continuum_full.fit_continua_full`). The full-range datasets are compressed (lzf,
row chunks of :data:`FULL_CHUNK_ROWS`); see ``docs/benchmarks.md`` for the measured sizes and rates.

Stores written before full-range packing hold ``veto_flux``, ``veto_ivar``, ``veto_continuum``
(4900-8850 A) instead of ``full_*`` and no ``continuum_fit``/``has_model``: they are still read
(:meth:`PackStore.read_veto`; :attr:`PackedRows.continuum_fit` is None), but
:meth:`PackStore.read_full` refuses them, and new rows cannot be appended to them.

Rows are only appended. The database row of a spectrum (``lenscat.spectra.pack_row``) is written
after its pixels are flushed, so a crash leaves at most unreferenced rows at the end, never a
reference to missing pixels. One process writes a store at a time (an exclusive lock file).
"""

from __future__ import annotations

import fcntl
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from lenscat.errors import LenscatError
from lenscat.spectra.grid import FULL, VETO, WINDOW, LogGrid, column_slice, to_grid
from lenscat.spectra.spectrum import Spectrum

WINDOW_SETS = ("flux", "ivar", "continuum", "sky")
#: window datasets of full-range stores
WINDOW_FIT_SETS = ("continuum_fit",)
FULL_SETS = ("full_flux", "full_ivar", "full_model", "full_fit")
#: the red datasets of stores written before full-range packing (no longer written)
VETO_SETS = ("veto_flux", "veto_ivar", "veto_continuum")
#: continuum choices of :meth:`PackedFull.continuum`
CONTINUUM_CHOICES = ("pipeline", "fit")
#: HDF5 row chunk and filter of the full-range datasets (chosen by measurement, docs/benchmarks.md)
FULL_CHUNK_ROWS = 16
FULL_COMPRESSION: str | None = "lzf"
FULL_COMPRESSION_OPTS: int | None = None
FULL_SHUFFLE = True


def _empty_bool() -> np.ndarray:
    return np.zeros(0, dtype=bool)


@dataclass
class PackedRows:
    """A block of packed spectra on WINDOW (rows of the store, or built in memory).

    ``continuum`` is the pipeline model where the file has one, else the project's fit;
    ``continuum_fit`` is always the project's fit (None: rows of a store written before it was kept);
    ``has_model`` defaults to ``continuum_source == 0``.
    """

    flux: np.ndarray
    ivar: np.ndarray
    continuum: np.ndarray
    sky: np.ndarray
    z: np.ndarray
    continuum_source: np.ndarray
    continuum_fit: np.ndarray | None = None
    has_model: np.ndarray = field(default_factory=_empty_bool)

    def __post_init__(self) -> None:
        if self.has_model.shape[0] != self.flux.shape[0]:
            self.has_model = np.asarray(self.continuum_source) == 0

    def __len__(self) -> int:
        return int(self.flux.shape[0])

    def take(self, index: np.ndarray) -> PackedRows:
        """The rows ``index``."""
        idx = np.asarray(index)
        return PackedRows(
            self.flux[idx],
            self.ivar[idx],
            self.continuum[idx],
            self.sky[idx],
            self.z[idx],
            self.continuum_source[idx],
            None if self.continuum_fit is None else self.continuum_fit[idx],
            self.has_model[idx],
        )


@dataclass
class PackedVeto:
    """Veto-range rows (4900-8850 A) of some spectra."""

    flux: np.ndarray
    ivar: np.ndarray
    continuum: np.ndarray


def _choices(choice: str | Sequence[str], n: int) -> np.ndarray:
    ch = np.full(n, choice, dtype=object) if isinstance(choice, str) else np.asarray(list(choice), dtype=object)
    if ch.shape != (n,):
        raise LenscatError(f"{ch.size} continuum choices for {n} spectra")
    bad = sorted({str(c) for c in ch} - set(CONTINUUM_CHOICES))
    if bad:
        raise LenscatError(f"unknown continuum {bad[0]!r}; expected one of {', '.join(CONTINUUM_CHOICES)}")
    return ch


@dataclass
class PackedFull:
    """Full-range rows (3600-10400 A, :data:`~lenscat.spectra.grid.FULL`) of some spectra.

    Attributes
    ----------
    flux : numpy.ndarray
        (N, FULL.n) float32 flux density [1e-17 erg/s/cm^2/A].
    ivar : numpy.ndarray
        (N, FULL.n) float32 inverse variance; 0 = masked or not covered.
    model : numpy.ndarray
        (N, FULL.n) float32 pipeline best-fit model (SDSS/BOSS ``model``, DESI redrock) [1e-17
        erg/s/cm^2/A]; 0 where the file has none.
    fit : numpy.ndarray
        (N, FULL.n) float32 the project's continuum fit [1e-17 erg/s/cm^2/A] (always present).
    z : numpy.ndarray
        (N,) float64 pipeline redshift (NaN unknown).
    has_model : numpy.ndarray
        (N,) bool, the file has a pipeline model.
    """

    flux: np.ndarray
    ivar: np.ndarray
    model: np.ndarray
    fit: np.ndarray
    z: np.ndarray
    has_model: np.ndarray

    def __len__(self) -> int:
        return int(self.flux.shape[0])

    @property
    def wave(self) -> np.ndarray:
        """Pixel wavelengths [Angstrom, vacuum] (FULL)."""
        return FULL.wave

    def continuum(self, choice: str | Sequence[str]) -> np.ndarray:
        """(N, FULL.n) float32 continuum, per row ``'pipeline'`` (the model where the file has one, else
        the fit) or ``'fit'`` (always the project's fit); one string applies to every row.

        Raises
        ------
        LenscatError
            Unknown choice, or as many choices as rows are not given.
        """
        ch = _choices(choice, len(self))
        use_model = (ch == "pipeline") & np.asarray(self.has_model, dtype=bool)
        return np.asarray(np.where(use_model[:, None], self.model, self.fit), dtype=np.float32)

    @staticmethod
    def window() -> slice:
        """The FULL columns that are WINDOW (WINDOW is a column slice of FULL)."""
        return column_slice(FULL, WINDOW)

    @staticmethod
    def veto() -> slice:
        """The FULL columns that are the old veto range VETO (4900-8850 A)."""
        return column_slice(FULL, VETO)

    def take(self, index: np.ndarray) -> PackedFull:
        """The rows ``index``."""
        idx = np.asarray(index)
        return PackedFull(
            self.flux[idx], self.ivar[idx], self.model[idx], self.fit[idx], self.z[idx], self.has_model[idx]
        )


def pack_spectra(
    spectra: list[Spectrum], *, full: LogGrid = FULL, window: LogGrid = WINDOW
) -> tuple[PackedRows, PackedFull]:
    """Put spectra onto the full-range grid and its window; fit the project's continuum for every one.

    Each spectrum is resampled once onto ``full`` (:func:`lenscat.spectra.grid.to_grid`); the window
    arrays are its ``window`` columns. The project's continuum
    (:func:`lenscat.spectra.continuum_full.fit_continua_full`: eigenspectra times smooth polynomials plus a
    polynomial, at the pipeline redshift) is fitted for every spectrum; the pipeline model is kept
    beside it where the file has one. ``PackedRows.continuum`` is the model where there is one, else
    the fit.

    Parameters
    ----------
    spectra : list of Spectrum
        Spectra as the readers return them.
    full, window : LogGrid
        The full-range grid and the window (a column slice of ``full``).

    Returns
    -------
    tuple
        (:class:`PackedRows` on ``window``, :class:`PackedFull` on ``full``).
    """
    from lenscat.spectra.continuum_full import fit_continua_full

    ws = column_slice(full, window)
    n = len(spectra)
    f = {k: np.zeros((n, full.n), np.float32) for k in ("flux", "ivar", "model", "sky")}
    z = np.full(n, np.nan)
    has_model = np.zeros(n, dtype=bool)
    for i, s in enumerate(spectra):
        ivar, (flux, model, sky) = to_grid(s.wave, s.flux, s.model, s.sky, ivar=s.ivar, grid=full)
        f["flux"][i], f["ivar"][i] = flux, ivar
        if sky is not None:
            f["sky"][i] = sky
        if model is not None and np.any(model != 0):
            f["model"][i] = model
            has_model[i] = True
        z[i] = s.z if s.z is not None else np.nan
    fit = fit_continua_full(full.wave, f["flux"], f["ivar"], z).astype(np.float32)
    packed_full = PackedFull(flux=f["flux"], ivar=f["ivar"], model=f["model"], fit=fit, z=z, has_model=has_model)
    wfit = np.ascontiguousarray(fit[:, ws])
    cont = np.where(has_model[:, None], f["model"][:, ws], wfit).astype(np.float32)
    rows = PackedRows(
        flux=np.ascontiguousarray(f["flux"][:, ws]),
        ivar=np.ascontiguousarray(f["ivar"][:, ws]),
        continuum=cont,
        sky=np.ascontiguousarray(f["sky"][:, ws]),
        z=z.copy(),
        continuum_source=np.where(has_model, 0, 1).astype(np.uint8),
        continuum_fit=wfit,
        has_model=has_model.copy(),
    )
    return rows, packed_full


def window_quality(rows: PackedRows) -> tuple[np.ndarray, np.ndarray]:
    """Per spectrum: fraction of window pixels with ivar > 0, median continuum S/N per good pixel."""
    good = rows.ivar > 0
    cov = good.mean(axis=1)
    med = np.zeros(len(rows))
    has = good.any(axis=1)
    if has.any():
        snr = np.where(good[has], rows.continuum[has] * np.sqrt(rows.ivar[has]), np.nan)
        med[has] = np.nanmedian(snr, axis=1)
    return cov.astype(np.float32), np.nan_to_num(med).astype(np.float32)


class PackStore:
    """An HDF5 array store of packed spectra (append-only).

    The grids are kept in the file's attributes (``window_k0``, ``window_n``, ``full_k0``,
    ``full_n``, ``dlog``) and checked against this object's grids whenever the file is opened.
    """

    def __init__(self, path: str | Path, *, window: LogGrid = WINDOW, veto: LogGrid = VETO, full: LogGrid = FULL):
        self.path = Path(path)
        self.window = window
        self.veto = veto
        self.full = full
        column_slice(full, window)  # raises unless WINDOW is a column slice of FULL

    # -- checks ----------------------------------------------------------------------------
    def _check(self, fh: h5py.File) -> None:
        """Raise unless the file's grids are this store's (a store from another layout)."""
        k0, n = int(fh.attrs["window_k0"]), int(fh.attrs["window_n"])
        if (k0, n) != (self.window.k0, self.window.n):
            raise LenscatError(
                f"{self.path}: store window ({k0}, {n}) differs from ({self.window.k0}, {self.window.n})"
            )
        if "dlog" in fh.attrs and float(fh.attrs["dlog"]) != self.window.dlog:
            raise LenscatError(
                f"{self.path}: store pixel size dlog = {float(fh.attrs['dlog'])} differs from {self.window.dlog}"
            )
        if "full_flux" in fh:
            fk0, fn = int(fh.attrs.get("full_k0", -1)), int(fh.attrs.get("full_n", -1))
            if (fk0, fn) != (self.full.k0, self.full.n):
                raise LenscatError(
                    f"{self.path}: store full range ({fk0}, {fn}) differs from ({self.full.k0}, {self.full.n})"
                )

    def _predates(self) -> LenscatError:
        return LenscatError(
            f"{self.path}: this spectrum store predates full-range packing (3600-10400 A): "
            "ingest the spectra into a new store"
        )

    # -- writing ---------------------------------------------------------------------------
    @contextmanager
    def writer(self) -> Iterator[h5py.File]:
        """Open the store for appending, holding an exclusive lock (one writer at a time)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock = open(self.path.with_suffix(".lock"), "w")  # noqa: SIM115 (held for the block)
        try:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                raise LenscatError(f"{self.path}: another process is writing this spectrum store") from exc
            with h5py.File(self.path, "a") as fh:
                self._ensure(fh)
                yield fh
        finally:
            lock.close()

    def _ensure(self, fh: h5py.File) -> None:
        if "flux" in fh:
            self._check(fh)
            if "full_flux" not in fh:
                raise self._predates()
            return
        fh.attrs.update(
            {
                "window_k0": self.window.k0,
                "window_n": self.window.n,
                "veto_k0": self.veto.k0,
                "veto_n": self.veto.n,
                "full_k0": self.full.k0,
                "full_n": self.full.n,
                "dlog": self.window.dlog,
                "flux_unit": "1e-17 erg/s/cm2/Angstrom",
                "layout": 2,
            }
        )
        chunk_rows = 256
        for name in (*WINDOW_SETS, *WINDOW_FIT_SETS):
            fh.create_dataset(
                name,
                shape=(0, self.window.n),
                maxshape=(None, self.window.n),
                dtype="f4",
                chunks=(chunk_rows, self.window.n),
            )
        for name in FULL_SETS:
            fh.create_dataset(
                name,
                shape=(0, self.full.n),
                maxshape=(None, self.full.n),
                dtype="f4",
                chunks=(FULL_CHUNK_ROWS, self.full.n),
                compression=FULL_COMPRESSION,
                compression_opts=FULL_COMPRESSION_OPTS,
                shuffle=FULL_SHUFFLE and FULL_COMPRESSION is not None,
            )
        fh.create_dataset("z", shape=(0,), maxshape=(None,), dtype="f8", chunks=(4096,))
        fh.create_dataset("continuum_source", shape=(0,), maxshape=(None,), dtype="u1", chunks=(4096,))
        fh.create_dataset("has_model", shape=(0,), maxshape=(None,), dtype="?", chunks=(4096,))

    def append(self, fh: h5py.File, rows: PackedRows, full: PackedFull) -> int:
        """Append rows (window and full range of the same spectra) and flush them; returns the first new row."""
        start = int(fh["flux"].shape[0])
        n = len(rows)
        if len(full) != n or rows.continuum_fit is None:
            raise LenscatError(f"{self.path}: window and full-range rows of a block differ")
        arrays = {
            "flux": rows.flux,
            "ivar": rows.ivar,
            "continuum": rows.continuum,
            "sky": rows.sky,
            "continuum_fit": rows.continuum_fit,
            "full_flux": full.flux,
            "full_ivar": full.ivar,
            "full_model": full.model,
            "full_fit": full.fit,
            "z": rows.z,
            "continuum_source": rows.continuum_source,
            "has_model": rows.has_model,
        }
        for name, arr in arrays.items():
            ds = fh[name]
            ds.resize(start + n, axis=0)
            ds[start : start + n] = arr
        fh.flush()
        return start

    # -- reading ---------------------------------------------------------------------------
    def n_rows(self) -> int:
        """Rows in the store (0 if it does not exist yet)."""
        if not self.path.exists():
            return 0
        with h5py.File(self.path, "r") as fh:
            return int(fh["flux"].shape[0]) if "flux" in fh else 0

    @property
    def has_full(self) -> bool:
        """True when the store keeps full-range rows (written since full-range packing; False if missing)."""
        if not self.path.exists():
            return False
        with h5py.File(self.path, "r") as fh:
            return "full_flux" in fh

    def _open(self) -> h5py.File:
        if not self.path.exists():
            raise LenscatError(f"{self.path}: spectrum store missing (was LENSCAT_HOME moved?)")
        fh = h5py.File(self.path, "r")
        try:
            self._check(fh)
        except BaseException:
            fh.close()
            raise
        return fh

    def _read_sets(self, fh: h5py.File, names: Sequence[str], rows: np.ndarray) -> dict[str, np.ndarray]:
        """Rows of datasets, in the order given (one slab read when the rows are dense)."""
        ordered = bool(np.all(np.diff(rows) > 0))
        if ordered:
            uniq, inv = rows, None
        else:
            uniq, inv = np.unique(rows, return_inverse=True)
        lo, hi = int(uniq[0]), int(uniq[-1]) + 1
        if lo < 0 or hi > fh["flux"].shape[0]:
            raise LenscatError(
                f"{self.path}: row {hi - 1 if lo >= 0 else lo} is outside the store's {fh['flux'].shape[0]} rows"
            )
        contiguous = hi - lo == uniq.size
        dense = hi - lo <= 4 * uniq.size + 1024
        out: dict[str, np.ndarray] = {}
        for name in names:
            ds = fh[name]
            if contiguous:
                picked = ds[lo:hi]
            elif dense and (ds.ndim == 1 or ds.shape[1] * (hi - lo) <= 2**27):
                picked = ds[lo:hi][uniq - lo]
            else:
                picked = ds[uniq]
            out[name] = picked if inv is None else picked[inv]
        return out

    def read(self, rows: np.ndarray, *, sky: bool = True, fit: bool = True) -> PackedRows:
        """Window arrays of the given rows, in the order given (one contiguous slab read when dense).

        ``sky=False`` skips the sky dataset (no detector reads it; it comes back as zeros).
        ``fit=False`` skips ``continuum_fit`` (None then; a scan that only uses ``continuum`` saves a
        fifth of its read time). ``continuum_fit`` is None for a store written before full-range packing.
        """
        rows = np.asarray(rows, dtype=np.int64)
        if rows.size == 0:
            e = np.zeros((0, self.window.n), np.float32)
            return PackedRows(
                e, e, e, e, np.zeros(0), np.zeros(0, np.uint8), e.copy() if fit else None, np.zeros(0, bool)
            )
        with self._open() as fh:
            n_all = fh["flux"].shape[0]  # optional sets count only when filled alongside flux
            names = [
                n
                for n in (*WINDOW_SETS, *WINDOW_FIT_SETS, "z", "continuum_source", "has_model")
                if n in fh and fh[n].shape[0] == n_all and (sky or n != "sky") and (fit or n != "continuum_fit")
            ]
            out = self._read_sets(fh, names, rows)
        if not sky:
            out["sky"] = np.zeros((rows.size, self.window.n), np.float32)
        return PackedRows(**out)

    def read_full(self, rows: np.ndarray) -> PackedFull:
        """Full-range arrays (3600-10400 A) of the given rows, in the order given.

        Raises
        ------
        LenscatError
            The store predates full-range packing, is missing, or a row is outside it.
        """
        rows = np.asarray(rows, dtype=np.int64)
        with self._open() as fh:
            if "full_flux" not in fh:
                raise self._predates()
            if rows.size == 0:
                e = np.zeros((0, self.full.n), np.float32)
                return PackedFull(e, e.copy(), e.copy(), e.copy(), np.zeros(0), np.zeros(0, bool))
            out = self._read_sets(fh, (*FULL_SETS, "z", "has_model"), rows)
        return PackedFull(
            flux=out["full_flux"],
            ivar=out["full_ivar"],
            model=out["full_model"],
            fit=out["full_fit"],
            z=out["z"],
            has_model=out["has_model"].astype(bool),
        )

    def read_veto(self, rows: np.ndarray) -> PackedVeto:
        """Veto-range arrays (4900-8850 A) of the given rows: the VETO columns of the full-range rows
        (``continuum`` = model where the file has one, else the fit), or the old veto datasets."""
        rows = np.asarray(rows, dtype=np.int64)
        if rows.size == 0:
            e = np.zeros((0, self.veto.n), np.float32)
            return PackedVeto(e, e.copy(), e.copy())
        with self._open() as fh:
            if "full_flux" in fh:
                vs = column_slice(self.full, self.veto)
                full = self._read_sets(fh, (*FULL_SETS, "has_model"), rows)
                hm = full["has_model"].astype(bool)[:, None]
                return PackedVeto(
                    flux=full["full_flux"][:, vs],
                    ivar=full["full_ivar"][:, vs],
                    continuum=np.where(hm, full["full_model"][:, vs], full["full_fit"][:, vs]),
                )
            out = self._read_sets(fh, VETO_SETS, rows)
        return PackedVeto(**{k.removeprefix("veto_"): v for k, v in out.items()})
