"""The cutout store: images referenced by the database, read with random access, and RGB renderings.

Two kinds of files hold cutouts:

* Stein et al. (2022) HDF5 files: a root dataset ``images`` (N, bands, H, W) float32 in nanomaggies
  (g, r, z at 0.262"/px in DECaLS), one row per catalogue row. :class:`HDF5CutoutStore` reads any
  set of rows in any order (sorted, de-duplicated reads; one-image chunks make random access cheap).
* FITS cutouts with a WCS: one file per band (Pan-STARRS ``NAME_PS1_g.fits``), one file with an image
  HDU per band (Euclid Q1 ``*_BGSUB`` with PSF and RMS HDUs), or one band in an HDU named ``SCI``
  (HST). :func:`read_fits_cutout` returns a :class:`Cutout`; :func:`resample` turns it into a
  DECaLS-like query cutout (pixel scale, size, bands, nanomaggies where the header allows).

Open HDF5 stores are cached per process (:func:`open_store`, bounded LRU) so a worker reading many
rows from a few files opens each once.
"""

from __future__ import annotations

import re
import warnings
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import astropy.units as u
import numpy as np

from lenscat.errors import InputFileError, LenscatError

DEFAULT_BANDS = ("g", "r", "z")
DEFAULT_PIXEL_SCALE = 0.262  # arcsec / pixel (Legacy Surveys)
# effective wavelengths [nm] for nearest-band fallbacks
BAND_WAVELENGTH_NM = {"u": 355, "g": 475, "r": 640, "i": 780, "z": 920, "y": 990, "Y": 1030, "vis": 720,
                      "J": 1250, "H": 1650, "K": 2200}


@dataclass
class Cutout:
    """One multi-band cutout.

    Attributes
    ----------
    data
        (bands, H, W) float32 image.
    bands
        Band names, in the order of ``data``.
    pixel_scale
        Pixel scale (arcsec / pixel).
    wcs
        Celestial WCS of the pixels, if known.
    unit
        ``'nanomaggy'`` when converted (or native), else the file's unit (e.g. ``'counts'``).
    source
        Where it came from (path and row or HDUs).
    psf
        PSF images per band, when the file has them.
    """

    data: np.ndarray
    bands: list[str]
    pixel_scale: u.Quantity
    wcs: Any = None
    unit: str = "nanomaggy"
    source: str = ""
    psf: dict[str, np.ndarray] = field(default_factory=dict)


