"""Lens modelling network: shapes, the Gaussian NLL, the sky frame of targets and augmentations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lenscat.modelling import types
from lenscat.modelling.frames import ellipticity, pixel_row, sky_from_pixel
from lenscat.models.lensmodel import (
    PARAMS,
    LensModelNet,
    combine_members,
    coverage_scale,
    dihedral,
    gaussian_nll,
    predict,
    z95,
)
from lenscat.models.lensmodel_train import members_from, state_of, train_lensmodel

S = 0.262


def test_params_agree_with_the_domain():
    assert PARAMS == types.PARAMS


def test_shapes_and_physical_units():
    net = LensModelNet(3, 48, 8, target_mean=[1.5] + [0.0] * 8, target_std=[0.5] + [0.1] * 8)
    mu, ls = net(torch.zeros(5, 3, 48, 48))
    assert mu.shape == (5, 9) and ls.shape == (5, 9)
    m, s = net.physical(torch.zeros(1, 9), torch.zeros(1, 9))
    assert m[0, 0] == pytest.approx(1.5) and s[0, 0] == pytest.approx(0.5) and s[0, 1] == pytest.approx(0.1)
    y = torch.tensor([[2.0] + [0.1] * 8])
    assert net.standardise(y)[0, 0] == pytest.approx(1.0) and net.standardise(y)[0, 1] == pytest.approx(1.0)
    with pytest.raises(ValueError):
        LensModelNet(3, 50)


def test_gaussian_nll_matches_the_density():
    mu, ls, y = torch.tensor([[0.3]]), torch.tensor([[math.log(0.7)]]), torch.tensor([[1.1]])
    want = -torch.distributions.Normal(0.3, 0.7).log_prob(torch.tensor(1.1)) - 0.5 * math.log(2 * math.pi)
    assert float(gaussian_nll(mu, ls, y)[0]) == pytest.approx(float(want), rel=1e-6)
    # minimised over sigma at sigma = |y - mu|
    grid = torch.linspace(-3, 1, 401)
    vals = [float(gaussian_nll(mu, torch.tensor([[g]]), y)[0]) for g in grid]
    assert float(grid[int(np.argmin(vals))]) == pytest.approx(math.log(0.8), abs=0.02)


def test_mixture_of_members():
    mu, sig = combine_members([torch.tensor([1.0]), torch.tensor([3.0])], [torch.tensor([1.0]), torch.tensor([1.0])])
    assert float(mu[0]) == pytest.approx(2.0) and float(sig[0]) == pytest.approx(math.sqrt(2.0))
    assert coverage_scale(np.array([[0.5], [1.0], [2.0], [4.0]]), 0.5)[0] == pytest.approx(1.5)
    assert z95() == pytest.approx(1.959964, abs=1e-5)


def _render_sky(t: np.ndarray, n: int = 32) -> np.ndarray:
    """A crop in FITS orientation (rows North, columns West) of an elliptical blob at the lens centre
    elongated along (e1, e2), a spin-2 'shear' streak and a point at the source position."""
    i, j = np.mgrid[0:n, 0:n]
    x, y = -(j - n // 2) * S, (i - n // 2) * S
    _, e1, e2, g1, g2, cx, cy, sx, sy = t
    out = np.zeros((3, n, n))
    for band, (c1, c2, px, py) in enumerate(((e1, e2, cx, cy), (g1, g2, cx, cy))):
        phi = 0.5 * math.atan2(c2, c1)
        e = math.hypot(c1, c2)
        q = (1 - e) / (1 + e)
        u = (x - px) * math.cos(phi) + (y - py) * math.sin(phi)
        v = -(x - px) * math.sin(phi) + (y - py) * math.cos(phi)
        out[band] = np.exp(-0.5 * (u * u + v * v / (q * q)) / 1.2**2)
    out[2] = np.exp(-0.5 * ((x - sx) ** 2 + (y - sy) ** 2) / 0.3**2)
    return out


@pytest.mark.parametrize("k", range(8))
def test_dihedral_transforms_targets_with_the_images(k):
    t = np.array([1.4, 0.25, 0.1, -0.2, 0.15, 0.262, -0.524, 0.786, 1.048])
    img = torch.tensor(_render_sky(t)[None], dtype=torch.float32)
    ximg, tt = dihedral(img, torch.tensor(t[None], dtype=torch.float32), k)
    want = _render_sky(tt[0].numpy().astype(np.float64))
    # the edge row/column that wraps round in a mirror is the only place they may differ
    assert np.allclose(ximg[0].numpy()[:, 1:-1, 1:-1], want[:, 1:-1, 1:-1], atol=1e-5)
    assert float(tt[0, 0]) == pytest.approx(1.4)


def test_sky_frame_of_simulator_truth_with_lenstronomy():
    """lenstronomy's convergence in the simulator's pixel frame equals the sky-frame model's at the same pixels."""
    from lenstronomy.LensModel.lens_model import LensModel

    lm = LensModel(["SIE", "SHEAR"])
    pix = pixel_row(1.3, 0.6, 0.4, 0.03, -0.05, 0.2, -0.1, 0.3, 0.25)
    sky = sky_from_pixel(pix)
    assert np.allclose(sky_from_pixel(sky), pix)

    def kw(v):
        return [
            {"theta_E": v[0], "e1": v[1], "e2": v[2], "center_x": v[5], "center_y": v[6]},
            {"gamma1": v[3], "gamma2": v[4], "ra_0": 0.0, "dec_0": 0.0},
        ]

    n = 24
    i, j = np.mgrid[0:n, 0:n]
    xp, yp = ((j - n // 2) * S).ravel(), ((i - n // 2) * S).ravel()  # simulator: x along columns
    xs, ys = -xp, yp  # the same pixels on the sky (east left)
    assert np.allclose(lm.kappa(xp, yp, kw(pix)), lm.kappa(xs, ys, kw(sky)), rtol=1e-4)
    a_pix = lm.ray_shooting(xp, yp, kw(pix))
    a_sky = lm.ray_shooting(xs, ys, kw(sky))
    assert np.allclose(-a_pix[0], a_sky[0]) and np.allclose(a_pix[1], a_sky[1])
    # the source position maps like any position; q and the East-of-North angle follow
    e1, e2 = ellipticity(0.6, 0.4)
    assert types.axis_ratio(sky[1], sky[2]) == pytest.approx(0.6)
    # pixel phi 0.4 rad from +x (West) towards North is 180 - 22.9 deg from East, i.e. PA = 90 - 157.1 mod 180
    assert types.pa_east_of_north(sky[1], sky[2]) == pytest.approx((90 - (180 - math.degrees(0.4))) % 180)
    assert (e1, -e2) == pytest.approx((sky[1], sky[2]))


def test_training_loop_learns_and_round_trips():
    rng = np.random.default_rng(0)
    n = 192
    t = np.zeros((n, 9))
    t[:, 0] = rng.uniform(0.8, 2.5, n)
    x = np.zeros((n, 3, 16, 16), dtype=np.float32)
    i, j = np.mgrid[0:16, 0:16]
    r = np.hypot(i - 8, j - 8) * S
    for k in range(n):  # a ring of radius theta_e: the network must read the radius
        x[k, :] = np.exp(-0.5 * ((r - t[k, 0]) / 0.2) ** 2)
    res = train_lensmodel(x[:160], t[:160], x[160:], t[160:], epochs=12, warmup_epochs=2, width=4, batch_size=32)
    mu, sig = predict(res.members, x[160:])
    assert mu.shape == (32, 9) and (sig > 0).all()
    base = np.abs(t[160:, 0] - np.median(t[:160, 0])).mean()
    assert np.abs(mu[:, 0] - t[160:, 0]).mean() < 0.6 * base
    again = members_from(state_of(res))
    mu2, _ = predict(again, x[160:])
    assert np.allclose(mu, mu2, atol=1e-5)


def test_weighted_epochs_draw_the_heavy_crops_more_often():
    """``sample_weights`` draws batches with replacement by weight: zero-weight crops are never seen,
    so a network trained on one target value alone predicts it."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(64, 3, 16, 16)).astype(np.float32)
    t = np.zeros((64, 9))
    t[:, 0] = np.where(np.arange(64) < 32, 1.0, 3.0)
    w = (np.arange(64) < 32).astype(float)
    res = train_lensmodel(x, t, x[:8], t[:8], epochs=6, warmup_epochs=6, width=4, batch_size=16, sample_weights=w)
    mu, _ = predict(res.members, x[32:])
    assert np.all(mu[:, 0] < 2.0)  # the theta_E = 3 crops carried no weight
