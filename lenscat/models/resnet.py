"""ResNet encoders: torchvision-compatible ResNet-18/50 and a small CPU-friendly ResNet.

Every encoder maps a float tensor ``(B, in_chans, H, W)`` to features ``(B, output_dim)`` (after
global average pooling; there is no classifier ``fc``). The torchvision-style encoders keep
torchvision's state-dict key names (``conv1``, ``bn1``, ``layer1`` … ``layer4`` with
``conv1/bn1/conv2/bn2[/conv3/bn3]/downsample.0/downsample.1``), so a torchvision or MoCo
checkpoint loads once its ``fc.*`` entries are dropped (see :mod:`lenscat.models.checkpoint`).

=================  =========  ==========================================  ============
``arch``           block      stem                                        ``output_dim``
=================  =========  ==========================================  ============
``resnet50``       Bottleneck 7x7/2 conv + 3x3/2 max-pool, (3, 4, 6, 3)    2048
``resnet18``       Basic      7x7/2 conv + 3x3/2 max-pool, (2, 2, 2, 2)    512
``resnet-small``   Basic      3x3/2 conv, widths (32, 64, 128, 256),      128
                              blocks (1, 1, 1, 1), stage strides
                              (2, 2, 2, 1), then ``Linear(256, 128)``
=================  =========  ==========================================  ============

On a 96x96 input ``resnet50``/``resnet18`` end at 3x3 before pooling (as in Stein et al. 2022).
``resnet-small`` (1.26 M parameters) follows ResNet-50's resolution schedule for its first three
stages (24, 12, 6 pixels on a 96-pixel input) and keeps 6x6 in the last. Multiply-accumulates
per 96x96 image: resnet-small 63 M, resnet18 333 M, resnet50 751 M. Only ``resnet-small`` has an
``embed`` linear layer, and only when ``output_dim`` differs from its last width.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lenscat.errors import LenscatError
from lenscat.models.preprocess import Preprocessing

__all__ = ["ARCHITECTURES", "BasicBlock", "Bottleneck", "Encoder", "ResNetEncoder", "build_encoder"]


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)


def _conv1x1(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection (torchvision's ``BasicBlock``).

    Parameters
    ----------
    inplanes, planes : int
        Input and output channels.
    stride : int
        Stride of the first convolution.
    downsample : nn.Module or None
        ``Sequential(conv1x1, BatchNorm2d)`` matching the shortcut to the output shape.
    """

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = _conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        """Apply the block."""
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 - 3x3 - 1x1 bottleneck with the stride on the 3x3 (torchvision's ResNet v1.5).

    Parameters
    ----------
    inplanes, planes : int
        Input channels and bottleneck width; the output has ``4 * planes`` channels.
    stride : int
        Stride of the 3x3 convolution.
    downsample : nn.Module or None
        ``Sequential(conv1x1, BatchNorm2d)`` matching the shortcut to the output shape.
    """

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = _conv1x1(inplanes, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = _conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        """Apply the block."""
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class Encoder(nn.Module):
    """Base class of every encoder: ``forward(B, C, H, W) -> (B, output_dim)``.

    Attributes
    ----------
    output_dim : int
        Length of the ``forward`` vector (what training uses).
    feature_dim : int
        Length of the :meth:`features` vector (what is stored as the embedding).
    in_chans : int
        Number of input channels (bands).
    arch : str
        Architecture name understood by :func:`build_encoder`.
    hparams : dict
        Keyword arguments that rebuild this encoder with :func:`build_encoder`.
    preprocessing : Preprocessing
        How survey cutouts become network input for this encoder (used by
        :func:`lenscat.models.inference.encode`); saved in checkpoints.
    """

    output_dim: int
    feature_dim: int
    in_chans: int
    arch: str
    hparams: dict[str, Any]
    preprocessing: Preprocessing

    def features(self, x: Tensor) -> Tensor:
        """The stored embedding of images ``(B, in_chans, H, W)``: ``forward``'s vector by default."""
        out: Tensor = self(x)
        return out


class ResNetEncoder(Encoder):
    """A ResNet without classifier, with torchvision's module names.

    Parameters
    ----------
    block : type
        :class:`BasicBlock` or :class:`Bottleneck`.
    layers : sequence of int
        Blocks per stage (four stages).
    widths : sequence of int
        Bottleneck/basic widths per stage (torchvision: 64, 128, 256, 512).
    in_chans : int
        Input channels.
    stem : {'imagenet', 'small'}
        ``'imagenet'``: 7x7 stride-2 conv, BN, ReLU, 3x3 stride-2 max-pool (``stem_width``
        channels). ``'small'``: 3x3 stride-2 conv, BN, ReLU, no pooling.
    stem_width : int
        Channels after the stem.
    strides : sequence of int
        Stride of each stage's first block.
    output_dim : int or None
        If given and different from the pooled width, a bias-carrying ``embed`` linear layer maps
        the pooled features to ``output_dim``.
    zero_init_residual : bool
        Initialise the last BN of every residual branch to zero (torchvision option).
    readout : {'gap', 'gap+annuli2'}
        What :meth:`features` returns (the stored embedding). ``'gap'``: ``forward``'s vector.
        ``'gap+annuli2'``: that vector, unit-normalised, followed by the per-channel mean and
        maximum of the stage-2 map in three annuli around its centre (r < 1, 1-2.2, > 2.2 map
        pixels), unit-normalised, the whole divided by sqrt(2): ``output_dim + 6 * widths[1]``
        values (docs/benchmarks.md: the arcs are in the stage-2 map more than in the pooled
        output). Training (MoCo, the supervised CNN) always uses ``forward``.
    """

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        layers: Sequence[int],
        widths: Sequence[int] = (64, 128, 256, 512),
        *,
        in_chans: int = 3,
        stem: str = "imagenet",
        stem_width: int = 64,
        strides: Sequence[int] = (1, 2, 2, 2),
        output_dim: int | None = None,
        zero_init_residual: bool = False,
        readout: str = "gap",
    ) -> None:
        super().__init__()
        if readout not in READOUTS:
            raise LenscatError(f"unknown readout {readout!r}; choose from {', '.join(READOUTS)}")
        self.readout = readout
        if len(layers) != 4 or len(widths) != 4 or len(strides) != 4:
            raise LenscatError("a ResNet needs exactly four stages (layers, widths, strides)")
        if in_chans < 1:
            raise LenscatError(f"in_chans must be positive, got {in_chans}")
        self.in_chans = int(in_chans)
        if stem == "imagenet":
            self.conv1 = nn.Conv2d(in_chans, stem_width, 7, stride=2, padding=3, bias=False)
            self.maxpool: nn.Module = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        elif stem == "small":
            self.conv1 = _conv3x3(in_chans, stem_width, stride=2)
            self.maxpool = nn.Identity()
        else:
            raise LenscatError(f"unknown ResNet stem {stem!r}; choose 'imagenet' or 'small'")
        self.bn1 = nn.BatchNorm2d(stem_width)
        self.relu = nn.ReLU(inplace=True)
        self._inplanes = stem_width
        self.layer1 = self._make_layer(block, widths[0], layers[0], strides[0])
        self.layer2 = self._make_layer(block, widths[1], layers[1], strides[1])
        self.layer3 = self._make_layer(block, widths[2], layers[2], strides[2])
        self.layer4 = self._make_layer(block, widths[3], layers[3], strides[3])
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        pooled = widths[3] * block.expansion
        if output_dim is not None and output_dim != pooled:
            self.embed: nn.Module = nn.Linear(pooled, output_dim)
            self.output_dim = int(output_dim)
        else:
            self.embed = nn.Identity()
            self.output_dim = pooled
        self.feature_dim = self.output_dim + (6 * widths[1] * block.expansion if readout != "gap" else 0)
        self.preprocessing = Preprocessing()
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, Bottleneck):
                    nn.init.zeros_(m.bn3.weight)
                elif isinstance(m, BasicBlock):
                    nn.init.zeros_(m.bn2.weight)

    def _make_layer(
        self, block: type[BasicBlock] | type[Bottleneck], planes: int, blocks: int, stride: int
    ) -> nn.Sequential:
        downsample = None
        out = planes * block.expansion
        if stride != 1 or self._inplanes != out:
            downsample = nn.Sequential(_conv1x1(self._inplanes, out, stride), nn.BatchNorm2d(out))
        mods: list[nn.Module] = [block(self._inplanes, planes, stride, downsample)]
        self._inplanes = out
        mods += [block(out, planes) for _ in range(1, blocks)]
        return nn.Sequential(*mods)

    def _stage2_and_pooled(self, x: Tensor) -> tuple[Tensor, Tensor]:
        stage2 = self.layer2(self.layer1(self.maxpool(self.relu(self.bn1(self.conv1(x))))))
        return stage2, self.embed(torch.flatten(self.avgpool(self.layer4(self.layer3(stage2))), 1))

    def forward(self, x: Tensor) -> Tensor:
        """Features ``(B, output_dim)`` of images ``(B, in_chans, H, W)``."""
        return self._stage2_and_pooled(x)[1]

    def features(self, x: Tensor) -> Tensor:
        """The stored embedding ``(B, feature_dim)`` of images ``(B, in_chans, H, W)`` (see ``readout``)."""
        stage2, pooled = self._stage2_and_pooled(x)
        if self.readout == "gap":
            return pooled
        both = torch.cat([F.normalize(pooled.float(), dim=1), F.normalize(annulus_stats(stage2.float()), dim=1)], 1)
        return both / math.sqrt(2.0)


