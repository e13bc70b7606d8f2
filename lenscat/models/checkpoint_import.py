"""Import of torchvision-layout ResNet weights: plain, wrapped, or the query encoder of a MoCo checkpoint.

The weights are checked against the architecture asked for (keys, channels, shapes, finite values)
with the checks of :mod:`lenscat.models.checkpoint`, whose format :func:`~lenscat.models.checkpoint.save_encoder`
then writes. Every failure is a :class:`~lenscat.errors.LenscatError` whose one-line message starts
with the file name.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from lenscat.errors import InputFileError, LenscatError
from lenscat.models.checkpoint import (
    _build_empty,
    _check_state_dict,
    _few,
    _load,
    _name,
    _sha256,
    _tensor_items,
)
from lenscat.models.preprocess import Preprocessing
from lenscat.models.resnet import Encoder

__all__ = ["import_torchvision_resnet", "import_torchvision_resnet50"]

_TORCHVISION_ARCHS: dict[str, tuple[str, tuple[int, ...]]] = {
    "resnet50": ("bottleneck", (3, 4, 6, 3)),
    "resnet18": ("basic", (2, 2, 2, 2)),
}
_KEY_ENCODER_WORDS = ("encoder_k", "momentum", "teacher", "target", "ema", "key_encoder")


def _find_state_dict(obj: Any, path: Path) -> dict[str, Tensor]:
    if isinstance(obj, torch.nn.Module):
        return dict(obj.state_dict())
    if not isinstance(obj, Mapping):
        raise InputFileError(f"{path}: holds a {type(obj).__name__}, not a state dict")
    for key in ("state_dict", "model_state_dict", "model", "net"):
        inner = obj.get(key)
        if isinstance(inner, Mapping) and _tensor_items(inner):
            return _tensor_items(inner)
    sd = _tensor_items(obj)
    if not sd:
        raise InputFileError(f"{path}: no tensors found (top-level keys: {_few(sorted(map(str, obj)))})")
    return sd


def _choose_prefix(sd: Mapping[str, Tensor], expected: set[str], path: Path) -> str:
    """The key prefix of the query/online ResNet inside ``sd`` ('' for a plain state dict)."""
    candidates = set()
    for k in sd:
        if k.endswith("conv1.weight"):
            p = k[: -len("conv1.weight")]
            if (p == "" or p.endswith(".")) and not re.search(r"layer\d+\.\d+\.$", p):
                candidates.add(p)
    if not candidates:
        raise InputFileError(
            f"{path}: no ResNet stem 'conv1.weight' among its keys ({_few(sorted(sd))}); not a torchvision-style ResNet"
        )

    def rank(p: str) -> tuple[int, int, int, int]:
        n = sum(1 for k in sd if k.startswith(p) and k[len(p) :] in expected)
        low = p.lower()
        return (
            int("encoder_q" in low or "query" in low),
            int(not any(w in low for w in _KEY_ENCODER_WORDS)),
            n,
            -len(p),
        )

    return max(sorted(candidates), key=rank)


def import_torchvision_resnet(
    path: str | Path,
    *,
    arch: str = "resnet50",
    in_chans: int = 3,
    preprocessing: Preprocessing | None = None,
    trust: bool = False,
) -> tuple[Encoder, dict[str, Any]]:
    """Import torchvision-layout ResNet weights (plain, wrapped, or inside a MoCo checkpoint).

    Accepted: a state dict, or a dict holding one under ``state_dict`` / ``model_state_dict`` /
    ``model``; keys may carry a prefix such as ``module.encoder_q.`` (MoCo, as in Stein et al.'s
    release), ``encoder_q.`` (Lightning MoCo), ``module.``, ``backbone.`` or ``model.``. The
    prefix of the query encoder is found from its ``conv1.weight`` (key/momentum encoders such
    as ``encoder_k.`` are ignored); ``fc.*`` (classifier or MoCo MLP head ``fc.0``/``fc.2``) is
    dropped; missing ``num_batches_tracked`` buffers are allowed.

    Parameters
    ----------
    path : str or Path
        The checkpoint file.
    arch : {'resnet50', 'resnet18'}
        Expected architecture.
    in_chans : int
        Expected input channels.
    preprocessing : Preprocessing, optional
        Input convention of the weights; default :meth:`Preprocessing.stein` (raw nanomaggies,
        96-pixel crop), which is right for Stein et al.'s weights.
    trust : bool
        Allow full unpickling (arbitrary code!) when the file is not ``weights_only``-loadable.

    Returns
    -------
    encoder : Encoder
        On the CPU, in eval mode.
    meta : dict
        ``arch``, ``hparams``, ``output_dim``, ``preprocessing``, ``path``, ``sha256``,
        ``prefix`` (the stripped key prefix), ``source_format`` (``'moco'``, ``'torchvision'``
        or ``'prefixed'``) and ``dropped_keys`` (the ``fc.*`` names dropped).

    Raises
    ------
    LenscatError
        Missing/unreadable file, wrong architecture, missing or unexpected keys, wrong channel
        count, shape mismatch, or non-finite weights.
    """
    if arch not in _TORCHVISION_ARCHS:
        raise LenscatError(f"cannot import {arch!r}; torchvision layouts known: {', '.join(_TORCHVISION_ARCHS)}")
    path = Path(path)
    sd_all = _find_state_dict(_load(path, trust=trust), path)
    encoder = _build_empty(arch, {"in_chans": in_chans})
    expected = set(encoder.state_dict())
    prefix = _choose_prefix(sd_all, expected, path)
    sd = {k[len(prefix) :]: v for k, v in sd_all.items() if k.startswith(prefix)}
    dropped = sorted(k for k in sd if k == "fc" or k.startswith("fc."))
    for k in dropped:
        del sd[k]
    expected_name = _name(_TORCHVISION_ARCHS[arch])
    _check_state_dict(sd, encoder, path, expected_name=expected_name)
    encoder.load_state_dict(sd, strict=False)
    encoder.preprocessing = preprocessing or Preprocessing.stein()
    encoder.eval()
    meta = {
        "arch": arch,
        "hparams": dict(encoder.hparams),
        "output_dim": encoder.output_dim,
        "preprocessing": encoder.preprocessing.to_dict(),
        "path": str(path),
        "sha256": _sha256(path),
        "prefix": prefix,
        "source_format": ("moco" if "encoder_q" in prefix else "torchvision" if not prefix else "prefixed"),
        "dropped_keys": dropped,
    }
    return encoder, meta


def import_torchvision_resnet50(
    path: str | Path,
    *,
    in_chans: int = 3,
    preprocessing: Preprocessing | None = None,
    trust: bool = False,
) -> tuple[Encoder, dict[str, Any]]:
    """Import ResNet-50 weights; :func:`import_torchvision_resnet` with ``arch='resnet50'``."""
    return import_torchvision_resnet(path, arch="resnet50", in_chans=in_chans, preprocessing=preprocessing, trust=trust)
