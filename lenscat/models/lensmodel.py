"""Lens modelling network: SIE + external shear + source position, with a Gaussian likelihood head.

The network reads a small centre crop of a cutout (bands g, r, z, stretched as the classifiers do:
:class:`lenscat.models.preprocess.Preprocessing`) and predicts, for each of the nine parameters of
:data:`PARAMS`, a mean and a log standard deviation (Hezaveh et al. 2017's parameter regression,
Perreault Levasseur et al. 2017's Gaussian likelihood). Training minimises the Gaussian negative
log-likelihood (:func:`gaussian_nll`); a deep ensemble of a few members combines as a Gaussian
mixture (:func:`combine_members`).

Lens probability. With ``lens_head=True`` the head has one more output, a logit that the input is a
lens at all, trained with the binary cross-entropy (:func:`lens_bce`) on lenses and non-lens
impostors (the Gaussian likelihood sees the lenses only). A network trained on lenses alone
predicts a lens-like model for anything; the logit lets it say "no lens". Its probability is
calibrated by temperature scaling on held-out simulations
(:func:`lenscat.models.lensmodel_train.fit_temperature`), and the vetting threshold is the largest
one that loses at most a given fraction of held-out lenses
(:func:`lenscat.models.lensmodel_train.completeness_threshold`). Checkpoints without the key
``lens_head`` in a member's config load as before (no logit).

Frame. Targets are in the sky frame of the stored models: ``x`` East, ``y`` North, arcsec, φ from
East towards North (``lenscat.lens_models``). Cutouts are in FITS orientation, north up and east
left: array row ``i`` grows towards the North, column ``j`` towards the **West**. So a pixel at
``(i, j)`` of an ``n``-pixel crop sits at ``x = -(j - n // 2)·s``, ``y = (i - n // 2)·s``.
:func:`dihedral` applies the eight turns and flips of a crop to the images and to the targets
consistently (the augmentation of training, tested against that frame).

Outputs are in standardised units (``(value - mean) / std`` of the training targets, kept in
:class:`LensModelNet`'s buffers) so that the nine parameters weigh alike; :meth:`LensModelNet.physical`
turns them back into arcsec and dimensionless ellipticities.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

__all__ = [
    "PARAMS",
    "LensModelNet",
    "combine_members",
    "dihedral",
    "gaussian_nll",
    "LOG_SIGMA_RANGE",
    "add_residual_channels",
    "lens_bce",
    "masked_gaussian_nll",
    "lens_probability",
    "predict_with_logit",
]


PARAMS: tuple[str, ...] = (
    "theta_e",
    "e1",
    "e2",
    "gamma1",
    "gamma2",
    "center_x",
    "center_y",
    "source_x",
    "source_y",
)
"""The predicted parameters, in output order (sky frame; see the module docstring). Written again in
:data:`lenscat.modelling.types.PARAMS` (domain types import no torch, models no domain code);
tests/unit/test_lensmodel.py checks the two are equal."""
N_PARAMS = len(PARAMS)
LOG_SIGMA_RANGE = (-7.0, 3.0)
"""Clamp of the predicted log σ in standardised units (σ between 1e-3 and 20 training std)."""

# sign of each parameter under a mirror of the x axis (East <-> West) and of the y axis:
# e2, gamma2 are odd under either mirror (phi -> pi - phi, phi -> -phi); positions flip their own axis
_FLIP_X = torch.tensor([1, 1, -1, 1, -1, -1, 1, -1, 1], dtype=torch.float32)
_FLIP_Y = torch.tensor([1, 1, -1, 1, -1, 1, -1, 1, -1], dtype=torch.float32)


def dihedral(images: Tensor, targets: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Turn or flip crops and their (physical, sky-frame) targets consistently.

    ``k`` in 0..7: bit 0 mirrors the columns (x -> -x), bit 1 mirrors the rows (y -> -y), bit 2
    transposes the crop (rows <-> columns), applied in that order; mirrors are about the centre
    pixel ``n // 2`` (the frame's origin), so positions change sign exactly. With rows along +y (North) and
    columns along -x (West), a transpose maps a sky position ``(x, y)`` to ``(-y, -x)`` (a mirror
    across the line ``y = -x``), which sends φ to ``-90° - φ``: ``e1 -> -e1``, ``e2 -> e2``.

    Parameters
    ----------
    images : Tensor, shape (N, C, H, W), H == W
    targets : Tensor, shape (N, 9)
        Physical parameters in :data:`PARAMS` order (not standardised: the signs act on values).
    k : int

    Returns
    -------
    (Tensor, Tensor)
        The transformed images and targets.
    """
    if not 0 <= k < 8:
        raise ValueError(f"k must be in 0..7, got {k}")
    x, t = images, targets
    # a flip mirrors about (n - 1) / 2; the roll by one pixel puts the mirror back on the centre
    # pixel n // 2 of an even crop (the edge row or column wraps round)
    if k & 1:
        x = torch.roll(torch.flip(x, dims=(3,)), 1, dims=3)
        t = t * _FLIP_X.to(t.device, t.dtype)
    if k & 2:
        x = torch.roll(torch.flip(x, dims=(2,)), 1, dims=2)
        t = t * _FLIP_Y.to(t.device, t.dtype)
    if k & 4:
        x = x.transpose(2, 3)
        t = t[:, [0, 1, 2, 3, 4, 6, 5, 8, 7]] * torch.tensor(
            [1, -1, 1, -1, 1, -1, -1, -1, -1], dtype=t.dtype, device=t.device
        )
    return x.contiguous(), t


