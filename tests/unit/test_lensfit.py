"""The forward-model refinement (lenscat.models.lensfit): lenstronomy's conventions, convergence, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lenscat.models.lensfit import (
    FWHM_PRIOR,
    N_ALL,
    PIXEL,
    FitOptions,
    components,
    refine,
    sie_deflection,
)

LENSES = [  # theta_E, e1, e2, gamma1, gamma2, center_x, center_y
    (1.2, 0.1, -0.2, 0.03, -0.02, 0.1, -0.05),
    (2.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0),
    (0.8, -0.3, 0.05, -0.05, 0.04, -0.2, 0.3),
    (1.6, 0.25, 0.25, 0.0, 0.07, 0.0, 0.15),
]


def _t(v: object) -> torch.Tensor:
    return torch.as_tensor(v, dtype=torch.float64)


@pytest.mark.parametrize("lens", LENSES)
def test_deflection_and_ray_shooting_match_lenstronomy_sie_shear(lens):
    from lenstronomy.LensModel.lens_model import LensModel

    te, e1, e2, g1, g2, cx, cy = lens
    rng = np.random.default_rng(1)
    x, y = rng.uniform(-4, 4, 400), rng.uniform(-4, 4, 400)
    kw = [{"theta_E": te, "e1": e1, "e2": e2, "center_x": cx, "center_y": cy}, {"gamma1": g1, "gamma2": g2}]
    ax, ay = LensModel(["SIE"]).alpha(x, y, kw[:1])
    mx, my = sie_deflection(_t(x), _t(y), _t(te), _t(e1), _t(e2), _t(cx), _t(cy))
    assert np.abs(mx.numpy() - ax).max() < 1e-5
    assert np.abs(my.numpy() - ay).max() < 1e-5
    # the renderer's ray-shooting: SIE plus lenstronomy's SHEAR (zero deflection at the origin)
    bx, by = LensModel(["SIE", "SHEAR"]).ray_shooting(x, y, kw)
    sx = x - mx.numpy() - (g1 * x + g2 * y)
    sy = y - my.numpy() - (g2 * x - g1 * y)
    assert np.abs(sx - bx).max() < 1e-5 and np.abs(sy - by).max() < 1e-5


def _theta(rows: list[list[float]]) -> torch.Tensor:
    """Full parameter rows: the 9 lens-model values, then light shapes and the PSF scale."""
    light = [math.log(0.8), math.log(2.0), 0.05, 0.0, math.log(0.2), 0.1, 0.0, 0.0]
    return torch.tensor([r + light for r in rows], dtype=torch.float32)


def test_lensed_source_image_matches_lenstronomy():
    from lenstronomy.Data.imaging_data import ImageData
    from lenstronomy.Data.psf import PSF
    from lenstronomy.ImSim.image_model import ImageModel
    from lenstronomy.LensModel.lens_model import LensModel
    from lenstronomy.LightModel.light_model import LightModel

    n = 40
    for te, e1, e2, g1, g2, cx, cy in LENSES[:3]:
        sx, sy = 0.15, -0.1
        comp = components(_theta([[te, e1, e2, g1, g2, cx, cy, sx, sy]]), n)[0, 1, 2].numpy()  # r band, source
        data = ImageData(
            image_data=np.zeros((n, n)),
            ra_at_xy_0=(n // 2) * PIXEL,
            dec_at_xy_0=-(n // 2) * PIXEL,
            transform_pix2angle=np.array([[-PIXEL, 0.0], [0.0, PIXEL]]),
        )
        # the renderer widens the PSF by the pixel's own variance (1/12 pixel^2)
        fwhm = math.sqrt(FWHM_PRIOR[1] ** 2 + 8 * math.log(2) * PIXEL**2 / 12)
        im = ImageModel(
            data,
            PSF(psf_type="GAUSSIAN", fwhm=fwhm, truncation=6),
            lens_model_class=LensModel(["SIE", "SHEAR"]),
            source_model_class=LightModel(["SERSIC_ELLIPSE"]),
            kwargs_numerics={"supersampling_factor": 1},
        )
        ref = im.image(
            [{"theta_E": te, "e1": e1, "e2": e2, "center_x": cx, "center_y": cy}, {"gamma1": g1, "gamma2": g2}],
            [{"amp": 1.0, "R_sersic": 0.2, "n_sersic": 1.0, "e1": 0.1, "e2": 0.0, "center_x": sx, "center_y": sy}],
        )
        # amplitudes are free in the fit: compare shapes, each scaled to unit total
        a, b = comp / comp.sum(), ref / ref.sum()
        assert np.abs(a - b).max() < 0.05 * b.max(), np.abs(a - b).max() / b.max()


def _mock(truth: np.ndarray, seed: int, noise: float) -> np.ndarray:
    """Three-band cutouts from the renderer itself: red lens light, a blue source, Gaussian noise."""
    comp = components(_theta(truth.tolist()), 48).numpy()
    amp = np.array([[0.3, 0.05, 0.4], [1.2, 0.2, 0.35], [2.5, 0.4, 0.3]])  # band x (dev, exp, source)
    rng = np.random.default_rng(seed)
    return (np.einsum("bc,nbcij->nbij", amp, comp) + rng.normal(0, noise, (len(truth), 3, 48, 48))).astype(np.float32)


def test_noiseless_fit_recovers_einstein_radius_from_a_perturbed_start():
    torch.set_num_threads(1)
    truth = np.array(
        [
            [1.3, 0.05, -0.08, 0.02, -0.01, 0.03, -0.02, 0.10, 0.05],
            [1.9, -0.10, 0.04, -0.03, 0.02, -0.04, 0.05, -0.20, 0.10],
            [1.1, 0.12, 0.10, 0.01, 0.03, 0.00, 0.00, 0.05, -0.15],
        ]
    )
    images = _mock(truth, 0, 1e-4)
    start = truth + np.array([0.12, 0.03, -0.03, 0.01, -0.01, 0.03, -0.03, 0.08, -0.06])
    sigma = np.tile([0.3, 0.1, 0.1, 0.035, 0.035, 0.1, 0.1, 0.3, 0.3], (len(truth), 1))
    res = refine(images, start, sigma, FitOptions(steps=12))
    assert res.ok.all(), res.reason
    assert np.abs(res.params[:, 0] - truth[:, 0]).max() < 0.02
    assert np.abs(res.params[:, 7:9] - truth[:, 7:9]).max() < 0.05
    assert (res.chi2_end < res.chi2_start).all()
    # intervals: the Gauss-Newton σ is positive and smaller than the prior's
    assert (res.sigma > 0).all() and (res.sigma[:, 0] < sigma[:, 0]).all()
    assert np.allclose(res.fwhm[:, 1], FWHM_PRIOR[1], atol=0.05)


def test_fits_that_fail_keep_the_network_values_and_say_why():
    torch.set_num_threads(1)
    truth = np.array([[1.4, 0.05, 0.0, 0.0, 0.0, 0.0, 0.0, 0.1, 0.0]])
    images = np.repeat(_mock(truth, 1, 1e-3), 2, axis=0)
    mu = np.repeat(truth, 2, axis=0)
    mu[1, 0] = np.nan  # a broken network output cannot be refined
    sigma = np.full_like(mu, 0.1)
    res = refine(images, mu, sigma, FitOptions(steps=3))
    assert res.ok.tolist() == [True, False]
    assert res.reason[1] == "not finite"
    assert np.isnan(res.params[1, 0]) and res.sigma[1, 0] == 0.1


def test_bad_input_raises():
    good = np.zeros((2, 3, 48, 48), dtype=np.float32)
    mu, sig = np.ones((2, 9)), np.ones((2, 9))
    with pytest.raises(ValueError, match="g, r, z"):
        refine(good[:, :2], mu, sig)
    with pytest.raises(ValueError, match="mu and sigma"):
        refine(good, mu[:1], sig[:1])
    with pytest.raises(ValueError, match="smaller than"):
        refine(good[:, :, :20, :20], mu, sig)
    with pytest.raises(ValueError, match="steps"):
        refine(good, mu, sig, FitOptions(steps=0))
    assert refine(good[:0], mu[:0], sig[:0]).params.shape == (0, 9)
    assert N_ALL == 17


def test_modeller_refine_scales_sigma_by_its_calibration_and_needs_one():
    from lenscat.errors import LenscatError
    from lenscat.modelling.modeller import Modeller, input_preprocessing

    torch.set_num_threads(1)
    truth = np.array([[1.5, 0.0, 0.05, 0.0, 0.0, 0.0, 0.0, 0.1, 0.1]])
    images = _mock(truth, 2, 1e-3)
    sigma = np.full((1, 9), 0.1)
    m = Modeller([], input_preprocessing(48, False), np.ones(9))
    with pytest.raises(LenscatError, match="no refinement calibration"):
        m.refine(images, truth, sigma)
    m.refine_calibration = np.full(9, 2.0)
    opts = FitOptions(steps=3)
    got, raw = m.refine(images, truth, sigma, options=opts), refine(images, truth, sigma, opts)
    assert got.refined.tolist() == raw.ok.tolist() == [True] and got.reasons == [""]
    assert np.allclose(got.mu, raw.params) and np.allclose(got.sigma, 2.0 * raw.sigma)
    with pytest.raises(LenscatError, match="smaller than"):
        m.refine(images[:, :, :20, :20], truth, sigma)
