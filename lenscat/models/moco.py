"""MoCo-v2 self-supervised training (He et al. 2020; Chen et al. 2020; as used by Stein et al.).

A query encoder (backbone + 2-layer MLP head ``fc = Linear(D, H), ReLU, Linear(H, proj_dim)``,
L2-normalised output) is trained with InfoNCE to pick, among the momentum (EMA) key encoder's
embedding of another augmented view of the same image and a queue of ``K`` earlier keys, the
positive one. Single device, no shuffle-BN (the key batch is encoded as one BatchNorm batch).

:func:`train_moco` runs the loop: SGD (momentum 0.9, weight decay 1e-4) with a per-step cosine
learning-rate schedule (optional linear warm-up), two views per image from
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
import math
import signal
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from lenscat.errors import LenscatError
from lenscat.models import trainstate
from lenscat.models.augment import AugmentConfig, Augmenter
from lenscat.models.data import ImageSource, prefetch
from lenscat.models.preprocess import Preprocessing
from lenscat.models.resnet import Encoder, build_encoder

__all__ = ["MOCO_DEFAULTS", "MoCo", "StepInfo", "TrainResult", "split_hparams", "train_moco"]

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
    """Outcome of :func:`train_moco`.

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


def _resolve_device(device: str | torch.device) -> torch.device:
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise LenscatError("device 'cuda' requested but no CUDA device is available")
    return dev


class _SigintStop:
    """First SIGINT sets ``requested``; the second raises KeyboardInterrupt (main thread only)."""

    def __init__(self) -> None:
        self.requested = False
        self._prev: Any = None
        self._installed = False

    def _handler(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self) -> _SigintStop:
        if threading.current_thread() is threading.main_thread():
            self._prev = signal.signal(signal.SIGINT, self._handler)
            self._installed = True
        return self

    def __exit__(self, *exc: object) -> None:
        if self._installed:
            signal.signal(signal.SIGINT, self._prev)