def gaussian_nll(mu: Tensor, log_sigma: Tensor, y: Tensor) -> Tensor:
    """Mean Gaussian negative log-likelihood (without the constant ``½ log 2π``) per parameter.

    ``½ ((y - μ) / σ)² + log σ``, averaged over the batch; shape (P,).
    """
    z = (y - mu) * torch.exp(-log_sigma)
    return (0.5 * z * z + log_sigma).mean(dim=0)


def lens_bce(logit: Tensor, is_lens: Tensor) -> Tensor:
    """Mean binary cross-entropy of lens logits (N,) against labels (N,) of 1 (lens) and 0 (impostor)."""
    return nn.functional.binary_cross_entropy_with_logits(logit, is_lens.to(logit.dtype))


def masked_gaussian_nll(mu: Tensor, log_sigma: Tensor, y: Tensor, mask: Tensor) -> Tensor:
    """:func:`gaussian_nll` over the rows where ``mask`` is true (the lenses; non-lens targets are NaN).

    Shape (P,); zeros when no row is selected (a batch of impostors only).
    """
    m = mask.to(mu.dtype)[:, None]
    yy = torch.where(torch.isfinite(y), y, mu.detach())
    z = (yy - mu) * torch.exp(-log_sigma)
    per = (0.5 * z * z + log_sigma) * m
    return per.sum(dim=0) / torch.clamp(m.sum(), min=1.0)


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    )


