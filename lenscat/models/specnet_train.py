"""Training of :class:`~lenscat.models.specnet.SpecResNet`: the focal and position losses, :func:`train_specnet`."""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm import tqdm

from lenscat.errors import LenscatError
from lenscat.models import trainstate
from lenscat.models.device import resolve_device
from lenscat.models.metrics import completeness_at_fpr, roc_auc
from lenscat.models.specnet import SpecResNet
from lenscat.models.specnet_inference import _amp_dtype, predict
from lenscat.models.specnet_inputs import PixelMask, _training_arrays

__all__ = ["focal_loss", "specnet_loss", "train_specnet"]


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
    pixel_mask: PixelMask | None = None,
) -> tuple[SpecResNet, dict[str, Any]]:
    """Train a :class:`SpecResNet` on (synthetic) spectra.

    Parameters
    ----------
    train_arrays, val_arrays : mapping or object with attributes
        ``labels`` (N,) 0/1 and either ``inputs`` (N, 3, P) from
        :func:`~lenscat.models.specnet_inputs.prepare_inputs` or ``flux``, ``ivar``, ``continuum``
        (N, P) and ``z`` (N,) (optionally ``wave``); optional ``line_pixel`` (N,) (peak pixel of the
        line, -1 for none) for the position loss. A :class:`~lenscat.spectra.synth.SyntheticSet` works
        as is (with ``pixel_mask``).
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
    pixel_mask : callable, optional
        Pixels to mask when the input is built here from ``flux`` ... ``z``
        (:func:`~lenscat.models.specnet_inputs.prepare_inputs`; the detector's is
        :func:`lenscat.spectra.masks.specnet_pixel_mask`); unused with ``inputs``.

    Returns
    -------
    model : SpecResNet
        On the CPU, in eval mode: the weights after the epoch with the best validation
        completeness at ``fpr`` (ties: AUC); the last epoch without validation data.
    history : dict
        Per epoch ``loss``, ``focal``, ``position`` (training means) and, with validation,
        ``val_auc``, ``val_completeness``, ``val_threshold``, ``val_loc_within_3px`` (fraction of
        detected validation lines located within 3 px); ``best_epoch`` (1-based), ``seconds``,
        ``spectra_per_s``, ``hparams`` (the training record, for
        :func:`~lenscat.models.specnet.save_specnet`).
    """
    if epochs < 1:
        raise LenscatError(f"epochs must be at least 1, got {epochs}")
    if batch_size < 2:
        raise LenscatError(f"batch_size must be at least 2, got {batch_size}")
    if not lr > 0:
        raise LenscatError(f"lr must be positive, got {lr}")
    x, y, lpix = _training_arrays(train_arrays, "train_arrays", wave, pixel_mask)
    n = len(y)
    if n < batch_size:
        raise LenscatError(f"{n} training spectra for batch_size {batch_size}")
    val: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
    if val_arrays is not None:
        val = _training_arrays(val_arrays, "val_arrays", wave, pixel_mask)
    dev = resolve_device(device)
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
