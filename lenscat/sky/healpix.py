"""HEALPix regions on the declination-zone sky index: NESTED ranges at order 29, zones, membership.

A sky region (a credible region of a sky map, a MOC) is a sorted list of disjoint half-open ranges
``[lo, hi)`` of NESTED pixel indices at order 29 (``nside = 2**29``, cells of about 0.4 mas), as
skyportal's healpix-alchemy stores them: a cell of order ``k`` and index ``i`` is the range
``[i * 4**(29 - k), (i + 1) * 4**(29 - k))``. Pure functions, no database:

* :func:`cells_to_ranges`: (order, index) cells to order-29 ranges;
* :func:`merge_ranges`: sort and merge ranges;
* :func:`zone_ra_ranges`: the region's cover by (zone, ra_lo, ra_hi) boxes of the sky index
  (``zone = floor((dec + 90) * 60)``, as ``lenscat_zone``), from each pixel's bounding box at a
  coarse order, padded and merged per zone: every point of the region lies in one of the boxes;
* :func:`range_index`: which range holds each position (astropy-healpix ``lonlat_to_healpix`` at
  order 29 and ``np.searchsorted``), -1 for none: the exact membership test after the index probe.
"""

from __future__ import annotations

from dataclasses import dataclass

import astropy.units as u
import numpy as np
from astropy_healpix import boundaries_lonlat, lonlat_to_healpix, nside_to_pixel_resolution

MAX_ORDER = 29
"""Order of the stored ranges (``nside = 2**29``)."""

ZONE_HEIGHT_DEG = 1.0 / 60.0
"""Height of one declination zone of the sky index [deg] (``lenscat_zone``: ``floor((dec + 90) * 60)``)."""

MAX_COVER_CELLS = 20000
""":func:`zone_ra_ranges` uses the finest order (at most 10) whose cells covering the region number at most this."""


@dataclass(frozen=True)
class ZoneRanges:
    """A cover of a region by boxes of the sky index, one or more per declination zone.

    Attributes
    ----------
    zone
        Zone number, ``floor((dec + 90) * 60)`` (int32).
    ra_lo, ra_hi
        Right-ascension interval of the box, inclusive, within [0, 360] [deg].
    order
        HEALPix order whose pixels' bounding boxes made the cover.
    """

    zone: np.ndarray
    ra_lo: np.ndarray
    ra_hi: np.ndarray
    order: int

    def __len__(self) -> int:
        return len(self.zone)


