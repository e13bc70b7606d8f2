"""The 1-D ResNet Lyα line finder (lenscat.models.specnet*; after Li et al. 2018)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from lenscat.errors import InputFileError, LenscatError
from lenscat.models.metrics import completeness_at_fpr, roc_auc
from lenscat.models.specnet import SpecResNet, flops_per_spectrum, load_specnet, save_specnet
from lenscat.models.specnet_inference import predict
from lenscat.models.specnet_inputs import prepare_inputs
from lenscat.models.specnet_train import focal_loss, specnet_loss, train_specnet
from lenscat.spectra.grid import WINDOW
from lenscat.spectra.masks import galaxy_line_masks, galaxy_lines, line_mask, sky_line_mask, specnet_pixel_mask
from lenscat.spectra.synth_training import make_training_set

TINY = {"widths": [8, 16, 16], "kernels": [5, 5, 3], "head_width": 16}
BRIGHT = {"peak_range": (6.0, 30.0)}


@pytest.fixture(scope="module")
def trained(one_torch_thread):
    tr = make_training_set(2000, seed=1, positive_fraction=0.2, line_priors=BRIGHT, keep_truth=False)
    va = make_training_set(600, seed=2, positive_fraction=0.2, line_priors=BRIGHT, keep_truth=False)
    model, hist = train_specnet(
        tr,
        va,
        epochs=4,
        batch_size=64,
        lr=3e-3,
        config=TINY,
        seed=0,
        device="cpu",
        progress=False,
        pixel_mask=specnet_pixel_mask,
    )
    xva = prepare_inputs(va.flux, va.ivar, va.continuum, va.z, pixel_mask=specnet_pixel_mask)
    return model, hist, va, xva


def test_prepare_inputs_channels():
    s = make_training_set(40, seed=3)
    x = prepare_inputs(s.flux, s.ivar, s.continuum, s.z, pixel_mask=specnet_pixel_mask)
    assert x.shape == (40, 3, WINDOW.n) and x.dtype == np.float32
    gal = galaxy_line_masks(WINDOW.wave, s.z)
    masked = (s.ivar == 0) | gal | sky_line_mask(WINDOW.wave)[None, :]
    assert np.array_equal(x[:, 2] == 0, masked)
    assert np.all(x[:, :2][np.broadcast_to(masked[:, None], x[:, :2].shape)] == 0)
    good = ~masked
    snr = (s.flux - s.continuum) * np.sqrt(s.ivar)
    assert np.allclose(x[:, 0][good], np.clip(snr[good], -10, 10), atol=1e-5)
    assert np.all(np.abs(x[:, :2]) <= 10)
    assert 0.8 < np.std(x[:, 1][good]) < 1.3  # scaled by the robust scatter
    one = prepare_inputs(s.flux[0], s.ivar[0], s.continuum[0], s.z[0], pixel_mask=specnet_pixel_mask)
    assert np.array_equal(one[0], x[0])
    with pytest.raises(LenscatError):
        prepare_inputs(s.flux, s.ivar[:3], s.continuum, s.z)


def test_galaxy_masks_match_reference():
    z = np.concatenate([np.linspace(0.0, 0.8, 300), [np.nan]])
    rest = np.array(list(galaxy_lines().values()))
    reference = np.array(
        [line_mask(WINDOW.wave, rest * (1 + zi), 600.0) if np.isfinite(zi) else np.zeros(WINDOW.n, bool) for zi in z]
    )
    assert np.array_equal(galaxy_line_masks(WINDOW.wave, z), reference)


def test_shapes_and_flops():
    m = SpecResNet()
    x = torch.zeros(5, 3, WINDOW.n)
    out = m(x)
    assert out.shape == (5, m.n_positions(WINDOW.n)) == (5, 150)
    assert SpecResNet.spectrum_logit(out).shape == (5,)
    assert m.bin_to_pixel(np.array([0, 2])).tolist() == [3.5, 19.5]
    f = flops_per_spectrum(m)
    assert 0 < f["mflop"] < 15 and f["params"] > 1000
    prob, pix = predict(m, x.numpy(), batch_size=2, device="cpu")
    assert prob.shape == (5,) and pix.shape == (5,) and pix.dtype == np.int64
    assert np.all((pix >= 0) & (pix < WINDOW.n))
    with pytest.raises(LenscatError):
        predict(m, np.zeros((2, 1, 10), np.float32))


def test_fused_equals_unfused():
    torch.manual_seed(0)
    m = SpecResNet()
    m.train()
    with torch.no_grad():  # give BatchNorm non-trivial statistics
        for _ in range(3):
            m(torch.randn(16, 3, WINDOW.n))
    x = np.random.default_rng(0).standard_normal((8, 3, WINDOW.n)).astype(np.float32)
    p1, i1 = predict(m, x, fuse=True, device="cpu")
    p2, i2 = predict(m, x, fuse=False, device="cpu")
    assert np.allclose(p1, p2, atol=1e-5) and np.array_equal(i1, i2)
    assert m.training  # predict leaves the model alone


def test_focal_loss():
    logits = torch.tensor([3.0, -2.0, 0.0, 1.0])
    t = torch.tensor([1.0, 0.0, 1.0, 0.0])
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, t, reduction="none")
    assert torch.allclose(focal_loss(logits, t, gamma=0.0, alpha=None, reduction="none"), bce)
    p_t = torch.exp(-bce)
    w = torch.where(t > 0, 0.25, 0.75)
    expect = (w * (1 - p_t) ** 2 * bce).mean()
    assert torch.allclose(focal_loss(logits, t), expect)
    pos = torch.zeros(4, 10)
    pos[0, 3] = 5.0
    total, fl, pl = specnet_loss(pos, t, torch.tensor([3, -1, 7, -1]))
    assert float(pl) > 0 and torch.allclose(total, fl + 0.1 * pl)


def test_metrics():
    y = np.array([0] * 1000 + [1] * 10)
    s = np.concatenate([np.linspace(0, 1, 1000), np.linspace(0.9995, 2, 10)])
    assert roc_auc(y, s) > 0.99
    comp, thr = completeness_at_fpr(y, s, 1e-3)
    assert thr == pytest.approx(s[998]) and comp == 1.0


def test_training_finds_and_locates_lines(trained):
    model, hist, va, xva = trained
    prob, pix = predict(model, xva, device="cpu")
    pos = va.labels == 1
    assert roc_auc(va.labels, prob) >= 0.9
    assert hist["val_auc"][hist["best_epoch"] - 1] >= 0.9
    top = pos & (prob > np.quantile(prob[~pos], 0.99))
    assert top.sum() > 0.5 * pos.sum()
    assert np.median(np.abs(pix[top] - va.line_pixel[top])) <= 2
    assert np.mean(np.abs(pix[top] - va.line_pixel[top]) <= 4) > 0.9
    assert set(hist) >= {"loss", "val_completeness", "best_epoch", "hparams", "seconds"}
    assert not model.training


def test_training_deterministic(one_torch_thread):
    tr = make_training_set(256, seed=5, positive_fraction=0.25, line_priors=BRIGHT)
    kw: dict[str, Any] = {"epochs": 1, "batch_size": 64, "config": TINY, "seed": 3, "device": "cpu", "progress": False}
    kw["pixel_mask"] = specnet_pixel_mask
    a, _ = train_specnet(tr.arrays(), **kw)
    b, _ = train_specnet(tr.arrays(), **kw)
    for (k, v), w in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(v, w), k


def test_an_interrupted_training_resumes_at_the_next_epoch(one_torch_thread, tmp_path, monkeypatch):
    """State saved after each epoch; Ctrl-C says so; the same call finishes bit-identically."""
    import lenscat.models.specnet_train as specnet_train
    from lenscat.errors import Interrupted

    tr = make_training_set(256, seed=5, positive_fraction=0.25, line_priors=BRIGHT)
    va = make_training_set(128, seed=6, positive_fraction=0.25, line_priors=BRIGHT)
    kw: dict[str, Any] = {"epochs": 3, "batch_size": 64, "config": TINY, "seed": 3, "device": "cpu", "progress": False}
    kw["pixel_mask"] = specnet_pixel_mask
    ref, ref_hist = train_specnet(tr.arrays(), va.arrays(), **kw)
    real = specnet_train.specnet_loss
    calls = []

    def ctrl_c_at(n):
        def loss(*a, **k):
            calls.append(1)
            if len(calls) == n:
                raise KeyboardInterrupt
            return real(*a, **k)

        return loss

    monkeypatch.setattr(specnet_train, "specnet_loss", ctrl_c_at(2))  # in epoch 1: nothing saved yet
    with pytest.raises(KeyboardInterrupt) as exc:
        train_specnet(tr.arrays(), va.arrays(), **kw, state_dir=tmp_path)
    assert not isinstance(exc.value, Interrupted) and not list(tmp_path.iterdir())
    calls.clear()
    monkeypatch.setattr(specnet_train, "specnet_loss", ctrl_c_at(10))  # in epoch 3 (4 steps per epoch)
    with pytest.raises(Interrupted, match="saved after epoch 2 of 3"):
        train_specnet(tr.arrays(), va.arrays(), **kw, state_dir=tmp_path)
    monkeypatch.setattr(specnet_train, "specnet_loss", real)
    model, hist = train_specnet(tr.arrays(), va.arrays(), **kw, state_dir=tmp_path)
    assert hist["resumed_from_epoch"] == 2 and hist["steps"] == 12
    assert hist["loss"] == ref_hist["loss"] and hist["val_auc"] == ref_hist["val_auc"]
    assert hist["best_epoch"] == ref_hist["best_epoch"]
    for (k, v), w in zip(ref.state_dict().items(), model.state_dict().values(), strict=True):
        assert torch.equal(v, w), k


def test_save_load_round_trip(trained, tmp_path):
    model, hist, va, xva = trained
    path = tmp_path / "spec.pt"
    sha = save_specnet(model, path, hparams=hist["hparams"])
    assert len(sha) == 64
    loaded, hp = load_specnet(path)
    assert hp["config"] == model.config and hp["best_epoch"] == hist["best_epoch"]
    p1, i1 = predict(model, xva[:200], device="cpu")
    p2, i2 = predict(loaded, xva[:200], device="cpu")
    assert np.array_equal(p1, p2) and np.array_equal(i1, i2)
    assert save_specnet(model, tmp_path / "again.pt", hparams=hist["hparams"]) == sha
    torch.save({"a": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(InputFileError):
        load_specnet(tmp_path / "other.pt")
    with pytest.raises(InputFileError):
        load_specnet(tmp_path / "missing.pt")


@pytest.mark.gpu
def test_predict_on_cuda():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    torch.manual_seed(0)
    m = SpecResNet().eval()
    x = np.random.default_rng(0).standard_normal((300, 3, WINDOW.n)).astype(np.float32)
    p_cpu, i_cpu = predict(m, x, device="cpu")
    p_gpu, i_gpu = predict(m, x, device="cuda", amp=False)
    assert np.allclose(p_cpu, p_gpu, atol=1e-4)
    assert np.mean(i_cpu == i_gpu) > 0.99
    p_amp, _ = predict(m, x, device="cuda", amp=True, batch_size=128)
    assert p_amp.shape == (300,) and np.all(np.isfinite(p_amp))
    assert next(m.parameters()).device.type == "cpu"


# --- issue 31: Li et al.'s depth as a named architecture -------------------------------------


def test_li2018_preset_shapes_flops_and_checkpoint_round_trip(tmp_path):
    from lenscat.models.specnet import ARCHITECTURES, architecture_config

    assert SpecResNet().config == {"in_channels": 3, **architecture_config("small")}
    torch.manual_seed(0)
    deep = SpecResNet(**architecture_config("li2018")).eval()
    small = SpecResNet().eval()
    assert deep.stride == small.stride == 8  # the same position head (localisation)
    x = torch.zeros(3, 3, WINDOW.n)
    assert deep(x).shape == (3, deep.n_positions(WINDOW.n)) == (3, 150)
    fd, fs = flops_per_spectrum(deep), flops_per_spectrum(small)
    assert fd["mflop"] > 2.5 * fs["mflop"] and fd["params"] > 3 * fs["params"]
    n_blocks = sum(1 for m in deep.modules() if m.__class__.__name__ == "_Block")
    assert n_blocks == sum(ARCHITECTURES["li2018"]["blocks"]) == 6
    sha = save_specnet(deep, tmp_path / "deep.pt", hparams={"arch": "li2018"})
    loaded, hp = load_specnet(tmp_path / "deep.pt")
    assert hp["arch"] == "li2018" and loaded.config == deep.config and len(sha) == 64
    xin = np.random.default_rng(0).standard_normal((40, 3, WINDOW.n)).astype(np.float32)
    p1, i1 = predict(deep, xin, device="cpu")
    p2, i2 = predict(loaded, xin, device="cpu")
    assert np.array_equal(p1, p2) and np.array_equal(i1, i2)
    with pytest.raises(LenscatError):
        architecture_config("resnet152")
