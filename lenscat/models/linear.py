"""Logistic regression on embeddings (the linear probe of Stein et al. 2022), pure PyTorch.

Full-batch training with L-BFGS on binary cross-entropy (or focal loss), optionally with class
weights. After every epoch (one L-BFGS step of ``iters_per_epoch`` iterations) the model is scored
on a validation set at a realistic lens:non-lens ratio and the epoch that puts the most lenses in
the validation top N is kept, as Stein et al. choose their epoch.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from lenscat.errors import InvalidParameter, LenscatError

LOSSES = ("bce", "focal")
CLASS_WEIGHTS = ("none", "balanced")


@dataclass
class LinearFit:
    """A trained linear probe and how it got there."""

    weight: np.ndarray  # (dim,) float32
    bias: float
    epoch: int  # the epoch kept (1-based)
    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0
    device: str = "cpu"

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Lens probabilities in [0, 1] (float32) of (n, dim) embeddings."""
        return predict_linear(self.weight, self.bias, x)


def predict_linear(weight: np.ndarray, bias: float, x: np.ndarray) -> np.ndarray:
    """sigmoid(x @ w + b), float32, computed in float64 so tiny and huge logits stay ordered."""
    z = np.asarray(x, dtype=np.float64) @ np.asarray(weight, dtype=np.float64) + float(bias)
    return (1.0 / (1.0 + np.exp(-np.clip(z, -80, 80)))).astype(np.float32)


def _loss(logits: Tensor, y: Tensor, *, loss: str, gamma: float, pos_weight: float) -> Tensor:
    w = torch.where(y > 0.5, torch.full_like(y, pos_weight), torch.ones_like(y))
    if loss == "bce":
        per = torch.nn.functional.binary_cross_entropy_with_logits(logits, y, reduction="none")
    else:  # focal loss (Lin et al. 2017): down-weights the easy, abundant negatives
        logp = torch.nn.functional.logsigmoid(logits)
        log1mp = torch.nn.functional.logsigmoid(-logits)
        p_t = torch.where(y > 0.5, logp.exp(), log1mp.exp())
        per = -torch.where(y > 0.5, logp, log1mp) * (1.0 - p_t).pow(gamma)
    return (w * per).sum() / w.sum()


def top_n_hits(scores: np.ndarray, labels: np.ndarray, n: int) -> int:
    """Lenses among the ``n`` highest scores (ties broken by index)."""
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")[:n]
    return int(np.asarray(labels)[order].sum())