def cells_to_ranges(order: np.ndarray, ipix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """NESTED cells (order, index) as order-29 ranges ``[lo, hi)`` (int64, in the cells' order)."""
    shift = 2 * (MAX_ORDER - np.asarray(order, dtype=np.int64))
    i = np.asarray(ipix, dtype=np.int64)
    return i << shift, (i + 1) << shift


def merge_ranges(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sort ranges ``[lo, hi)`` and merge those that overlap or touch."""
    lo = np.asarray(lo, dtype=np.int64)
    hi = np.asarray(hi, dtype=np.int64)
    if len(lo) == 0:
        return lo, hi
    order = np.argsort(lo, kind="stable")
    lo, hi = lo[order], hi[order]
    reach = np.maximum.accumulate(hi)
    start = np.r_[True, lo[1:] > reach[:-1]]
    first = np.flatnonzero(start)
    last = np.r_[first[1:] - 1, len(lo) - 1]
    return lo[first], reach[last]


def _cover_order(lo: np.ndarray, hi: np.ndarray, max_order: int) -> int:
    """The finest order <= ``max_order`` whose cells covering the ranges number <= :data:`MAX_COVER_CELLS`."""
    for k in range(max_order, -1, -1):
        s = 2 * (MAX_ORDER - k)
        n = int(np.sum(((hi - 1) >> s) - (lo >> s) + 1))
        if n <= MAX_COVER_CELLS:
            return k
    return 0


def cover_cells(lo: np.ndarray, hi: np.ndarray, order: int) -> np.ndarray:
    """NESTED indices at ``order`` of every cell that overlaps a range (unique, sorted)."""
    s = 2 * (MAX_ORDER - order)
    first = np.asarray(lo, dtype=np.int64) >> s
    last = (np.asarray(hi, dtype=np.int64) - 1) >> s
    counts = last - first + 1
    if len(counts) == 0:
        return np.empty(0, np.int64)
    offsets = np.arange(int(counts.sum()), dtype=np.int64) - np.repeat(np.cumsum(counts) - counts, counts)
    return np.unique(np.repeat(first, counts) + offsets)


def zone_ra_ranges(lo: np.ndarray, hi: np.ndarray, *, max_order: int = 10) -> ZoneRanges:
    """Boxes (zone, ra_lo, ra_hi) of the sky index covering the region ``[lo, hi)``.

    Parameters
    ----------
    lo, hi
        The region: order-29 NESTED ranges (any order; overlapping ranges are fine).
    max_order
        Finest HEALPix order of the cover (10: pixels of 3.4 arcmin).

    Returns
    -------
    ZoneRanges
        Sorted by zone and ra_lo, disjoint within a zone.

    Notes
    -----
    The region's cells at a coarse order (:func:`_cover_order`) are replaced by their bounding
    boxes in (ra, dec): the box of the pixel's four corners (along a HEALPix edge, z and phi are
    monotonic, so the corners hold the extremes), padded by half the pixel resolution in
    declination and by the same angle divided by cos(dec) in right ascension (a margin for
    rounding; the unit tests compare with brute-force membership), wrapped at ra = 0/360, and the whole
    circle of right ascension where the padded box reaches a pole. Each box is split into the
    zones it touches and the intervals of a zone are merged. The boxes over-cover the region by
    about a pixel at its border; the exact test is :func:`range_index`.
    """
    lo = np.asarray(lo, dtype=np.int64)
    hi = np.asarray(hi, dtype=np.int64)
    if len(lo) == 0:
        e = np.empty(0)
        return ZoneRanges(np.empty(0, np.int32), e, e.copy(), 0)
    order = _cover_order(lo, hi, max_order)
    cells = cover_cells(lo, hi, order)
    nside = 2**order
    lon, lat = boundaries_lonlat(cells, 1, nside, order="nested")
    ra = lon.to_value(u.deg)
    dec = lat.to_value(u.deg)
    pad = 0.5 * float(nside_to_pixel_resolution(nside).to_value(u.deg))
    dec_lo = np.clip(dec.min(axis=1) - pad, -90.0, 90.0)
    dec_hi = np.clip(dec.max(axis=1) + pad, -90.0, 90.0)
    ref = ra[:, :1]
    dra = (ra - ref + 180.0) % 360.0 - 180.0
    cosd = np.cos(np.radians(np.maximum(np.abs(dec_lo), np.abs(dec_hi))))
    polar = (dec_hi >= 90.0) | (dec_lo <= -90.0) | (cosd < 1e-6)
    ra_pad = np.where(polar, 0.0, pad / np.where(polar, 1.0, cosd))
    a = ref[:, 0] + dra.min(axis=1) - ra_pad
    b = ref[:, 0] + dra.max(axis=1) + ra_pad
    full = polar | (b - a >= 360.0)
    a, b = np.where(full, 0.0, a % 360.0), np.where(full, 360.0, b % 360.0)
    wraps = ~full & (b < a)
    # a box across ra = 0 becomes [a, 360] and [0, b]
    box_lo = np.r_[np.where(wraps, a, a), np.zeros(int(wraps.sum()))]
    box_hi = np.r_[np.where(wraps, 360.0, np.where(full, 360.0, b)), b[wraps]]
    box_dlo = np.r_[dec_lo, dec_lo[wraps]]
    box_dhi = np.r_[dec_hi, dec_hi[wraps]]
    z0 = np.floor((box_dlo + 90.0) * 60.0).astype(np.int64)
    z1 = np.floor((box_dhi + 90.0) * 60.0).astype(np.int64)
    nz = z1 - z0 + 1
    zone = np.repeat(z0, nz) + (np.arange(int(nz.sum())) - np.repeat(np.cumsum(nz) - nz, nz))
    rlo, rhi = np.repeat(box_lo, nz), np.repeat(box_hi, nz)
    srt = np.lexsort((rlo, zone))
    zone, rlo, rhi = zone[srt], rlo[srt], rhi[srt]
    # merge overlapping intervals within each zone
    reach = rhi.copy()
    new_zone = np.r_[True, zone[1:] != zone[:-1]]
    # running max of rhi within zones: offset each zone by a multiple of 1000 degrees
    key = reach + zone.astype(np.float64) * 1000.0
    reach = np.maximum.accumulate(key) - zone.astype(np.float64) * 1000.0
    start = new_zone | np.r_[True, rlo[1:] > reach[:-1]]
    first = np.flatnonzero(start)
    last = np.r_[first[1:] - 1, len(zone) - 1]
    return ZoneRanges(zone[first].astype(np.int32), rlo[first], reach[last], order)


def range_index(ra_deg: np.ndarray, dec_deg: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Index of the range ``[lo, hi)`` holding each position's order-29 pixel, -1 for none.

    Parameters
    ----------
    ra_deg, dec_deg
        Positions (ICRS) [deg].
    lo, hi
        Disjoint ranges sorted by ``lo`` (:func:`merge_ranges` output, or a sky map's tiles).

    Returns
    -------
    numpy.ndarray
        int64, one per position.
    """
    ra = np.asarray(ra_deg, dtype=np.float64)
    if len(ra) == 0 or len(lo) == 0:
        return np.full(len(ra), -1, np.int64)
    pix = np.asarray(
        lonlat_to_healpix(ra * u.deg, np.asarray(dec_deg, dtype=np.float64) * u.deg, 2**MAX_ORDER, order="nested"),
        dtype=np.int64,
    )
    i = np.searchsorted(np.asarray(lo, dtype=np.int64), pix, side="right") - 1
    ok = (i >= 0) & (pix < np.asarray(hi, dtype=np.int64)[np.maximum(i, 0)])
    return np.where(ok, i, -1).astype(np.int64)
