"""Supervised lens classifiers on images: a ResNet encoder plus a linear head to one logit.

Training lives in :mod:`lenscat.models.supervised_train` (:func:`~lenscat.models.supervised_train.
train_image_classifier`: fine-tuning a pre-trained encoder or a supervised CNN baseline, the few-label
and GPU recipes) and its lens-enriched batches in :mod:`lenscat.models.supervised_data`; this module
holds the model, its scoring and its checkpoints. The classifier's bias is initialised to
``logit(lens_fraction)``, so its scores are calibrated to that prior, not to the survey's: use them to
rank.

The network input is what the encoder inference path feeds an encoder: the classifier's
:class:`~lenscat.models.preprocess.Preprocessing` (by default the backbone's own, i.e. its
training crop and stretch) applied to nanomaggy cutouts; :meth:`ImageClassifier.prepare` does
it, :func:`score_images` applies it before ``forward``.

Checkpoints (:func:`save_classifier` / :func:`load_classifier`) are a ``torch.save`` of a plain
dict, loadable with ``weights_only=True``, that rebuilds the classifier without any other file::

    {'format_version': 1, 'kind': 'lenscat-image-classifier', 'backbone_arch': str,
     'backbone_hparams': dict, 'output_dim': int, 'head': {'in_features': int,
     'out_features': 1}, 'crop': int, 'preprocessing': dict, 'state_dict': {name: tensor},
     'hparams': dict}

``state_dict`` is the whole classifier's (``backbone.*`` and ``head.*``); ``hparams`` is the
training record (``metrics['hparams']`` of
:func:`~lenscat.models.supervised_train.train_image_classifier`). Files are written
atomically and byte-reproducibly, like encoder checkpoints.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from lenscat.errors import InputFileError, LenscatError
from lenscat.models.checkpoint import (
    _build_empty,
    _check_state_dict,
    _load,
    _plain,
    _sha256,
    cpu_state_dict,
    write_checkpoint,
)
from lenscat.models.data import ImageSource, prefetch
from lenscat.models.device import resolve_device
from lenscat.models.preprocess import Preprocessing, oriented, sum_over_views
from lenscat.models.resnet import Encoder, build_encoder
from lenscat.models.supervised_data import (
    _as_source,
)

__all__ = [
    "CLASSIFIER_FORMAT_VERSION",
    "ImageClassifier",
    "load_classifier",
    "save_classifier",
    "score_images",
]

CLASSIFIER_FORMAT_VERSION = 1
_KIND = "lenscat-image-classifier"


class ImageClassifier(nn.Module):
    """An encoder and a linear head to one logit: ``forward(x) -> (B,)`` lens logits.

    Parameters
    ----------
    backbone : Encoder
        Any encoder (``forward(B, C, H, W) -> (B, output_dim)``); used as given (not copied).
    preprocessing : Preprocessing or dict, optional
        How nanomaggy cutouts become network input; default ``backbone.preprocessing`` (the
        crop and stretch the encoder was trained with), else the default preprocessing.

    Attributes
    ----------
    backbone : Encoder
        The encoder.
    head : nn.Linear
        ``Linear(backbone.output_dim, 1)``.
    preprocessing : Preprocessing
        Applied by :meth:`prepare` and :func:`score_images`; saved in checkpoints. With ``views``
        4 or 8 (inherited from a backbone trained so) a score is the sigmoid of the mean logit over
        that many orientations of the crop; training ignores it.
    """

    def __init__(
        self,
        backbone: Encoder,
        *,
        preprocessing: Preprocessing | Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(int(backbone.output_dim), 1)
        if preprocessing is None:
            preprocessing = getattr(backbone, "preprocessing", None)
        self.preprocessing = Preprocessing.from_dict(preprocessing)

    @property
    def crop(self) -> int:
        """Side of the centre crop (pixels) of the network input."""
        return self.preprocessing.crop

    @property
    def in_chans(self) -> int | None:
        """Input bands of the backbone (``None`` when it does not say)."""
        n = getattr(self.backbone, "in_chans", None)
        return None if n is None else int(n)

    def prepare(self, images: Tensor) -> Tensor:
        """Network input ``(B, C, crop, crop)`` from nanomaggy cutouts ``(B, C, H, W)``.

        NaN/inf to 0, centre crop, stretch and clip (:meth:`Preprocessing.apply_torch`), on the
        images' device.
        """
        return self.preprocessing.apply_torch(images)

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(B,)`` of network input ``x`` (the output of :meth:`prepare`)."""
        return self.head(self.backbone(x))[:, 0]


