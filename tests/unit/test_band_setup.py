"""Training options that follow a survey's bands (lenscat.images.bands): no database."""

import numpy as np
import pytest

from lenscat.errors import LenscatError
from lenscat.images.bands import (
    EXTINCTION_R,
    estimate_sky_noise,
    extinction_coefficient,
    image_training_options,
)
from lenscat.models.augment import DECAM_EXTINCTION, AugmentConfig, Augmenter
from lenscat.models.data import ArraySource
from lenscat.models.preprocess import Preprocessing


def _survey(n, sigmas, size=64, seed=0):
    """Cutouts with a bright galaxy at the centre and Gaussian sky noise of ``sigmas`` per band."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] - (size - 1) / 2
    gal = np.exp(-(xx**2 + yy**2) / (2 * 4.0**2))
    sig = np.asarray(sigmas, dtype=float)[None, :, None, None]
    img = rng.normal(size=(n, len(sigmas), size, size)) * sig + 0.5 * gal
    return ArraySource(img.astype(np.float32))


def test_sky_noise_is_measured_per_band_on_the_cutout_borders():
    sigmas = [0.002, 0.004, 0.01, 0.03]
    est = estimate_sky_noise(_survey(300, sigmas))
    assert est.shape == (4,)
    np.testing.assert_allclose(est, sigmas, rtol=0.03)  # the central galaxy does not reach the frame
    with pytest.raises(LenscatError, match="too small"):
        estimate_sky_noise(_survey(4, [0.01], size=12))
    flat = ArraySource(np.zeros((5, 2, 40, 40), dtype=np.float32))
    with pytest.raises(LenscatError, match=r"band\(s\) 0, 1 .*constant or empty"):
        estimate_sky_noise(flat)


def test_extinction_coefficients_by_name_and_by_wavelength():
    assert [extinction_coefficient(b) for b in "grz"] == list(DECAM_EXTINCTION)
    assert extinction_coefficient("HSC-G") == EXTINCTION_R["g"]
    assert extinction_coefficient("DECAM_z") == EXTINCTION_R["z"]
    vis = extinction_coefficient("VIS")  # 715 nm: between r (630 nm) and i (770 nm)
    assert vis is not None and EXTINCTION_R["i"] < vis < EXTINCTION_R["r"]
    f160 = extinction_coefficient("F160W")  # 1600 nm: between J and H
    assert f160 is not None and EXTINCTION_R["H"] < f160 < EXTINCTION_R["J"]
    assert extinction_coefficient("mystery") is None


def test_grz_keeps_stein_options_and_other_bands_get_their_own():
    grz = image_training_options(["g", "r", "z"], _survey(20, [0.0024, 0.0034, 0.0099]))
    assert grz.augment is None and grz.scales is None and grz.encoder_hparams == {}
    assert grz.preprocess(48) == {"crop": 48}
    unnamed = image_training_options([], _survey(20, [0.0024, 0.0034, 0.0099]))  # 3 channels: g, r, z
    assert unnamed.bands == ["g", "r", "z"] and unnamed.augment is None

    sigmas = [0.002, 0.003, 0.004, 0.008, 0.02]
    src = _survey(200, sigmas)
    hsc = image_training_options(list("grizy"), src)
    assert hsc.encoder_hparams == {"in_chans": 5}
    assert hsc.scales is not None and hsc.augment is not None
    np.testing.assert_allclose(hsc.scales, sigmas, rtol=0.05)
    assert hsc.augment["blur"] is False and hsc.augment["noise"] == "fixed"
    assert hsc.augment["reddening"] is True
    assert hsc.augment["extinction"] == [EXTINCTION_R[b] for b in "grizy"]
    assert any("re-reddening with" in n for n in hsc.notes)
    # the options build a working augmenter for 5-band cutouts
    import torch

    aug = Augmenter(AugmentConfig.from_dict(hsc.augment), Preprocessing.from_dict(hsc.preprocess(32)))
    views = aug(torch.from_numpy(src.get(np.arange(4))), generator=torch.Generator().manual_seed(0))
    assert views.shape == (4, 5, 32, 32) and torch.isfinite(views).all()

    odd = image_training_options(["VIS", "mystery"], _survey(50, [0.01, 0.02]))
    assert odd.augment is not None and odd.augment["reddening"] is False
    assert any("no extinction coefficient for band(s) mystery" in n for n in odd.notes)
    # a survey's photometry bands need not name the cutout channels: names that do not fit are ignored
    mismatch = image_training_options(["r"], _survey(20, [0.0024, 0.0034, 0.0099]))
    assert mismatch.bands == ["g", "r", "z"] and mismatch.augment is None
    assert "1 band name(s) (r) for 3 cutout channel(s)" in mismatch.notes[0]
    unnamed5 = image_training_options(["g", "r", "z"], src)
    assert unnamed5.bands == [] and unnamed5.augment is not None and unnamed5.augment["reddening"] is False
