"""The HDF5 file of a simulated survey in Stein et al.'s layout: columns, the resumable partial file, writes.

:data:`COLUMNS` are the datasets :func:`lenscat.simulate.survey.simulate_survey` writes (``images`` and
one dataset per catalogue or truth column); rows are written :data:`WRITE_ROWS` at a time through a
``.partial`` file with interrupts deferred during a write, so an interrupted run resumes;
:func:`read_truth` reads the truth columns back. :data:`GENERATOR` (the file's ``generator``
attribute) names the simulator module.
"""

from __future__ import annotations

import contextlib
import json
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from lenscat.errors import LenscatError
from lenscat.simulate.survey_objects import KINDS, NONLENS_FRACTIONS
from lenscat.simulate.survey_render import PIXEL_SCALE, ZERO_POINT

__all__ = ["read_truth"]

GENERATOR = "lenscat.simulate.survey"


WRITE_ROWS = 128  # rendered rows buffered per HDF5 write (written at once on an interrupt)


# name -> (dtype, unit or None, description)
COLUMNS: dict[str, tuple[str, str | None, str]] = {
    "objid": ("i8", None, "object id, unique in the file: (seed mod 1e6) * 1e10 + row + 1"),
    "ra": ("f8", "deg", "right ascension (ICRS)"),
    "dec": ("f8", "deg", "declination (ICRS)"),
    "mag_g": ("f4", "mag", "total model AB magnitude of the central object, g (as observed)"),
    "mag_r": ("f4", "mag", "total model AB magnitude of the central object, r (as observed)"),
    "mag_z": ("f4", "mag", "total model AB magnitude of the central object, z (as observed)"),
    "ebv": ("f4", "mag", "Milky-Way E(B-V), SFD-like"),
    "source_type": ("S3", None, "Tractor-like morphological type: PSF, REX, EXP, DEV, SER"),
    "z_phot_mean": ("f4", None, "photometric redshift (-99: none, e.g. stars)"),
    "is_lens": ("i1", None, "truth: 1 for a strong lens"),
    "kind": ("S14", None, "truth: " + ", ".join(KINDS)),
    "theta_e": ("f4", "arcsec", "truth: Einstein radius (NaN for non-lenses)"),
    "z_lens": ("f4", None, "truth: deflector redshift (NaN for non-lenses)"),
    "z_source": ("f4", None, "truth: source redshift (NaN for non-lenses)"),
    "lens_q": ("f4", None, "truth: mass axis ratio"),
    "lens_phi": ("f4", "rad", "truth: mass position angle, from +x (columns) towards +y (rows)"),
    "lens_gamma": ("f4", None, "truth: EPL logarithmic slope (2 = isothermal)"),
    "gamma1": ("f4", None, "truth: external shear component 1"),
    "gamma2": ("f4", None, "truth: external shear component 2"),
    "n_sources": ("i2", None, "truth: number of lensed sources (0 for non-lenses)"),
    "source_mag_g": ("f4", "mag", "truth: unlensed total magnitude of the lensed sources, g"),
    "source_mag_r": ("f4", "mag", "truth: unlensed total magnitude of the lensed sources, r"),
    "source_mag_z": ("f4", "mag", "truth: unlensed total magnitude of the lensed sources, z"),
    "magnification": ("f4", None, "truth: total magnification of the sources (r-flux weighted)"),
    "z_true": ("f4", None, "truth: redshift of the central object (NaN for stars)"),
    "r_eff": ("f4", "arcsec", "truth: circularised half-light radius of the central object's main profile"),
    "sersic_n": ("f4", None, "truth: Sersic index of the central object's main profile"),
    "psf_fwhm_g": ("f4", "arcsec", "truth: Moffat PSF FWHM, g"),
    "psf_fwhm_r": ("f4", "arcsec", "truth: Moffat PSF FWHM, r"),
    "psf_fwhm_z": ("f4", "arcsec", "truth: Moffat PSF FWHM, z"),
    "psf_beta": ("f4", None, "truth: Moffat PSF index"),
    "depth5_g": ("f4", "mag", "truth: 5-sigma point-source depth, g"),
    "depth5_r": ("f4", "mag", "truth: 5-sigma point-source depth, r"),
    "depth5_z": ("f4", "mag", "truth: 5-sigma point-source depth, z"),
    "sky_sigma_g": ("f4", "nanomaggy", "truth: per-pixel sky noise, g"),
    "sky_sigma_r": ("f4", "nanomaggy", "truth: per-pixel sky noise, r"),
    "sky_sigma_z": ("f4", "nanomaggy", "truth: per-pixel sky noise, z"),
    "saturated": ("i1", None, "truth: 1 if some pixel reached the saturation level"),
    "n_neighbours": ("i2", None, "truth: number of field objects in the stamp"),
    "nearest_neighbour": ("f4", "arcsec", "truth: distance to the nearest other object (NaN: none)"),
}


