"""Model-based vetting rules on constructed cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lenscat.errors import InvalidParameter
from lenscat.modelling.modeller import input_preprocessing, read_checkpoint, write_checkpoint
from lenscat.modelling.training import LensTrainOptions, is_lens, probability_metrics
from lenscat.modelling.vetting import VetRules, arc_check, physical_flags, vet
from lenscat.models.lensmodel import (
    LensModelNet,
    gaussian_nll,
    lens_bce,
    lens_probability,
    masked_gaussian_nll,
    predict_with_logit,
)
from lenscat.models.lensmodel_train import (
    LensTrainResult,
    completeness_threshold,
    fit_temperature,
    state_of,
    train_lensmodel,
)

S = 0.262
N = 48


def _window(ring: bool, seed: int = 0, theta: float = 1.5) -> np.ndarray:
    """A red galaxy (g, r, z) plus, with ``ring``, a blue Einstein ring of radius ``theta``; sky noise."""
    rng = np.random.default_rng(seed)
    i, j = np.mgrid[0:N, 0:N]
    r = np.hypot(i - N // 2, j - N // 2) * S
    gal = np.exp(-0.5 * (r / 0.8) ** 2)
    img = np.stack([0.3 * gal, 1.0 * gal, 2.0 * gal])
    if ring:
        arc = np.exp(-0.5 * ((r - theta) / 0.3) ** 2)
        img += np.stack([0.12 * arc, 0.1 * arc, 0.08 * arc])
    return img + rng.normal(0, [[[0.0024]], [[0.0034]], [[0.0099]]], img.shape)


def _mu(theta: float = 1.5, e1: float = 0.0, g1: float = 0.0, sx: float = 0.05) -> np.ndarray:
    return np.array([theta, e1, 0.0, g1, 0.0, 0.0, 0.0, sx, 0.0])


SIG = np.array([0.1, 0.05, 0.05, 0.02, 0.02, 0.05, 0.05, 0.1, 0.1])


def test_a_model_that_matches_its_ring_passes():
    v = vet(_window(True), _mu(), SIG)
    assert v.flags == []
    assert v.detail["arc_snr"] > 10 and v.arc_band == "g"
    # the ring's g flux: 0.12 nmgy per pixel at the peak; the magnitude is that of the light at the images
    assert v.arc_mag is not None and 15 < v.arc_mag < 22


def test_no_arc_where_the_model_puts_images():
    flags, detail, arc_mag = arc_check(_window(False), _mu(), VetRules())
    assert "no_arc_at_images" in flags and detail["arc_snr"] < 3


def test_arc_light_elsewhere_when_the_source_is_misplaced():
    # a source well off-centre: the model's images cover one side of the ring only, and the
    # residual there is no brighter than the rest of the ring (the ring is uniform)...
    flags, detail, _ = arc_check(_window(True, theta=2.4), _mu(theta=1.0, sx=0.0), VetRules())
    assert "arc_light_elsewhere" in flags or "no_arc_at_images" in flags


@pytest.mark.parametrize(
    ("mu", "sig", "flag"),
    [
        (_mu(theta=0.4), SIG, "theta_e_below_psf"),
        (_mu(theta=6.0), SIG, "theta_e_beyond_cutout"),
        (_mu(e1=0.8), SIG, "axis_ratio_low"),
        (_mu(g1=0.4), SIG, "shear_high"),
        (_mu(sx=3.0), SIG, "source_outside_caustic"),
        (_mu(), SIG * np.array([10, 1, 1, 1, 1, 1, 1, 1, 1]), "uncertain"),
    ],
)
def test_physical_rules(mu, sig, flag):
    flags, detail = physical_flags(mu, sig, N, VetRules())
    assert flags == [flag]
    assert set(detail) >= {"theta_e", "q", "gamma_ext", "source_offset"}


def test_physical_model_passes_and_uncertain_source_is_not_outside():
    assert physical_flags(_mu(), SIG, N, VetRules())[0] == []
    # 2 sigma of the source position reaches inside the caustic: not flagged as outside
    flags, _ = physical_flags(_mu(sx=2.2), SIG * np.array([1, 1, 1, 1, 1, 1, 1, 4, 4]), N, VetRules())
    assert "source_outside_caustic" not in flags


@pytest.mark.parametrize("simulator", ["default", "independent"])
def test_true_sky_frame_parameters_find_the_simulated_arcs(simulator):
    """The training and evaluation truth is in the sky frame: the arc check with the true model finds the
    arcs of (nearly) every simulated lens, and the same numbers read in the pixel frame miss many."""
    from lenscat.modelling.evaluation import independent_lens_set
    from lenscat.modelling.frames import SKY_SIGN
    from lenscat.modelling.training_set import simulate_lens_set

    make = simulate_lens_set if simulator == "default" else independent_lens_set
    data = make(16, seed=5)
    right = [arc_check(w, t, VetRules()) for w, t in zip(data.images, data.targets, strict=True)]
    wrong = [arc_check(w, t * SKY_SIGN, VetRules()) for w, t in zip(data.images, data.targets, strict=True)]
    assert sum(bool(f) for f, _, _ in right) <= 1
    assert np.median([d["arc_snr"] for _, d, _ in right]) > 1.5 * np.median([d["arc_snr"] for _, d, _ in wrong])


# --- the lens probability: head, cross-entropy, calibration, threshold, the vetting flag, the PSF ---


def test_lens_probability_flag_names_the_probability():
    rules = VetRules(min_lens_probability=0.3)
    low = vet(_window(True), _mu(), SIG, rules=rules, lens_probability=0.1)
    assert "low_lens_probability" in low.flags
    assert low.detail["lens_probability"] == pytest.approx(0.1) and low.detail["lens_probability_threshold"] == 0.3
    high = vet(_window(True), _mu(), SIG, rules=rules, lens_probability=0.9)
    assert high.flags == [] and high.detail["lens_probability"] == pytest.approx(0.9)
    # a version without the head (no probability) or rules without a threshold: no flag
    assert vet(_window(True), _mu(), SIG, rules=rules).flags == []
    assert vet(_window(True), _mu(), SIG, lens_probability=0.01).flags == []


def test_the_cutouts_own_psf_replaces_the_default():
    # theta_E = 0.8": resolved under the default 1.3" PSF (0.8 > 0.65), not under a 2" one
    v = vet(_window(True, theta=0.8), _mu(theta=0.8), SIG)
    assert "theta_e_below_psf" not in v.flags and v.detail["psf_fwhm"] == 1.3
    assert v.detail["psf_fwhm_source"] == "default"
    v2 = vet(_window(True, theta=0.8), _mu(theta=0.8), SIG, psf_fwhm=2.0)
    assert "theta_e_below_psf" in v2.flags and v2.detail["psf_fwhm"] == 2.0
    assert v2.detail["psf_fwhm_source"] == "cutout"
    # not finite or not positive: the default
    assert vet(_window(True), _mu(), SIG, psf_fwhm=float("nan")).detail["psf_fwhm"] == 1.3
    assert vet(_window(True), _mu(), SIG, psf_fwhm=0.0).detail["psf_fwhm_source"] == "default"


def test_the_arc_annulus_widens_with_the_psf():
    # light just outside 1.5 theta_E + 0.5": inside the annulus only with a broader PSF
    narrow = arc_check(_window(True), _mu(), VetRules(psf_fwhm=0.8))[1]
    broad = arc_check(_window(True), _mu(), VetRules(psf_fwhm=2.5))[1]
    assert broad["arc_pixels"] >= narrow["arc_pixels"]


def test_head_outputs_and_old_configs_load():
    old = LensModelNet(3, 16, 4)
    assert "lens_head" not in old.config() and old.outputs(torch.zeros(2, 3, 16, 16))[2] is None
    # an old member's config and weights load as before
    again = LensModelNet(**old.config())
    again.load_state_dict(old.state_dict())
    new = LensModelNet(3, 16, 4, lens_head=True)
    mu, ls, logit = new.outputs(torch.zeros(2, 3, 16, 16))
    assert mu.shape == (2, 9) and ls.shape == (2, 9) and logit is not None and logit.shape == (2,)
    assert LensModelNet(**new.config()).lens_head
    assert len(new(torch.zeros(2, 3, 16, 16))) == 2  # forward keeps its (mu, log sigma) signature


def test_nonlens_rows_add_no_likelihood_and_no_nan_gradient():
    mu = torch.zeros(4, 9, requires_grad=True)
    ls = torch.zeros(4, 9, requires_grad=True)
    y = torch.ones(4, 9)
    y[2:] = float("nan")
    mask = torch.tensor([True, True, False, False])
    loss = masked_gaussian_nll(mu, ls, y, mask)
    assert torch.allclose(loss, gaussian_nll(mu[:2], ls[:2], y[:2]))
    loss.sum().backward()
    assert mu.grad is not None and torch.isfinite(mu.grad).all() and (mu.grad[2:] == 0).all()
    assert float(lens_bce(torch.zeros(3), torch.tensor([1, 0, 1]))) == pytest.approx(np.log(2.0))


def test_temperature_scaling_recovers_an_overconfident_logit():
    rng = np.random.default_rng(1)
    z = rng.normal(0.0, 2.0, 20000)
    y = rng.uniform(size=z.size) < lens_probability(z)  # calibrated at T = 1
    t = fit_temperature(3.0 * z, y)  # the same scores, three times overconfident
    assert t == pytest.approx(3.0, rel=0.05)
    assert lens_probability(np.array([0.0]))[0] == pytest.approx(0.5)
    with pytest.raises(ValueError):
        fit_temperature(z, np.ones(z.size, bool))


def test_threshold_loses_at_most_the_allowed_lenses():
    p = np.random.default_rng(2).uniform(size=1000)
    for loss in (0.0, 0.02, 0.1):
        t = completeness_threshold(p, loss)
        assert (p < t).mean() <= loss
        # the largest such threshold: the next value up loses more
        above = np.sort(p)[np.searchsorted(np.sort(p), t) + 1]
        assert (p < above).mean() > loss
    with pytest.raises(ValueError):
        completeness_threshold(p, 1.0)


def test_training_with_impostors_learns_to_say_no_lens():
    """Rings (lenses, with targets) against smooth blobs (NaN targets): the head separates held-out ones."""
    torch.set_num_threads(1)
    rng = np.random.default_rng(3)
    i, j = np.mgrid[0:16, 0:16]
    r = np.hypot(i - 8, j - 8)

    def make(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        lens = np.arange(n) % 2 == 0
        theta = rng.uniform(3.0, 6.0, n)
        blob = np.exp(-0.5 * (r / 2.0) ** 2)
        x = np.stack(
            [blob + (np.exp(-0.5 * ((r - t) / 0.7) ** 2) if k else 0.0) for t, k in zip(theta, lens, strict=True)]
        )
        x = (x[:, None] * np.ones((1, 3, 1, 1)) + rng.normal(0, 0.1, (n, 3, 16, 16))).astype(np.float32)
        y = np.zeros((n, 9))
        y[:, 0] = theta * S
        y[~lens] = np.nan
        return x, y, lens

    xt, yt, lt = make(512)
    xv, yv, lv = make(64)
    res = train_lensmodel(xt, yt, xv, yv, epochs=4, width=4, batch_size=32, is_lens_train=lt, is_lens_val=lv)
    net = res.members[0]
    assert net.lens_head and "val_bce" in res.history[-1]
    xe, ye, le = make(200)
    mu, sig, logit = predict_with_logit(res.members, xe)
    assert logit is not None and np.isfinite(mu).all() and np.isfinite(sig).all()
    assert probability_metrics(lens_probability(logit), le, 0.5)["auc"] > 0.9
    # the likelihood saw the lenses only: their standardisation is that of the lenses' theta_E
    assert float(net.target_mean[0]) == pytest.approx(float(np.mean(yt[lt, 0])), rel=1e-5)
    with pytest.raises(ValueError, match="lenses and non-lenses"):
        train_lensmodel(xt, yt, xv, yv, epochs=1, width=4, is_lens_train=np.ones(len(xt), bool))


def test_checkpoints_carry_the_probability_and_old_ones_have_none(tmp_path):
    pre = input_preprocessing(16, True).to_dict()
    torch.manual_seed(0)
    images = np.abs(np.random.default_rng(4).normal(0, 0.05, (3, 3, 20, 20))).astype(np.float32)
    old = tmp_path / "old.pt"
    write_checkpoint(old, state_of(LensTrainResult([LensModelNet(5, 16, 4)])), pre, np.ones(9), True)
    m_old = read_checkpoint(old)
    mu, sig, p = m_old.predict_with_lens_probability(images[:, :, 2:18, 2:18])
    assert p is None and m_old.lens_probability is None and mu.shape == (3, 9)
    new = tmp_path / "new.pt"
    state = {
        **state_of(LensTrainResult([LensModelNet(5, 16, 4, lens_head=True)])),
        "lens_probability": {"temperature": 2.0, "threshold": 0.25},
    }
    write_checkpoint(new, state, pre, np.ones(9), True)
    m_new = read_checkpoint(new)
    mu2, sig2, p2 = m_new.predict_with_lens_probability(images[:, :, 2:18, 2:18])
    assert p2 is not None and p2.shape == (3,) and ((p2 > 0) & (p2 < 1)).all()
    assert m_new.lens_probability == {"temperature": 2.0, "threshold": 0.25}
    assert np.allclose(m_new.predict(images[:, :, 2:18, 2:18])[0], mu2)


def test_options_and_probability_metrics():
    with pytest.raises(InvalidParameter):
        LensTrainOptions(nonlens_ratio=-1).check()
    with pytest.raises(InvalidParameter):
        LensTrainOptions(max_lens_loss=0.7).check()
    assert is_lens(np.array(["lens", "injection", "host", "ring"], dtype=object)).tolist() == [True, True, False, False]
    m = probability_metrics(np.array([0.9, 0.8, 0.1, 0.85]), np.array([True, True, False, False]), 0.5)
    assert m["lenses_kept"] == 1.0 and m["nonlenses_flagged"] == 0.5 and m["auc"] == pytest.approx(0.75)