READOUTS = ("gap", "gap+annuli2")
"""Readouts of :class:`ResNetEncoder` (its ``readout`` option)."""

ANNULI_EDGES = (1.0, 2.2)
"""Radii [map pixels from the map centre] that split a stage map into the annuli of ``gap+annuli2``."""


def annulus_stats(maps: Tensor, edges: Sequence[float] = ANNULI_EDGES) -> Tensor:
    """Per-channel mean and maximum of ``(B, C, H, W)`` maps in annuli around the map centre.

    Returns ``(B, 2 * C * (len(edges) + 1))``: for each annulus from the centre out, the C means
    then the C maxima. An annulus with no pixel (a map too small) repeats its inner neighbour's.
    """
    h, w = maps.shape[-2:]
    yy = torch.arange(h, device=maps.device, dtype=torch.float32)[:, None] - (h - 1) / 2
    xx = torch.arange(w, device=maps.device, dtype=torch.float32)[None, :] - (w - 1) / 2
    ring = torch.bucketize(torch.hypot(yy, xx), torch.tensor(list(edges), device=maps.device), right=True)
    flat = maps.flatten(2)
    out: list[Tensor] = []
    last: list[Tensor] = [flat.mean(-1), flat.amax(-1)]
    for b in range(len(edges) + 1):
        mask = (ring == b).flatten()
        if bool(mask.any()):
            sel = flat[:, :, mask]
            last = [sel.mean(-1), sel.amax(-1)]
        out += last
    return torch.cat(out, 1)


