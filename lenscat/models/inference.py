"""Batched inference: cutouts to L2-normalised embedding vectors.

:func:`encode` embeds an in-memory array; :func:`iter_encode` streams ``(indices, vectors)``
batches from an :class:`~lenscat.models.data.ImageSource` (reading the next batch on a thread
while the current one runs), for workers that write results as they go.

Both run without gradients in eval mode (BatchNorm uses its running statistics, so every
image's vector is independent of the batch it is in), apply the encoder's
:class:`~lenscat.models.preprocess.Preprocessing` on the device (with ``views`` 4 or 8 the vector
is the renormalised mean of the unit vectors of that many orientations of the crop), and on CUDA use channels-last
memory and bfloat16 (else float16) autocast; the final normalisation is done in float32.
Thread counts are left as the caller set them (``torch.set_num_threads``): torch's default is
one thread per physical core, so a process running several workers should lower it.

The encoder is moved to ``device`` (and left there); its training/eval mode is restored on
return.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from lenscat.errors import LenscatError
from lenscat.models.data import ImageSource, prefetch
from lenscat.models.device import best_device, resolve_device
from lenscat.models.preprocess import Preprocessing, sum_over_views
from lenscat.models.resnet import Encoder

__all__ = ["best_device", "encode", "iter_encode"]


def _preprocessing(encoder: Encoder, preprocess: bool | Preprocessing) -> Preprocessing | None:
    if isinstance(preprocess, Preprocessing):
        return preprocess
    if preprocess:
        return getattr(encoder, "preprocessing", None) or Preprocessing()
    return None


class _Runner:
    """Moves the encoder to the device and embeds torch batches."""

    def __init__(
        self,
        encoder: Encoder,
        device: str | torch.device,
        preprocess: bool | Preprocessing,
        amp: bool,
    ) -> None:
        self.dev = resolve_device(device)
        self.cuda = self.dev.type == "cuda"
        self.encoder = encoder
        self.pre = _preprocessing(encoder, preprocess)
        self.in_chans = int(getattr(encoder, "in_chans", 0)) or None
        self.amp = amp and self.cuda
        self.amp_dtype = torch.bfloat16 if self.cuda and torch.cuda.is_bf16_supported() else torch.float16
        if self.cuda:
            encoder.to(self.dev, memory_format=torch.channels_last)  # type: ignore[call-overload]
        else:
            encoder.to(self.dev)

    def check(self, shape: Sequence[int]) -> None:
        if len(shape) != 4:
            raise LenscatError(f"images must be (N, C, H, W), got shape {tuple(shape)}")
        if self.in_chans is not None and shape[1] != self.in_chans:
            raise LenscatError(f"images have {shape[1]} band(s) but the encoder takes {self.in_chans}")

    def to_device(self, batch: np.ndarray | Tensor) -> Tensor:
        t = batch if isinstance(batch, Tensor) else torch.from_numpy(np.ascontiguousarray(batch))
        if self.cuda and t.device.type == "cpu":
            t = t.pin_memory()
        return t.to(self.dev, non_blocking=True)

    @torch.no_grad()
    def embed(self, x: Tensor) -> Tensor:
        x = self.pre.apply_torch(x) if self.pre is not None else x.float()
        views = self.pre.views if self.pre is not None else 1
        if views == 1:
            return self._unit(x.contiguous(memory_format=torch.channels_last) if self.cuda else x)
        # the mean of the orientations' unit vectors, renormalised
        return F.normalize(sum_over_views(self._unit, x, views, channels_last=self.cuda), dim=1)

    def _unit(self, x: Tensor) -> Tensor:
        with torch.autocast(self.dev.type, dtype=self.amp_dtype, enabled=self.amp):
            feats = self.encoder.features(x)
        return F.normalize(feats.float(), dim=1)


@contextmanager
def _eval_mode(encoder: Encoder) -> Iterator[None]:
    was_training = encoder.training
    encoder.eval()
    try:
        yield
    finally:
        encoder.train(was_training)


def encode(
    encoder: Encoder,
    images: np.ndarray | Tensor,
    *,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    preprocess: bool | Preprocessing = True,
    amp: bool = True,
) -> np.ndarray:
    """Embed images.

    Parameters
    ----------
    encoder : Encoder
        Any encoder (e.g. from :func:`~lenscat.models.checkpoint.load_encoder`).
    images : ndarray or Tensor, shape (N, C, H, W)
        Nanomaggy cutouts (``preprocess=True``) or network-ready input (``preprocess=False``).
    batch_size : int
        Images per forward pass.
    device : str or torch.device
        Where to compute (see :func:`best_device`).
    preprocess : bool or Preprocessing
        ``True``: apply ``encoder.preprocessing``; a :class:`Preprocessing`: apply that one;
        ``False``: feed ``images`` as they are.
    amp : bool
        Autocast on CUDA (ignored on the CPU).

    Returns
    -------
    ndarray, shape (N, feature_dim), float32
        Unit-length rows (an all-zero feature vector stays zero).
    """
    if batch_size < 1:
        raise LenscatError(f"batch_size must be positive, got {batch_size}")
    run = _Runner(encoder, device, preprocess, amp)
    run.check(tuple(images.shape))
    n = int(images.shape[0])
    out = np.empty((n, encoder.feature_dim), dtype=np.float32)
    with _eval_mode(encoder):
        for start in range(0, n, batch_size):
            stop = min(n, start + batch_size)
            vec = run.embed(run.to_device(images[start:stop]))
            out[start:stop] = vec.cpu().numpy()
    return out


def iter_encode(
    encoder: Encoder,
    source: ImageSource,
    indices: np.ndarray | Sequence[int],
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    *,
    preprocess: bool | Preprocessing = True,
    amp: bool = True,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Stream embeddings of ``source`` images batch by batch.

    Parameters
    ----------
    encoder : Encoder
        The encoder.
    source : ImageSource
        Where images are read (``source.get(batch_indices)``), one batch ahead on a thread.
    indices : array of int
        Which images, in the order they are yielded.
    batch_size : int
        Images per batch.
    device : str or torch.device
        Where to compute.
    preprocess : bool or Preprocessing
        As in :func:`encode`.
    amp : bool
        Autocast on CUDA.

    Yields
    ------
    indices : ndarray of int64, shape (b,)
        The batch's indices.
    vectors : ndarray of float32, shape (b, feature_dim)
        Their unit-length embeddings.
    """
    if batch_size < 1:
        raise LenscatError(f"batch_size must be positive, got {batch_size}")
    idx = np.asarray(indices, dtype=np.int64).reshape(-1)
    run = _Runner(encoder, device, preprocess, amp)
    batches = (idx[s : s + batch_size] for s in range(0, len(idx), batch_size))
    with _eval_mode(encoder):
        for bidx, images, _ in prefetch(source, batches):
            run.check(tuple(images.shape))
            yield bidx, run.embed(run.to_device(images)).cpu().numpy()
