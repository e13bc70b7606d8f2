"""The HDF5 file of the independent simulator: its columns, the resumable partial file and the buffered writes.

Rows are written :data:`WRITE_ROWS` at a time through a ``.partial`` file, with SIGTERM turned into an
interrupt and interrupts held during a write, so an interrupted :func:`lenscat.simulate.alt.simulate_survey_alt`
resumes. :data:`SIMULATOR` is the files' ``generator`` record. Written independently of
:mod:`lenscat.simulate.survey_file`.
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

from lenscat.simulate.alt_objects import KINDS, NONLENS_FRACTIONS
from lenscat.simulate.alt_render import PIXEL_SCALE, ZERO_POINT

__all__ = ["COLUMNS", "SIMULATOR"]

SIMULATOR = "lenscat-independent-v1"


WRITE_ROWS = 128  # rows buffered per HDF5 write


# name -> (dtype, unit or None, description)
COLUMNS: dict[str, tuple[str, str | None, str]] = {
    "objid": ("i8", None, "object id, unique in the file: (seed mod 1e6) * 1e10 + row + 1"),
    "ra": ("f8", "deg", "right ascension (ICRS)"),
    "dec": ("f8", "deg", "declination (ICRS)"),
    "mag_g": ("f4", "mag", "total model AB magnitude of the central object, g (as observed)"),
    "mag_r": ("f4", "mag", "total model AB magnitude of the central object, r (as observed)"),
    "mag_z": ("f4", "mag", "total model AB magnitude of the central object, z (as observed)"),
    "ebv": ("f4", "mag", "Milky-Way E(B-V)"),
    "source_type": ("S3", None, "Tractor-like morphological type: PSF, EXP, DEV"),
    "z_phot_mean": ("f4", None, "photometric redshift (-99: none, e.g. stars)"),
    "is_lens": ("i1", None, "truth: 1 for a strong lens"),
    "kind": ("S14", None, "truth: " + ", ".join(KINDS)),
    "theta_e": ("f4", "arcsec", "truth: circularised Einstein radius (NaN for non-lenses)"),
    "z_lens": ("f4", None, "truth: deflector redshift (NaN for non-lenses)"),
    "z_source": ("f4", None, "truth: source redshift (NaN for non-lenses)"),
    "lens_q": ("f4", None, "truth: SIE mass axis ratio"),
    "lens_phi": ("f4", "rad", "truth: mass position angle, from +x (columns) towards +y (rows)"),
    "lens_gamma": ("f4", None, "truth: logarithmic mass slope (2: the SIE)"),
    "gamma1": ("f4", None, "truth: external shear component 1"),
    "gamma2": ("f4", None, "truth: external shear component 2"),
    "n_sources": ("i2", None, "truth: number of lensed sources (0 for non-lenses)"),
    "n_clumps": ("i2", None, "truth: star-forming clumps of the lensed source"),
    "source_scale": ("f4", "arcsec", "truth: exponential scale length of the source disk"),
    "source_offset": ("f4", "arcsec", "truth: source distance from the lens centre (unlensed)"),
    "source_mag_g": ("f4", "mag", "truth: unlensed total magnitude of the lensed source, g"),
    "source_mag_r": ("f4", "mag", "truth: unlensed total magnitude of the lensed source, r"),
    "source_mag_z": ("f4", "mag", "truth: unlensed total magnitude of the lensed source, z"),
    "magnification": ("f4", None, "truth: total magnification of the source (r)"),
    "arc_snr": ("f4", None, "truth: r-band S/N of the lensed light over the pixels where it exceeds 1 sigma"),
    "z_true": ("f4", None, "truth: redshift of the central object (NaN for stars)"),
    "r_eff": ("f4", "arcsec", "truth: half-light radius (ring radius for rings) of the central object"),
    "sersic_n": ("f4", None, "truth: Sersic index of the central object's main profile"),
    "psf_fwhm_g": ("f4", "arcsec", "truth: double-Gaussian PSF FWHM, g"),
    "psf_fwhm_r": ("f4", "arcsec", "truth: double-Gaussian PSF FWHM, r"),
    "psf_fwhm_z": ("f4", "arcsec", "truth: double-Gaussian PSF FWHM, z"),
    "psf_wing_ratio": ("f4", None, "truth: PSF wing sigma / core sigma (the wing holds 10% of the light)"),
    "psf_e": ("f4", None, "truth: PSF ellipticity 1 - b/a"),
    "depth5_g": ("f4", "mag", "truth: 5-sigma point-source depth, g"),
    "depth5_r": ("f4", "mag", "truth: 5-sigma point-source depth, r"),
    "depth5_z": ("f4", "mag", "truth: 5-sigma point-source depth, z"),
    "sky_sigma_g": ("f4", "nanomaggy", "truth: per-pixel sky noise, g"),
    "sky_sigma_r": ("f4", "nanomaggy", "truth: per-pixel sky noise, r"),
    "sky_sigma_z": ("f4", "nanomaggy", "truth: per-pixel sky noise, z"),
    "artefact": ("i1", None, "truth: 0 none, 1 cosmic-ray track, 2 dead column"),
    "n_neighbours": ("i2", None, "truth: number of field objects in the stamp"),
    "nearest_neighbour": ("f4", "arcsec", "truth: distance to the nearest field object (NaN: none)"),
}


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
def _interrupts_held() -> Iterator[None]:
    """Hold Ctrl-C and SIGTERM until a write is complete, then raise ``KeyboardInterrupt``."""
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
    """The partial file to fill and its finished rows (a new file, or one left with the same ``key``)."""
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
    """Fill the rows from ``done`` on, :data:`WRITE_ROWS` at a time, then set the file attributes."""
    from tqdm import tqdm

    images = fh["images"]
    filled = [name for name in COLUMNS if name not in ("objid", "ra", "dec")]
    pending: list[tuple[int, np.ndarray, list[dict[str, Any]]]] = []

    def flush() -> None:
        start, stop = pending[0][0], pending[-1][0] + len(pending[-1][1])
        rows = [r for _, _, chunk_rows in pending for r in chunk_rows]
        with _interrupts_held():
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

    with tqdm(
        total=n, initial=done, disable=not progress, unit="cutout", desc="simulate (independent)", dynamic_ncols=True
    ) as bar:
        try:
            for chunk in results:
                pending.append(chunk)
                if chunk[0] + len(chunk[1]) - pending[0][0] >= WRITE_ROWS:
                    flush()
                bar.update(len(chunk[1]))
        except KeyboardInterrupt:
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
    fh.attrs["generator"] = "lenscat.simulate.alt"
    fh.attrs["simulator"] = SIMULATOR
    fh.attrs["nonlens_fractions"] = json.dumps(NONLENS_FRACTIONS)