def _resnet50(*, in_chans: int = 3, zero_init_residual: bool = False) -> ResNetEncoder:
    return ResNetEncoder(Bottleneck, (3, 4, 6, 3), in_chans=in_chans, zero_init_residual=zero_init_residual)


def _resnet18(*, in_chans: int = 3, zero_init_residual: bool = False) -> ResNetEncoder:
    return ResNetEncoder(BasicBlock, (2, 2, 2, 2), in_chans=in_chans, zero_init_residual=zero_init_residual)


def _resnet_small(
    *,
    in_chans: int = 3,
    output_dim: int = 128,
    widths: Sequence[int] = (32, 64, 128, 256),
    blocks: Sequence[int] = (1, 1, 1, 1),
    strides: Sequence[int] = (2, 2, 2, 1),
    zero_init_residual: bool = False,
    readout: str = "gap",
) -> ResNetEncoder:
    return ResNetEncoder(
        BasicBlock,
        tuple(int(b) for b in blocks),
        tuple(int(w) for w in widths),
        in_chans=in_chans,
        stem="small",
        stem_width=int(widths[0]),
        strides=tuple(int(s) for s in strides),
        output_dim=int(output_dim),
        zero_init_residual=bool(zero_init_residual),
        readout=str(readout),
    )


ARCHITECTURES: dict[str, Callable[..., ResNetEncoder]] = {
    "resnet50": _resnet50,
    "resnet18": _resnet18,
    "resnet-small": _resnet_small,
}
"""Architecture name -> builder; the builder's keyword arguments are the allowed ``hparams``."""


def _plain(value: Any) -> Any:
    """Tuples to lists, recursively, so hparams survive JSON and ``weights_only`` loading."""
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    return value


def build_encoder(arch: str, **hparams: Any) -> Encoder:
    """Build a freshly initialised encoder.

    Parameters
    ----------
    arch : {'resnet50', 'resnet18', 'resnet-small'}
        Architecture name.
    **hparams
        Builder options. All: ``in_chans`` (default 3: g, r, z) and ``zero_init_residual``
        (False: every residual branch's last BatchNorm starts at one; True: at zero, so each
        block starts as the identity). ``resnet-small`` also takes ``output_dim`` (128),
        ``widths`` ((32, 64, 128, 256)), ``blocks`` ((1, 1, 1, 1)) and ``strides`` ((2, 2, 2, 1)).

    Returns
    -------
    Encoder
        In training mode, on the CPU (or the current default device), with ``arch`` and
        ``hparams`` (the given options, lists instead of tuples) recorded on it.

    Raises
    ------
    LenscatError
        Unknown architecture or option.
    """
    try:
        builder = ARCHITECTURES[arch]
    except KeyError:
        raise LenscatError(f"unknown architecture {arch!r}; choose from {', '.join(ARCHITECTURES)}") from None
    allowed = [p for p in inspect.signature(builder).parameters]
    unknown = sorted(set(hparams) - set(allowed))
    if unknown:
        raise LenscatError(
            f"architecture {arch!r} does not take hyper-parameter(s) {', '.join(unknown)}; "
            f"it takes {', '.join(allowed)}"
        )
    try:
        model = builder(**hparams)
    except (TypeError, ValueError) as exc:
        raise LenscatError(f"architecture {arch!r}: bad hyper-parameters ({exc})") from None
    model.arch = arch
    model.hparams = {k: _plain(v) for k, v in hparams.items()}
    return model
