"""A 1-D residual network that finds background Lyman-alpha lines in galaxy spectra.

After Li et al. (2018, MNRAS 482, 313; "Using deep residual networks to search for galaxy-Lyα
emitter lens candidates based on spectroscopic selection"): a 1-D ResNet reads the
continuum-subtracted BOSS spectrum of an early-type galaxy in 3800-5000 A (the 1,193-pixel
:data:`~lenscat.spectra.grid.WINDOW`, 69 km/s per pixel; Lyα there means 2.13 < z_s < 3.11) and
says whether it holds an emission line from a background source, trained on synthetic lines
(:mod:`lenscat.spectra.synth`) with the focal loss (Lin et al. 2017). Li et al. report 93.6 %
completeness on synthetic tests.

This implementation is fully convolutional: :class:`SpecResNet` gives a logit for each coarse
position (one per ``stride`` = 8 pixels); the spectrum's logit is their maximum, and the argmax
position (refined to a pixel on the input S/N residual) locates the line. The loss is the focal
loss of the spectrum logit plus, for spectra with a line, a cross-entropy over positions whose
target is the line's bin, so localisation is learnt explicitly.

The model knows nothing of the database. Pieces:

* :func:`prepare_inputs` -- flux, inverse variance, continuum and redshift to network input;
* :class:`SpecResNet`, :func:`focal_loss`, :func:`train_specnet`, :func:`predict`;
* :func:`save_specnet` / :func:`load_specnet` -- one ``torch.save`` file (loadable with
  ``weights_only=True``)::

      {'format_version': 1, 'kind': 'lenscat-specnet', 'config': dict (SpecResNet kwargs),
       'state_dict': {name: tensor}, 'hparams': dict}

On the CPU a given seed, data and thread count give bit-identical training; the global torch RNG
is left untouched.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from lenscat.classifiers.evaluation import roc_auc
from lenscat.errors import InputFileError, LenscatError
from lenscat.models import trainstate
from lenscat.models.checkpoint import _load, _plain, cpu_state_dict, write_checkpoint
from lenscat.spectra.grid import WINDOW
from lenscat.spectra.masks import galaxy_line_masks, sky_line_mask

__all__ = [
    "ARCHITECTURES",
    "SPECNET_FORMAT_VERSION",
    "SpecResNet",
    "architecture_config",
    "completeness_at_fpr",
    "flops_per_spectrum",
    "focal_loss",
    "load_specnet",
    "predict",
    "prepare_inputs",
    "roc_auc",
    "save_specnet",
    "specnet_loss",
    "train_specnet",
]

SPECNET_FORMAT_VERSION = 1
_KIND = "lenscat-specnet"
#: input channels of :func:`prepare_inputs`
N_INPUT_CHANNELS = 3
#: MAD -> sigma for a Gaussian
_MAD_TO_SIGMA = 1.4826
#: rows handled at a time by :func:`prepare_inputs` (bounds the line-mask temporaries)
_PREP_CHUNK = 1024

#: named :class:`SpecResNet` configurations. ``small``: the default layout (one residual block
#: per stage, 16/24/48 channels, ~10 MFLOP per window spectrum). ``li2018``: the depth of Li et al.
#: (2018) within the same stride-8 position head -- two residual blocks per stage, 16/32/64
#: channels, dilated stages 2-3 (receptive field ~330 px), ~32 MFLOP, 3.3x the parameters.
ARCHITECTURES: dict[str, dict[str, Any]] = {
    "small": {
        "widths": [16, 24, 48],
        "kernels": [5, 5, 3],
        "blocks": [1, 1, 1],
        "dilations": [1, 1, 2],
        "stem_kernel": 7,
        "head_width": 32,
        "dropout": 0.1,
    },
    "li2018": {
        "widths": [16, 32, 64],
        "kernels": [5, 5, 3],
        "blocks": [2, 2, 2],
        "dilations": [1, 2, 2],
        "stem_kernel": 7,
        "head_width": 32,
        "dropout": 0.1,
    },
}


def architecture_config(name: str) -> dict[str, Any]:
    """The :class:`SpecResNet` keyword arguments of a named architecture (:data:`ARCHITECTURES`).

    Raises
    ------
    LenscatError
        Unknown name.
    """
    if name not in ARCHITECTURES:
        raise LenscatError(f"unknown specnet architecture {name!r}; expected one of {', '.join(ARCHITECTURES)}")
    return copy.deepcopy(ARCHITECTURES[name])


# --------------------------------------------------------------------------------------------
# network input
# --------------------------------------------------------------------------------------------


def prepare_inputs(
    flux: np.ndarray,
    ivar: np.ndarray,
    continuum: np.ndarray,
    z: np.ndarray,
    *,
    wave: np.ndarray | None = None,
    clip: float = 10.0,
    mask_sky: bool = True,
    galaxy_half_width_kms: float = 600.0,
) -> np.ndarray:
    """Network input from spectra on a common grid.

    Channels, with ``r = flux - continuum`` and *good* pixels those with ``ivar > 0``, finite
    values, outside the foreground galaxy's lines (:func:`~lenscat.spectra.masks.galaxy_line_masks`:
    [NeV] 3347, 3427, [OII] 3727, [NeIII] 3869 at ``z``, +-``galaxy_half_width_kms``, as Li
    et al. mask them) and, with ``mask_sky``, outside the bright sky lines of the window
    (:func:`~lenscat.spectra.masks.sky_line_mask`: Hg I 4047, 4358; +-150 km/s):

    0. S/N residual ``r * sqrt(ivar)``, clipped to +-``clip``;
    1. flux residual ``r / s`` with ``s`` the spectrum's robust scatter (1.4826 x the median
       absolute deviation of ``r`` over good pixels), clipped to +-``clip`` -- independent of
       how well ``ivar`` is calibrated;
    2. the good-pixel mask (1 good, 0 masked).

    Channels 0 and 1 are 0 at masked pixels.

    Parameters
    ----------
    flux, ivar, continuum : numpy.ndarray, shape (N, P) or (P,)
        Flux density and continuum [1e-17 erg/s/cm^2/A] and inverse variance, on ``wave``.
    z : numpy.ndarray, shape (N,) or float
        Foreground redshift (NaN: unknown, no galaxy lines masked).
    wave : numpy.ndarray, shape (P,), optional
        Pixel centres [Angstrom]; default the search window :data:`~lenscat.spectra.grid.WINDOW`.
    clip : float
        Clipping of the residual channels (in S/N or scatter units).
    mask_sky : bool
        Zero the bright sky lines.
    galaxy_half_width_kms : float
        Half-width of the galaxy-line masks [km/s].

    Returns
    -------
    numpy.ndarray, shape (N, 3, P), float32
    """
    f = np.atleast_2d(np.asarray(flux, dtype=np.float32))
    iv = np.atleast_2d(np.asarray(ivar, dtype=np.float32))
    c = np.atleast_2d(np.asarray(continuum, dtype=np.float32))
    zz = np.atleast_1d(np.asarray(z, dtype=np.float64)).reshape(-1)
    w = WINDOW.wave if wave is None else np.asarray(wave, dtype=np.float64)
    n, p = f.shape
    if iv.shape != (n, p) or c.shape != (n, p):
        raise LenscatError(f"flux {f.shape}, ivar {iv.shape} and continuum {c.shape} differ")
    if w.shape != (p,):
        raise LenscatError(f"{p} pixels but {w.shape[0] if w.ndim else 0} wavelengths")
    if len(zz) != n:
        raise LenscatError(f"{len(zz)} redshifts for {n} spectra")
    sky = sky_line_mask(w) if mask_sky else np.zeros(p, dtype=bool)
    out = np.zeros((n, N_INPUT_CHANNELS, p), dtype=np.float32)
    for s in range(0, n, _PREP_CHUNK):
        sl = slice(s, min(n, s + _PREP_CHUNK))
        fi, ii, ci = f[sl], iv[sl], c[sl]
        with np.errstate(invalid="ignore"):
            r = fi - ci
            good = (ii > 0) & np.isfinite(r) & np.isfinite(ii)
        good &= ~galaxy_line_masks(w, zz[sl], half_width_kms=galaxy_half_width_kms)
        good &= ~sky[None, :]
        r = np.where(good, r, np.float32(0.0))
        snr = r * np.sqrt(np.where(good, ii, np.float32(0.0)))
        out[sl, 0] = np.clip(snr, -clip, clip)
        scale = _MAD_TO_SIGMA * _masked_mad(r, good)
        scale = np.where(np.isfinite(scale) & (scale > 0), scale, np.inf)[:, None]
        out[sl, 1] = np.where(good, np.clip(r / scale, -clip, clip), np.float32(0.0))
        out[sl, 2] = good
    return out


def _masked_median(a: np.ndarray, good: np.ndarray, low: float, high: float) -> np.ndarray:
    """Row medians of ``a`` over ``good``: masked entries alternate ``low`` / ``high`` (below and
    above every good value), which leaves the median in place (to half a rank when a row has an
    odd number of masked pixels) at the cost of a plain, partition-based median."""
    # alternate by masked rank, not by column, so that any mask pattern balances
    rank = np.cumsum(~good, axis=1) % 2
    filled = np.where(good, a, np.where(rank == 0, np.float32(low), np.float32(high)))
    med = np.median(filled, axis=1)
    return np.where(good.any(axis=1), med, np.nan)


def _masked_mad(a: np.ndarray, good: np.ndarray) -> np.ndarray:
    """Row median absolute deviations of ``a`` over ``good`` (NaN for a row with none)."""
    big = float(np.finfo(np.float32).max)
    med = _masked_median(a, good, -big, big)
    dev = np.abs(a - np.nan_to_num(med)[:, None].astype(np.float32))
    return _masked_median(dev, good, -1.0, big)


# --------------------------------------------------------------------------------------------
# the network
# --------------------------------------------------------------------------------------------


class _Block(nn.Module):
    """Residual block: conv-BN-ReLU-conv-BN plus a (1x1 conv-BN) shortcut, then ReLU."""

    def __init__(self, c_in: int, c_out: int, kernel: int, dilation: int = 1) -> None:
        super().__init__()
        pad = dilation * (kernel // 2)
        self.conv1 = nn.Conv1d(c_in, c_out, kernel, padding=pad, dilation=dilation, bias=False)
        self.bn1: nn.Module = nn.BatchNorm1d(c_out)
        self.conv2 = nn.Conv1d(c_out, c_out, kernel, padding=pad, dilation=dilation, bias=False)
        self.bn2: nn.Module = nn.BatchNorm1d(c_out)
        self.shortcut: nn.Module
        if c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv1d(c_in, c_out, 1, bias=False), nn.BatchNorm1d(c_out))
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(y + self.shortcut(x))


class SpecResNet(nn.Module):
    """1-D ResNet giving one line logit per coarse position of a spectrum.

    Layout (defaults): stem ``Conv1d(3, 16, 7, stride 2)``-BN-ReLU; stage 1: one residual block
    of 16 channels (kernel 5) at 1/2 resolution; max-pool 2; stage 2: a block of 24 channels
    (kernel 5) at 1/4; max-pool 2; stage 3: a block of 48 channels (kernel 3, dilation 2) at
    1/8; head: 1x1 conv to 32, ReLU, dropout, 1x1 conv to 1. Receptive field ~ 120 pixels
    (~8,000 km/s). The input is zero-padded on the right to a multiple of :attr:`stride`; a
    P-pixel spectrum gives ``ceil(P / stride)`` positions, position ``j`` covering pixels
    ``[j * stride, (j + 1) * stride)``.

    Parameters
    ----------
    in_channels : int
        Input channels (3 for :func:`prepare_inputs`).
    widths : sequence of int
        Channels of each stage; stage ``i > 0`` starts with a max-pool of 2.
    kernels : sequence of int
        Kernel size of each stage's convolutions (odd).
    blocks : sequence of int
        Residual blocks per stage.
    dilations : sequence of int
        Dilation of each stage's convolutions.
    stem_kernel : int
        Kernel of the stride-2 stem convolution.
    head_width : int
        Channels of the hidden 1x1 head layer.
    dropout : float
        Dropout before the last layer.
    """

    def __init__(
        self,
        in_channels: int = N_INPUT_CHANNELS,
        widths: Sequence[int] = (16, 24, 48),
        kernels: Sequence[int] = (5, 5, 3),
        blocks: Sequence[int] = (1, 1, 1),
        dilations: Sequence[int] = (1, 1, 2),
        stem_kernel: int = 7,
        head_width: int = 32,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        widths, kernels, blocks, dilations = (list(map(int, v)) for v in (widths, kernels, blocks, dilations))
        if not (len(widths) == len(kernels) == len(blocks) == len(dilations) >= 1):
            raise LenscatError("widths, kernels, blocks and dilations must have one entry per stage")
        if any(k % 2 == 0 for k in [*kernels, stem_kernel]):
            raise LenscatError("kernel sizes must be odd")
        self.config: dict[str, Any] = {
            "in_channels": int(in_channels),
            "widths": widths,
            "kernels": kernels,
            "blocks": blocks,
            "dilations": dilations,
            "stem_kernel": int(stem_kernel),
            "head_width": int(head_width),
            "dropout": float(dropout),
        }
        self.stem = nn.Sequential(
            nn.Conv1d(in_channels, widths[0], stem_kernel, stride=2, padding=stem_kernel // 2, bias=False),
            nn.BatchNorm1d(widths[0]),
            nn.ReLU(inplace=True),
        )
        stages: list[nn.Module] = []
        c = widths[0]
        for i, (w, k, b, d) in enumerate(zip(widths, kernels, blocks, dilations, strict=True)):
            layers: list[nn.Module] = [nn.MaxPool1d(2)] if i > 0 else []
            for _ in range(b):
                layers.append(_Block(c, w, k, d))
                c = w
            stages.append(nn.Sequential(*layers))
        self.stages = nn.Sequential(*stages)
        self.head = nn.Sequential(
            nn.Conv1d(c, head_width, 1),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Conv1d(head_width, 1, 1),
        )
        #: pixels per output position
        self.stride = 2 ** len(widths)
        for m in self.modules():
            if isinstance(m, nn.Conv1d) and m.bias is None:
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        # zero-init the last BN of each block (residual branches start as identities)
        for m in self.modules():
            if isinstance(m, _Block) and isinstance(m.bn2, nn.BatchNorm1d):
                nn.init.zeros_(m.bn2.weight)

    def n_positions(self, n_pixels: int) -> int:
        """Output positions for a spectrum of ``n_pixels`` pixels."""
        return -(-int(n_pixels) // self.stride)

    def forward(self, x: Tensor) -> Tensor:
        """Position logits ``(N, ceil(P / stride))`` of network input ``x`` ``(N, C, P)``."""
        pad = (-x.shape[-1]) % self.stride
        if pad:
            x = F.pad(x, (0, pad))
        y = self.head(self.stages(self.stem(x)))
        return y[:, 0, :]

    @staticmethod
    def spectrum_logit(position_logits: Tensor) -> Tensor:
        """The spectrum's line logit: the maximum over positions, shape (N,)."""
        return position_logits.amax(dim=1)

    def bin_to_pixel(self, index: np.ndarray | Tensor) -> np.ndarray:
        """Centre pixel (float) of output positions ``index``."""
        i = index.cpu().numpy() if isinstance(index, Tensor) else np.asarray(index)
        return np.asarray(i * self.stride + (self.stride - 1) / 2.0, dtype=np.float64)


