"""The packed array store: every spectrum's search window as contiguous float32 rows in HDF5.

Reading one SDSS FITS file costs 4-40 ms; a scan of 10^6 spectra must not pay that again for every
detector. At ingest each spectrum is put once onto :data:`~lenscat.spectra.grid.WINDOW` (flux, ivar,
continuum model, sky) and onto :data:`~lenscat.spectra.grid.VETO` (flux, ivar, continuum; only read
for the few spectra with hits), and appended to ``LENSCAT_HOME/spectra/<name>.h5``:

========================  ==============  ===========================================
dataset                   shape           content
========================  ==============  ===========================================
``flux``                  (N, 1193) f4    flux [1e-17 erg/s/cm^2/A]
``ivar``                  (N, 1193) f4    inverse variance, 0 = masked
``continuum``             (N, 1193) f4    pipeline model, or eigenspectrum + polynomial fit
``sky``                   (N, 1193) f4    sky flux the pipeline subtracted (0 if unknown)
``veto_flux`` ...         (N, 2568) f4    the same three on 4900-8850 A
``z``                     (N,) f8         pipeline redshift of the galaxy (NaN if unknown)
``continuum_source``      (N,) u1         0 = pipeline model, 1 = eigenspectrum fit
========================  ==============  ===========================================

Rows are only appended. The database row of a spectrum (``lenscat.spectra.pack_row``) is written
after its pixels are flushed, so a crash leaves at most unreferenced rows at the end, never a
reference to missing pixels. One process writes a store at a time (an exclusive lock file).
"""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from lenscat.errors import LenscatError
from lenscat.spectra.grid import VETO, WINDOW, LogGrid, to_grid
from lenscat.spectra.spectrum import Spectrum

WINDOW_SETS = ("flux", "ivar", "continuum", "sky")
VETO_SETS = ("veto_flux", "veto_ivar", "veto_continuum")


@dataclass
class PackedRows:
    """A block of packed spectra (rows of the store, or built in memory)."""

    flux: np.ndarray
    ivar: np.ndarray
    continuum: np.ndarray
    sky: np.ndarray
    z: np.ndarray
    continuum_source: np.ndarray

    def __len__(self) -> int:
        return int(self.flux.shape[0])


@dataclass
class PackedVeto:
    """Veto-range rows (4900-8850 A) of some spectra."""

    flux: np.ndarray
    ivar: np.ndarray
    continuum: np.ndarray


