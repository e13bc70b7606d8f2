"""The MoCo v2 training loop (:func:`train_moco`) of the self-supervised encoders.

SGD (momentum 0.9, weight decay 1e-4) with a per-step cosine decay, Stein et al.'s augmentations
(:class:`~lenscat.models.augment.Augmenter`) on the device, bfloat16 (or float16 + gradient scaling)
autocast on CUDA, resumable training state, and Ctrl-C handling (:class:`_SigintStop`, shared with
:mod:`lenscat.models.supervised_train`); the model and its settings are :mod:`lenscat.models.moco`.
"""

from __future__ import annotations

import copy
import math
import signal
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from lenscat.errors import LenscatError
from lenscat.models import trainstate
from lenscat.models.augment import Augmenter
from lenscat.models.data import ImageSource, prefetch
from lenscat.models.device import resolve_device
from lenscat.models.moco import MoCo, StepInfo, TrainResult, split_hparams
from lenscat.models.resnet import build_encoder

__all__ = ["train_moco"]

_resolve_device = resolve_device  # the one resolver (lenscat.models.device)


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
        Encoder options plus the training options of :data:`~lenscat.models.moco.MOCO_DEFAULTS` (``augment`` and
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
        Called with a :class:`~lenscat.models.moco.StepInfo` every ``log_every`` steps, at the end of every epoch and
        after the last step; returning ``True`` stops training after that step.
    state_dir : str or Path, optional
        Make the run resumable: the full training state (both encoders and heads, the queue,
        optimiser, gradient scaler, data order and augmentation generators, losses) is saved to
        ``state_dir/moco-<run key>.state`` at every epoch end, every ``state_every_s`` seconds
        and when training stops early (Ctrl-C, a callback); a later call with the same
        arguments, data and ``run_tag`` continues from it. On the CPU the resumed run is
        bit-identical to an uninterrupted one. The file is left in place when training completes
        (:attr:`~lenscat.models.moco.TrainResult.state_path`); delete it once the result is safely stored.
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