def flops_per_spectrum(model: SpecResNet, n_pixels: int = WINDOW.n) -> dict[str, float]:
    """Multiply-accumulates of the convolutions for one spectrum, and parameters.

    Returns
    -------
    dict
        ``macs`` (multiply-accumulates of every Conv1d), ``mflop`` (2 x macs / 1e6; BN, ReLU and
        pooling not counted) and ``params``.
    """
    macs = 0.0
    hooks = []

    def hook(mod: nn.Module, _inp: Any, out: Tensor) -> None:
        nonlocal macs
        assert isinstance(mod, nn.Conv1d)
        k = mod.kernel_size[0]
        macs += float(out.shape[-1] * mod.out_channels * (mod.in_channels // mod.groups) * k)

    for m in model.modules():
        if isinstance(m, nn.Conv1d):
            hooks.append(m.register_forward_hook(hook))
    dev = next(model.parameters()).device
    try:
        with torch.inference_mode(), _eval_mode(model):
            model(torch.zeros(1, model.config["in_channels"], n_pixels, device=dev))
    finally:
        for h in hooks:
            h.remove()
    params = float(sum(p.numel() for p in model.parameters()))
    return {"macs": macs, "mflop": 2.0 * macs / 1e6, "params": params}


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    was = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, training in was:
            m.training = training


# --------------------------------------------------------------------------------------------
# losses and metrics
# --------------------------------------------------------------------------------------------


def focal_loss(
    logits: Tensor, targets: Tensor, *, gamma: float = 2.0, alpha: float | None = 0.25, reduction: str = "mean"
) -> Tensor:
    """Binary focal loss (Lin et al. 2017): ``-alpha_t (1 - p_t)^gamma log p_t``.

    Parameters
    ----------
    logits : Tensor, shape (N,)
        Spectrum logits.
    targets : Tensor, shape (N,)
        1 for a line, 0 for none.
    gamma : float
        Focusing parameter (0: cross-entropy).
    alpha : float or None
        Weight of positives (negatives get ``1 - alpha``); None: no weighting.
    reduction : {'mean', 'sum', 'none'}

    Returns
    -------
    Tensor
        float32.
    """
    x = logits.float()
    t = targets.float()
    logp = F.logsigmoid(x)
    log1mp = F.logsigmoid(-x)
    logpt = t * logp + (1.0 - t) * log1mp
    loss = -((1.0 - logpt.exp()).clamp_min(0.0).pow(gamma)) * logpt if gamma else -logpt
    if alpha is not None:
        loss = (t * alpha + (1.0 - t) * (1.0 - alpha)) * loss
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    if reduction == "none":
        return loss
    raise LenscatError(f"unknown reduction {reduction!r}")


def specnet_loss(
    position_logits: Tensor,
    targets: Tensor,
    line_bin: Tensor,
    *,
    gamma: float = 2.0,
    alpha: float | None = 0.25,
    position_weight: float = 0.1,
) -> tuple[Tensor, Tensor, Tensor]:
    """Training loss: focal loss of the spectrum logit + weighted position cross-entropy.

    The position term is the cross-entropy of ``softmax(position_logits)`` against the true
    line's bin, averaged over the spectra with a line (``targets == 1`` and ``line_bin >= 0``),
    times ``position_weight``; 0 when a batch has none.

    Returns
    -------
    total, focal, position : Tensor
        Scalars (float32).
    """
    spec = SpecResNet.spectrum_logit(position_logits)
    fl = focal_loss(spec, targets, gamma=gamma, alpha=alpha)
    has = (targets > 0.5) & (line_bin >= 0)
    if position_weight > 0 and bool(has.any()):
        pl = F.cross_entropy(position_logits[has].float(), line_bin[has])
    else:
        pl = fl.new_zeros(())
    return fl + position_weight * pl, fl, pl


def completeness_at_fpr(labels: np.ndarray, scores: np.ndarray, fpr: float = 1e-3) -> tuple[float, float]:
    """Completeness (true-positive rate) at the threshold keeping the false-positive rate <= fpr.

    The threshold is the ``floor(fpr * n_neg) + 1``-th highest negative score; positives
    strictly above it count.

    Returns
    -------
    completeness, threshold : float
        NaN when a class is missing.
    """
    y = np.asarray(labels).reshape(-1).astype(bool)
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    neg = np.sort(s[~y])[::-1]
    if y.sum() == 0 or len(neg) == 0:
        return float("nan"), float("nan")
    k = int(math.floor(fpr * len(neg)))
    thr = float(neg[min(k, len(neg) - 1)])
    return float(np.mean(s[y] > thr)), thr


# --------------------------------------------------------------------------------------------
# inference
# --------------------------------------------------------------------------------------------


def _device(device: str | torch.device | None) -> torch.device:
    dev = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if device is None else device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise LenscatError("device 'cuda' requested but no CUDA device is available")
    return dev


def _amp_dtype() -> torch.dtype:
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def _fold_bn(model: SpecResNet) -> nn.Module:
    """An inference copy of ``model`` with every BatchNorm folded into the conv before it."""
    m = copy.deepcopy(model).eval()

    def fold(conv: nn.Module, bn: nn.Module) -> nn.Conv1d:
        assert isinstance(conv, nn.Conv1d) and isinstance(bn, nn.BatchNorm1d)
        assert bn.running_var is not None and bn.running_mean is not None
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        new = nn.Conv1d(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size[0],
            stride=conv.stride[0],
            padding=int(conv.padding[0]),
            dilation=conv.dilation[0],
            bias=True,
        ).to(conv.weight.device)
        with torch.no_grad():
            new.weight.copy_(conv.weight * scale[:, None, None])
            b = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
            new.bias.copy_((b - bn.running_mean) * scale + bn.bias)  # type: ignore[union-attr]
        return new

    for mod in m.modules():
        if isinstance(mod, _Block):
            mod.conv1, mod.bn1 = fold(mod.conv1, mod.bn1), nn.Identity()
            mod.conv2, mod.bn2 = fold(mod.conv2, mod.bn2), nn.Identity()
            if isinstance(mod.shortcut, nn.Sequential):
                mod.shortcut = fold(mod.shortcut[0], mod.shortcut[1])
    m.stem = nn.Sequential(fold(m.stem[0], m.stem[1]), m.stem[2])
    return m


def _refine_pixel(x: Tensor, bins: Tensor, stride: int) -> Tensor:
    """Peak pixel of the 3-px smoothed S/N channel within +-stride/2 of each winning bin."""
    snr = x[:, 0:1, :].float()
    smooth = F.avg_pool1d(snr, 3, stride=1, padding=1, count_include_pad=False)[:, 0, :]
    p = smooth.shape[1]
    half = stride // 2
    width = stride + 2 * half
    start = (bins * stride - half).clamp(0, max(0, p - width))
    idx = start[:, None] + torch.arange(width, device=x.device)[None, :]
    idx = idx.clamp_max(p - 1)
    local = torch.gather(smooth, 1, idx)
    return torch.gather(idx, 1, local.argmax(dim=1, keepdim=True))[:, 0]


def predict(
    model: SpecResNet,
    inputs: np.ndarray | Tensor,
    *,
    batch_size: int | None = None,
    device: str | torch.device | None = None,
    amp: bool = True,
    fuse: bool = True,
    refine: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Line probability and location of each spectrum.

    Runs without gradients in eval mode (BatchNorm running statistics; each result independent
    of its batch). The model itself is not moved or modified (an inference copy is used).

    Parameters
    ----------
    model : SpecResNet
        The network.
    inputs : ndarray or Tensor, shape (N, C, P)
        :func:`prepare_inputs` output.
    batch_size : int, optional
        Spectra per forward pass; default 256 on the CPU (activations stay in cache: 1.7x the
        rate of 1,024 for the ``li2018`` network on 2 cores) and 1,024 on CUDA.
    device : str or torch.device, optional
        Default CUDA when available, else the CPU.
    amp : bool
        bfloat16 (else float16) autocast on CUDA; ignored on the CPU.
    fuse : bool
        Fold BatchNorm into the convolutions (faster; equal up to float rounding).
    refine : bool
        Refine the location to the peak of the 3-px-smoothed S/N channel within +-stride/2 of
        the winning position's pixels; False: the position's centre pixel.

    Returns
    -------
    prob : ndarray, shape (N,), float32
        ``sigmoid(max position logit)``. Scores are calibrated to the training set's line
        fraction, not the survey's: use them to rank.
    pixel : ndarray, shape (N,), int64
        Pixel index of the most likely line position (on the input grid).
    """
    shape = tuple(inputs.shape)
    if len(shape) != 3 or shape[1] != model.config["in_channels"]:
        raise LenscatError(f"inputs must be (N, {model.config['in_channels']}, P), got {shape}")
    dev = _device(device)
    if batch_size is None:
        batch_size = 1024 if dev.type == "cuda" else 256
    if batch_size < 1:
        raise LenscatError(f"batch_size must be positive, got {batch_size}")
    net = _fold_bn(model) if fuse else copy.deepcopy(model).eval()
    net.to(dev)
    cuda = dev.type == "cuda"
    n = shape[0]
    logit = np.empty(n, dtype=np.float32)
    pixel = np.empty(n, dtype=np.int64)
    stride = model.stride
    with torch.inference_mode():
        for s in range(0, n, batch_size):
            chunk = inputs[s : s + batch_size]
            if isinstance(chunk, Tensor):
                x = chunk.to(dev, torch.float32)
            else:
                t = torch.from_numpy(np.ascontiguousarray(chunk, dtype=np.float32))
                x = t.pin_memory().to(dev, non_blocking=True) if cuda else t
            with torch.autocast(dev.type, dtype=_amp_dtype() if cuda else torch.bfloat16, enabled=amp and cuda):
                pos = net(x).float()
            best, arg = pos.max(dim=1)
            pix = (
                _refine_pixel(x, arg, stride) if refine else (arg * stride + (stride - 1) // 2).clamp_max(shape[2] - 1)
            )
            logit[s : s + len(x)] = best.cpu().numpy()
            pixel[s : s + len(x)] = pix.cpu().numpy()
    prob = (1.0 / (1.0 + np.exp(-logit.astype(np.float64)))).astype(np.float32)
    return prob, pixel


# --------------------------------------------------------------------------------------------
# training
# --------------------------------------------------------------------------------------------


def _get(data: Any, key: str) -> Any:
    if isinstance(data, Mapping):
        return data.get(key)
    return getattr(data, key, None)


def _training_arrays(data: Any, what: str, wave: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(inputs, labels, line_pixel) from a mapping / SyntheticSet-like object."""
    labels = _get(data, "labels")
    if labels is None:
        raise LenscatError(f"{what}: no 'labels'")
    y = np.asarray(labels).reshape(-1).astype(np.float32)
    if not np.all((y == 0) | (y == 1)):
        raise LenscatError(f"{what}: labels must be 0 or 1")
    x = _get(data, "inputs")
    if x is None:
        missing = [k for k in ("flux", "ivar", "continuum", "z") if _get(data, k) is None]
        if missing:
            raise LenscatError(f"{what}: needs 'inputs' or flux, ivar, continuum, z (missing {', '.join(missing)})")
        w = _get(data, "wave") if wave is None else wave
        x = prepare_inputs(_get(data, "flux"), _get(data, "ivar"), _get(data, "continuum"), _get(data, "z"), wave=w)
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 3 or len(x) != len(y):
        raise LenscatError(f"{what}: inputs {x.shape} for {len(y)} labels")
    lp = _get(data, "line_pixel")
    line_pixel = np.full(len(y), -1, np.int64) if lp is None else np.asarray(lp, dtype=np.int64).reshape(-1)
    if len(line_pixel) != len(y):
        raise LenscatError(f"{what}: {len(line_pixel)} line pixels for {len(y)} labels")
    return x, y, line_pixel


def train_specnet(
    train_arrays: Any,
    val_arrays: Any | None = None,
    *,
    epochs: int = 4,
    batch_size: int = 128,
    lr: float = 3e-3,
    weight_decay: float = 1e-2,
    gamma: float = 2.0,
    alpha: float | None = 0.25,
    position_weight: float = 0.1,
    config: Mapping[str, Any] | None = None,
    fpr: float = 1e-3,
    seed: int = 0,
    device: str | torch.device | None = None,
    amp: bool = True,
    progress: bool = True,
    wave: np.ndarray | None = None,
    state_dir: str | Path | None = None,
    run_tag: str = "",
    resume: bool = True,
) -> tuple[SpecResNet, dict[str, Any]]:
    """Train a :class:`SpecResNet` on (synthetic) spectra.

    Parameters
    ----------
    train_arrays, val_arrays : mapping or object with attributes
        ``labels`` (N,) 0/1 and either ``inputs`` (N, 3, P) from :func:`prepare_inputs` or
        ``flux``, ``ivar``, ``continuum`` (N, P) and ``z`` (N,) (optionally ``wave``); optional
        ``line_pixel`` (N,) (peak pixel of the line, -1 for none) for the position loss. A
        :class:`~lenscat.spectra.synth.SyntheticSet` works as is.
    epochs : int
        Passes over the training set (``N // batch_size`` steps each).
    batch_size : int
        Spectra per step (at least 2: BatchNorm).
    lr : float
        Peak AdamW learning rate; linear warm-up over the first 3 % of steps, then cosine decay
        to 0.
    weight_decay : float
        AdamW decoupled weight decay.
    gamma, alpha : float
        Focal-loss parameters (:func:`focal_loss`).
    position_weight : float
        Weight of the position cross-entropy (:func:`specnet_loss`).
    config : mapping, optional
        :class:`SpecResNet` keyword arguments (default architecture otherwise).
    fpr : float
        False-positive rate of the validation criterion.
    seed : int
        Seeds the initialisation, batch order and dropout.
    device : str or torch.device, optional
        Default CUDA when available.
    amp : bool
        Autocast on CUDA.
    progress : bool
        tqdm bar on stderr.
    state_dir : str or Path, optional
        Make the run resumable: after every epoch but the last, the model, optimiser, random
        generators, history and best weights so far are saved to
        ``state_dir/specnet-<run key>.state``; the same call later continues with the next epoch
        (bit-identical on the CPU). Ctrl-C then raises :class:`~lenscat.errors.Interrupted`
        saying how far the saved state got. ``run_tag`` joins the key (e.g. a hash of the
        training-set recipe); the file is left in place at the end (``history['state_path']``).
        ``resume=False`` discards a saved state and starts over.

    Returns
    -------
    model : SpecResNet
        On the CPU, in eval mode: the weights after the epoch with the best validation
        completeness at ``fpr`` (ties: AUC); the last epoch without validation data.
    history : dict
        Per epoch ``loss``, ``focal``, ``position`` (training means) and, with validation,
        ``val_auc``, ``val_completeness``, ``val_threshold``, ``val_loc_within_3px`` (fraction of
        detected validation lines located within 3 px); ``best_epoch`` (1-based), ``seconds``,
        ``spectra_per_s``, ``hparams`` (the training record, for :func:`save_specnet`).
    """
    if epochs < 1:
        raise LenscatError(f"epochs must be at least 1, got {epochs}")
    if batch_size < 2:
        raise LenscatError(f"batch_size must be at least 2, got {batch_size}")
    if not lr > 0:
        raise LenscatError(f"lr must be positive, got {lr}")
    x, y, lpix = _training_arrays(train_arrays, "train_arrays", wave)
    n = len(y)
    if n < batch_size:
        raise LenscatError(f"{n} training spectra for batch_size {batch_size}")
    val: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
    if val_arrays is not None:
        val = _training_arrays(val_arrays, "val_arrays", wave)
    dev = _device(device)
    cuda = dev.type == "cuda"
    cfg = dict(config or {})
    cfg.setdefault("in_channels", int(x.shape[1]))
    with torch.random.fork_rng(devices=[dev] if cuda else []):
        torch.manual_seed(seed)
        model = SpecResNet(**cfg)
        stride = model.stride
        lbin = np.where(lpix >= 0, lpix // stride, -1).astype(np.int64)
        model.to(dev)
        decay = [p for nme, p in model.named_parameters() if p.ndim > 1]
        no_decay = [p for nme, p in model.named_parameters() if p.ndim <= 1]
        opt = torch.optim.AdamW(
            [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=lr
        )
        steps_per_epoch = n // batch_size
        total = epochs * steps_per_epoch
        warm = max(1, int(0.03 * total))
        rng = np.random.default_rng(seed)
        xt = torch.from_numpy(x)
        yt = torch.from_numpy(y)
        bt = torch.from_numpy(lbin)
        hist: dict[str, list[float]] = {
            k: []
            for k in ("loss", "focal", "position", "val_auc", "val_completeness", "val_threshold", "val_loc_within_3px")
        }
        best_key: tuple[float, float] | None = None
        best_state: dict[str, Tensor] | None = None
        best_epoch = epochs
        step = 0
        epoch0 = 0
        elapsed_before = 0.0
        state_key, state_path, st = trainstate.saved_run(
            state_dir,
            "specnet",
            {
                "epochs": epochs,
                "batch_size": batch_size,
                "lr": lr,
                "weight_decay": weight_decay,
                "gamma": gamma,
                "alpha": alpha,
                "position_weight": position_weight,
                "fpr": fpr,
                "config": cfg,
                "seed": seed,
                "n": n,
                "n_val": None if val is None else len(val[1]),
                "run_tag": run_tag,
            },
            resume=resume,
        )
        if st is not None:
            model.load_state_dict(st["model"])
            opt.load_state_dict(st["opt"])
            rng.bit_generator.state = st["rng"]
            torch.set_rng_state(st["torch_rng"])
            if cuda and st["cuda_rng"] is not None:
                torch.cuda.set_rng_state(st["cuda_rng"], dev)
            hist, best_key, best_state, best_epoch = st["hist"], st["best_key"], st["best_state"], st["best_epoch"]
            epoch0, step, elapsed_before = int(st["epochs_done"]), int(st["step"]), float(st["elapsed_s"])
        bar = tqdm(total=total, initial=step, disable=not progress, unit="step", desc="specnet", leave=True)
        t0 = time.perf_counter()
        amp_on = amp and cuda
        saved = epoch0
        try:
            for epoch in range(epoch0, epochs):
                model.train()
                order = torch.from_numpy(rng.permutation(n))
                sums = torch.zeros(3, device=dev)
                for b in range(steps_per_epoch):
                    idx = order[b * batch_size : (b + 1) * batch_size]
                    xb = xt[idx].to(dev, non_blocking=True)
                    yb = yt[idx].to(dev, non_blocking=True)
                    bb = bt[idx].to(dev, non_blocking=True)
                    frac = step / max(1, total)
                    mult = (step + 1) / warm if step < warm else 0.5 * (1 + math.cos(math.pi * frac))
                    for g in opt.param_groups:
                        g["lr"] = lr * mult
                    with torch.autocast(dev.type, dtype=_amp_dtype() if cuda else torch.bfloat16, enabled=amp_on):
                        plog = model(xb)
                    loss, fl, pl = specnet_loss(
                        plog.float(), yb, bb, gamma=gamma, alpha=alpha, position_weight=position_weight
                    )
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    sums += torch.stack([loss.detach(), fl.detach(), pl.detach()])
                    step += 1
                    bar.update(1)
                    if b % 20 == 0:
                        bar.set_postfix(loss=f"{float(loss.detach()):.4f}", epoch=epoch + 1)
                means = (sums / steps_per_epoch).tolist()
                if not all(math.isfinite(v) for v in means):
                    raise LenscatError(
                        f"specnet training diverged (non-finite loss) in epoch {epoch + 1}; lower the learning rate"
                    )
                for k, v in zip(("loss", "focal", "position"), means, strict=True):
                    hist[k].append(v)
                if val is not None:
                    vx, vy, vp = val
                    prob, pix = predict(model, vx, device=dev, amp=amp)
                    auc = roc_auc(vy, prob)
                    comp, thr = completeness_at_fpr(vy, prob, fpr)
                    det = (vy == 1) & (vp >= 0) & (prob > thr)
                    loc = float(np.mean(np.abs(pix[det] - vp[det]) <= 3)) if det.any() else math.nan
                    hist["val_auc"].append(auc)
                    hist["val_completeness"].append(comp)
                    hist["val_threshold"].append(thr)
                    hist["val_loc_within_3px"].append(loc)
                    key = (np.nan_to_num(comp, nan=-1.0), np.nan_to_num(auc, nan=-1.0))
                    if best_key is None or key > best_key:
                        best_key = key
                        best_epoch = epoch + 1
                        best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                    bar.set_postfix(loss=f"{means[0]:.4f}", auc=f"{auc:.4f}", comp=f"{comp:.3f}", epoch=epoch + 1)
                if state_path is not None and epoch + 1 < epochs:
                    trainstate.write_state(
                        state_path,
                        {
                            "key": state_key,
                            "epochs_done": epoch + 1,
                            "step": step,
                            "model": model.state_dict(),
                            "opt": opt.state_dict(),
                            "rng": rng.bit_generator.state,
                            "torch_rng": torch.get_rng_state(),
                            "cuda_rng": torch.cuda.get_rng_state(dev) if cuda else None,
                            "hist": hist,
                            "best_key": best_key,
                            "best_state": best_state,
                            "best_epoch": best_epoch,
                            "elapsed_s": elapsed_before + time.perf_counter() - t0,
                        },
                    )
                    saved = epoch + 1
        except KeyboardInterrupt:
            if state_path is None or not saved:
                raise
            raise trainstate.interrupted(f"after epoch {saved} of {epochs}", state_path) from None
        finally:
            bar.close()
        if cuda:
            torch.cuda.synchronize(dev)
        seconds = elapsed_before + time.perf_counter() - t0
    if best_state is not None:
        model.load_state_dict(best_state)
    model.to("cpu").eval()
    hparams = {
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
        "weight_decay": weight_decay,
        "gamma": gamma,
        "alpha": alpha,
        "position_weight": position_weight,
        "fpr": fpr,
        "seed": seed,
        "config": model.config,
        "n_train": n,
        "n_train_lines": int(y.sum()),
        "n_val": 0 if val is None else len(val[1]),
        "best_epoch": best_epoch,
        "device": str(dev),
        "input_channels": ["snr_residual", "scaled_residual", "good_mask"],
    }
    history: dict[str, Any] = {k: v for k, v in hist.items() if v}
    history.update(
        best_epoch=best_epoch,
        seconds=seconds,
        steps=step,
        spectra_per_s=step * batch_size / max(seconds, 1e-9),
        hparams=hparams,
        resumed_from_epoch=epoch0,
        state_path=None if state_path is None else str(state_path),
    )
    return model, history


# --------------------------------------------------------------------------------------------
# checkpoints
# --------------------------------------------------------------------------------------------


def save_specnet(model: SpecResNet, path: str | Path, *, hparams: Mapping[str, Any]) -> str:
    """Write a checkpoint (format in the module docstring) atomically and byte-reproducibly.

    Parameters
    ----------
    model : SpecResNet
        The network (any device; saved as CPU tensors).
    path : str or Path
        Destination; parent directories are created; an existing file is replaced.
    hparams : mapping
        Training record (e.g. ``history['hparams']``); plain Python / NumPy values.

    Returns
    -------
    str
        SHA-256 hex digest of the file.
    """
    path = Path(path)
    obj = {
        "format_version": SPECNET_FORMAT_VERSION,
        "kind": _KIND,
        "config": _plain(dict(model.config), f"{path}: config"),
        "state_dict": cpu_state_dict(model),
        "hparams": _plain(dict(hparams), f"{path}: hparams"),
    }
    return write_checkpoint(obj, path)


def load_specnet(path: str | Path) -> tuple[SpecResNet, dict[str, Any]]:
    """Load a :func:`save_specnet` checkpoint (``weights_only=True``).

    Returns
    -------
    model : SpecResNet
        On the CPU, in eval mode.
    hparams : dict
        The saved training record.

    Raises
    ------
    InputFileError
        Missing or unreadable file, not a specnet checkpoint, or weights that do not fit.
    """
    path = Path(path)
    obj = _load(path)
    if not isinstance(obj, Mapping) or obj.get("kind") != _KIND or "state_dict" not in obj:
        raise InputFileError(f"{path}: not a lenscat specnet checkpoint")
    version = obj.get("format_version")
    if not isinstance(version, int) or version > SPECNET_FORMAT_VERSION:
        raise InputFileError(
            f"{path}: specnet checkpoint format {version!r} is not supported "
            f"(this lenscat reads up to {SPECNET_FORMAT_VERSION})"
        )
    try:
        model = SpecResNet(**dict(obj.get("config") or {}))
    except (TypeError, LenscatError) as exc:
        raise InputFileError(f"{path}: bad architecture config ({exc})") from None
    try:
        model.load_state_dict(dict(obj["state_dict"]))
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise InputFileError(f"{path}: weights do not fit the architecture ({first})") from None
    model.eval()
    return model, dict(obj.get("hparams") or {})
