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

The model knows nothing of the database nor of the spectra domain. Pieces:

* :func:`~lenscat.models.specnet_inputs.prepare_inputs` -- flux, inverse variance, continuum and
  redshift to network input (the line masks are passed in by the caller);
* :class:`SpecResNet` (this module), :func:`~lenscat.models.specnet_train.focal_loss`,
  :func:`~lenscat.models.specnet_train.train_specnet`, :func:`~lenscat.models.specnet_inference.predict`;
* :func:`save_specnet` / :func:`load_specnet` -- one ``torch.save`` file (loadable with
  ``weights_only=True``)::

      {'format_version': 1, 'kind': 'lenscat-specnet', 'config': dict (SpecResNet kwargs),
       'state_dict': {name: tensor}, 'hparams': dict}

On the CPU a given seed, data and thread count give bit-identical training; the global torch RNG
is left untouched.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lenscat.errors import InputFileError, LenscatError
from lenscat.models.checkpoint import _load, _plain, cpu_state_dict, write_checkpoint
from lenscat.models.specnet_inputs import N_INPUT_CHANNELS, WINDOW_N

__all__ = [
    "ARCHITECTURES",
    "SPECNET_FORMAT_VERSION",
    "SpecResNet",
    "architecture_config",
    "flops_per_spectrum",
    "load_specnet",
    "save_specnet",
]

SPECNET_FORMAT_VERSION = 1
_KIND = "lenscat-specnet"

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
        Input channels (3 for :func:`~lenscat.models.specnet_inputs.prepare_inputs`).
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


def flops_per_spectrum(model: SpecResNet, n_pixels: int = WINDOW_N) -> dict[str, float]:
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