def train_linear(
    x: np.ndarray,
    y: np.ndarray,
    *,
    x_val: np.ndarray | None = None,
    y_val: np.ndarray | None = None,
    epochs: int = 30,
    iters_per_epoch: int = 5,
    l2: float = 1e-4,
    loss: str = "bce",
    focal_gamma: float = 2.0,
    class_weight: str = "none",
    top_n: int | None = None,
    device: str = "cpu",
    seed: int = 0,
    progress: bool = False,
    standardize: bool = True,
) -> LinearFit:
    """Fit logistic regression with full-batch L-BFGS.

    Parameters
    ----------
    x, y
        (n, dim) embeddings and 0/1 labels of the training set.
    x_val, y_val
        Validation set (ideally at the survey's real lens fraction) used to choose the epoch;
        without it the last epoch is kept.
    epochs
        L-BFGS steps; each runs ``iters_per_epoch`` iterations with a strong-Wolfe line search.
    l2
        L2 penalty on the weights (not the bias), per training example.
    loss
        ``'bce'`` or ``'focal'`` (with ``focal_gamma``).
    class_weight
        ``'none'`` or ``'balanced'`` (lenses weighted by n_neg / n_pos).
    top_n
        N of the validation top-N criterion (default: the number of validation lenses).
    device, seed, progress
        Torch device; seed of the weight initialisation; a progress bar over epochs.
    standardize
        Fit on features scaled to zero mean and unit variance over the training set (better
        conditioned L-BFGS, and the L2 penalty treats every dimension alike); the returned weight
        and bias are folded back so they apply to the raw embeddings.
    """
    if loss not in LOSSES:
        raise LenscatError(f"unknown loss {loss!r}; expected one of {', '.join(LOSSES)}")
    if class_weight not in CLASS_WEIGHTS:
        raise LenscatError(f"unknown class weighting {class_weight!r}; expected one of {', '.join(CLASS_WEIGHTS)}")
    xa = np.asarray(x, dtype=np.float32)
    ya = np.asarray(y, dtype=np.float32).ravel()
    if xa.ndim != 2 or len(xa) != len(ya):
        raise LenscatError(f"training data must be (n, dim) with n labels, got {xa.shape} and {ya.shape}")
    n_pos = int(ya.sum())
    if n_pos == 0 or n_pos == len(ya):
        raise LenscatError(f"training set needs lenses and non-lenses, got {n_pos} lenses of {len(ya)}")
    t0 = time.perf_counter()
    mu = xa.mean(axis=0) if standardize else np.zeros(xa.shape[1], np.float32)
    sd = xa.std(axis=0) + 1e-6 if standardize else np.ones(xa.shape[1], np.float32)
    xa = (xa - mu) / sd

    def to_raw(wz: np.ndarray, bz: float) -> tuple[np.ndarray, float]:
        w_raw = (wz / sd).astype(np.float32)
        return w_raw, float(bz - np.dot(w_raw.astype(np.float64), mu))

    dev = torch.device(device)
    gen = torch.Generator().manual_seed(seed)
    xt, yt = torch.from_numpy(xa).to(dev), torch.from_numpy(ya).to(dev)
    w = (torch.randn(xa.shape[1], generator=gen) * 0.01).to(dev).requires_grad_(True)
    b = torch.tensor([float(np.log(n_pos / (len(ya) - n_pos)))], device=dev, requires_grad=True)
    pos_weight = (len(ya) - n_pos) / n_pos if class_weight == "balanced" else 1.0
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=iters_per_epoch, history_size=20, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad()
        obj = _loss(xt @ w + b, yt, loss=loss, gamma=focal_gamma, pos_weight=pos_weight) + l2 * (w * w).sum()
        obj.backward()
        return obj

    has_val = x_val is not None and y_val is not None and len(y_val) > 0 and float(np.sum(y_val)) > 0
    n_top = int(top_n or (int(np.sum(y_val)) if has_val and y_val is not None else 0))
    best: tuple[int, float] | None = None
    best_state: tuple[np.ndarray, float, int] = (*to_raw(w.detach().cpu().numpy(), float(b.item())), 0)
    history: list[dict[str, float]] = []
    for epoch in tqdm(range(1, epochs + 1), desc="L-BFGS", unit="epoch", disable=not progress):
        train_loss = float(opt.step(closure).detach())
        if not np.isfinite(train_loss):
            raise InvalidParameter("l2", f"training diverged at epoch {epoch} (loss {train_loss}); try a larger {{l2}}")
        wn, bn = to_raw(w.detach().cpu().numpy().astype(np.float32), float(b.item()))
        rec: dict[str, float] = {"epoch": float(epoch), "train_loss": train_loss}
        if has_val and x_val is not None and y_val is not None:
            p = predict_linear(wn, bn, x_val)
            yv = np.asarray(y_val, dtype=np.float64)
            eps = 1e-7
            val_loss = float(-np.mean(yv * np.log(p + eps) + (1 - yv) * np.log(1 - p + eps)))
            hits = top_n_hits(p, yv, n_top)
            rec.update(val_loss=val_loss, val_top_n_hits=float(hits))
            key = (hits, -val_loss)
            if best is None or key > best:
                best, best_state = key, (wn.copy(), bn, epoch)
        else:
            best_state = (wn.copy(), bn, epoch)
        history.append(rec)
    weight, bias, kept = best_state
    return LinearFit(
        weight=weight, bias=bias, epoch=kept, history=history, seconds=time.perf_counter() - t0, device=str(dev)
    )


def state_dict(fit: LinearFit, **extra: Any) -> dict[str, Any]:
    """Checkpoint contents: tensors and plain values only (loadable with ``weights_only=True``)."""
    return {
        "arch": "linear",
        "weight": torch.from_numpy(np.ascontiguousarray(fit.weight)),
        "bias": torch.tensor(fit.bias, dtype=torch.float64),
        "epoch": fit.epoch,
        **extra,
    }