# --------------------------------------------------------------------------------------------
# batches, loss, optimiser, metrics
# --------------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------------
# devices and batched scoring
# --------------------------------------------------------------------------------------------


_resolve_device = resolve_device  # the one resolver (lenscat.models.device)


def _amp_dtype(cuda: bool) -> torch.dtype:
    return torch.bfloat16 if cuda and torch.cuda.is_bf16_supported() else torch.float16


def _to_device(a: np.ndarray, dev: torch.device) -> Tensor:
    t = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))
    return t.pin_memory().to(dev, non_blocking=True) if dev.type == "cuda" else t


def _move(model: nn.Module, dev: torch.device) -> None:
    if dev.type == "cuda":
        model.to(dev, memory_format=torch.channels_last)  # type: ignore[call-overload]
    else:
        model.to(dev)


def _to_cpu(model: nn.Module) -> None:
    model.to(device="cpu", memory_format=torch.contiguous_format)  # type: ignore[call-overload]


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    was = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, training in was:
            m.training = training


def _check_input(model: ImageClassifier, shape: tuple[int, ...], what: str = "images") -> None:
    if len(shape) != 4:
        raise LenscatError(f"{what} must be (N, C, H, W), got shape {tuple(shape)}")
    chans = model.in_chans
    if chans is not None and shape[1] != chans:
        raise LenscatError(f"{what} have {shape[1]} band(s) but the classifier takes {chans}")
    if shape[2] < model.crop or shape[3] < model.crop:
        raise LenscatError(
            f"{what} are {shape[2]}x{shape[3]} pixels, smaller than the classifier's {model.crop}-pixel crop"
        )


def _batch_logits(model: ImageClassifier, batch: Tensor, dev: torch.device, amp: bool) -> Tensor:
    x = model.prepare(batch)
    cuda = dev.type == "cuda"

    def logits(xv: Tensor) -> Tensor:
        with torch.autocast(dev.type, dtype=_amp_dtype(cuda), enabled=amp and cuda):
            return model(xv).float()

    views = model.preprocessing.views  # the mean logit over the orientations of the crop (1: as it is)
    if views > 1 and not cuda and len(x) * views <= 512:  # small batches (the retries of one cutout at a
        # time, small chunks): one forward pass over every orientation, the per-call overhead once, not 8 times
        stacked = torch.cat([oriented(x, v) for v in range(views)])
        return logits(stacked).view(views, -1).mean(0)
    return sum_over_views(logits, x, views, channels_last=cuda) / views


@torch.no_grad()
def _predict_logits(
    model: ImageClassifier,
    images: ImageSource | np.ndarray | Tensor,
    batch_size: int,
    dev: torch.device,
    amp: bool,
    what: str = "images",
) -> np.ndarray:
    """Logits of every image, in order; ``model`` is already on ``dev``; eval mode inside."""
    n = len(images)
    out = np.empty(n, dtype=np.float32)
    with _eval_mode(model):
        if isinstance(images, np.ndarray | Tensor):
            _check_input(model, tuple(images.shape), what)
            for start in range(0, n, batch_size):
                chunk = images[start : start + batch_size]
                t = chunk.to(dev) if isinstance(chunk, Tensor) else _to_device(chunk, dev)
                out[start : start + len(t)] = _batch_logits(model, t, dev, amp).cpu().numpy()
        else:
            batches = (np.arange(s, min(n, s + batch_size)) for s in range(0, n, batch_size))
            for idx, arr, _ in prefetch(images, batches):
                _check_input(model, tuple(arr.shape), what)
                logits = _batch_logits(model, _to_device(arr, dev), dev, amp)
                out[idx] = logits.cpu().numpy()
    return out


