"""The ResNet + matched-filter ensemble's pure parts (issue 31): the union of the two members'
candidates and the threshold at a false-positive rate on clean spectra."""

import numpy as np
import pytest

from lenscat.errors import InvalidParameter
from lenscat.spectra.detector_ensemble import _union
from lenscat.spectra.detectors import Candidates
from lenscat.spectra.ensemble_calibrate import threshold_at_fpr


def _mf(rows, pixels, snr):
    n = len(rows)
    return Candidates(
        row=np.asarray(rows, dtype=np.int64),
        pixel=np.asarray(pixels, dtype=np.int64),
        snr=np.asarray(snr, dtype=np.float64),
        prob=np.full(n, np.nan),
        best=np.zeros(10),
    )


def test_union_keeps_every_matched_filter_hit_and_adds_the_stack_elsewhere():
    # stack: row 1 at 100 (a filter hit at 103: the same line), row 4 at 500 (no hit), row 2 at 40
    # (the filter's hit in row 2 is at 300: a second line)
    row = np.array([1, 2, 4])
    pix = np.array([100, 40, 500])
    snr = np.array([5.5, 5.2, 7.0])
    mf = _mf([1, 2, 2, 7], [103, 300, 900, 10], [6.5, 8.0, 6.1, 12.0])
    r, p, s, from_stack, from_mf = _union(row, pix, snr, mf)
    assert list(zip(r.tolist(), p.tolist(), strict=True)) == [(1, 103), (2, 40), (2, 300), (2, 900), (4, 500), (7, 10)]
    # a stacked candidate next to a hit is that hit: the filter's pixel and S/N, flagged as both
    assert s.tolist() == [6.5, 5.2, 8.0, 6.1, 7.0, 12.0]
    assert from_mf.tolist() == [True, False, True, True, False, True]
    assert from_stack.tolist() == [True, True, False, False, True, False]
    # every (row, pixel) once
    assert len(set(zip(r.tolist(), p.tolist(), strict=True))) == r.size


def test_union_with_nothing_from_one_member():
    r, p, s, fs, fm = _union(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0), _mf([3], [7], [9.0]))
    assert r.tolist() == [3] and p.tolist() == [7] and fm.tolist() == [True] and fs.tolist() == [False]
    r, p, s, fs, fm = _union(np.array([5]), np.array([60]), np.array([5.1]), _mf([], [], []))
    assert r.tolist() == [5] and p.tolist() == [60] and fs.tolist() == [True] and fm.tolist() == [False]


def test_threshold_at_fpr_counts_the_negatives_at_or_above_it():
    rng = np.random.default_rng(3)
    scores = rng.normal(size=2400)
    for fpr in (0.0, 1e-3, 0.01, 0.1):
        thr = threshold_at_fpr(scores, fpr)
        assert np.sum(scores >= thr) <= np.floor(fpr * scores.size)
        # and it is the lowest such threshold: the next score down would let one more through
        below = np.sort(scores)[::-1][int(np.floor(fpr * scores.size))]
        assert below < thr and np.sum(scores >= below) == np.floor(fpr * scores.size) + 1
    assert threshold_at_fpr(scores, 0.0) > scores.max()
    with pytest.raises(InvalidParameter, match="fpr must be in"):
        threshold_at_fpr(scores, 1.0)
    with pytest.raises(InvalidParameter, match="scores must not be empty"):
        threshold_at_fpr(np.zeros(0), 1e-3)
