"""Lens-light randomisation of the lens-model training sets (``simulate_lens_set(lens_light_dm=...)``)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from lenscat.errors import InvalidParameter
from lenscat.modelling.training import LensTrainOptions
from lenscat.modelling.training_set import _scene, simulate_lens_set
from lenscat.simulate.survey_render import render_scene

SEED = 31
STAMP, CROP, SHIFT = 64, 48, 2
DM = (-1.5, 1.0)


def _task(
    i: int, kind: str, dm: tuple[float, float] | None
) -> tuple[int, int, str, int, int, int, tuple[float, float], tuple[float, float] | None]:
    return (SEED, i, kind, STAMP, CROP, SHIFT, (19.0, 23.0), dm)


def test_off_and_zero_shift_are_the_simulators_set() -> None:
    """None is the default; a zero shift draws only from its own stream, so the set is bit-identical."""
    kinds = ("lens", "elliptical", "spiral")
    base = simulate_lens_set(6, seed=SEED, kinds=kinds, arc_mag_r=(19.0, 23.0))
    off = simulate_lens_set(6, seed=SEED, kinds=kinds, arc_mag_r=(19.0, 23.0), lens_light_dm=None)
    zero = simulate_lens_set(6, seed=SEED, kinds=kinds, arc_mag_r=(19.0, 23.0), lens_light_dm=(0.0, 0.0))
    assert off.digest() == base.digest()
    assert zero.digest() == base.digest()
    assert "lens_light_dm" not in base.meta
    assert zero.meta["lens_light_dm"] == [0.0, 0.0]
    np.testing.assert_array_equal(zero.sky_sigma, base.sky_sigma)


def test_shift_changes_the_deflector_only() -> None:
    """Arcs and field keep their flux; the central light is scaled by 10^(-0.4 dm) of the drawn shift."""
    n = 4
    on = simulate_lens_set(n, seed=SEED, arc_mag_r=(19.0, 23.0), lens_light_dm=DM)
    off = simulate_lens_set(n, seed=SEED, arc_mag_r=(19.0, 23.0))
    np.testing.assert_array_equal(on.targets, off.targets)  # same lenses, same truth
    shifts = []
    for i in range(n):
        s_off, _, di, dj, dm0 = _scene(_task(i, "lens", None))
        s_on, _, di2, dj2, dm = _scene(_task(i, "lens", DM))
        assert dm0 == 0.0 and (di, dj) == (di2, dj2)
        assert DM[0] <= dm <= DM[1]
        shifts.append(dm)
        f = 10.0 ** (-0.4 * dm)
        assert s_on.lens is not None and s_off.lens is not None
        assert s_on.lens.arc_mag_r == s_off.lens.arc_mag_r
        for a, b in zip(s_on.comps, s_off.comps, strict=True):
            if a.central and a.plane == "image":
                np.testing.assert_allclose(a.flux, b.flux * f, rtol=1e-12)
            else:  # lensed sources and field objects
                np.testing.assert_array_equal(a.flux, b.flux)
        # noiseless renders: the arcs alone are unchanged; the rest differs by (f - 1) x the deflector
        full_on, full_off = (render_scene(s, STAMP, None).images.astype(np.float64) for s in (s_on, s_off))
        rest_on, rest_off = (
            render_scene(s, STAMP, None, with_source=False).images.astype(np.float64) for s in (s_on, s_off)
        )
        peak = float(full_off[1].max())
        np.testing.assert_allclose(full_on - rest_on, full_off - rest_off, atol=1e-5 * peak)
        lens_only = dataclasses.replace(s_off, comps=[c for c in s_off.comps if c.central], points=[])
        deflector = render_scene(lens_only, STAMP, None, with_source=False).images.astype(np.float64)
        assert deflector[1].sum() > 0
        np.testing.assert_allclose(rest_on - rest_off, (f - 1.0) * deflector, atol=1e-5 * peak)
        # the set itself: same noise draws, so the r-band window differs by the deflector's change
        c, h = STAMP // 2, CROP // 2
        win = deflector[1, c + di - h : c + di - h + CROP, c + dj - h : c + dj - h + CROP]
        diff = on.images[i, 1].astype(np.float64) - off.images[i, 1]
        assert diff.sum() == pytest.approx((f - 1.0) * win.sum(), rel=0.03)
    assert len(set(shifts)) == n  # drawn per object


def test_options_check_the_range() -> None:
    LensTrainOptions(lens_light_dm=(-2.0, 1.0)).check()
    for bad in ((1.0, -2.0), (-9.0, 0.0), (float("nan"), 1.0)):
        with pytest.raises(InvalidParameter) as err:
            LensTrainOptions(lens_light_dm=bad).check()
        assert err.value.param == "lens_light_dm"
    with pytest.raises(InvalidParameter):
        simulate_lens_set(1, seed=0, lens_light_dm=(2.0, 1.0))


def test_cli_reads_the_range() -> None:
    import click

    from lenscat.cli.modelling import _magnitude_range

    assert _magnitude_range("-2,1") == (-2.0, 1.0)
    assert _magnitude_range("none") is None
    with pytest.raises(click.BadParameter):
        _magnitude_range("-2")
