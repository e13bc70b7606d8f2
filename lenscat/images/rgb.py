"""Colour renderings of multi-band cutouts: single images, PNG files and labelled grids.

Two stretches:

* ``'asinh'`` (default): the Legacy Surveys viewer's ``dr2`` scheme (legacysurvey ``imagine``
  ``dr2_rgb``/``sdss_rgb``): per-band scales g 6.0, r 3.4, z 2.2 (i 2.8 and other bands by
  wavelength interpolation: lenscat's choice, not the viewer's), an offset ``m = 0.03`` with a soft
  cut at 0, and a common ``arcsinh(Q I) / sqrt(Q)`` stretch (Q = 20) of the mean intensity ``I``
  that keeps colours. Suited to nanomaggies at 0.262"/px.
* ``'lupton'``: Lupton et al. (2004) via :func:`astropy.visualization.make_lupton_rgb` on the
  scaled bands (``Q`` default 8, linear range ``lupton_stretch`` default 0.5).

The bluest chosen band goes to B, the middle one to G, the reddest to R (g, r, z -> B, G, R).
With ``scales='auto'`` all bands are multiplied by one factor so that the 99.5th percentile of
the scaled intensity is 1 (for data in other units or pixel scales, e.g. HST counts/s).
Arrays are in FITS orientation (row 0 at the bottom); :func:`save_png` and :func:`rgb_grid` flip
them so north is up in the PNG.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from lenscat.errors import LenscatError
from lenscat.images.cutout import DEFAULT_BANDS, Cutout, band_wavelength_nm

__all__ = ["LEGACY_SCALES", "choose_rgb_bands", "rgb_grid", "rgb_image", "save_png"]

LEGACY_SCALES: dict[str, float] = {"g": 6.0, "r": 3.4, "i": 2.8, "z": 2.2}
"""Legacy Surveys viewer ``dr2`` scales (g, r, z); i is lenscat's interpolation."""

_PREFERRED = (("g", "r", "z"), ("g", "r", "i"), ("r", "i", "z"), ("g", "i", "z"))


def _scale_for(band: str) -> float:
    if band in LEGACY_SCALES:
        return LEGACY_SCALES[band]
    wl = band_wavelength_nm(band)
    if wl is None:
        return 3.4
    # log-linear interpolation between g (480 nm, 6.0) and z (900 nm, 2.2), clamped
    t = float(np.clip((np.log(wl) - np.log(480.0)) / (np.log(900.0) - np.log(480.0)), -0.5, 1.5))
    return float(np.exp(np.log(6.0) + t * (np.log(2.2) - np.log(6.0))))


