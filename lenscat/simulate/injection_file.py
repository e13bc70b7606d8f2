"""The HDF5 file of an injection run: its columns, the resumable ``.OUT.partial`` file and the chunked render loop.

The cutouts and their truth go to a Stein-layout HDF5 file (the datasets :mod:`lenscat.simulate.survey`
writes: ``images`` and one dataset per catalogue or truth column). Rendering goes in chunks of
:data:`CHUNK` cutouts to ``.OUT.partial``; an interrupted run resumes from its last chunk, and a
completed file is not rendered again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lenscat.errors import LenscatError
from lenscat.simulate.injection_hosts import measure_hosts
from lenscat.simulate.injection_render import _arc_snr, _draw, render_injection
from lenscat.simulate.injection_types import (
    DEFAULT_PSF_FWHM,
    ENTROPY,
    GENERATOR,
    ZERO_POINT,
)

CHUNK = 64  # cutouts rendered (and flushed to the partial file) at a time


# ------------------------------------------------------------------------------------ file
COLUMNS: dict[str, tuple[str, str | None, str]] = {
    "objid": ("i8", None, "object id in the injection set: (seed mod 1e6) * 1e10 + row + 1"),
    "ra": ("f8", "deg", "right ascension of the host (ICRS)"),
    "dec": ("f8", "deg", "declination of the host (ICRS)"),
    "ebv": ("f4", "mag", "host's E(B-V) (-99: unknown)"),
    "source_type": ("S3", None, "host's catalogue type"),
    "z_phot_mean": ("f4", None, "host's photometric redshift (-99: none)"),
    "is_lens": ("i1", None, "truth: 1 (every row is an injected lens)"),
    "kind": ("S14", None, "truth: 'injection'"),
    "theta_e": ("f4", "arcsec", "truth: SIE Einstein radius"),
    "z_lens": ("f4", None, "truth: host's photometric redshift (NaN: unknown)"),
    "z_source": ("f4", None, "truth: not drawn (NaN)"),
    "host_source_id": ("i8", None, "truth: lenscat source_id of the host galaxy"),
    "host_objid": ("S40", None, "truth: objid of the host in its survey"),
    "lens_q": ("f4", None, "truth: SIE axis ratio"),
    "lens_phi": ("f4", "rad", "truth: SIE position angle, from +x (columns) towards +y (rows)"),
    "gamma1": ("f4", None, "truth: external shear component 1"),
    "gamma2": ("f4", None, "truth: external shear component 2"),
    "source_x": ("f4", "arcsec", "truth: source centre offset along +x from the lens centre"),
    "source_y": ("f4", "arcsec", "truth: source centre offset along +y from the lens centre"),
    "source_r_eff": ("f4", "arcsec", "truth: Sersic half-light radius of the source"),
    "source_n": ("f4", None, "truth: Sersic index of the source"),
    "n_clumps": ("i2", None, "truth: number of Gaussian star-forming clumps"),
    "clump_fraction": ("f4", None, "truth: fraction of the r flux in the clumps"),
    "magnification": ("f4", None, "truth: total r magnification (lensed over unlensed flux)"),
    "arc_snr": ("f4", None, "truth: lensed r flux over the host's noise, summed over the pixels above 1 sigma"),
    "injection_seed": ("i8", None, "truth: seed of the injection set (row k draws from spawn k)"),
}


def _columns(bands: Sequence[str]) -> dict[str, tuple[str, str | None, str]]:
    cols = dict(COLUMNS)
    for b in bands:
        cols[f"mag_{b}"] = ("f4", "mag", f"host's catalogue AB magnitude, {b} (-99: unknown)")
        cols[f"source_mag_{b}"] = ("f4", "mag", f"truth: unlensed AB magnitude of the source, {b}")
        cols[f"psf_fwhm_{b}"] = ("f4", "arcsec", f"truth: PSF FWHM used, {b}")
        cols[f"sky_sigma_{b}"] = ("f4", "nanomaggy", f"truth: robust per-pixel noise of the host cutout, {b}")
    return cols


def _open_partial(
    partial: Path, key: str, n: int, shape: tuple[int, int, int], cols: dict[str, tuple[str, str | None, str]]
) -> tuple[Any, int]:
    """The partial file to fill and its rows already done (an interrupted run with the same key)."""
    import h5py

    if partial.exists():
        try:
            fh = h5py.File(partial, "a")
        except OSError as exc:
            if "lock" in str(exc).lower():
                raise LenscatError(f"{partial} is being written by another run; wait for it or stop it") from None
            partial.unlink()
        else:
            if fh.attrs.get("resume_key") == key and "rows_done" in fh.attrs:
                return fh, int(fh.attrs["rows_done"])
            fh.close()
            partial.unlink()
    fh = h5py.File(partial, "w", libver="latest")
    fh.create_dataset("images", shape=(n, *shape), dtype="f4", chunks=(1, *shape))
    for name, (dtype, unit, desc) in cols.items():
        ds = fh.create_dataset(name, shape=(n,), dtype=dtype)
        if unit:
            ds.attrs["unit"] = unit
        ds.attrs["description"] = desc
    fh.attrs["resume_key"] = key
    fh.attrs["rows_done"] = 0
    fh.flush()
    return fh, 0


def _finished_key(path: Path) -> str | None:
    import h5py

    try:
        with h5py.File(path, "r") as fh:
            v = fh.attrs.get("injection_key")
            return str(v) if v is not None else None
    except OSError:
        return None


def _psf_from_catalogue(cat: dict[str, np.ndarray], bands: list[str]) -> dict[str, float]:
    out = {}
    for b in bands:
        v = cat[f"psf_fwhm_{b}"]
        v = v[np.isfinite(v) & (v > 0)]
        out[b] = float(np.median(v)) if len(v) else DEFAULT_PSF_FWHM
    return out


@dataclass
class _RenderJob:
    """What one injection file is rendered from (``key`` identifies it for resuming)."""

    key: str
    n: int
    seed: int
    shape: tuple[int, int, int]
    bands: list[str]
    scale: float
    fwhm: dict[str, float]
    kernels: list[np.ndarray]
    gain: float | None
    priors: tuple[tuple[float, float], ...]  # theta_E, source r mag, g-r, r-z ranges
    cols: dict[str, tuple[str, str | None, str]]
    parent: str


def _render_file(path: Path, job: _RenderJob, images: Any, hosts: dict[str, np.ndarray], *, progress: bool) -> int:
    """Render every injection of ``job`` into ``path`` in chunks, through ``.PATH.partial``; the rows resumed.

    ``images`` reads the host cutouts by row (``get(rows)``); ``hosts`` holds their catalogue
    columns in the same order. An interrupted or failed run leaves the partial file, and the same
    job resumes after its last finished chunk.
    """
    from tqdm import tqdm

    bands, n = job.bands, job.n
    ir = bands.index("r")
    partial = path.with_name(f".{path.name}.partial")
    seqs = np.random.SeedSequence([job.seed, ENTROPY]).spawn(n)
    objid = (job.seed % 1_000_000) * 10_000_000_000 + np.arange(1, n + 1, dtype=np.int64)

    def or_null(v: float) -> float:
        return -99.0 if np.isnan(v) else float(v)

    try:
        fh, done = _open_partial(partial, job.key, n, job.shape, job.cols)
        try:
            with tqdm(
                total=n, initial=done, disable=not progress, unit="cutout", desc="inject", dynamic_ncols=True
            ) as bar:
                for start in range(done, n, CHUNK):
                    stop = min(start + CHUNK, n)
                    host_px = images.get(np.arange(start, stop))
                    sig = measure_hosts(host_px, bands, job.scale)["sigma"]
                    rows: dict[str, list[Any]] = {c: [] for c in job.cols}
                    for j, k in enumerate(range(start, stop)):
                        rng = np.random.default_rng(seqs[k])
                        arc, truth = render_injection(
                            _draw(rng, *job.priors), job.shape[1:], bands, job.scale, job.kernels
                        )
                        if job.gain is not None:
                            arc = (rng.poisson(arc.astype(np.float64) * job.gain) / job.gain).astype(np.float32)
                        host_px[j] += arc
                        truth["arc_snr"] = _arc_snr(arc[ir], float(sig[j, ir]))
                        values = {
                            "objid": objid[k],
                            "ra": hosts["ra"][k],
                            "dec": hosts["dec"][k],
                            "ebv": or_null(hosts["ebv"][k]),
                            "source_type": hosts["source_type"][k] or "",
                            "is_lens": 1,
                            "kind": "injection",
                            "z_phot_mean": or_null(hosts["z_phot"][k]),
                            "z_lens": hosts["z_phot"][k],
                            "z_source": np.nan,
                            "host_source_id": int(hosts["source_id"][k]),
                            "host_objid": str(hosts["objid"][k]),
                            "injection_seed": job.seed,
                            **truth,
                            **{f"mag_{b}": or_null(hosts[f"mag_{b}"][k]) for b in bands},
                            **{f"psf_fwhm_{b}": job.fwhm[b] for b in bands},
                            **{f"sky_sigma_{b}": float(sig[j, i]) for i, b in enumerate(bands)},
                        }
                        for c in job.cols:
                            rows[c].append(values[c])
                    fh["images"][start:stop] = host_px
                    for c, (dtype, _, _) in job.cols.items():
                        v = np.array(rows[c])
                        fh[c][start:stop] = (
                            np.char.encode(v.astype(str), "ascii") if dtype.startswith("S") else v
                        ).astype(dtype)
                    fh.attrs["rows_done"] = stop
                    fh.flush()
                    bar.update(stop - start)
            for a in ("resume_key", "rows_done"):
                del fh.attrs[a]
            fh["images"].attrs.update({"unit": "nanomaggy", "bands": "".join(bands), "pixel_scale_arcsec": job.scale})
            fh.attrs.update(
                {
                    "unit": "nanomaggy",
                    "bands": "".join(bands),
                    "pixel_scale_arcsec": job.scale,
                    "zero_point": ZERO_POINT,
                    "generator": GENERATOR,
                    "parent_survey": job.parent,
                    "seed": job.seed,
                    "injection_key": job.key,
                }
            )
        finally:
            fh.close()
        partial.replace(path)
    except OSError as exc:
        raise LenscatError(f"{path}: cannot write: {exc}") from exc
    return done
