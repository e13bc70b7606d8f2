"""Training loop of the lens modelling network (:func:`train_lensmodel`), a small deep ensemble.

Each member is a :class:`~lenscat.models.lensmodel.LensModelNet` trained from its own seed on the
same preprocessed crops: AdamW with a cosine decay, random turns and flips of every batch
(:func:`~lenscat.models.lensmodel.dihedral`, which transforms the targets with the images), a
warm-up of ``warmup_epochs`` on the mean squared error of the means (the log σ head is not
trained yet, so the likelihood does not start by inflating σ), then the Gaussian negative
log-likelihood of all nine parameters. The member's weights at its best validation NLL are kept.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from lenscat.models.lensmodel import LensModelNet, dihedral, gaussian_nll

__all__ = ["LensTrainResult", "train_lensmodel"]


@dataclass
class LensTrainResult:
    """Trained members and their history."""

    members: list[LensModelNet]
    history: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0


def _cosine(total: int) -> Any:
    """Learning-rate factor of step ``s``: a cosine from 1 to 0 over ``total`` steps."""
    return lambda s: 0.5 * (1 + math.cos(math.pi * min(s / total, 1.0)))


def _val_nll(net: LensModelNet, x: Tensor, y: Tensor, batch: int = 512) -> float:
    net.eval()
    tot = torch.zeros(())
    with torch.no_grad():
        for i in range(0, len(x), batch):
            mu, ls = net(x[i : i + batch])
            tot += gaussian_nll(mu, ls, net.standardise(y[i : i + batch])).sum() * len(mu)
    return float(tot) / max(len(x), 1)


def train_lensmodel(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    *,
    members: int = 1,
    epochs: int = 20,
    warmup_epochs: int = 2,
    batch_size: int = 64,
    lr: float = 2e-3,
    weight_decay: float = 1e-4,
    width: int = 16,
    seed: int = 0,
    augment: bool = True,
    device: str = "cpu",
    progress: bool = False,
    sample_weights: np.ndarray | None = None,
) -> LensTrainResult:
    """Train ``members`` networks on preprocessed crops and physical sky-frame targets.

    Parameters
    ----------
    x_train, x_val : ndarray, shape (N, C, S, S)
        Preprocessed crops (float32).
    y_train, y_val : ndarray, shape (N, 9)
        Targets in :data:`~lenscat.models.lensmodel.PARAMS` order, physical units.
    members : int
        Ensemble size.
    epochs, warmup_epochs : int
        Passes over the training set; the first ``warmup_epochs`` train the means on MSE only.
    batch_size, lr, weight_decay, width : see :class:`LensModelNet` and AdamW.
    seed : int
        Member ``k`` uses ``seed + 1000 k`` (initialisation, batch order, augmentations).
    augment : bool
        Random turns and flips of each batch.
    device : str
    progress : bool
        Print one line per epoch.
    sample_weights : ndarray, shape (N_train,), optional
        Draw each epoch's batches with replacement, with probabilities proportional to these
        (e.g. to flatten the prior of θ_E); default: every crop once per epoch.

    Returns
    -------
    LensTrainResult
    """
    if len(x_train) < batch_size:
        raise ValueError(f"{len(x_train)} training crops are fewer than one batch of {batch_size}")
    if x_train.shape[-1] != x_train.shape[-2]:
        raise ValueError("crops must be square")
    t0 = time.perf_counter()
    yt = np.asarray(y_train, dtype=np.float64)
    mean = yt.mean(axis=0)
    std = np.maximum(yt.std(axis=0), 1e-3)
    xt = torch.from_numpy(np.ascontiguousarray(x_train, dtype=np.float32)).to(device)
    ytt = torch.from_numpy(np.asarray(y_train, dtype=np.float32)).to(device)
    xv = torch.from_numpy(np.ascontiguousarray(x_val, dtype=np.float32)).to(device)
    yv = torch.from_numpy(np.asarray(y_val, dtype=np.float32)).to(device)
    out: list[LensModelNet] = []
    history: list[dict[str, Any]] = []
    steps_per_epoch = len(xt) // batch_size
    for k in range(members):
        torch.manual_seed(seed + 1000 * k)
        gen = np.random.default_rng(seed + 1000 * k)
        net = LensModelNet(xt.shape[1], xt.shape[-1], width, target_mean=mean.tolist(), target_std=std.tolist()).to(
            device
        )
        opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay)
        total = max(epochs * steps_per_epoch, 1)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, _cosine(total))
        best, best_state = math.inf, copy.deepcopy(net.state_dict())
        for epoch in range(epochs):
            net.train()
            if sample_weights is None:
                order = torch.from_numpy(gen.permutation(len(xt))).to(device)
            else:
                p = np.asarray(sample_weights, dtype=np.float64)
                order = torch.from_numpy(gen.choice(len(xt), len(xt), p=p / p.sum())).to(device)
            run = 0.0
            for s in range(steps_per_epoch):
                idx = order[s * batch_size : (s + 1) * batch_size]
                xb, yb = xt[idx], ytt[idx]
                if augment:
                    xb, yb = dihedral(xb, yb, int(gen.integers(8)))
                mu, log_sigma = net(xb)
                ys = net.standardise(yb)
                if epoch < warmup_epochs:
                    loss = ((mu - ys) ** 2).mean()
                else:
                    loss = gaussian_nll(mu, log_sigma, ys).mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(net.parameters(), 5.0)
                opt.step()
                sched.step()
                run += float(loss.detach())
            val = _val_nll(net, xv, yv) if len(xv) else math.nan
            if epoch >= warmup_epochs and val < best:
                best, best_state = val, copy.deepcopy(net.state_dict())
            rec = {"member": k, "epoch": epoch + 1, "train_loss": run / steps_per_epoch, "val_nll": val}
            history.append(rec)
            if progress:
                print(
                    f"member {k} epoch {epoch + 1}/{epochs}: train {rec['train_loss']:.3f} val NLL {val:.3f}",
                    flush=True,
                )
        if math.isfinite(best):
            net.load_state_dict(best_state)
        out.append(net.eval().cpu())
    return LensTrainResult(out, history, time.perf_counter() - t0)


def state_of(result: LensTrainResult) -> dict[str, Any]:
    """The members' configurations and weights (``torch.save``-able with ``weights_only``)."""
    return {"members": [{"config": m.config(), "state": m.state_dict()} for m in result.members]}


def members_from(state: dict[str, Any]) -> list[LensModelNet]:
    """Networks from :func:`state_of` output (evaluation mode, on the CPU)."""
    nets = []
    for item in state["members"]:
        net = LensModelNet(**item["config"])
        net.load_state_dict(item["state"])
        nets.append(net.eval())
    return nets
