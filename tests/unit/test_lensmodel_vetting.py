"""Model-based vetting rules on constructed cases."""

from __future__ import annotations

import numpy as np
import pytest

from lenscat.modelling.vetting import VetRules, arc_check, physical_flags, vet

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
