"""Stein et al. augmentations (lenscat.models.augment): shapes, seeding and physics."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lenscat.errors import LenscatError
from lenscat.models import AugmentConfig, Augmenter, Preprocessing
from lenscat.models.augment import DECAM_EXTINCTION

RAW = Preprocessing(stretch="none", clip=None)  # keep nanomaggies to check the physics


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def only(**on) -> AugmentConfig:
    """Every augmentation off except the given ones."""
    return AugmentConfig.from_dict({**AugmentConfig.none().to_dict(), **on})


def galaxies(n: int = 6, size: int = 152, seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] - (size - 1) / 2
    x = rng.normal(0, 0.003, (n, 3, size, size))
    for i in range(n):
        dx, dy = rng.uniform(-10, 10, 2)
        x[i] += 0.2 * np.exp(-0.5 * ((xx - dx) ** 2 + 0.5 * (yy - dy) ** 2) / 9.0)
    return torch.from_numpy(x.astype(np.float32))


def test_shapes_dtype_and_default_pipeline():
    x = galaxies(5)
    before = x.clone()
    out = Augmenter()(x, generator=gen(0))
    assert out.shape == (5, 3, 96, 96) and out.dtype == torch.float32
    assert torch.isfinite(out).all() and 0.3 < out.std() < 5  # arcsinh-stretched, O(1)
    assert torch.equal(x, before)  # input untouched
    small = Augmenter(preprocessing=Preprocessing(crop=48))(x[:, :, :80, :80], generator=gen(0))
    assert small.shape == (5, 3, 48, 48)
    x[0, 1, 70:80, 70:80] = float("nan")
    assert torch.isfinite(Augmenter()(x, generator=gen(0))).all()


def test_seeded_and_per_sample():
    x = galaxies(4)
    aug = Augmenter()
    a, b = aug(x, generator=gen(7)), aug(x, generator=gen(7))
    assert torch.equal(a, b)
    assert not torch.allclose(a, aug(x, generator=gen(8)))
    same = x[:1].expand(4, -1, -1, -1).contiguous()
    views = aug(same, generator=gen(1))
    assert not torch.allclose(views[0], views[1])  # each sample draws its own parameters
    g = gen(3)
    assert not torch.equal(aug(x, generator=g), aug(x, generator=g))  # the generator advances


def test_flips_and_rot90_are_exact_dihedral_maps():
    x = galaxies(1, seed=2)
    crop = x[0, :, 28:124, 28:124]
    dihedral = [torch.rot90(c, k, dims=(-2, -1)) for c in (crop, crop.flip(-1)) for k in range(4)]
    out = Augmenter(only(flip_rot90=True), RAW)(x.expand(48, -1, -1, -1), generator=gen(0))
    seen = set()
    for o in out:
        err = [float((o - d).abs().max()) for d in dihedral]
        assert min(err) < 1e-6
        seen.add(int(np.argmin(err)))
        assert float(o.sum()) == pytest.approx(float(crop.sum()), rel=1e-5)
    assert seen == set(range(8))


def test_arbitrary_rotation_and_zoom_keep_a_centred_source():
    size = 152
    yy, xx = np.mgrid[:size, :size] - (size - 1) / 2
    src = np.exp(-0.5 * (xx**2 + (yy / 2) ** 2) / 16.0).astype(np.float32)  # elongated
    x = torch.from_numpy(np.broadcast_to(src, (16, 3, size, size)).copy())
    out = Augmenter(only(rotate=True), RAW)(x, generator=gen(0))
    total = float(x[0, 0].sum())
    np.testing.assert_allclose(out[:, 0].sum(dim=(-1, -2)).numpy(), total, rtol=0.01)
    assert out[:, 0].std(dim=0).max() > 0.05  # orientations differ
    zoom = Augmenter(only(scale_range=(1.1, 1.1)), RAW)(x[:1], generator=gen(0))
    assert float(zoom[0, 0].sum()) == pytest.approx(total * 1.1**2, rel=0.01)


def test_reddening_dims_g_more_than_z():
    x = torch.full((64, 3, 152, 152), 0.1)
    aug = Augmenter(only(reddening=True), RAW)
    out = aug(x, torch.zeros(64), generator=gen(0))
    ratio = out.mean(dim=(-1, -2)) / 0.1  # (B, 3) transmission per band
    assert torch.all(ratio <= 1) and torch.all(ratio[:, 0] < ratio[:, 1])
    assert torch.all(ratio[:, 1] < ratio[:, 2])
    ebv_new = -2.5 * torch.log10(ratio) / torch.tensor(DECAM_EXTINCTION)
    assert torch.allclose(ebv_new, ebv_new[:, :1].expand(-1, 3), rtol=1e-3, atol=1e-6)
    assert 0.01 < float(ebv_new.median()) < 0.1 and float(ebv_new.max()) <= 1.0
    # a heavily reddened object is mostly de-reddened (brightened, g most)
    bright = aug(x, torch.full((64,), 0.5), generator=gen(0)).mean(dim=(-1, -2)) / 0.1
    assert torch.all(bright[:, 0] > bright[:, 2]) and torch.all(bright[:, 2] > 1)
    # unknown ebv (NaN) is drawn from the survey distribution, so the ratio varies both ways
    mixed = aug(x, torch.full((64,), float("nan")), generator=gen(0)).mean(dim=(-1, -2)) / 0.1
    assert (mixed[:, 0] > 1).any() and (mixed[:, 0] < 1).any()


def test_jitter_range():
    x = torch.zeros(300, 3, 152, 152)
    x[:, :, 76, 76] = 1.0  # pixel (48, 48) of the centre crop
    out = Augmenter(only(jitter=7), RAW)(x, generator=gen(0))
    flat = out[:, 0].reshape(300, -1).argmax(dim=1)
    row, col = flat // 96, flat % 96
    dy, dx = 48 - row, 48 - col
    assert torch.all(out.amax(dim=(-1, -2)) == 1.0)  # integer shifts: the pixel is intact
    for d in (dx, dy):
        assert int(d.min()) == -7 and int(d.max()) == 7
        assert len(torch.unique(d)) == 15


def test_fixed_noise_has_the_requested_std():
    sigma = (0.0024, 0.0034, 0.0099)
    out = Augmenter(only(noise="fixed", noise_sigma=sigma), RAW)(torch.zeros(8, 3, 152, 152), generator=gen(0))
    std = out.transpose(0, 1).reshape(3, -1).std(dim=1)
    np.testing.assert_allclose(std.numpy(), sigma, rtol=0.02)
    assert abs(float(out.mean())) < 1e-4


def test_survey_noise_only_adds():
    out = Augmenter(only(noise="survey"), RAW)(torch.zeros(200, 3, 152, 152), generator=gen(0))
    std = out.std(dim=(-1, -2))  # (B, 3) added noise per sample and band
    assert (std < 1e-9).float().mean() > 0.2  # a target below the current level adds nothing
    assert float(std.max(dim=0).values[2]) > float(std.max(dim=0).values[0])  # z noisier
    assert float(std.max()) < 0.05


def test_blur_conserves_flux_and_only_widens():
    x = torch.zeros(64, 3, 152, 152)
    yy, xx = torch.meshgrid(torch.arange(152.0) - 75.5, torch.arange(152.0) - 75.5, indexing="ij")
    x[:] = torch.exp(-0.5 * (xx**2 + yy**2) / 4.0)
    out = Augmenter(only(blur=True), RAW)(x, generator=gen(0))
    total = float(x[0, 0, 28:124, 28:124].sum())
    np.testing.assert_allclose(out.sum(dim=(-1, -2)).numpy(), total, rtol=1e-4)
    var = (out * (xx[28:124, 28:124] ** 2)).sum(dim=(-1, -2)) / out.sum(dim=(-1, -2))
    assert torch.all(var >= 4.0 - 1e-3)  # the input's sigma^2 = 4 px^2
    widened = var > 4.5
    assert 0.2 < float(widened.float().mean()) < 0.9
    assert float(var.max()) < 4.0 + 4.0**2 + 0.1  # capped at blur_sigma_max = 4 px


def test_config_round_trip_and_errors():
    cfg = AugmentConfig(jitter=3, noise="fixed", scale_range=(0.95, 1.05))
    assert AugmentConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(LenscatError, match="unknown augmentation option"):
        AugmentConfig.from_dict({"hue": 1})
    with pytest.raises(LenscatError, match="noise must be"):
        AugmentConfig(noise="poisson")
    with pytest.raises(LenscatError, match="4 bands but 3 extinction"):
        Augmenter()(torch.zeros(2, 4, 152, 152))
    with pytest.raises(LenscatError, match=r"\(B, C, H, W\)"):
        Augmenter()(torch.zeros(3, 152, 152))