def score_images(
    model: ImageClassifier,
    images: np.ndarray | ImageSource,
    *,
    batch_size: int = 256,
    device: str | torch.device | None = None,
    amp: bool = True,
) -> np.ndarray:
    """Lens probabilities of nanomaggy cutouts.

    Runs without gradients in eval mode (BatchNorm running statistics: each score is
    independent of its batch), applies ``model.preprocessing`` on the device, and on CUDA uses
    channels-last memory and autocast. The model is moved to ``device`` (and left there); its
    training/eval mode is restored on return.

    Parameters
    ----------
    model : ImageClassifier
        The classifier.
    images : ndarray, shape (N, C, H, W), or ImageSource
        Nanomaggy cutouts at least ``model.crop`` pixels on a side (an image source is read
        one batch ahead on a thread).
    batch_size : int
        Images per forward pass.
    device : str or torch.device, optional
        Default :func:`~lenscat.models.inference.best_device`.
    amp : bool
        Autocast on CUDA (ignored on the CPU).

    Returns
    -------
    ndarray, shape (N,), float32
        ``sigmoid(logit)`` in [0, 1].
    """
    if batch_size < 1:
        raise LenscatError(f"batch_size must be positive, got {batch_size}")
    dev = _resolve_device(device)
    if not isinstance(images, np.ndarray):
        images = _as_source(images, "images")
    _move(model, dev)
    logits = _predict_logits(model, images, batch_size, dev, amp)
    return (1.0 / (1.0 + np.exp(-logits.astype(np.float64)))).astype(np.float32)


# --------------------------------------------------------------------------------------------
# training
# --------------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------------
# checkpoints
# --------------------------------------------------------------------------------------------


def save_classifier(model: ImageClassifier, path: str | Path, *, hparams: Mapping[str, Any]) -> str:
    """Write a classifier checkpoint (format in the module docstring).

    Parameters
    ----------
    model : ImageClassifier
        The classifier (any device; saved as CPU tensors). Its backbone must carry ``arch``
        and ``hparams`` (every encoder from :func:`~lenscat.models.resnet.build_encoder`,
        :func:`~lenscat.models.checkpoint.load_encoder` or the torchvision import does).
    path : str or Path
        Destination; parent directories are created; an existing file is replaced atomically.
    hparams : mapping
        Training record (e.g. ``metrics['hparams']``); plain Python / NumPy values.

    Returns
    -------
    str
        SHA-256 hex digest of the written file.

    Raises
    ------
    LenscatError
        The backbone cannot be rebuilt from its ``arch``/``hparams``, or unstorable metadata.
    """
    path = Path(path)
    bb = model.backbone
    arch = getattr(bb, "arch", None)
    if not isinstance(arch, str):
        raise LenscatError(f"{path}: the backbone has no 'arch'; build it with build_encoder")
    bhp = _plain(dict(getattr(bb, "hparams", {}) or {}), f"{path}: backbone hparams")
    try:
        with torch.device("meta"):
            ref = build_encoder(arch, **bhp)
    except LenscatError as exc:
        raise LenscatError(f"{path}: {exc}") from None
    sd, rsd = bb.state_dict(), ref.state_dict()
    if set(sd) != set(rsd) or any(tuple(sd[k].shape) != tuple(rsd[k].shape) for k in sd):
        raise LenscatError(f"{path}: the backbone does not match arch {arch!r} with {bhp}")
    head = model.head
    obj = {
        "format_version": CLASSIFIER_FORMAT_VERSION,
        "kind": _KIND,
        "backbone_arch": arch,
        "backbone_hparams": bhp,
        "output_dim": int(ref.output_dim),
        "head": {"in_features": int(head.in_features), "out_features": int(head.out_features)},
        "crop": int(model.crop),
        "preprocessing": model.preprocessing.to_dict(),
        "state_dict": cpu_state_dict(model),
        "hparams": _plain(dict(hparams), f"{path}: hparams"),
    }
    return write_checkpoint(obj, path)