TRUTH_COLUMNS = ("objid", "ra", "dec", "is_lens", "kind", "theta_e", "z_lens", "z_source")


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """In the main thread, SIGTERM raises KeyboardInterrupt (so the partial file is closed cleanly)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def _interrupts_deferred() -> Iterator[None]:
    """Hold Ctrl-C and SIGTERM until the block ends, then raise ``KeyboardInterrupt``.

    A write is never cut in half, and no interrupt is lost: one raised inside h5py's object
    finalisers would be swallowed ("exception ignored"). Outside the main thread the block runs
    unguarded (signal handlers run only there).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []

    def hold(signum: int, frame: Any) -> None:
        caught.append(signum)

    previous = {sig: signal.signal(sig, hold) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if caught:
        raise KeyboardInterrupt


def _open_partial(
    partial: Path, key: str, n: int, stamp: int, objid: np.ndarray, ra: np.ndarray, dec: np.ndarray
) -> tuple[Any, int]:
    """The partial file to fill and the rows already in it (0 for a new one).

    A partial file left by an interrupted run with the same arguments (``key``) is reopened; one
    for other arguments, or one that cannot be read (a run killed mid-write), is started over.
    """
    import h5py

    if partial.exists():
        try:
            fh = h5py.File(partial, "a")
        except OSError as exc:
            if "lock" in str(exc).lower():
                raise BlockingIOError(str(exc)) from exc
            partial.unlink()
        else:
            if fh.attrs.get("resume_key") == key and "rows_done" in fh.attrs:
                return fh, int(fh.attrs["rows_done"])
            fh.close()
            partial.unlink()
    fh = h5py.File(partial, "w", libver="latest")
    # uncompressed: noisy float32 shrinks only 7-13% with lzf or gzip-1 + shuffle, while reading one
    # cutout gets ~5x slower
    images = fh.create_dataset("images", shape=(n, 3, stamp, stamp), dtype="f4", chunks=(1, 3, stamp, stamp))
    images.attrs["unit"] = "nanomaggy"
    images.attrs["bands"] = "grz"
    images.attrs["pixel_scale_arcsec"] = PIXEL_SCALE
    known = {"objid": objid, "ra": ra, "dec": dec}
    for name, (dtype, unit, desc) in COLUMNS.items():
        ds = (
            fh.create_dataset(name, data=np.asarray(known[name]).astype(dtype))
            if name in known
            else fh.create_dataset(name, shape=(n,), dtype=dtype)
        )
        if unit:
            ds.attrs["unit"] = unit
        ds.attrs["description"] = desc
    fh.attrs["resume_key"] = key
    fh.attrs["rows_done"] = 0
    fh.flush()
    return fh, 0


def _write(
    fh: Any,
    results: Iterator[tuple[int, np.ndarray, list[dict[str, Any]]]],
    progress: bool,
    n: int,
    done: int,
    meta: dict[str, Any],
) -> None:
    """Fill the rows from ``done`` on, :data:`WRITE_ROWS` at a time (each write flushed with its ``rows_done``), then
    finish."""
    import lenstronomy
    from tqdm import tqdm

    images = fh["images"]
    filled = [name for name in COLUMNS if name not in ("objid", "ra", "dec")]
    pending: list[tuple[int, np.ndarray, list[dict[str, Any]]]] = []  # contiguous rendered chunks

    def flush() -> None:
        """Write the buffered chunks in one go and mark their rows done."""
        start, stop = pending[0][0], pending[-1][0] + len(pending[-1][1])
        rows = [r for _, _, chunk_rows in pending for r in chunk_rows]
        with _interrupts_deferred():
            images[start:stop] = np.concatenate([imgs for _, imgs, _ in pending])
            for name in filled:
                v = np.array([r[name] for r in rows])
                dtype = COLUMNS[name][0]
                fh[name][start:stop] = (np.char.encode(v.astype(str), "ascii") if dtype.startswith("S") else v).astype(
                    dtype
                )
            fh.attrs["rows_done"] = stop
            fh.flush()
            pending.clear()

    with tqdm(total=n, initial=done, disable=not progress, unit="cutout", desc="simulate", dynamic_ncols=True) as bar:
        try:
            for chunk in results:
                pending.append(chunk)
                if chunk[0] + len(chunk[1]) - pending[0][0] >= WRITE_ROWS:
                    flush()
                bar.update(len(chunk[1]))
        except KeyboardInterrupt:  # Ctrl-C or SIGTERM: keep every row rendered so far
            if pending:
                flush()
            raise
        if pending:
            flush()
    for name in ("resume_key", "rows_done"):
        del fh.attrs[name]
    fh.attrs["pixel_scale_arcsec"] = PIXEL_SCALE
    fh.attrs["bands"] = "grz"
    fh.attrs["unit"] = "nanomaggy"
    fh.attrs["zero_point"] = ZERO_POINT
    fh.attrs["seed"] = meta["seed"]
    fh.attrs["lens_fraction"] = meta["lens_fraction"]
    fh.attrs["n_lenses"] = int(fh["is_lens"][()].sum())
    fh.attrs["generator"] = GENERATOR
    fh.attrs["lenstronomy_version"] = str(lenstronomy.__version__)
    fh.attrs["nonlens_fractions"] = json.dumps(NONLENS_FRACTIONS)


def read_truth(path: str | Path) -> Any:
    """The truth table of a file written by :func:`~lenscat.simulate.survey.simulate_survey`.

    Returns
    -------
    astropy.table.Table
        ``objid, ra [deg], dec [deg], is_lens (bool), kind (str), theta_e [arcsec], z_lens,
        z_source`` (NaN where not applicable).

    Raises
    ------
    LenscatError
        The file is missing, unreadable or lacks a truth column.
    """
    import astropy.units as u
    import h5py
    from astropy.table import Table

    p = Path(path).expanduser()
    try:
        fh = h5py.File(p, "r")
    except OSError as exc:
        raise LenscatError(f"{p}: cannot open as HDF5: {exc}") from exc
    with fh:
        missing = [c for c in TRUTH_COLUMNS if c not in fh]
        if missing:
            raise LenscatError(f"{p}: not a simulated survey: no {', '.join(missing)} dataset")
        data = {c: fh[c][()] for c in TRUTH_COLUMNS}
    table = Table()
    table["objid"] = data["objid"].astype(np.int64)
    table["ra"] = data["ra"].astype(np.float64) * u.deg
    table["dec"] = data["dec"].astype(np.float64) * u.deg
    table["is_lens"] = data["is_lens"].astype(bool)
    table["kind"] = np.char.decode(data["kind"].astype("S"), "ascii")
    table["theta_e"] = data["theta_e"].astype(np.float64) * u.arcsec
    table["z_lens"] = data["z_lens"].astype(np.float64)
    table["z_source"] = data["z_source"].astype(np.float64)
    table.meta["generator"] = GENERATOR
    return table
