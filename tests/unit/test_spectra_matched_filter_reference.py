"""The vectorised matched filter (lenscat.spectra.matched_filter) against a direct, per-spectrum,
float64 evaluation of the documented statistic: the FFT sums, the robust noise rescaling, the masks,
the coverage cut, the hits and the best S/N must not depend on how the search is organised."""

from __future__ import annotations

import numpy as np
import pytest

from lenscat.spectra.grid import C_KMS, WINDOW
from lenscat.spectra.masks import galaxy_line_pixels, sky_line_mask
from lenscat.spectra.matched_filter import MatchedFilterConfig, scan_batch, scan_batch_with_max, snr_map

pytestmark = pytest.mark.filterwarnings("error")

WAVE = WINDOW.wave


def reference_map(
    flux: np.ndarray, ivar: np.ndarray, cont: np.ndarray, z: np.ndarray, cfg: MatchedFilterConfig
) -> tuple[np.ndarray, np.ndarray]:
    """S/N maps by direct sums (float64, one row at a time): maximum over the kernels that pass the
    coverage cut, and over all kernels (where hits are looked for)."""
    n, p = flux.shape
    out = np.full((n, p), -np.inf)
    raw = np.full((n, p), -np.inf)
    sky = sky_line_mask(WAVE, half_width_kms=cfg.sky_half_width_kms)
    gal = np.zeros((n, p), dtype=bool)
    gal.reshape(-1)[galaxy_line_pixels(WAVE, z, half_width_kms=cfg.galaxy_half_width_kms, extended=True)] = True
    for i in range(n):
        r = flux[i].astype(np.float64) - cont[i]
        good = np.isfinite(r) & (ivar[i] > 0) & ~sky & ~gal[i]
        if good.sum() < cfg.min_good_pixels:
            continue
        w = np.where(good, ivar[i].astype(np.float64), 0.0)
        r = np.where(good, r, 0.0)
        s = np.median(np.abs(r[good]) * np.sqrt(w[good])) / 0.6744897501960817
        w = w / s**2
        for sig in cfg.sigmas_px:
            h = int(np.ceil(cfg.truncate * sig))
            k = np.exp(-0.5 * (np.arange(-h, h + 1) / sig) ** 2)
            num = np.correlate(np.pad(r * w, h), k, mode="valid")
            den = np.correlate(np.pad(w, h), k * k, mode="valid")
            hc = max(1, int(round(cfg.coverage_nsigma * sig)))
            need = int(np.ceil(cfg.min_coverage * (2 * hc + 1) - 1e-9))
            cnt = np.correlate(np.pad(good.astype(float), hc), np.ones(2 * hc + 1), mode="valid")
            ok = (cnt >= need) & (den > 0)
            snr = np.where(den > 0, num / np.sqrt(np.where(den > 0, den, 1.0)), -np.inf)
            raw[i] = np.maximum(raw[i], snr)
            out[i] = np.maximum(out[i], np.where(ok, snr, -np.inf))
    return out, raw


def _batch(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    cont = 3.0 + 0.5 * np.sin(WAVE / 150.0)[None, :] * rng.uniform(0.5, 1.5, (n, 1))
    sigma = rng.uniform(0.5, 2.0, (n, 1)) * (1.0 + 0.3 * np.cos(WAVE / 400.0))[None, :]
    flux = cont + sigma * rng.standard_normal((n, WAVE.size))
    for i in range(0, n, 2):  # a Gaussian line in every second spectrum
        lam = rng.uniform(3900.0, 4900.0)
        sig = lam * rng.uniform(100.0, 400.0) / C_KMS
        flux[i] += rng.uniform(3.0, 8.0) * sigma[i] * np.exp(-0.5 * ((WAVE - lam) / sig) ** 2)
    ivar = 1.0 / sigma**2 * rng.uniform(0.6, 1.4, (n, 1))  # ivar mis-scaled: the rescaling absorbs it
    ivar[3, 200:260] = 0.0  # a masked run
    ivar[5, :1100] = 0.0  # too few good pixels: not searched
    flux[7, 500] = np.nan  # a bad pixel
    z = rng.uniform(0.1, 0.6, n)
    z[9] = np.nan  # no redshift: no galaxy masks
    return flux.astype(np.float32), ivar.astype(np.float32), cont.astype(np.float32), z


@pytest.mark.parametrize("workers", [1, 2])
def test_snr_map_hits_and_best_match_direct_sums(workers):
    flux, ivar, cont, z = _batch(300, seed=21)
    cfg = MatchedFilterConfig(workers=workers)
    ref, raw = reference_map(flux, ivar, cont, z, cfg)
    got = snr_map(flux, ivar, cont, z, config=cfg)
    assert np.array_equal(np.isfinite(got), np.isfinite(ref))
    fin = np.isfinite(ref)
    np.testing.assert_allclose(got[fin], ref[fin], rtol=1e-4, atol=2e-4)
    hits, best = scan_batch_with_max(flux, ivar, cont, z, config=cfg)
    searched = fin.any(axis=1)
    assert np.array_equal(np.isfinite(best), searched) and not searched[5]
    np.testing.assert_allclose(best[searched], ref[searched].max(axis=1), rtol=1e-4, atol=2e-4)
    # hits: local maxima (+-merge_px) of the map over all kernels, reported with the best covered
    # kernel's S/N there, at or above the threshold
    assert len(hits) > 100
    for r, px, s in zip(hits.row.tolist(), hits.pixel.tolist(), hits.snr.tolist(), strict=True):
        lo, hi = max(0, px - cfg.merge_px), px + cfg.merge_px + 1
        assert s >= cfg.threshold and s == pytest.approx(ref[r, px], rel=1e-4, abs=2e-4)
        assert raw[r, px] >= raw[r, lo:hi].max() - 2e-4
    # and every such maximum clear of the threshold is a hit
    for r in range(len(flux)):
        for px in np.flatnonzero((raw[r] >= cfg.threshold + 1e-3) & (ref[r] >= cfg.threshold + 1e-3)):
            lo, hi = max(0, px - cfg.merge_px), px + cfg.merge_px + 1
            if raw[r, px] >= raw[r, lo:hi].max():
                assert np.any((hits.row == r) & (hits.pixel == px))
    same = scan_batch(flux, ivar, cont, z, config=cfg)
    assert np.array_equal(same.row, hits.row) and np.array_equal(same.pixel, hits.pixel)