def load_classifier(path: str | Path) -> tuple[ImageClassifier, dict[str, Any]]:
    """Load a classifier checkpoint written by :func:`save_classifier` (``weights_only=True``).

    Returns
    -------
    model : ImageClassifier
        On the CPU, in eval mode, with its preprocessing (also set on the backbone).
    meta : dict
        ``format_version``, ``arch`` (the backbone's), ``backbone_hparams``, ``output_dim``,
        ``crop``, ``preprocessing`` (dict), ``hparams`` (training record), ``path``,
        ``sha256``.

    Raises
    ------
    LenscatError
        Missing/unreadable file, not a classifier checkpoint, or weights that do not fit.
    """
    path = Path(path)
    obj = _load(path)
    if not isinstance(obj, Mapping) or obj.get("kind") != _KIND:
        hint = ""
        if isinstance(obj, Mapping) and "arch" in obj and "state_dict" in obj:
            hint = " (it is an encoder checkpoint: use load_encoder)"
        raise InputFileError(f"{path}: not a lenscat image-classifier checkpoint{hint}")
    version = obj.get("format_version")
    if not isinstance(version, int) or version > CLASSIFIER_FORMAT_VERSION:
        raise InputFileError(
            f"{path}: classifier format version {version!r} is not supported "
            f"(this lenscat reads up to {CLASSIFIER_FORMAT_VERSION})"
        )
    arch = str(obj.get("backbone_arch"))
    bhp = dict(obj.get("backbone_hparams") or {})
    try:
        backbone = _build_empty(arch, bhp)
        pre = Preprocessing.from_dict(obj.get("preprocessing"))
    except LenscatError as exc:
        raise InputFileError(f"{path}: {exc}") from None
    sd_all = obj.get("state_dict")
    if not isinstance(sd_all, Mapping):
        raise InputFileError(f"{path}: no state_dict")
    bsd = {k[len("backbone.") :]: v for k, v in sd_all.items() if isinstance(v, Tensor) and k.startswith("backbone.")}
    hsd = {k[len("head.") :]: v for k, v in sd_all.items() if isinstance(v, Tensor) and k.startswith("head.")}
    other = sorted(k for k in sd_all if not k.startswith(("backbone.", "head.")))
    if other:
        raise InputFileError(f"{path}: unexpected state_dict key(s) {', '.join(other[:4])}")
    _check_state_dict(bsd, backbone, path, expected_name=f"{arch} {bhp}")
    with torch.device("meta"):
        model = ImageClassifier(backbone, preprocessing=pre)  # head on meta: no RNG draws
    model.head.to_empty(device="cpu")
    want = {k: tuple(v.shape) for k, v in model.head.state_dict().items()}
    have = {k: tuple(v.shape) for k, v in hsd.items()}
    if have != want:
        raise InputFileError(f"{path}: head weights {have} do not fit Linear {want}")
    if not all(bool(torch.isfinite(v).all()) for v in hsd.values()):
        raise InputFileError(f"{path}: non-finite values in the head")
    backbone.load_state_dict(bsd, strict=False)
    model.head.load_state_dict(hsd)
    backbone.preprocessing = pre
    model.eval()
    meta = {
        "format_version": version,
        "arch": arch,
        "backbone_hparams": bhp,
        "output_dim": int(backbone.output_dim),
        "crop": pre.crop,
        "preprocessing": pre.to_dict(),
        "hparams": dict(obj.get("hparams") or {}),
        "path": str(path),
        "sha256": _sha256(path),
    }
    return model, meta
