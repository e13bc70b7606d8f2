"""MoCo-v2 self-supervised training (He et al. 2020; Chen et al. 2020; as used by Stein et al.).

A query encoder (backbone + 2-layer MLP head ``fc = Linear(D, H), ReLU, Linear(H, proj_dim)``,
L2-normalised output) is trained with InfoNCE to pick, among the momentum (EMA) key encoder's
embedding of another augmented view of the same image and a queue of ``K`` earlier keys, the
positive one. Single device, no shuffle-BN (the key batch is encoded as one BatchNorm batch).

:func:`~lenscat.models.moco_train.train_moco` runs the loop: SGD (momentum 0.9, weight decay 1e-4) with a per-step
cosine learning-rate schedule (optional linear warm-up), two views per image from
:class:`~lenscat.models.augment.Augmenter`, bfloat16 (or float16 + gradient scaling) autocast
and channels-last memory on CUDA only, a background thread reading the next batch, and a tqdm
bar showing the loss and images/s. It returns the trained *query backbone* (without head).

Determinism: on the CPU, a given seed, data and thread count give bit-identical results (model
initialisation, data order and augmentations are all seeded; the global RNG is left untouched).

Interruption: the first Ctrl-C (SIGINT, when training runs in the main thread) finishes the
current step and returns the result so far with ``stop_reason='interrupted'``; a second Ctrl-C
raises :class:`KeyboardInterrupt` at once and nothing is returned. A ``callback`` returning
``True`` stops the same clean way (``stop_reason='callback'``) and can also save checkpoints.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lenscat.errors import LenscatError
from lenscat.models.augment import AugmentConfig
from lenscat.models.preprocess import Preprocessing
from lenscat.models.resnet import Encoder

__all__ = ["MOCO_DEFAULTS", "MoCo", "StepInfo", "TrainResult", "split_hparams"]

MOCO_DEFAULTS: dict[str, Any] = {
    "proj_dim": 128,  # output of the MLP head
    "proj_hidden": None,  # hidden width of the head; None: the backbone's output_dim
    "queue_size": 65536,  # K, capped to max(B, min(K, N) // B * B)
    "moco_momentum": 0.999,  # key encoder EMA
    "temperature": 0.2,  # InfoNCE temperature
    "weight_decay": 1e-4,
    "sgd_momentum": 0.9,
    "warmup_steps": 0,  # linear LR warm-up steps before the cosine decay
    "amp": True,  # autocast on CUDA (ignored on CPU)
    "log_every": 10,  # steps between progress/callback updates (each one syncs with the GPU)
    "augment": None,  # AugmentConfig fields (dict) or None for Stein et al.'s defaults
    "preprocess": None,  # Preprocessing fields (dict) or None for the defaults
}
"""Training options accepted in ``train_moco(hparams=...)`` besides the encoder's own."""


def split_hparams(
    arch: str, hparams: Mapping[str, Any] | None
) -> tuple[dict[str, Any], dict[str, Any], AugmentConfig, Preprocessing]:
    """Split a combined hyper-parameter dict into encoder, MoCo, augmentation and preprocessing.

    Parameters
    ----------
    arch : str
        Architecture name (only used in error messages).
    hparams : mapping or None
        Keys of :data:`MOCO_DEFAULTS` are training options; every other key is passed to
        :func:`~lenscat.models.resnet.build_encoder`.

    Returns
    -------
    encoder_hparams, moco, augment, preprocessing
        ``moco`` is :data:`MOCO_DEFAULTS` updated with the given values (without ``augment`` and
        ``preprocess``).
    """
    given = dict(hparams or {})
    moco = {k: given.pop(k, v) for k, v in MOCO_DEFAULTS.items()}
    augment = AugmentConfig.from_dict(moco.pop("augment"))
    pre = Preprocessing.from_dict(moco.pop("preprocess"))
    return given, moco, augment, pre


