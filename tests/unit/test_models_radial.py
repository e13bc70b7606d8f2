"""The radial colour-profile baseline (lenscat.models.radial) on synthetic rings and blobs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lenscat.errors import LenscatError
from lenscat.models.radial import (
    RadialProfile,
    fit_from_state,
    predict_radial,
    radial_features,
    radial_state,
    train_radial,
)
from tests.unit.test_models_supervised import auc, rings_and_blobs

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _ring(size: int, radius_px: float, width: float = 0.6, colour=(1.0, 1.0, 1.0)) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size] - (size - 1) / 2
    r = np.hypot(xx, yy)
    ring = np.exp(-0.5 * ((r - radius_px) / width) ** 2)
    return (np.asarray(colour)[:, None, None] * ring)[None].astype(np.float32)


def test_a_ring_puts_its_flux_in_its_annulus():
    prof = RadialProfile()  # 12 annuli to 6 arcsec at 0.262 arcsec/px: 1.91 px each
    width = prof.r_max_px / prof.n_annuli
    assert prof.n_features(3) == 36 and width == pytest.approx(6 / 0.262 / 12)
    for k in (1, 4, 9):
        f = radial_features(_ring(64, (k + 0.5) * width), prof)
        assert f.shape == (1, 36) and f.dtype == np.float32
        per_band = f.reshape(3, 12)
        assert (per_band.argmax(axis=1) == k).all()
        np.testing.assert_allclose(per_band[0], per_band[1], rtol=1e-5)  # a grey ring: no colour
    # colour: a blue ring's g annulus is brighter than its z annulus, by the log of the flux ratio
    blue = radial_features(_ring(64, 4.5 * width, colour=(2.0, 1.0, 0.5)), prof).reshape(3, 12)
    assert blue[0, 4] > blue[1, 4] > blue[2, 4]
    # at twice the arcsec per pixel the same ring (8.6 px) is twice as far out: annulus 9
    coarse = RadialProfile(pixel_scale=0.524)
    assert radial_features(_ring(64, 4.5 * width), coarse).reshape(3, 12)[0].argmax() == 9


def test_features_ignore_the_flux_scale_and_bad_pixels():
    x, _ = rings_and_blobs(20, size=64, seed=3)
    f = radial_features(x)
    np.testing.assert_allclose(radial_features(7.5 * x), f, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(radial_features(0.01 * x), f, rtol=1e-4, atol=1e-4)
    y = x.copy()
    y[:, :, 0, 0] = np.nan  # outside the 6-arcsec aperture
    np.testing.assert_array_equal(radial_features(y), f)
    assert np.isfinite(radial_features(np.zeros((2, 3, 64, 64), np.float32))).all()
    with pytest.raises(LenscatError, match="smaller than the radial profile"):
        radial_features(x[:, :, :32, :32])
    with pytest.raises(LenscatError, match="holds no pixel"):
        radial_features(x, RadialProfile(n_annuli=200))
    with pytest.raises(LenscatError, match="pixel_scale must be positive"):
        RadialProfile(pixel_scale=0)


def test_a_separable_toy_problem_is_learned_and_the_state_round_trips():
    x, y = rings_and_blobs(200, size=64, seed=0)
    xt, yt = rings_and_blobs(200, size=64, seed=1)
    fit = train_radial(x[:150], y[:150], val_images=x[150:], val_labels=y[150:], epochs=10, seed=0)
    assert fit.weight.shape == (36,) and fit.mean.shape == (36,) and (fit.std > 0).all()
    assert 1 <= fit.epoch <= 10
    p = predict_radial(fit, xt)
    assert p.shape == (200,) and p.dtype == np.float32 and ((p >= 0) & (p <= 1)).all()
    assert auc(yt, p) > 0.95
    state = radial_state(fit, train_ids=torch.arange(3))
    assert state["arch"] == "radial" and state["profile"]["n_annuli"] == 12
    again = fit_from_state(state)
    np.testing.assert_array_equal(predict_radial(again, xt), p)
    np.testing.assert_array_equal(predict_radial(state, xt), p)
    with pytest.raises(LenscatError, match="24 radial features but the classifier takes 36"):
        predict_radial(fit, np.ascontiguousarray(xt[:2, :2]))
