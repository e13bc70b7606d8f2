"""Forward-model refinement of lens models: a batched, differentiable SIE + shear fit in pure torch.

The network (:mod:`lenscat.models.lensmodel`) gives a first guess; :func:`refine` then fits the
cutout itself, all cutouts of a batch at once, starting there (network first, likelihood second,
as HOLISMOKES and Pearson et al. do). The model of a window (bands g, r, z, nanomaggies):

* mass: a singular isothermal ellipsoid in lenstronomy's ``SIE`` convention (θ_E the product-average
  Einstein radius, ``(e1, e2) = (1-q)/(1+q) (cos 2φ, sin 2φ)``; :func:`sie_deflection`, checked against
  lenstronomy in tests/unit/test_lensfit.py) plus lenstronomy's ``SHEAR`` (zero at the origin);
* lens light: a de Vaucouleurs (Sersic n = 4) and an exponential component with a shared centre
  (the mass's) and ellipticity; source: an elliptical exponential at ``(source_x, source_y)``;
* a Gaussian PSF whose FWHM is fitted (one scale factor per cutout on the survey's median FWHM
  of each band, :data:`FWHM_PRIOR`, with a log-normal prior), widened by the pixel's own ``1/12``
  variance; a sky constant per band;
* the amplitudes of the three light components and the sky, per band, solved in closed form
  (weighted least squares, then negative light amplitudes set to zero) at every evaluation, so the
  optimiser (Levenberg-Marquardt, :attr:`FitOptions.steps` iterations, the Jacobian by forward
  differences of all cutouts and parameters in one batch) only sees the 17 non-linear parameters.

Coordinates are the sky frame of :mod:`lenscat.models.lensmodel`: pixel ``(i, j)`` of an ``n``-pixel
window at ``x = -(j - n // 2) s`` (East), ``y = (i - n // 2) s`` (North). The likelihood uses a
per-pixel variance ``σ_b² + (f d)²`` (sky noise measured on the window's edge; ``f`` =
:attr:`FitOptions.floor` stands for Poisson noise and lens-light model error), a circular aperture
and Huber-reweighted residuals (neighbours); the network's prediction is a Gaussian prior on the
nine parameters. Uncertainties are the Gauss-Newton covariance ``(Jᵀ W J + P)⁻¹`` with ``J`` by
finite differences of the profiled residuals (the amplitudes re-solved), ``P`` the priors'
precision; callers multiply them by factors calibrated on held-out training-simulator lenses.

A fit that leaves the physical range, moves the centre far, or does not improve the χ² is marked
not ``ok`` with a reason, and its caller keeps the network's values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

__all__ = ["FWHM_PRIOR", "PIXEL", "FitOptions", "FitResult", "components", "refine", "sie_deflection", "sky_noise"]

PIXEL = 0.262
"""Pixel scale [arcsec]."""
FWHM_PRIOR = (1.45, 1.3, 1.2)
"""Median PSF FWHM [arcsec] in g, r, z (DECaLS; both simulators scatter around these)."""
FWHM_LOG_SIGMA = 0.15
N_MASS = 9  # theta_e, e1, e2, gamma1, gamma2, center_x, center_y, source_x, source_y
# light: log R_dev, log R_exp, e1_light, e2_light, log R_src, e1_src, e2_src; then log(FWHM / FWHM_PRIOR)
N_ALL = N_MASS + 7 + 1
_LIGHT_INIT = (math.log(0.8), math.log(2.0), 0.0, 0.0, math.log(0.15), 0.0, 0.0)
_LIGHT_PRIOR_SIGMA = (1.0, 1.0, 0.3, 0.3, 1.0, 0.4, 0.4)
_FD_STEP = 1e-3
# the largest change of each parameter in one iteration (a trust region: whole steps are shrunk to fit)
_MAX_STEP = (0.15, 0.08, 0.08, 0.03, 0.03, 0.1, 0.1, 0.15, 0.15, 0.3, 0.3, 0.1, 0.1, 0.3, 0.1, 0.1, 0.1)


@dataclass
class FitOptions:
    """Settings of :func:`refine`.

    Attributes
    ----------
    steps : int
        Levenberg-Marquardt iterations (each cutout has its own damping).
    window : int
        Side of the fitted central window [pixels].
    radius : float
        Radius of the fitted aperture [arcsec].
    supersample : int
        Sub-pixels per pixel side for ray-shooting and light profiles.
    floor : float
        Fractional per-pixel error added in quadrature to the sky noise.
    huber : float
        Residuals beyond this many σ are down-weighted (Huber) after each step.
    prior_scale : float
        The network prior's σ is multiplied by this (larger: weaker prior).
    starts : tuple of float
        Offsets [arcsec] added to the network's θ_E to start from (all fitted in one batch; the
        lowest posterior wins): a guard against the wrong image configuration.
    """

    steps: int = 6
    window: int = 32
    radius: float = 4.2
    supersample: int = 1
    floor: float = 0.05
    huber: float = 3.0
    prior_scale: float = 2.0
    starts: tuple[float, ...] = (0.0,)

    def check(self) -> None:
        """Raise ValueError on settings out of range."""
        if self.steps < 1 or self.window < 16 or self.supersample < 1 or not self.starts:
            raise ValueError("steps must be >= 1, window >= 16 pixels, supersample >= 1, starts not empty")
        if not (self.radius > 0 and self.floor >= 0 and self.huber > 0 and self.prior_scale > 0):
            raise ValueError("radius, huber and prior_scale must be positive and floor non-negative")


@dataclass
class FitResult:
    """What :func:`refine` found, per cutout.

    Attributes
    ----------
    params : ndarray, (N, 9)
        Refined sky-frame parameters (the network's where not ``ok``).
    sigma : ndarray, (N, 9)
        Gauss-Newton 1σ, uncalibrated (the prior's where not ``ok``).
    ok : ndarray of bool, (N,)
        The fit was accepted.
    reason : list of str
        ``''`` when ok, else why the network's values were kept.
    chi2_start, chi2_end : ndarray, (N,)
        Reduced χ² at the network's parameters (light amplitudes fitted) and after the fit.
    fwhm : ndarray, (N, 3)
        Fitted PSF FWHM [arcsec] per band.
    """

    params: np.ndarray
    sigma: np.ndarray
    ok: np.ndarray
    reason: list[str]
    chi2_start: np.ndarray
    chi2_end: np.ndarray
    fwhm: np.ndarray


def sie_deflection(
    x: Tensor, y: Tensor, theta_e: Tensor, e1: Tensor, e2: Tensor, cx: Tensor, cy: Tensor
) -> tuple[Tensor, Tensor]:
    """Deflection of lenstronomy's ``SIE`` at ``(x, y)``; parameters broadcast against the grid.

    ``b = θ_E √q`` on the major axis, ``ψ = √(q² x'² + y'²)``,
    ``α' = b/√(1-q²) (atan(√(1-q²) x'/ψ), atanh(√(1-q²) y'/ψ))`` in the frame turned by
    ``φ = atan2(e2, e1) / 2``, turned back.
    """
    c = torch.sqrt(e1 * e1 + e2 * e2 + 1e-12).clamp(max=0.9)
    q = (1 - c) / (1 + c)
    phi = 0.5 * torch.atan2(e2, e1 + 1e-12)
    cos, sin = torch.cos(phi), torch.sin(phi)
    dx, dy = x - cx, y - cy
    xr, yr = cos * dx + sin * dy, -sin * dx + cos * dy
    b = theta_e * torch.sqrt(q)
    root = torch.sqrt((1 - q * q).clamp(min=1e-6))
    psi = torch.sqrt(q * q * xr * xr + yr * yr + 1e-10)
    ax = b / root * torch.atan(root * xr / psi)
    ay = b / root * torch.atanh((root * yr / psi).clamp(-0.999999, 0.999999))
    return cos * ax - sin * ay, sin * ax + cos * ay


def _sersic(x: Tensor, y: Tensor, r_e: Tensor, e1: Tensor, e2: Tensor, n: float) -> Tensor:
    """Unnormalised elliptical Sersic ``exp(-b_n (R/R_e)^{1/n})`` (its shape only: amplitudes are linear)."""
    c = torch.sqrt(e1 * e1 + e2 * e2 + 1e-12).clamp(max=0.8)
    q = (1 - c) / (1 + c)
    phi = 0.5 * torch.atan2(e2, e1 + 1e-12)
    cos, sin = torch.cos(phi), torch.sin(phi)
    xr, yr = cos * x + sin * y, -sin * x + cos * y
    r = torch.sqrt(q * xr * xr + yr * yr / q + (0.05 * PIXEL) ** 2)
    bn = 2 * n - 1.0 / 3 + 0.009876 / n
    return torch.exp(-bn * (r / r_e) ** (1.0 / n))


def _blur_matrices(fwhm: Tensor, n: int, supersample: int) -> Tensor:
    """Gaussian Toeplitz matrices (N, 3, n, n), unit integral, for FWHM (N, 3) [arcsec] (+ the pixel's variance)."""
    sig2 = (fwhm / (2 * math.sqrt(2 * math.log(2))) / PIXEL) ** 2 + 1.0 / (12 * supersample**2)
    d = torch.arange(n, dtype=fwhm.dtype, device=fwhm.device)
    dd = (d[:, None] - d[None, :]) ** 2
    k = torch.exp(-0.5 * dd / sig2[..., None, None])
    return k / torch.sqrt(2 * math.pi * sig2)[..., None, None]


def _grid(n: int, supersample: int, device: torch.device) -> tuple[Tensor, Tensor]:
    off = (torch.arange(n * supersample, dtype=torch.float32, device=device) + 0.5) / supersample - 0.5 - n // 2
    yy, xx = torch.meshgrid(off * PIXEL, -off * PIXEL, indexing="ij")
    return xx, yy


def components(theta: Tensor, n: int, supersample: int = 1) -> Tensor:
    """PSF-convolved unit light maps (N, 3 bands, 3 components, n, n): de Vaucouleurs, exponential, source."""
    xx, yy = _grid(n, supersample, theta.device)
    p = [theta[:, k, None, None] for k in range(N_ALL)]
    ax, ay = sie_deflection(xx, yy, p[0], p[1], p[2], p[5], p[6])
    bx = xx - ax - (p[3] * xx + p[4] * yy) - p[7]
    by = yy - ay - (p[4] * xx - p[3] * yy) - p[8]
    lx, ly = xx - p[5], yy - p[6]
    maps = torch.stack(
        [
            _sersic(lx, ly, torch.exp(p[9]), p[11], p[12], 4.0),
            _sersic(lx, ly, torch.exp(p[10]), p[11], p[12], 1.0),
            _sersic(bx, by, torch.exp(p[13]), p[14], p[15], 1.0),
        ],
        dim=1,
    )
    if supersample > 1:
        maps = torch.nn.functional.avg_pool2d(maps, supersample)
    g = _blur_matrices(torch.exp(theta[:, 16:17]) * torch.tensor(FWHM_PRIOR, dtype=theta.dtype), n, supersample)
    return g[:, :, None] @ maps[:, None] @ g[:, :, None].transpose(-1, -2)


def _solve(comp: Tensor, data: Tensor, w: Tensor) -> tuple[Tensor, Tensor]:
    """Model (N, 3, n, n) and amplitudes (N, 3, 4) by weighted least squares, light amplitudes >= 0."""
    a = torch.cat([comp.flatten(3), torch.ones_like(comp[:, :, :1].flatten(3))], dim=2)  # (N, 3, 4, P)
    aw = a * w.flatten(2)[:, :, None]
    m = aw @ a.transpose(-1, -2)
    m = m + 1e-6 * torch.diagonal(m, dim1=-2, dim2=-1).mean(-1)[..., None, None] * torch.eye(4, device=m.device)
    amp = torch.linalg.solve(m, (aw @ data.flatten(2)[..., None]))[..., 0]
    amp = torch.cat([amp[..., :3].clamp(min=0.0), amp[..., 3:]], dim=-1)
    return (amp[..., None] * a).sum(2).view_as(data), amp


def sky_noise(images: np.ndarray, edge: int = 4) -> np.ndarray:
    """Per-band sky σ (N, 3) from the window's outer ``edge`` pixels (1.4826 MAD)."""
    x = np.asarray(images, dtype=np.float64)
    edges = np.ones(x.shape[-2:], dtype=bool)
    edges[edge:-edge, edge:-edge] = False
    ring = x[..., edges]
    med = np.median(ring, axis=-1, keepdims=True)
    return np.maximum(1.4826 * np.median(np.abs(ring - med), axis=-1), 1e-6)


def refine(
    images: np.ndarray, mu: np.ndarray, sigma: np.ndarray, opts: FitOptions | None = None, *, batch_size: int = 256
) -> FitResult:
    """Fit the SIE + shear model of the module docstring to cutouts, starting at the network's values.

    Parameters
    ----------
    images : ndarray, (N, 3, H, W)
        g, r, z cutouts in nanomaggies, FITS orientation, the lens near the centre pixel.
    mu, sigma : ndarray, (N, 9)
        The network's calibrated means and 1σ (sky frame): the start and a Gaussian prior.
    opts : FitOptions, optional
    batch_size : int
        Cutouts fitted together.

    Returns
    -------
    FitResult

    Raises
    ------
    ValueError
        Shapes that do not match, or a window larger than the cutouts.
    """
    opts = opts or FitOptions()
    opts.check()
    x = np.asarray(images, dtype=np.float32)
    mu, sigma = np.asarray(mu, dtype=np.float64), np.asarray(sigma, dtype=np.float64)
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"expected (N, 3, H, W) g, r, z cutouts, got shape {x.shape}")
    if mu.shape != (len(x), N_MASS) or sigma.shape != mu.shape:
        raise ValueError(f"mu and sigma must be ({len(x)}, {N_MASS}), got {mu.shape} and {sigma.shape}")
    if min(x.shape[2:]) < opts.window:
        raise ValueError(f"cutouts of {x.shape[2]}x{x.shape[3]} pixels are smaller than the {opts.window}-pixel window")
    parts = [
        _refine_batch(x[i : i + batch_size], mu[i : i + batch_size], sigma[i : i + batch_size], opts)
        for i in range(0, len(x), batch_size)
    ]
    if not parts:
        z = np.zeros((0, N_MASS))
        return FitResult(z, z, np.zeros(0, bool), [], np.zeros(0), np.zeros(0), np.zeros((0, 3)))
    return FitResult(
        np.concatenate([p.params for p in parts]),
        np.concatenate([p.sigma for p in parts]),
        np.concatenate([p.ok for p in parts]),
        [r for p in parts for r in p.reason],
        np.concatenate([p.chi2_start for p in parts]),
        np.concatenate([p.chi2_end for p in parts]),
        np.concatenate([p.fwhm for p in parts]),
    )


def _residuals(theta: Tensor, data: Tensor, w: Tensor, prior: tuple[Tensor, Tensor], opts: FitOptions) -> Tensor:
    """Whitened residuals (N, 3 n² + 17): the pixels (amplitudes profiled out), then the priors."""
    model, _ = _solve(components(theta, data.shape[-1], opts.supersample), data, w)
    r = ((data - model) * torch.sqrt(w)).flatten(1)
    return torch.cat([r, (theta - prior[0]) / prior[1]], dim=1)


def _jacobian(
    theta: Tensor, r0: Tensor, data: Tensor, w: Tensor, prior: tuple[Tensor, Tensor], opts: FitOptions
) -> Tensor:
    """Forward differences of :func:`_residuals`, (N, M, 17), all 17 shifts in one batch."""
    n, p = theta.shape
    shifted = (theta[None] + _FD_STEP * torch.eye(p, dtype=theta.dtype)[:, None, :]).reshape(p * n, p)
    rep = (data.repeat(p, 1, 1, 1), w.repeat(p, 1, 1, 1), prior[0].repeat(p, 1), prior[1].repeat(p, 1))
    rk = _residuals(shifted, rep[0], rep[1], (rep[2], rep[3]), opts).view(p, n, -1)
    return ((rk - r0[None]) / _FD_STEP).permute(1, 2, 0)


def _clamp(theta: Tensor) -> Tensor:
    t = theta.clone()
    t[:, 0] = t[:, 0].clamp(0.1, 5.0)
    t[:, 9:11] = t[:, 9:11].clamp(math.log(0.05), math.log(10.0))
    t[:, 13] = t[:, 13].clamp(math.log(0.02), math.log(2.0))
    t[:, 16] = t[:, 16].clamp(-0.7, 0.7)
    return t


def _levenberg_marquardt(
    theta: Tensor, data: Tensor, w0: Tensor, prior: tuple[Tensor, Tensor], opts: FitOptions
) -> tuple[Tensor, Tensor, Tensor]:
    """``opts.steps`` damped Gauss-Newton iterations with Huber reweighting; (θ, last Jacobian, weights)."""
    w = w0
    r = _residuals(theta, data, w, prior, opts)
    npix = data[0].numel()
    lam = torch.full((len(theta),), 0.1, dtype=torch.float64)
    jac = torch.zeros(len(theta), r.shape[1], N_ALL)
    max_step = torch.tensor(_MAX_STEP, dtype=torch.float64)
    for _ in range(opts.steps):
        jac = _jacobian(theta, r, data, w, prior, opts)
        jd, rd = jac.double(), r.double()
        h = jd.transpose(1, 2) @ jd
        g = jd.transpose(1, 2) @ rd[..., None]
        damp = lam[:, None] * torch.diagonal(h, dim1=1, dim2=2) + 1e-9
        step = -torch.linalg.solve(h + torch.diag_embed(damp), g)[..., 0]
        shrink = (step.abs() / max_step).amax(1).clamp(min=1.0)  # trust region
        trial = _clamp(theta + (step / shrink[:, None]).float())
        rt = _residuals(trial, data, w, prior, opts)
        better = (rt * rt).sum(1) < (r * r).sum(1)
        theta = torch.where(better[:, None], trial, theta)
        lam = torch.where(better, lam * 0.3, lam * 10.0).clamp(1e-6, 1e6)
        # Huber reweighting of the pixels from the accepted model (neighbours, unmodelled structure)
        pix = torch.where(better[:, None], rt, r)[:, :npix].view_as(data) / torch.sqrt(w).clamp(min=1e-12)
        a = (pix * torch.sqrt(w0)).abs()
        w = w0 * torch.where(a > opts.huber, opts.huber / a.clamp(min=1e-6), torch.ones_like(a))
        r = _residuals(theta, data, w, prior, opts)
    return theta, jac, w


@torch.no_grad()
def _refine_batch(x: np.ndarray, mu: np.ndarray, sigma: np.ndarray, opts: FitOptions) -> FitResult:
    n = opts.window
    i0, j0 = x.shape[2] // 2 - n // 2, x.shape[3] // 2 - n // 2
    data = torch.nan_to_num(torch.from_numpy(np.ascontiguousarray(x[:, :, i0 : i0 + n, j0 : j0 + n])))
    sky = torch.from_numpy(sky_noise(x).astype(np.float32))
    xx, yy = _grid(n, 1, data.device)
    aperture = (xx * xx + yy * yy <= opts.radius**2).to(data.dtype)
    w0 = aperture / (sky[:, :, None, None] ** 2 + (opts.floor * data.clamp(min=0)) ** 2)
    start = np.concatenate([mu, np.tile(_LIGHT_INIT, (len(x), 1)), np.zeros((len(x), 1))], axis=1)
    start[:, 0] = np.clip(start[:, 0], 0.3, 4.0)
    start[:, 11:13] = mu[:, 1:3]  # light follows mass
    prior_sig = np.concatenate(
        [
            np.maximum(sigma * opts.prior_scale, 1e-3),
            np.tile(_LIGHT_PRIOR_SIGMA, (len(x), 1)),
            np.full((len(x), 1), FWHM_LOG_SIGMA),
        ],
        axis=1,
    )
    k = len(opts.starts)
    prior = (
        torch.tensor(start, dtype=torch.float32).repeat(k, 1),
        torch.tensor(prior_sig, dtype=torch.float32).repeat(k, 1),
    )
    theta = prior[0].clone()
    theta[:, 0] += torch.tensor(opts.starts, dtype=torch.float32).repeat_interleave(len(x))
    theta = _clamp(theta)
    data, w0 = data.repeat(k, 1, 1, 1), w0.repeat(k, 1, 1, 1)
    theta, jac, w = _levenberg_marquardt(theta, data, w0, prior, opts)
    npix = data[0].numel()
    r_end = _residuals(theta, data, w0, prior, opts)
    best = (r_end * r_end).sum(1).view(k, len(x)).argmin(0) * len(x) + torch.arange(len(x))
    theta, jac, r_end = theta[best], jac[best], r_end[best]
    chi2_end = (r_end[:, :npix] ** 2).sum(1)
    r0 = _residuals(prior[0][: len(x)], data[: len(x)], w0[: len(x)], (prior[0][: len(x)], prior[1][: len(x)]), opts)
    chi2_start = (r0[:, :npix] ** 2).sum(1)
    jd = jac.double()
    cov = torch.linalg.inv(jd.transpose(1, 2) @ jd + 1e-9 * torch.eye(N_ALL, dtype=torch.float64))
    dof = float(aperture.sum()) * 3
    return _accept(theta, cov, mu, sigma, (chi2_start / dof).numpy(), (chi2_end / dof).numpy())


def _accept(
    theta: Tensor, cov: Tensor, mu: np.ndarray, sigma: np.ndarray, chi2_start: np.ndarray, chi2_end: np.ndarray
) -> FitResult:
    t = theta.double().numpy()
    var = torch.diagonal(cov, dim1=1, dim2=2).numpy()
    sig = np.sqrt(np.clip(var[:, :N_MASS], 0, None)) * np.sqrt(np.maximum(chi2_end, 1.0))[:, None]
    params = t[:, :N_MASS]
    reasons = []
    for k in range(len(t)):
        p = params[k]
        if not (np.all(np.isfinite(p)) and np.all(np.isfinite(sig[k]))):
            reasons.append("not finite")
        elif not 0.2 <= p[0] <= 4.5 or math.hypot(p[1], p[2]) > 0.7 or math.hypot(p[3], p[4]) > 0.3:
            reasons.append("unphysical")
        elif math.hypot(p[5] - mu[k, 5], p[6] - mu[k, 6]) > 1.0 or abs(p[0] - mu[k, 0]) > max(1.0, 5 * sigma[k, 0]):
            reasons.append("moved too far from the network")
        elif not chi2_end[k] < chi2_start[k]:
            reasons.append("chi2 did not improve")
        else:
            reasons.append("")
    ok = np.array([not r for r in reasons])
    params = np.where(ok[:, None], params, mu)
    sig = np.where(ok[:, None], sig, sigma)
    return FitResult(params, sig, ok, reasons, chi2_start, chi2_end, np.exp(t[:, 16:17]) * np.array(FWHM_PRIOR))