def train_moco(
    images_source: ImageSource,
    *,
    arch: str = "resnet-small",
    hparams: Mapping[str, Any] | None = None,
    epochs: int = 1,
    batch_size: int = 128,
    lr: float = 0.03,
    device: str | torch.device = "cpu",
    seed: int = 0,
    progress: bool = True,
    max_steps: int | None = None,
    callback: Callable[[StepInfo], bool | None] | None = None,
    state_dir: str | Path | None = None,
    state_every_s: float = 600.0,
    run_tag: str = "",
    resume: bool = True,
) -> TrainResult:
    """Train an encoder with MoCo-v2 on cutouts.

    Parameters
    ----------
    images_source : ImageSource
        ``len(source)`` images; ``source.get(indices)`` returns ``(B, C, H, W)`` float32
        nanomaggies (pre-crop, e.g. 152x152); an optional ``source.ebv(indices)`` gives each
        object's ``E(B-V)`` for the reddening augmentation.
    arch : str
        Encoder architecture (:func:`~lenscat.models.resnet.build_encoder`).
    hparams : mapping, optional
        Encoder options plus the training options of :data:`MOCO_DEFAULTS` (``augment`` and
        ``preprocess`` take dicts of :class:`AugmentConfig` / :class:`Preprocessing` fields).
    epochs : int
        Passes over the data; each epoch is ``len(source) // batch_size`` steps in a new random
        order (the remainder is skipped).
    batch_size : int
        Images per step (each gives two views).
    lr : float
        Peak learning rate (MoCo-v2: 0.03 for batch 256).
    device : str or torch.device
        ``'cpu'`` or ``'cuda[:n]'``.
    seed : int
        Seeds initialisation, data order, augmentations and the initial queue.
    progress : bool
        Show a tqdm bar on stderr.
    max_steps : int, optional
        Stop after this many steps (the cosine schedule spans ``min(epochs * steps_per_epoch,
        max_steps)``).
    callback : callable, optional
        Called with a :class:`StepInfo` every ``log_every`` steps, at the end of every epoch and
        after the last step; returning ``True`` stops training after that step.
    state_dir : str or Path, optional
        Make the run resumable: the full training state (both encoders and heads, the queue,
        optimiser, gradient scaler, data order and augmentation generators, losses) is saved to
        ``state_dir/moco-<run key>.state`` at every epoch end, every ``state_every_s`` seconds
        and when training stops early (Ctrl-C, a callback); a later call with the same
        arguments, data and ``run_tag`` continues from it. On the CPU the resumed run is
        bit-identical to an uninterrupted one. The file is left in place when training completes
        (:attr:`TrainResult.state_path`); delete it once the result is safely stored.
    state_every_s : float
        Seconds between periodic state saves (checked at progress updates).
    run_tag : str
        Extra text that identifies the run in the key, e.g. a hash of the training set.
    resume : bool
        Continue from a saved state of this run; ``False`` discards it and starts over.

    Returns
    -------
    TrainResult

    Raises
    ------
    LenscatError
        Bad options, fewer images than ``batch_size``, or a non-finite loss (divergence).
    """
    dev = _resolve_device(device)
    n = len(images_source)
    if batch_size < 2:
        raise LenscatError(f"batch_size must be at least 2, got {batch_size}")
    if n < batch_size:
        raise LenscatError(f"training needs at least batch_size={batch_size} images, got {n}")
    if epochs < 1:
        raise LenscatError(f"epochs must be at least 1, got {epochs}")
    if max_steps is not None and max_steps < 1:
        raise LenscatError(f"max_steps must be at least 1, got {max_steps}")
    if not lr > 0:
        raise LenscatError(f"lr must be positive, got {lr}")
    enc_hp, mo, aug_cfg, pre = split_hparams(arch, hparams)
    steps_per_epoch = n // batch_size
    total = epochs * steps_per_epoch
    if max_steps is not None:
        total = min(total, int(max_steps))
    queue_size = max(batch_size, min(int(mo["queue_size"]), n) // batch_size * batch_size)
    log_every = max(1, int(mo["log_every"]))
    warmup = max(0, int(mo["warmup_steps"]))
    cuda = dev.type == "cuda"

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        backbone = build_encoder(arch, **enc_hp)
        model = MoCo(
            backbone,
            proj_dim=int(mo["proj_dim"]),
            proj_hidden=mo["proj_hidden"],
            queue_size=queue_size,
            momentum=float(mo["moco_momentum"]),
            temperature=float(mo["temperature"]),
            generator=torch.Generator().manual_seed(seed + 1),
        )
    model.to(dev)
    if cuda:
        model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    model.train()
    augmenter = Augmenter(aug_cfg, pre)
    gen = torch.Generator(device=dev).manual_seed(seed + 2)
    rng = np.random.default_rng(seed)
    opt = torch.optim.SGD(
        model.query_parameters(),
        lr=lr,
        momentum=float(mo["sgd_momentum"]),
        weight_decay=float(mo["weight_decay"]),
    )
    amp = bool(mo["amp"]) and cuda
    amp_dtype = torch.bfloat16 if cuda and torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=amp and amp_dtype == torch.float16)
    with_ebv = aug_cfg.reddening and hasattr(images_source, "ebv")

    def lr_at(step: int) -> float:
        if step < warmup:
            return lr * (step + 1) / warmup
        span = max(1, total - warmup)
        return 0.5 * lr * (1.0 + math.cos(math.pi * (step - warmup) / span))

    def to_device(a: np.ndarray) -> Tensor:
        t = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))
        return t.pin_memory().to(dev, non_blocking=True) if cuda else t

    losses = torch.zeros(total, device=dev)
    top1s = torch.zeros(total, device=dev)
    hp_record: dict[str, Any] = {
        **backbone.hparams,
        **{k: v for k, v in mo.items()},
        "augment": aug_cfg.to_dict(),
        "preprocess": pre.to_dict(),
        "arch": arch,
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
        "seed": seed,
        "device": str(dev),
        "queue_size_effective": queue_size,
        "n_images": n,
        "steps_planned": total,
        "amp_dtype": str(amp_dtype).removeprefix("torch.") if amp else None,
    }
    step = 0
    elapsed_before = 0.0
    run_key, state_path, saved = trainstate.saved_run(
        state_dir, "moco", {**hp_record, "max_steps": max_steps, "run_tag": run_tag}, resume=resume
    )
    if saved is not None:
        step, elapsed_before = _restore(saved, model, opt, scaler, gen, rng, losses, top1s)
    step0 = step
    epoch_rng: dict[int, Any] = {}

    def save_state() -> None:
        assert state_path is not None
        elapsed_now = elapsed_before + time.perf_counter() - t0
        epoch_next = step // steps_per_epoch
        trainstate.write_state(
            state_path,
            {
                "key": run_key,
                "step": step,
                "model": model.state_dict(),
                "ptr": model._ptr,
                "opt": opt.state_dict(),
                "scaler": scaler.state_dict() if scaler.is_enabled() else None,
                "gen": gen.get_state(),
                # the data order of the epoch of the next step (its permutation may be drawn already)
                "epoch_rng": epoch_rng.get(epoch_next, rng.bit_generator.state),
                "losses": losses[:step].cpu(),
                "top1s": top1s[:step].cpu(),
                "elapsed_s": elapsed_now,
            },
        )

    def batches():
        first_epoch, skip = divmod(step0, steps_per_epoch)
        for epoch in range(first_epoch, epochs):
            epoch_rng[epoch] = copy.deepcopy(rng.bit_generator.state)
            order = rng.permutation(n)
            for s in range(skip if epoch == first_epoch else 0, steps_per_epoch):
                yield order[s * batch_size : (s + 1) * batch_size]

    last_log = step
    last_save = time.perf_counter()
    stop_reason = "completed"
    bar = tqdm(total=total, initial=step, disable=not progress, unit="step", desc=f"moco {arch}", leave=True)
    t0 = time.perf_counter()
    data = prefetch(images_source, batches(), with_ebv=with_ebv)
    try:
        with _SigintStop() as sigint:
            for _idx, images_np, ebv_np in data:
                if step >= total:
                    break
                cur_lr = lr_at(step)
                for group in opt.param_groups:
                    group["lr"] = cur_lr
                x = to_device(images_np)
                ebv = None if ebv_np is None else to_device(ebv_np)
                with torch.no_grad():
                    v1 = augmenter(x, ebv, generator=gen)
                    v2 = augmenter(x, ebv, generator=gen)
                if cuda:
                    v1 = v1.contiguous(memory_format=torch.channels_last)
                    v2 = v2.contiguous(memory_format=torch.channels_last)
                with torch.autocast(dev.type, dtype=amp_dtype, enabled=amp):
                    loss, top1, keys = model(v1, v2)
                opt.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
                model.enqueue(keys)
                losses[step] = loss.detach()
                top1s[step] = top1
                step += 1
                bar.update(1)
                epoch = (step - 1) // steps_per_epoch
                epoch_end = step % steps_per_epoch == 0
                if step % log_every == 0 or epoch_end or step == total:
                    recent = float(losses[last_log:step].mean())
                    last_log = step
                    if not math.isfinite(recent):
                        raise LenscatError(
                            f"MoCo training diverged (non-finite loss) by step {step}; lower the learning rate"
                        )
                    elapsed = time.perf_counter() - t0
                    ips = (step - step0) * batch_size / max(elapsed, 1e-9)
                    bar.set_postfix(loss=f"{recent:.3f}", img_s=f"{ips:.0f}", lr=f"{cur_lr:.3g}")
                    if callback is not None:
                        info = StepInfo(
                            step=step,
                            total_steps=total,
                            epoch=epoch,
                            epoch_end=epoch_end,
                            loss=recent,
                            lr=cur_lr,
                            images_per_s=ips,
                            elapsed_s=elapsed,
                            encoder=model.backbone_q,
                        )
                        if callback(info):
                            stop_reason = "callback"
                            break
                if sigint.requested:
                    stop_reason = "interrupted"
                    break
                if step >= total:
                    break
                if state_path is not None and (epoch_end or time.perf_counter() - last_save > state_every_s):
                    save_state()
                    last_save = time.perf_counter()
    finally:
        data.close()
        bar.close()
    if state_path is not None and stop_reason in ("interrupted", "callback"):
        save_state()
    if stop_reason == "completed" and step < epochs * steps_per_epoch:
        stop_reason = "max_steps"
    if cuda:
        torch.cuda.synchronize(dev)
    elapsed = elapsed_before + time.perf_counter() - t0
    encoder = model.backbone_q
    encoder.to(device="cpu", memory_format=torch.contiguous_format)  # type: ignore[call-overload]
    encoder.eval()
    encoder.preprocessing = pre
    hp_record["steps"] = step
    return TrainResult(
        encoder=encoder,
        arch=arch,
        encoder_hparams=dict(backbone.hparams),
        hparams=hp_record,
        history=losses[:step].tolist(),
        top1=top1s[:step].tolist(),
        elapsed_s=elapsed,
        steps=step,
        images_per_s=step * batch_size / max(elapsed, 1e-9),
        stop_reason=stop_reason,
        resumed_from_step=step0,
        state_path=state_path,
    )


def _restore(
    st: dict[str, Any],
    model: MoCo,
    opt: torch.optim.Optimizer,
    scaler: Any,
    gen: torch.Generator,
    rng: np.random.Generator,
    losses: Tensor,
    top1s: Tensor,
) -> tuple[int, float]:
    """Put a saved MoCo training state back in place; returns (step, seconds already trained)."""
    model.load_state_dict(st["model"])
    model._ptr = int(st["ptr"])
    opt.load_state_dict(st["opt"])
    if st["scaler"] and scaler.is_enabled():
        scaler.load_state_dict(st["scaler"])
    gen.set_state(st["gen"])
    rng.bit_generator.state = st["epoch_rng"]
    step = int(st["step"])
    losses[:step] = st["losses"].to(losses.device)
    top1s[:step] = st["top1s"].to(top1s.device)
    return step, float(st["elapsed_s"])
