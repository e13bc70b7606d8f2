"""Training loop of the lens modelling network (:func:`train_lensmodel`), a small deep ensemble.

Each member is a :class:`~lenscat.models.lensmodel.LensModelNet` trained from its own seed on the
same preprocessed crops: AdamW with a cosine decay, random turns and flips of every batch
(:func:`~lenscat.models.lensmodel.dihedral`, which transforms the targets with the images), a
warm-up of ``warmup_epochs`` on the mean squared error of the means (the log σ head is not
trained yet, so the likelihood does not start by inflating σ), then the Gaussian negative
log-likelihood of all nine parameters. The member's weights at its best validation NLL are kept.

With ``is_lens`` labels (lenses and non-lens impostors), the network gets the lens-logit head:
the likelihood (and the warm-up's squared error) is computed on the lenses only, and
``bce_weight`` times the binary cross-entropy of the logit on every crop is added; the best epoch
is then that of the lowest sum of the two on the validation crops. :func:`fit_temperature` and
:func:`completeness_threshold` calibrate the logit and choose the vetting threshold afterwards.
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

from lenscat.models.lensmodel import N_PARAMS, LensModelNet, dihedral, lens_bce, masked_gaussian_nll

__all__ = ["LensTrainResult", "completeness_threshold", "fit_temperature", "train_lensmodel"]


@dataclass
class LensTrainResult:
    """Trained members and their history."""

    members: list[LensModelNet]
    history: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0


def _cosine(total: int) -> Any:
    """Learning-rate factor of step ``s``: a cosine from 1 to 0 over ``total`` steps."""
    return lambda s: 0.5 * (1 + math.cos(math.pi * min(s / total, 1.0)))


def _loss(
    net: LensModelNet, xb: Tensor, yb: Tensor, lb: Tensor, *, mse: bool, bce_weight: float
) -> tuple[Tensor, Tensor, Tensor]:
    """(total, NLL or MSE summed over parameters, BCE) of one batch; lens rows only for the first."""
    mu, log_sigma, logit = net.outputs(xb)
    ys = net.standardise(yb)
    if mse:
        # non-lens rows (NaN targets) get the prediction itself: no loss, and no NaN in the gradient
        ys = torch.where(torch.isfinite(ys), ys, mu.detach())
        m = lb.to(mu.dtype)[:, None]
        reg = (((mu - ys) ** 2) * m).sum(dim=0) / torch.clamp(m.sum(), min=1.0)
    else:
        reg = masked_gaussian_nll(mu, log_sigma, ys, lb)
    bce = lens_bce(logit, lb) if logit is not None else torch.zeros((), device=xb.device)
    return reg.mean() + bce_weight * bce, reg.sum(), bce


def _val_nll(
    net: LensModelNet, x: Tensor, y: Tensor, lens: Tensor, bce_weight: float, batch: int = 512
) -> tuple[float, float]:
    """Validation NLL (summed over parameters, mean over lenses) and BCE (mean over crops)."""
    net.eval()
    nll, bce, n_lens = 0.0, 0.0, 0
    with torch.no_grad():
        for i in range(0, len(x), batch):
            lb = lens[i : i + batch]
            _, reg, b = _loss(net, x[i : i + batch], y[i : i + batch], lb, mse=False, bce_weight=bce_weight)
            k = int(lb.sum())
            nll += float(reg) * k
            bce += float(b) * len(lb)
            n_lens += k
    return nll / max(n_lens, 1), bce / max(len(x), 1)


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
    is_lens_train: np.ndarray | None = None,
    is_lens_val: np.ndarray | None = None,
    bce_weight: float = 1.0,
) -> LensTrainResult:
    """Train ``members`` networks on preprocessed crops and physical sky-frame targets.

    Parameters
    ----------
    x_train, x_val : ndarray, shape (N, C, S, S)
        Preprocessed crops (float32).
    y_train, y_val : ndarray, shape (N, 9)
        Targets in :data:`~lenscat.models.lensmodel.PARAMS` order, physical units (NaN rows for
        non-lenses).
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
    is_lens_train, is_lens_val : ndarray of bool, optional
        Which crops are lenses. Given, the networks get the lens-logit head (trained with the binary
        cross-entropy on all crops; the likelihood on lenses only); default: every crop is a lens, no head.
    bce_weight : float
        Weight of the cross-entropy in the loss (with ``is_lens_train``).

    Returns
    -------
    LensTrainResult
    """
    if len(x_train) < batch_size:
        raise ValueError(f"{len(x_train)} training crops are fewer than one batch of {batch_size}")
    if x_train.shape[-1] != x_train.shape[-2]:
        raise ValueError("crops must be square")
    t0 = time.perf_counter()
    head = is_lens_train is not None
    lens_tr = np.ones(len(x_train), bool) if is_lens_train is None else np.asarray(is_lens_train, dtype=bool)
    lens_va = np.ones(len(x_val), bool) if is_lens_val is None else np.asarray(is_lens_val, dtype=bool)
    if head and (lens_tr.all() or not lens_tr.any()):
        raise ValueError("a lens-probability head needs lenses and non-lenses in the training set")
    yt = np.asarray(y_train, dtype=np.float64)[lens_tr]
    if not np.isfinite(yt).all():
        raise ValueError("every lens needs finite targets")
    mean = yt.mean(axis=0)
    std = np.maximum(yt.std(axis=0), 1e-3)
    xt = torch.from_numpy(np.ascontiguousarray(x_train, dtype=np.float32)).to(device)
    ytt = torch.from_numpy(np.asarray(y_train, dtype=np.float32)).to(device)
    xv = torch.from_numpy(np.ascontiguousarray(x_val, dtype=np.float32)).to(device)
    yv = torch.from_numpy(np.asarray(y_val, dtype=np.float32)).to(device)
    lt = torch.from_numpy(lens_tr).to(device)
    lv = torch.from_numpy(lens_va).to(device)
    out: list[LensModelNet] = []
    history: list[dict[str, Any]] = []
    steps_per_epoch = len(xt) // batch_size
    for k in range(members):
        torch.manual_seed(seed + 1000 * k)
        gen = np.random.default_rng(seed + 1000 * k)
        net = LensModelNet(
            xt.shape[1], xt.shape[-1], width, target_mean=mean.tolist(), target_std=std.tolist(), lens_head=head
        ).to(device)
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
                loss, _, _ = _loss(net, xb, yb, lt[idx], mse=epoch < warmup_epochs, bce_weight=bce_weight)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(net.parameters(), 5.0)
                opt.step()
                sched.step()
                run += float(loss.detach())
            val, val_bce = _val_nll(net, xv, yv, lv, bce_weight) if len(xv) else (math.nan, math.nan)
            score = val / N_PARAMS + bce_weight * val_bce if head else val
            if epoch >= warmup_epochs and score < best:
                best, best_state = score, copy.deepcopy(net.state_dict())
            rec = {"member": k, "epoch": epoch + 1, "train_loss": run / steps_per_epoch, "val_nll": val}
            if head:
                rec["val_bce"] = val_bce
            history.append(rec)
            if progress:
                more = f" BCE {val_bce:.3f}" if head else ""
                print(
                    f"member {k} epoch {epoch + 1}/{epochs}: train {rec['train_loss']:.3f} val NLL {val:.3f}{more}",
                    flush=True,
                )
        if math.isfinite(best):
            net.load_state_dict(best_state)
        out.append(net.eval().cpu())
    return LensTrainResult(out, history, time.perf_counter() - t0)


def fit_temperature(logit: np.ndarray, is_lens: np.ndarray) -> float:
    """Temperature ``T`` minimising the binary cross-entropy of ``sigmoid(logit / T)`` on held-out data.

    Guo et al. (2017)'s temperature scaling with one parameter: it changes the probabilities, not
    their order. A grid of ``log T`` over [-3, 3] refined around its best point (the loss is
    convex in ``1 / T``).

    Raises
    ------
    ValueError
        Empty input, or only one class present.
    """
    z = np.asarray(logit, dtype=np.float64)
    y = np.asarray(is_lens, dtype=np.float64)
    if z.shape != y.shape or not len(z):
        raise ValueError("logit and is_lens must be non-empty arrays of the same shape")
    if y.min() == y.max():
        raise ValueError("temperature scaling needs lenses and non-lenses")

    def loss(log_t: float) -> float:
        a = z / math.exp(log_t)
        # softplus(a) - y a = -log sigmoid(a) for y = 1, -log(1 - sigmoid(a)) for y = 0
        return float(np.mean(np.logaddexp(0.0, a) - y * a))

    grid = np.linspace(-3.0, 3.0, 121)
    best = float(grid[int(np.argmin([loss(g) for g in grid]))])
    fine = np.linspace(best - 0.05, best + 0.05, 41)
    return math.exp(float(fine[int(np.argmin([loss(g) for g in fine]))]))


def completeness_threshold(p_lens: np.ndarray, max_loss: float) -> float:
    """The largest threshold ``t`` with at most ``max_loss`` of the lenses' probabilities below it.

    ``p_lens`` are held-out lenses' probabilities; flagging ``p < t`` then loses at most that fraction
    of them (ties at ``t`` are kept).

    Raises
    ------
    ValueError
        No probabilities, or ``max_loss`` outside [0, 1).
    """
    p = np.sort(np.asarray(p_lens, dtype=np.float64))
    if not len(p):
        raise ValueError("p_lens must not be empty")
    if not 0.0 <= max_loss < 1.0:
        raise ValueError(f"max_loss must be in [0, 1), got {max_loss}")
    return float(p[int(math.floor(max_loss * len(p)))])


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
