"""HEALPix regions on the zone index (lenscat.sky.healpix): ranges, zone boxes against brute force, membership."""

from __future__ import annotations

import astropy.units as u
import numpy as np
import pytest
from astropy.coordinates import SkyCoord
from astropy_healpix import HEALPix, lonlat_to_healpix

from lenscat.sky.healpix import cells_to_ranges, cover_cells, merge_ranges, range_index, zone_ra_ranges


def region_of(ra0: float, dec0: float, radius: float, order: int = 7, ring: float = 0.0) -> tuple[np.ndarray, ...]:
    """Order-29 ranges of the NESTED cells at ``order`` whose centres lie within ``radius`` deg (or, with
    ``ring``, within ``radius`` of a circle of radius ``ring``) of (ra0, dec0)."""
    hp = HEALPix(2**order, order="nested")
    lon, lat = hp.healpix_to_lonlat(np.arange(hp.npix))
    sep = SkyCoord(lon, lat).separation(SkyCoord(ra0 * u.deg, dec0 * u.deg)).deg
    cells = np.flatnonzero(np.abs(sep - ring) <= radius)
    lo, hi = cells_to_ranges(np.full(cells.size, order), cells)
    return merge_ranges(lo, hi)


def random_sky(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.uniform(0, 360, n), np.degrees(np.arcsin(rng.uniform(-1, 1, n)))


def in_boxes(ra: np.ndarray, dec: np.ndarray, boxes) -> np.ndarray:
    zone = np.floor((dec + 90.0) * 60.0).astype(np.int64)
    hit = np.zeros(ra.size, bool)
    for z, a, b in zip(boxes.zone, boxes.ra_lo, boxes.ra_hi, strict=True):
        sel = zone == z
        hit[sel] |= (ra[sel] >= a) & (ra[sel] <= b)
    return hit


def test_cells_ranges_and_merge():
    lo, hi = cells_to_ranges(np.array([0, 29, 1]), np.array([1, 5, 0]))
    assert lo.tolist() == [4**29, 5, 0] and hi.tolist() == [2 * 4**29, 6, 4**28]
    mlo, mhi = merge_ranges(np.array([10, 0, 5, 30]), np.array([20, 5, 12, 31]))
    assert mlo.tolist() == [0, 30] and mhi.tolist() == [20, 31]
    assert cover_cells(np.array([0]), np.array([4**28 + 1]), 1).tolist() == [0, 1]


def test_range_index_agrees_with_astropy_healpix():
    ra, dec = random_sky(20000, 5)
    order = 5
    cells = lonlat_to_healpix(ra * u.deg, dec * u.deg, 2**order, order="nested")
    chosen = np.unique(cells)[::3]
    lo, hi = cells_to_ranges(np.full(chosen.size, order), chosen)
    idx = range_index(ra, dec, lo, hi)
    expect = np.isin(cells, chosen)
    assert np.array_equal(idx >= 0, expect)
    assert np.array_equal(chosen[idx[expect]], cells[expect])
    assert (range_index(np.array([]), np.array([]), lo, hi)).size == 0


@pytest.mark.parametrize(
    ("ra0", "dec0", "radius", "ring"),
    [
        (2.0, -30.0, 12.0, 0.0),  # across ra = 0/360
        (200.0, 86.0, 6.0, 0.0),  # over the north pole
        (90.0, -88.0, 3.0, 0.0),  # over the south pole
        (150.0, 10.0, 1.5, 15.0),  # a ring
        (45.0, 0.0, 0.6, 0.0),  # small, on the equator
    ],
)
def test_zone_boxes_cover_every_point_of_the_region(ra0, dec0, radius, ring):
    lo, hi = region_of(ra0, dec0, radius, ring=ring)
    boxes = zone_ra_ranges(lo, hi)
    # boxes are sorted, within [0, 360] and disjoint within a zone
    assert np.all(np.diff(boxes.zone) >= 0) and np.all(boxes.ra_lo <= boxes.ra_hi)
    assert boxes.ra_lo.min() >= 0 and boxes.ra_hi.max() <= 360
    same = boxes.zone[1:] == boxes.zone[:-1]
    assert np.all(boxes.ra_lo[1:][same] > boxes.ra_hi[:-1][same])
    ra, dec = random_sky(400000, 11)
    # and points close to the region, where a miss would hide
    near = SkyCoord(ra0 * u.deg, dec0 * u.deg).directional_offset_by(
        np.random.default_rng(2).uniform(0, 360, 100000) * u.deg,
        (ring + np.random.default_rng(4).uniform(-1.3, 1.3, 100000) * (radius + 1.0)) * u.deg,
    )
    ra = np.r_[ra, near.ra.deg]
    dec = np.r_[dec, near.dec.deg]
    inside = range_index(ra, dec, lo, hi) >= 0
    covered = in_boxes(ra, dec, boxes)
    assert inside.sum() > 1000
    assert not np.any(inside & ~covered)  # no point of the region is outside the boxes
    # the cover is tight: at most a few times the region in probed points
    assert covered.sum() <= 3 * inside.sum() + 2000


def test_empty_region():
    boxes = zone_ra_ranges(np.empty(0, np.int64), np.empty(0, np.int64))
    assert len(boxes) == 0