class MoCo(nn.Module):
    """Query/key encoders with MLP heads and the queue of negative keys.

    Parameters
    ----------
    backbone : Encoder
        The query backbone; the key backbone is a frozen deep copy.
    proj_dim : int
        Embedding size of the heads.
    proj_hidden : int or None
        Hidden width of the heads (``None``: ``backbone.output_dim``).
    queue_size : int
        Number of negative keys ``K``.
    momentum : float
        EMA coefficient ``m`` of the key encoder (``k <- m k + (1 - m) q``).
    temperature : float
        InfoNCE temperature.
    generator : torch.Generator, optional
        CPU generator for the random initial queue.
    """

    queue: Tensor

    def __init__(
        self,
        backbone: Encoder,
        *,
        proj_dim: int = 128,
        proj_hidden: int | None = None,
        queue_size: int = 65536,
        momentum: float = 0.999,
        temperature: float = 0.2,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if not 0.0 <= momentum < 1.0:
            raise LenscatError(f"moco_momentum must be in [0, 1), got {momentum}")
        if temperature <= 0:
            raise LenscatError(f"temperature must be positive, got {temperature}")
        hidden = int(proj_hidden or backbone.output_dim)
        self.backbone_q = backbone
        self.fc_q = nn.Sequential(
            nn.Linear(backbone.output_dim, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, proj_dim),
        )
        self.backbone_k = copy.deepcopy(backbone)
        self.fc_k = copy.deepcopy(self.fc_q)
        for p in list(self.backbone_k.parameters()) + list(self.fc_k.parameters()):
            p.requires_grad_(False)
        self.momentum = float(momentum)
        self.temperature = float(temperature)
        queue = torch.randn(queue_size, proj_dim, generator=generator)
        self.register_buffer("queue", F.normalize(queue, dim=1))
        self._ptr = 0  # host-side: the batch size is fixed, so no device sync is needed

    def query_parameters(self) -> list[Tensor]:
        """Trainable parameters (query backbone and head)."""
        return [*self.backbone_q.parameters(), *self.fc_q.parameters()]

    @torch.no_grad()
    def momentum_update(self) -> None:
        """``key <- m * key + (1 - m) * query`` for every parameter."""
        q = self.query_parameters()
        k: list[Tensor] = [*self.backbone_k.parameters(), *self.fc_k.parameters()]
        torch._foreach_lerp_(k, q, 1.0 - self.momentum)

    @torch.no_grad()
    def enqueue(self, keys: Tensor) -> None:
        """Replace the oldest ``len(keys)`` queue entries by ``keys``."""
        n = keys.shape[0]
        size = self.queue.shape[0]
        if size % n:
            raise LenscatError(f"queue size {size} is not a multiple of the batch size {n}")
        self.queue[self._ptr : self._ptr + n] = keys.to(self.queue.dtype)
        self._ptr = (self._ptr + n) % size

    def forward(self, x_q: Tensor, x_k: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """InfoNCE loss of one step (call :meth:`enqueue` with the keys after ``backward``).

        Returns
        -------
        loss : Tensor
            Scalar cross-entropy, float32.
        top1 : Tensor
            Fraction of queries whose positive key scores highest.
        keys : Tensor, shape (B, proj_dim)
            Normalised key embeddings.
        """
        q = F.normalize(self.fc_q(self.backbone_q(x_q)).float(), dim=1)
        with torch.no_grad():
            self.momentum_update()
            k = F.normalize(self.fc_k(self.backbone_k(x_k)).float(), dim=1)
        with torch.autocast(q.device.type, enabled=False):  # logits in float32
            l_pos = (q * k).sum(dim=1, keepdim=True)
            l_neg = q @ self.queue.t()
            logits = torch.cat([l_pos, l_neg], dim=1) / self.temperature
        labels = torch.zeros(q.shape[0], dtype=torch.long, device=q.device)
        loss = F.cross_entropy(logits, labels)
        top1 = (logits.argmax(dim=1) == 0).float().mean()
        return loss, top1.detach(), k


@dataclass
class StepInfo:
    """What a training ``callback`` receives.

    Attributes
    ----------
    step : int
        Optimiser steps done so far.
    total_steps : int
        Planned number of steps.
    epoch : int
        Current epoch (0-based).
    epoch_end : bool
        This step ended an epoch.
    loss : float
        Mean loss since the previous call.
    lr : float
        Learning rate of the last step.
    images_per_s : float
        Source images per second since training started.
    elapsed_s : float
        Seconds since training started.
    encoder : Encoder
        The query backbone being trained (training mode, on the training device); to save a
        checkpoint use :func:`lenscat.models.checkpoint.save_encoder` with ``arch`` and
        ``encoder_hparams``.
    """

    step: int
    total_steps: int
    epoch: int
    epoch_end: bool
    loss: float
    lr: float
    images_per_s: float
    elapsed_s: float
    encoder: Encoder


@dataclass
class TrainResult:
    """Outcome of :func:`~lenscat.models.moco_train.train_moco`.

    Attributes
    ----------
    encoder : Encoder
        The trained query backbone (no head), on the CPU, in eval mode, with ``preprocessing``
        set to the training preprocessing.
    arch : str
        Architecture name.
    encoder_hparams : dict
        ``build_encoder(arch, **encoder_hparams)`` rebuilds the architecture.
    hparams : dict
        Everything that defined the run: encoder and MoCo options, augmentation and
        preprocessing dicts, epochs, batch size, lr, seed, device, effective queue size, number
        of images, steps.
    history : list of float
        Loss per optimiser step.
    top1 : list of float
        Per step, the fraction of queries whose positive key ranked first.
    elapsed_s : float
        Wall-clock seconds of the training loop.
    steps : int
        Optimiser steps done.
    images_per_s : float
        Source images (pairs of views) per second.
    stop_reason : str
        ``'completed'``, ``'max_steps'``, ``'interrupted'`` (Ctrl-C) or ``'callback'``.
    resumed_from_step : int
        Steps restored from a saved state (0 for a fresh run).
    state_path : Path or None
        The saved training state of a resumable run (``state_dir`` given).
    """

    encoder: Encoder
    arch: str
    encoder_hparams: dict[str, Any]
    hparams: dict[str, Any]
    history: list[float] = field(default_factory=list)
    top1: list[float] = field(default_factory=list)
    elapsed_s: float = 0.0
    steps: int = 0
    images_per_s: float = 0.0
    stop_reason: str = "completed"
    resumed_from_step: int = 0
    state_path: Path | None = None

    @property
    def preprocessing(self) -> Preprocessing:
        """The preprocessing the encoder was trained with."""
        return self.encoder.preprocessing

    def save(self, path: str | Path, *, extra: Mapping[str, Any] | None = None) -> str:
        """Save the encoder with :func:`~lenscat.models.checkpoint.save_encoder`; returns sha256.

        ``extra`` defaults to the training record (hparams, final loss, steps, elapsed time).
        """
        from lenscat.models.checkpoint import save_encoder

        if extra is None:
            extra = {
                "training": self.hparams,
                "final_loss": float(np.mean(self.history[-10:])) if self.history else None,
                "steps": self.steps,
                "elapsed_s": self.elapsed_s,
                "stop_reason": self.stop_reason,
            }
        return save_encoder(self.encoder, path, arch=self.arch, hparams=self.encoder_hparams, extra=extra)
