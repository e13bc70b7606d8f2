"""The linear probe (logistic regression, full-batch L-BFGS) without a database."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lenscat.errors import LenscatError
from lenscat.models.linear import predict_linear, state_dict, top_n_hits, train_linear


def _data(n=4000, n_pos=40, dim=16, shift=2.0, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, dim)).astype(np.float32)
    y = np.zeros(n, np.float32)
    y[rng.choice(n, n_pos, replace=False)] = 1
    x[y > 0, 0] += shift
    return x, y


def _auc(s, y):
    pos, neg = s[y > 0], s[y == 0]
    return float(((pos[:, None] > neg[None]) + 0.5 * (pos[:, None] == neg[None])).mean())


def test_learns_the_lens_direction_and_matches_sklearn_style_optimum():
    x, y = _data()
    fit = train_linear(x, y, epochs=10, l2=0.0)
    assert fit.weight.shape == (16,) and np.argmax(np.abs(fit.weight)) == 0 and fit.weight[0] > 0
    xt, yt = _data(seed=1)
    assert _auc(fit.predict(xt), yt) > 0.9
    # at the optimum the gradient of the mean BCE vanishes: mean(p - y) = 0 and X^T (p - y) = 0
    p = fit.predict(x).astype(np.float64)
    assert abs(np.mean(p - y)) < 1e-3 and np.abs(x.T @ (p - y) / len(y)).max() < 1e-3
    # deterministic for a seed
    again = train_linear(x, y, epochs=10, l2=0.0)
    np.testing.assert_array_equal(fit.weight, again.weight)


def test_validation_picks_the_epoch_with_most_lenses_in_the_top_n():
    x, y = _data(seed=2)
    xv, yv = _data(n=20000, n_pos=20, seed=3)
    fit = train_linear(x, y, x_val=xv, y_val=yv, epochs=8, iters_per_epoch=2)
    hits = [h["val_top_n_hits"] for h in fit.history]
    assert len(hits) == 8 and hits[fit.epoch - 1] == max(hits)
    assert top_n_hits(fit.predict(xv), yv, 20) == max(hits)


@pytest.mark.parametrize("loss,cw", [("focal", "none"), ("bce", "balanced"), ("focal", "balanced")])
def test_loss_options_train(loss, cw):
    x, y = _data(seed=4)
    fit = train_linear(x, y, epochs=5, loss=loss, class_weight=cw)
    assert np.isfinite(fit.weight).all() and _auc(fit.predict(x), y) > 0.9
    if cw == "balanced":  # lenses weigh as much as all non-lenses: scores centre near 0.5
        assert float(np.mean(fit.predict(x)[y > 0])) > 0.2 and float(np.mean(fit.predict(x))) > float(y.mean())


def test_predictions_are_probabilities_even_for_huge_logits():
    p = predict_linear(np.array([1e6], np.float32), 0.0, np.array([[-1.0], [0.0], [1.0]], np.float32))
    assert p.dtype == np.float32 and 0 <= p[0] < 1e-30 and p[1] == 0.5 and p[2] == 1.0


def test_bad_input_is_refused():
    x, y = _data()
    with pytest.raises(LenscatError, match="needs lenses and non-lenses"):
        train_linear(x, np.zeros(len(x)))
    with pytest.raises(LenscatError, match="must be \\(n, dim\\)"):
        train_linear(x[:, 0], y)
    with pytest.raises(LenscatError, match="unknown loss"):
        train_linear(x, y, loss="hinge")
    with pytest.raises(LenscatError, match="unknown class weighting"):
        train_linear(x, y, class_weight="auto")


def test_state_dict_loads_with_weights_only(tmp_path):
    x, y = _data()
    fit = train_linear(x, y, epochs=2)
    torch.save(state_dict(fit, encoder_id=3, train_ids=torch.arange(5)), tmp_path / "c.pt")
    ck = torch.load(tmp_path / "c.pt", weights_only=True)
    assert ck["arch"] == "linear" and ck["encoder_id"] == 3
    np.testing.assert_allclose(predict_linear(ck["weight"].numpy(), float(ck["bias"]), x), fit.predict(x))