def pack_spectra(spectra: list[Spectrum], *, window: LogGrid = WINDOW,
                 veto: LogGrid = VETO) -> tuple[PackedRows, PackedVeto]:
    """Put spectra onto the window and veto grids; fit a continuum where the file has no model.

    The continuum is the pipeline's best-fit model when the file has one, else the BELLS GALLERY
    fit (SDSS eigenspectra at the pipeline redshift + a cubic polynomial,
    :func:`lenscat.spectra.continuum.fit_continua`).
    """
    from lenscat.spectra.continuum import fit_continua

    n = len(spectra)
    w = {k: np.zeros((n, window.n), np.float32) for k in WINDOW_SETS}
    v = {k: np.zeros((n, veto.n), np.float32) for k in VETO_SETS}
    z = np.full(n, np.nan)
    src = np.zeros(n, np.uint8)
    need_fit: list[int] = []
    for i, s in enumerate(spectra):
        ivar, (flux, model, sky) = to_grid(s.wave, s.flux, s.model, s.sky, ivar=s.ivar, grid=window)
        w["flux"][i], w["ivar"][i] = flux, ivar
        if sky is not None:
            w["sky"][i] = sky
        vivar, (vflux, vmodel) = to_grid(s.wave, s.flux, s.model, ivar=s.ivar, grid=veto)
        v["veto_flux"][i], v["veto_ivar"][i] = vflux, vivar
        z[i] = s.z if s.z is not None else np.nan
        if model is not None and np.any(model != 0):
            w["continuum"][i] = model
            if vmodel is not None:
                v["veto_continuum"][i] = vmodel
        else:
            need_fit.append(i)
    if need_fit:
        idx = np.asarray(need_fit)
        src[idx] = 1
        w["continuum"][idx] = fit_continua(window.wave, w["flux"][idx], w["ivar"][idx], z[idx])
        v["veto_continuum"][idx] = fit_continua(veto.wave, v["veto_flux"][idx], v["veto_ivar"][idx], z[idx])
    rows = PackedRows(flux=w["flux"], ivar=w["ivar"], continuum=w["continuum"], sky=w["sky"], z=z,
                      continuum_source=src)
    return rows, PackedVeto(flux=v["veto_flux"], ivar=v["veto_ivar"], continuum=v["veto_continuum"])


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
    """An HDF5 array store of packed spectra (append-only)."""

    def __init__(self, path: str | Path, *, window: LogGrid = WINDOW, veto: LogGrid = VETO):
        self.path = Path(path)
        self.window = window
        self.veto = veto

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
            k0, n = int(fh.attrs["window_k0"]), int(fh.attrs["window_n"])
            if (k0, n) != (self.window.k0, self.window.n):
                raise LenscatError(f"{self.path}: store window ({k0}, {n}) differs from ({self.window.k0}, {self.window.n})")
            return
        fh.attrs.update({"window_k0": self.window.k0, "window_n": self.window.n, "veto_k0": self.veto.k0,
                         "veto_n": self.veto.n, "dlog": self.window.dlog, "flux_unit": "1e-17 erg/s/cm2/Angstrom"})
        chunk_rows = 256
        for name in WINDOW_SETS:
            fh.create_dataset(name, shape=(0, self.window.n), maxshape=(None, self.window.n), dtype="f4",
                              chunks=(chunk_rows, self.window.n))
        for name in VETO_SETS:
            fh.create_dataset(name, shape=(0, self.veto.n), maxshape=(None, self.veto.n), dtype="f4",
                              chunks=(64, self.veto.n))
        fh.create_dataset("z", shape=(0,), maxshape=(None,), dtype="f8", chunks=(4096,))
        fh.create_dataset("continuum_source", shape=(0,), maxshape=(None,), dtype="u1", chunks=(4096,))

    def append(self, fh: h5py.File, rows: PackedRows, veto: PackedVeto) -> int:
        """Append rows and flush them to disk; returns the first new row index."""
        start = int(fh["flux"].shape[0])
        n = len(rows)
        arrays = {"flux": rows.flux, "ivar": rows.ivar, "continuum": rows.continuum, "sky": rows.sky,
                  "veto_flux": veto.flux, "veto_ivar": veto.ivar, "veto_continuum": veto.continuum,
                  "z": rows.z, "continuum_source": rows.continuum_source}
        for name, arr in arrays.items():
            ds = fh[name]
            ds.resize(start + n, axis=0)
            ds[start:start + n] = arr
        fh.flush()
        return start

    # -- reading ---------------------------------------------------------------------------
    def n_rows(self) -> int:
        """Rows in the store (0 if it does not exist yet)."""
        if not self.path.exists():
            return 0
        with h5py.File(self.path, "r") as fh:
            return int(fh["flux"].shape[0]) if "flux" in fh else 0

    def read(self, rows: np.ndarray, *, sky: bool = True) -> PackedRows:
        """Window arrays of the given rows, in the order given (one contiguous slab read when dense).

        ``sky=False`` skips the sky dataset (no detector reads it; it comes back as zeros).
        """
        rows = np.asarray(rows, dtype=np.int64)
        if rows.size == 0:
            e = np.zeros((0, self.window.n), np.float32)
            return PackedRows(e, e, e, e, np.zeros(0), np.zeros(0, np.uint8))
        if not self.path.exists():
            raise LenscatError(f"{self.path}: spectrum store missing (was LENSCAT_HOME moved?)")
        ordered = bool(np.all(np.diff(rows) > 0))
        if ordered:
            uniq, inv = rows, None
        else:
            uniq, inv = np.unique(rows, return_inverse=True)
        lo, hi = int(uniq[0]), int(uniq[-1]) + 1
        contiguous = hi - lo == uniq.size
        dense = hi - lo <= 4 * uniq.size + 1024
        out: dict[str, np.ndarray] = {}
        with h5py.File(self.path, "r") as fh:
            if hi > fh["flux"].shape[0]:
                raise LenscatError(f"{self.path}: row {hi - 1} is beyond the store's {fh['flux'].shape[0]} rows")
            for name in (*WINDOW_SETS, "z", "continuum_source"):
                if name == "sky" and not sky:
                    out[name] = np.zeros((rows.size, self.window.n), np.float32)
                    continue
                ds = fh[name]
                if contiguous:
                    picked = ds[lo:hi]
                else:
                    picked = ds[lo:hi][uniq - lo] if dense else ds[uniq]
                out[name] = picked if inv is None else picked[inv]
        return PackedRows(**out)

    def read_veto(self, rows: np.ndarray) -> PackedVeto:
        """Veto-range arrays of the given rows."""
        rows = np.asarray(rows, dtype=np.int64)
        uniq, inv = np.unique(rows, return_inverse=True)
        out = {}
        with h5py.File(self.path, "r") as fh:
            for name in VETO_SETS:
                picked = fh[name][uniq] if uniq.size else np.zeros((0, self.veto.n), np.float32)
                out[name.removeprefix("veto_")] = picked[inv]
        return PackedVeto(**out)