class LensModelNet(nn.Module):
    """A small CNN with a Gaussian head: crops (N, C, S, S) -> means and log σ (N, 9) each.

    Three convolution blocks (``width``, 2·``width``, 4·``width`` channels, each two 3x3
    convolutions and a 2x2 max-pool) over the crop plus two coordinate channels (positions must
    survive the pooling), then a fully connected layer of 256 and the head of 2·9 outputs (2·9 + 1
    with ``lens_head``: the last is the lens logit, :meth:`outputs`).

    Parameters
    ----------
    in_channels : int
        Bands (3: g, r, z).
    crop : int
        Side of the input crop in pixels (divisible by 8).
    width : int
        Channels of the first block.
    target_mean, target_std : sequence of float, length 9
        Standardisation of the targets (physical = mean + std · standardised).
    lens_head : bool
        One more output: the logit that the input is a lens.
    """

    coords: Tensor
    target_mean: Tensor
    target_std: Tensor

    def __init__(
        self,
        in_channels: int = 3,
        crop: int = 48,
        width: int = 16,
        target_mean: list[float] | None = None,
        target_std: list[float] | None = None,
        lens_head: bool = False,
    ) -> None:
        super().__init__()
        if crop % 8:
            raise ValueError(f"crop must be divisible by 8, got {crop}")
        self.in_channels, self.crop, self.width = int(in_channels), int(crop), int(width)
        self.lens_head = bool(lens_head)
        self.features = nn.Sequential(
            _block(in_channels + 2, width), _block(width, 2 * width), _block(2 * width, 4 * width)
        )
        side = crop // 8
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(4 * width * side * side, 256),
            nn.ReLU(inplace=True),
            nn.Dropout(0.1),
            nn.Linear(256, 2 * N_PARAMS + int(self.lens_head)),
        )
        ax = torch.linspace(-1.0, 1.0, crop)
        yy, xx = torch.meshgrid(ax, ax, indexing="ij")
        self.register_buffer("coords", torch.stack([xx, yy])[None], persistent=False)
        mean = torch.zeros(N_PARAMS) if target_mean is None else torch.tensor(target_mean, dtype=torch.float32)
        std = torch.ones(N_PARAMS) if target_std is None else torch.tensor(target_std, dtype=torch.float32)
        self.register_buffer("target_mean", mean)
        self.register_buffer("target_std", std)

    def outputs(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        """Standardised means and log σ, each (N, 9), and the lens logit (N,) (None without ``lens_head``)."""
        coords = self.coords.to(x.dtype).expand(x.shape[0], -1, -1, -1)
        out = self.head(self.features(torch.cat([x, coords], dim=1)))
        mu, log_sigma = out[:, :N_PARAMS], out[:, N_PARAMS : 2 * N_PARAMS]
        logit = out[:, 2 * N_PARAMS] if self.lens_head else None
        return mu, log_sigma.clamp(*LOG_SIGMA_RANGE), logit

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Standardised means and log σ, each (N, 9)."""
        mu, log_sigma, _ = self.outputs(x)
        return mu, log_sigma

    def standardise(self, y: Tensor) -> Tensor:
        """Physical targets -> standardised."""
        return (y - self.target_mean) / self.target_std

    def physical(self, mu: Tensor, log_sigma: Tensor) -> tuple[Tensor, Tensor]:
        """Standardised (μ, log σ) -> physical mean and σ."""
        return self.target_mean + self.target_std * mu, self.target_std * torch.exp(log_sigma)

    def config(self) -> dict[str, Any]:
        """Constructor arguments (for the checkpoint; ``lens_head`` only when set, as older code reads them)."""
        extra: dict[str, Any] = {"lens_head": True} if self.lens_head else {}
        return {
            **extra,
            "in_channels": self.in_channels,
            "crop": self.crop,
            "width": self.width,
            "target_mean": [float(v) for v in self.target_mean],
            "target_std": [float(v) for v in self.target_std],
        }


def combine_members(means: list[Tensor], sigmas: list[Tensor]) -> tuple[Tensor, Tensor]:
    """Mean and σ of the equal-weight Gaussian mixture of ensemble members' predictions.

    ``μ = mean_k μ_k``, ``σ² = mean_k σ_k² + var_k μ_k`` (Lakshminarayanan et al. 2017).
    """
    mu = torch.stack(means).mean(dim=0)
    second = torch.stack([s * s + m * m for m, s in zip(means, sigmas, strict=True)]).mean(dim=0)
    return mu, torch.sqrt(torch.clamp(second - mu * mu, min=0.0))


@torch.no_grad()
def predict_with_logit(
    members: list[LensModelNet], x: np.ndarray, *, batch_size: int = 256, device: str = "cpu"
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Physical means and σ (before calibration), shape (N, 9) each, and the lens logit (N,).

    The logit is the members' mean logit (before temperature scaling); None when a member has no
    lens head.

    Parameters
    ----------
    members : list of LensModelNet
        The ensemble (one network: no mixture).
    x : ndarray, shape (N, C, S, S)
        Preprocessed crops (:class:`lenscat.models.preprocess.Preprocessing` output).
    batch_size : int
    device : str
    """
    for m in members:
        m.eval().to(device)
    with_logit = all(m.lens_head for m in members)
    mus, sigs, logits = [], [], []
    for i in range(0, len(x), batch_size):
        xb = torch.from_numpy(np.ascontiguousarray(x[i : i + batch_size], dtype=np.float32)).to(device)
        outs = [m.outputs(xb) for m in members]
        phys = [m.physical(o[0], o[1]) for m, o in zip(members, outs, strict=True)]
        mu, sig = combine_members([p[0] for p in phys], [p[1] for p in phys])
        mus.append(mu.cpu().numpy())
        sigs.append(sig.cpu().numpy())
        if with_logit:
            logits.append(torch.stack([o[2] for o in outs if o[2] is not None]).mean(dim=0).cpu().numpy())
    if not mus:
        return np.zeros((0, N_PARAMS)), np.zeros((0, N_PARAMS)), np.zeros(0) if with_logit else None
    logit = np.concatenate(logits).astype(np.float64) if with_logit else None
    return np.concatenate(mus).astype(np.float64), np.concatenate(sigs).astype(np.float64), logit


def predict(
    members: list[LensModelNet], x: np.ndarray, *, batch_size: int = 256, device: str = "cpu"
) -> tuple[np.ndarray, np.ndarray]:
    """Physical means and σ (before calibration) of preprocessed crops, shape (N, 9) each.

    :func:`predict_with_logit` without the logit.
    """
    mu, sig, _ = predict_with_logit(members, x, batch_size=batch_size, device=device)
    return mu, sig


def lens_probability(logit: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Calibrated lens probability ``sigmoid(logit / T)``."""
    z = np.asarray(logit, dtype=np.float64) / float(temperature)
    return np.asarray(0.5 * (1.0 + np.tanh(0.5 * z)), dtype=np.float64)


def add_residual_channels(images: np.ndarray, aperture: int = 2) -> np.ndarray:
    """Append the lens-subtracted g and r bands to g, r, z cutouts: (N, 3, H, W) -> (N, 5, H, W).

    ``res_b = b - k_b z`` with ``k_b`` the ratio of band ``b`` to z within the central
    ``(2 aperture + 1)``-pixel box (clipped to [0, 2]): the red deflector cancels whatever its shape,
    while blue lensed light stays (the same subtraction as the vetting's arc check). Nanomaggies in
    and out; the stretch comes after (:class:`~lenscat.models.preprocess.Preprocessing` with five scales).
    """
    x = np.nan_to_num(np.asarray(images, dtype=np.float32))
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"expected (N, 3, H, W) g, r, z cutouts, got shape {x.shape}")
    cy, cx = x.shape[2] // 2, x.shape[3] // 2
    ap = x[:, :, cy - aperture : cy + aperture + 1, cx - aperture : cx + aperture + 1].sum(axis=(2, 3))
    z = ap[:, 2:3]
    k = np.where(z > 0, ap[:, :2] / np.where(z > 0, z, 1.0), 0.0).clip(0.0, 2.0).astype(np.float32)
    res = x[:, :2] - k[:, :, None, None] * x[:, 2:3]
    return np.concatenate([x, res], axis=1)


def coverage_scale(z: np.ndarray, level: float = 0.6827) -> np.ndarray:
    """Per-column factor ``s`` such that ``|z| <= s`` for a fraction ``level`` of the rows.

    ``z = (truth - μ) / σ`` on held-out data; multiplying σ by ``s`` makes the 1σ interval cover
    ``level`` (a Gaussian's 68.27 %) of them.
    """
    a = np.abs(np.asarray(z, dtype=np.float64))
    if a.ndim != 2 or not len(a):
        raise ValueError("z must be a non-empty (N, P) array")
    return np.asarray(np.quantile(a, level, axis=0), dtype=np.float64)


def z95() -> float:
    """Half-width of the central 95 % interval of a unit Gaussian, in σ (1.95996...)."""
    return math.sqrt(2.0) * float(torch.erfinv(torch.tensor(0.95)))