class HDF5CutoutStore:
    """Random access to the ``images`` dataset of a Stein-layout HDF5 file."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._fh: Any = None
        self._ds: Any = None

    def _open(self) -> Any:
        if self._ds is None:
            import h5py

            if not self.path.is_file():
                raise InputFileError(f"{self.path}: cutout file not found")
            try:
                self._fh = h5py.File(self.path, "r")
            except OSError as exc:
                raise InputFileError(f"{self.path}: cannot open as HDF5: {exc}") from exc
            if "images" not in self._fh:
                self._fh.close()
                self._fh = None
                raise InputFileError(f"{self.path}: no 'images' dataset (Stein layout expected)")
            self._ds = self._fh["images"]
            if self._ds.ndim != 4:
                raise InputFileError(f"{self.path}: 'images' has shape {self._ds.shape}, expected (N, bands, H, W)")
        return self._ds

    @property
    def shape(self) -> tuple[int, ...]:
        """(N, bands, H, W)."""
        return tuple(self._open().shape)

    @property
    def bands(self) -> list[str]:
        """Band names from the file's ``bands`` attribute (default g, r, z)."""
        self._open()
        attr = self._fh.attrs.get("bands")
        if attr is None:
            return list(DEFAULT_BANDS[: self.shape[1]])
        text = attr.decode() if isinstance(attr, bytes) else str(attr)
        return list(text) if "," not in text else [b.strip() for b in text.split(",")]

    @property
    def pixel_scale(self) -> u.Quantity:
        """Pixel scale from the ``pixel_scale_arcsec`` attribute (default 0.262"/px)."""
        self._open()
        return float(self._fh.attrs.get("pixel_scale_arcsec", DEFAULT_PIXEL_SCALE)) * u.arcsec

    def __len__(self) -> int:
        return int(self.shape[0])

    def get(self, rows: Sequence[int] | np.ndarray) -> np.ndarray:
        """Images of ``rows`` (any order, duplicates allowed): (n, bands, H, W) float32, native order."""
        ds = self._open()
        idx = np.asarray(rows, dtype=np.int64).ravel()
        if idx.size == 0:
            return np.empty((0, *ds.shape[1:]), dtype=np.float32)
        bad = (idx < 0) | (idx >= ds.shape[0])
        if bad.any():
            raise LenscatError(f"{self.path}: row {int(idx[bad][0])} is outside the file's "
                               f"{ds.shape[0]} images (rows are 0-based)")
        if len(idx) == 1 or bool(np.all(np.diff(idx) > 0)):  # sorted and unique: no re-ordering copy
            block = ds[int(idx[0]):int(idx[-1]) + 1] if idx[-1] - idx[0] + 1 == len(idx) else ds[idx]
            arr = np.asarray(block, dtype=np.float32)
            return arr if arr.dtype.isnative else arr.astype(arr.dtype.newbyteorder("="))
        uniq, inverse = np.unique(idx, return_inverse=True)
        if len(uniq) > 1 and uniq[-1] - uniq[0] + 1 == len(uniq):  # one contiguous slab
            block = ds[int(uniq[0]):int(uniq[-1]) + 1]
        else:
            block = ds[uniq]
        out = np.asarray(block, dtype=np.float32)
        if not out.dtype.isnative:
            out = out.astype(out.dtype.newbyteorder("="))
        return out[inverse]

    def get_one(self, row: int) -> Cutout:
        """One row as a :class:`Cutout`."""
        return Cutout(self.get([row])[0], self.bands, self.pixel_scale, None, "nanomaggy", f"{self.path}[{row}]")

    def iter_batches(self, rows: Sequence[int] | np.ndarray, batch_size: int = 256
                     ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(rows, images) batches over ``rows`` sorted, each row once: sequential reads."""
        idx = np.unique(np.asarray(rows, dtype=np.int64))
        for i in range(0, len(idx), batch_size):
            part = idx[i:i + batch_size]
            yield part, self.get(part)

    def close(self) -> None:
        """Close the HDF5 handle."""
        if self._fh is not None:
            self._fh.close()
        self._fh = None
        self._ds = None

    def __enter__(self) -> HDF5CutoutStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class FITSCutoutStore:
    """A FITS cutout file as a one-row store (row 0 is the whole multi-band cutout)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._cutout: Cutout | None = None

    def __len__(self) -> int:
        return 1

    def get(self, rows: Sequence[int] | np.ndarray) -> np.ndarray:
        """(n, bands, H, W) copies of the cutout (only row 0 exists)."""
        idx = np.asarray(rows, dtype=np.int64).ravel()
        if (idx != 0).any():
            raise LenscatError(f"{self.path}: a FITS cutout file has one cutout (row 0), asked for row "
                               f"{int(idx[idx != 0][0])}")
        if self._cutout is None:
            self._cutout = read_fits_cutout(self.path)
        return np.repeat(self._cutout.data[None], len(idx), axis=0)

    def close(self) -> None:
        """Forget the cached cutout."""
        self._cutout = None


_STORES: OrderedDict[tuple[str, str], Any] = OrderedDict()
MAX_OPEN = 32


def open_store(path: str | Path, format: str = "hdf5-stein") -> Any:
    """A cached store for a registered cutout file (``hdf5-stein`` or ``fits``); LRU of 32 files."""
    key = (str(path), format)
    if key in _STORES:
        _STORES.move_to_end(key)
        return _STORES[key]
    if format == "hdf5-stein":
        store: Any = HDF5CutoutStore(path)
    elif format == "fits":
        store = FITSCutoutStore(path)
    else:
        raise LenscatError(f"{path}: unknown cutout format {format!r} (expected hdf5-stein or fits)")
    _STORES[key] = store
    while len(_STORES) > MAX_OPEN:
        _, old = _STORES.popitem(last=False)
        old.close()
    return store


def close_stores() -> None:
    """Close every cached store."""
    while _STORES:
        _, s = _STORES.popitem()
        s.close()


# ------------------------------------------------------------------------------------- FITS
_BAND_IN_NAME = re.compile(r"(?:^|[_\-.])(?:PS1_)?([ugrizyYJHK])(?:[_\-.]|$)")


def _band_from_header(header: Any) -> str | None:
    for key in ("FILTER", "BAND", "FILTNAM1", "HIERARCH FPA.FILTER", "FPA.FILTER"):
        if key in header and header[key]:
            val = str(header[key]).strip()
            m = re.search(r"([ugrizyYJHK])(?:[.\s_]|$)", val.split("_")[-1] + " ")
            if m:
                return m.group(1)
            return val
    return None


def _zero_point_nmgy(header: Any) -> float | None:
    """Factor turning the pixel values into nanomaggies, when the header defines a zero point."""
    if "MAGZERO" in header:
        return float(10 ** (-0.4 * (float(header["MAGZERO"]) - 22.5)))
    zp = header.get("FPA.ZP", header.get("HIERARCH FPA.ZP"))
    if zp is not None:
        exptime = float(header.get("EXPTIME", 1.0) or 1.0)
        return float(10 ** (-0.4 * (float(zp) + 2.5 * np.log10(exptime) - 22.5)))
    if "PHOTFLAM" in header and "PHOTPLAM" in header:
        abzp = -2.5 * np.log10(float(header["PHOTFLAM"])) - 21.10 - 5 * np.log10(float(header["PHOTPLAM"])) + 18.6921
        return float(10 ** (-0.4 * (abzp - 22.5)))
    return None


def _image_hdus(hdul: Any) -> list[tuple[int, str | None]]:
    out = []
    for i, h in enumerate(hdul):
        if h.data is None or getattr(h.data, "ndim", 0) != 2:
            continue
        name = (h.name or "").upper()
        if name.endswith(("_PSF", "_RMS", "_WHT", "_ERR", "_IVAR", "_MASK")) or name in ("PSF", "RMS", "ERR", "WHT"):
            continue
        out.append((i, name or None))
    return out


def read_fits_cutout(paths: str | Path | Sequence[str | Path], bands: Sequence[str] | None = None) -> Cutout:
    """A multi-band cutout from FITS file(s) with WCS.

    Parameters
    ----------
    paths
        One file with an image HDU per band (or one band in ``SCI``/the primary HDU), or one file
        per band (band from the FILTER/BAND header or the file name, e.g. ``*_PS1_g.fits``).
    bands
        Keep these bands, in this order (default: all found).

    Returns
    -------
    Cutout
        Pixel values converted to nanomaggies when a zero point is in the header (MAGZERO,
        PS1's FPA.ZP + EXPTIME, HST's PHOTFLAM + PHOTPLAM), else left in the file's units.
    """
    from astropy.io import fits
    from astropy.wcs import WCS, FITSFixedWarning
    from astropy.wcs.utils import proj_plane_pixel_scales

    files = [Path(paths)] if isinstance(paths, str | Path) else [Path(p) for p in paths]
    if not files:
        raise LenscatError("no FITS file given")
    images: list[np.ndarray] = []
    names: list[str] = []
    wcs = None
    units: set[str] = set()
    psf: dict[str, np.ndarray] = {}
    for path in files:
        if not path.is_file():
            raise InputFileError(f"{path}: file not found")
        try:
            hdul = fits.open(path, memmap=False)
            hdul.verify("silentfix")
        except OSError as exc:
            raise InputFileError(f"{path}: not a readable FITS file: {exc}") from exc
        with hdul:
            hdus = _image_hdus(hdul)
            if not hdus:
                raise InputFileError(f"{path}: no 2-D image HDU")
            for i, name in hdus:
                h = hdul[i]
                band = _band_from_header(h.header)
                if band is None and name and name not in ("PRIMARY", "SCI"):
                    band = name.split("_")[1] if name.count("_") >= 2 else name.split("_")[0]
                if band is None:
                    hst = re.search(r"(?:^|_)(F\d{3,4}[WLMNX])(?:_|$)", path.stem.upper())
                    m = _BAND_IN_NAME.search(path.stem)
                    band = hst.group(1) if hst else m.group(1) if m else f"band{len(names)}"
                data = np.asarray(h.data, dtype=np.float32)
                factor = _zero_point_nmgy(h.header) or _zero_point_nmgy(hdul[0].header)
                if factor is not None:
                    data = data * np.float32(factor)
                    units.add("nanomaggy")
                else:
                    units.add(str(h.header.get("BUNIT", "counts")))
                if images and data.shape != images[0].shape:
                    raise InputFileError(f"{path}: band {band} is {data.shape[1]}x{data.shape[0]} pixels but "
                                         f"{names[0]} is {images[0].shape[1]}x{images[0].shape[0]}")
                images.append(data)
                names.append(band)
                if wcs is None:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore", FITSFixedWarning)
                        w = WCS(h.header)
                    wcs = w.celestial if w.has_celestial else None
                psf_name = f"{name[: -len('_BGSUB')]}_PSF" if name and name.endswith("_BGSUB") else None
                if psf_name and psf_name in hdul:
                    psf[band] = np.asarray(hdul[psf_name].data, dtype=np.float32)
    order = list(range(len(names)))
    if bands is not None:
        missing = [b for b in bands if b not in names]
        if missing:
            raise LenscatError(f"{files[0]}: band(s) {', '.join(missing)} not found (have {', '.join(names)})")
        order = [names.index(b) for b in bands]
    scale = float(np.mean(proj_plane_pixel_scales(wcs)) * 3600) if wcs is not None else DEFAULT_PIXEL_SCALE
    data = np.stack([np.nan_to_num(images[i], nan=0.0, posinf=0.0, neginf=0.0) for i in order])
    return Cutout(data, [names[i] for i in order], scale * u.arcsec, wcs,
                  "nanomaggy" if units == {"nanomaggy"} else ",".join(sorted(units)),
                  ", ".join(str(f) for f in files), {names[i]: psf[names[i]] for i in order if names[i] in psf})


def band_wavelength_nm(band: str) -> float | None:
    """Effective wavelength of a band name (``g``, ``VIS``, HST ``F814W`` -> 814 nm), if known."""
    if band in BAND_WAVELENGTH_NM:
        return float(BAND_WAVELENGTH_NM[band])
    if band.lower() in BAND_WAVELENGTH_NM:
        return float(BAND_WAVELENGTH_NM[band.lower()])
    m = re.fullmatch(r"F(\d{3,4})[WLMNX]P?", band.upper())
    if m:
        nm = int(m.group(1))
        return float(nm * 10 if nm < 200 else nm)  # WFC3/IR names are in 10 nm (F160W = 1600 nm)
    return None


def _nearest_band(want: str, have: list[str]) -> int:
    if want in have:
        return have.index(want)
    w = band_wavelength_nm(want)
    known = [band_wavelength_nm(h) for h in have]
    if w is None or all(k is None for k in known):
        raise LenscatError(f"no band {want!r} in the cutout (have {', '.join(have)})")
    dist = [abs(k - w) if k is not None else np.inf for k in known]
    return int(np.argmin(dist))


def resample(cutout: Cutout, pixel_scale: u.Quantity = DEFAULT_PIXEL_SCALE * u.arcsec,
             shape: tuple[int, int] = (152, 152), bands: Sequence[str] = DEFAULT_BANDS) -> Cutout:
    """Resample to another pixel scale and size, centred, conserving flux; map bands by name.

    A band the cutout lacks takes the nearest band in wavelength (e.g. Euclid VIS for r). Pixels
    outside the input are 0.
    """
    from scipy.ndimage import map_coordinates

    out_scale = float(pixel_scale.to_value(u.arcsec))
    in_scale = float(cutout.pixel_scale.to_value(u.arcsec))
    zoom = in_scale / out_scale  # output pixels per input pixel
    h_in, w_in = cutout.data.shape[-2:]
    h_out, w_out = shape
    # output pixel centre -> input pixel coordinate, both images centred on their middle
    yy = (np.arange(h_out) - (h_out - 1) / 2) / zoom + (h_in - 1) / 2
    xx = (np.arange(w_out) - (w_out - 1) / 2) / zoom + (w_in - 1) / 2
    gy, gx = np.meshgrid(yy, xx, indexing="ij")
    area = (out_scale / in_scale) ** 2  # input pixels per output pixel
    planes = []
    for b in bands:
        src = cutout.data[_nearest_band(b, cutout.bands)].astype(np.float64)
        if zoom < 1:  # downsampling: average the input pixels each output pixel covers first
            from scipy.ndimage import uniform_filter

            src = uniform_filter(src, size=max(1, int(round(1 / zoom))), mode="constant")
            plane = map_coordinates(src, [gy, gx], order=1, mode="constant", cval=0.0)
        else:
            plane = map_coordinates(src, [gy, gx], order=3, mode="constant", cval=0.0)
        planes.append((plane * area).astype(np.float32))
    return Cutout(np.stack(planes), list(bands), out_scale * u.arcsec, None, cutout.unit,
                  f"resampled({cutout.source})")


# -------------------------------------------------------------------------------------- RGB
LEGACY_SCALES = {"g": 6.0, "r": 3.4, "i": 2.5, "z": 2.2}


def rgb_image(data: np.ndarray, bands: Sequence[str] = DEFAULT_BANDS, *, stretch: str = "asinh",
              Q: float = 8.0, minimum: float = 0.0, scales: dict[str, float] | None = None) -> np.ndarray:
    """An (H, W, 3) uint8 colour image of a (bands, H, W) cutout: reddest band R, bluest B.

    ``asinh``: the Legacy Surveys viewer scheme (per-band scales g 6.0, r 3.4, z 2.2, an arcsinh
    stretch of the mean intensity). ``lupton``: Lupton et al. (2004) via astropy.
    """
    arr = np.nan_to_num(np.asarray(data, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    if arr.ndim != 3:
        raise LenscatError(f"expected a (bands, H, W) cutout, got shape {arr.shape}")
    bands = list(bands)[: arr.shape[0]]
    if arr.shape[0] >= 3:
        order = sorted(range(len(bands)), key=lambda i: band_wavelength_nm(bands[i]) or float(i))
        idx = [order[-1], order[len(order) // 2], order[0]]  # R, G, B
    else:
        idx = [arr.shape[0] - 1, 0, 0]
    sc = scales or LEGACY_SCALES
    chans = [arr[i] * sc.get(bands[i] if i < len(bands) else "", 3.0) for i in idx]
    if stretch == "lupton":
        from astropy.visualization import make_lupton_rgb

        return np.asarray(make_lupton_rgb(chans[0], chans[1], chans[2], minimum=minimum, stretch=0.05, Q=Q))
    if stretch != "asinh":
        raise LenscatError(f"unknown stretch {stretch!r} (asinh or lupton)")
    rgb = np.stack(chans, axis=-1)
    inten = np.clip(rgb.mean(axis=-1, keepdims=True), 1e-12, None)
    rgb = rgb * np.arcsinh(inten * Q) / (inten * Q) * 1.5
    return (np.clip(rgb, 0, 1) * 255).astype(np.uint8)


def save_png(rgb: np.ndarray, path: str | Path) -> Path:
    """Write an (H, W, 3) uint8 image as PNG (origin at the bottom, as astronomers display)."""
    from PIL import Image

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(rgb[::-1])).save(p)
    return p


def rgb_grid(images: Sequence[np.ndarray], labels: Sequence[str], path: str | Path, *, ncols: int = 10,
             bands: Sequence[str] = DEFAULT_BANDS, crop: int | None = 96) -> Path:
    """A labelled grid of RGB cutouts in one PNG (for inspection and galleries)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(images)
    ncols = max(1, min(ncols, n))
    nrows = max(1, -(-n // ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(1.6 * ncols, 1.75 * nrows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, img, lab in zip(axes.ravel(), images, labels, strict=False):
        im = np.asarray(img)
        if crop and im.shape[-1] > crop:
            o = (im.shape[-1] - crop) // 2
            im = im[..., o:o + crop, o:o + crop]
        ax.imshow(rgb_image(im, bands), origin="lower")
        ax.set_title(lab, fontsize=7)
    fig.tight_layout()
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(p, dpi=100)
    plt.close(fig)
    return p