def choose_rgb_bands(bands: Sequence[str]) -> list[int]:
    """Indices of the bands drawn as (B, G, R).

    g, r, z when present (then g, r, i; r, i, z; g, i, z); otherwise the bluest, middle and reddest
    bands by wavelength (unknown wavelengths keep their order). One band gives grey (same index
    thrice); two bands give (bluer, both, redder) with G the first of them.
    """
    names = list(bands)
    if not names:
        raise LenscatError("no bands to render")
    for combo in _PREFERRED:
        if all(b in names for b in combo):
            return [names.index(b) for b in combo]
    order = sorted(range(len(names)), key=lambda i: (band_wavelength_nm(names[i]) or 1e4 + i, i))
    if len(order) == 1:
        return [order[0]] * 3
    if len(order) == 2:
        return [order[0], order[0], order[1]]
    return [order[0], order[len(order) // 2], order[-1]]


def rgb_image(
    data: np.ndarray,
    bands: Sequence[str] = DEFAULT_BANDS,
    *,
    stretch: str = "asinh",
    Q: float | None = None,
    scales: Mapping[str, float] | str | None = None,
    m: float = 0.03,
    lupton_stretch: float = 0.5,
) -> np.ndarray:
    """An (H, W, 3) uint8 colour image of a (bands, H, W) or (H, W) cutout.

    Parameters
    ----------
    data
        Pixel values, nanomaggies for the default scales. NaN and inf count as 0.
    bands
        Names of ``data``'s planes (default g, r, z).
    stretch
        ``'asinh'`` (Legacy Surveys viewer) or ``'lupton'`` (Lupton et al. 2004).
    Q
        Softening: default 20 for ``asinh`` (the viewer's), 8 for ``lupton``.
    scales
        Per-band multipliers (missing bands use the defaults, see :data:`LEGACY_SCALES`), or
        ``'auto'`` (the defaults times one factor putting the 99.5th percentile at 1).
    m
        ``asinh`` offset added before the soft cut at 0 (the viewer's 0.03).
    lupton_stretch
        Linear range of the Lupton stretch, in scaled units.

    Returns
    -------
    ndarray, shape (H, W, 3), uint8
        R, G, B in the array orientation of ``data`` (row 0 = bottom for FITS data).
    """
    arr = np.asarray(data, dtype=np.float64)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise LenscatError(f"expected a (bands, H, W) cutout, got shape {arr.shape}")
    arr = np.nan_to_num(arr, nan=0.0, posinf=0.0, neginf=0.0)
    names = list(bands)[: arr.shape[0]]
    names += [f"band{i}" for i in range(len(names), arr.shape[0])]
    idx = choose_rgb_bands(names)  # B, G, R
    given = dict(scales) if isinstance(scales, Mapping) else {}
    chans = [arr[i] * float(given.get(names[i], _scale_for(names[i]))) for i in idx]
    if scales == "auto":
        level = float(np.percentile(np.mean(chans, axis=0), 99.5))
        if level > 0:
            chans = [c / level for c in chans]
    elif scales is not None and not isinstance(scales, Mapping):
        raise LenscatError(f"scales must be a mapping or 'auto', not {scales!r}")
    b, g, r = chans
    if stretch == "lupton":
        from astropy.visualization import make_lupton_rgb

        out = make_lupton_rgb(r, g, b, minimum=0.0, stretch=lupton_stretch, Q=8.0 if Q is None else Q)
        return np.ascontiguousarray(np.asarray(out, dtype=np.uint8))
    if stretch != "asinh":
        raise LenscatError(f"unknown stretch {stretch!r} (asinh or lupton)")
    q = 20.0 if Q is None else float(Q)
    shifted = [np.maximum(c + m, 0.0) for c in (r, g, b)]
    inten = (shifted[0] + shifted[1] + shifted[2]) / 3.0
    f_i = np.arcsinh(q * inten) / np.sqrt(q)
    inten = np.where(inten == 0.0, 1e-6, inten)
    rgb = np.stack([s * f_i / inten for s in shifted], axis=-1)
    out8: np.ndarray = (np.clip(rgb, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    return out8


def save_png(rgb: np.ndarray, path: str | Path, *, origin: str = "lower") -> Path:
    """Write an (H, W, 3) uint8 image as PNG; ``origin='lower'`` flips it so row 0 is at the bottom."""
    from PIL import Image

    arr = np.asarray(rgb)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[-1] != 3:
        raise LenscatError(f"save_png needs an (H, W, 3) uint8 array, got {arr.dtype} {arr.shape}")
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(arr[::-1] if origin == "lower" else arr)).save(p, format="PNG")
    return p


def rgb_grid(
    images: Sequence[np.ndarray | Cutout],
    labels: Sequence[str] | None,
    ncols: int,
    path: str | Path,
    *,
    bands: Sequence[str] = DEFAULT_BANDS,
    stretch: str = "asinh",
    scales: Mapping[str, float] | str | None = None,
    crop: int | None = None,
    zoom: int | None = None,
    pad: int = 2,
) -> Path:
    """Draw cutouts in a labelled grid and save it as one PNG (north up).

    Parameters
    ----------
    images
        :class:`Cutout` objects (rendered with their own band names), (bands, H, W) arrays (rendered
        with ``bands``) or (H, W, 3) uint8 RGB arrays; sizes may differ (tiles are as large as the
        largest).
    labels
        One caption per image (drawn under the tile), or None.
    ncols
        Tiles per row.
    path
        PNG file to write.
    bands, stretch, scales
        Passed to :func:`rgb_image`.
    crop
        Keep the central ``crop`` x ``crop`` pixels of each cutout.
    zoom
        Integer upscaling per tile (nearest neighbour); default enough for tiles about 128 px wide.
    pad
        Pixels between tiles.

    Returns
    -------
    Path
        The PNG written.
    """
    from PIL import Image, ImageDraw, ImageFont

    if not images:
        raise LenscatError("rgb_grid needs at least one image")
    if labels is not None and len(labels) != len(images):
        raise LenscatError(f"{len(labels)} labels for {len(images)} images")
    tiles = []
    for img in images:
        if isinstance(img, Cutout):
            rgb = rgb_image(img.data, img.bands, stretch=stretch, scales=scales)
        else:
            a = np.asarray(img)
            rgb = (
                a
                if (a.dtype == np.uint8 and a.ndim == 3 and a.shape[-1] == 3)
                else rgb_image(a, bands, stretch=stretch, scales=scales)
            )
        if crop:
            h, w = rgb.shape[:2]
            y0, x0 = max(0, (h - crop) // 2), max(0, (w - crop) // 2)
            rgb = rgb[y0 : y0 + crop, x0 : x0 + crop]
        tiles.append(rgb[::-1])  # north up
    th = max(t.shape[0] for t in tiles)
    tw = max(t.shape[1] for t in tiles)
    z = zoom if zoom is not None else max(1, 128 // max(tw, 1))
    th, tw = th * z, tw * z
    font = ImageFont.load_default()
    label_h = 14 if labels is not None else 0
    ncols = max(1, min(int(ncols), len(tiles)))
    nrows = -(-len(tiles) // ncols)
    canvas = Image.new("RGB", (ncols * (tw + pad) + pad, nrows * (th + label_h + pad) + pad), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for k, t in enumerate(tiles):
        r, c = divmod(k, ncols)
        x0 = pad + c * (tw + pad)
        y0 = pad + r * (th + label_h + pad)
        tile = Image.fromarray(np.ascontiguousarray(t))
        if z > 1:
            tile = tile.resize((t.shape[1] * z, t.shape[0] * z), Image.Resampling.NEAREST)
        canvas.paste(tile, (x0 + (tw - tile.width) // 2, y0 + (th - tile.height) // 2))
        if labels is not None:
            draw.text((x0 + 1, y0 + th + 1), str(labels[k])[: max(4, tw // 6)], fill=(0, 0, 0), font=font)
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(p, format="PNG")
    return p
