"""The independent survey simulator: layout, determinism, counts, lensing, PSF, noise, arcs, CLI."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import h5py
import numpy as np
import pytest

import lenscat.simulate.alt as alt
import lenscat.simulate.alt_file as alt_file
from lenscat.errors import LenscatError
from lenscat.simulate.alt import KINDS, NONLENS_FRACTIONS, simulate_cutout_alt, simulate_survey_alt
from lenscat.simulate.alt_file import COLUMNS
from lenscat.simulate.alt_objects import draw_scene
from lenscat.simulate.alt_render import (
    PIXEL_SCALE,
    Scene,
    psf_image,
    psf_otf,
    psf_sum_sq,
    render_scene,
    sie_deflection,
    sky_sigma_for_depth,
)

N, FRACTION, SEED, STAMP = 40, 0.25, 5, 48


@pytest.fixture(scope="module")
def survey(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, alt.SimSummary]:
    path = tmp_path_factory.mktemp("alt") / "survey.h5"
    return path, simulate_survey_alt(N, FRACTION, SEED, path, stamp=STAMP, workers=2, progress=False)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_layout_attributes_and_ingest_reading(survey):
    from lenscat.io.readers import read_table
    from lenscat.simulate.survey_file import read_truth

    path, summary = survey
    with h5py.File(path, "r") as fh:
        assert fh["images"].shape == (N, 3, STAMP, STAMP) and fh["images"].dtype == np.float32
        assert fh["images"].attrs["unit"] == "nanomaggy"
        for name, (dtype, unit, _) in COLUMNS.items():
            assert fh[name].shape == (N,) and fh[name].dtype == np.dtype(dtype), name
            if unit:
                assert fh[name].attrs["unit"] == unit
        attrs = dict(fh.attrs)
        images = fh["images"][()]
    assert attrs["simulator"] == "lenscat-independent-v1" and attrs["bands"] == "grz"
    assert attrs["pixel_scale_arcsec"] == pytest.approx(0.262) and attrs["zero_point"] == 22.5
    assert np.isfinite(images).all()
    table = read_table(path)  # what `lenscat ingest sources` reads
    assert table.format == "hdf5-stein" and table.images_shape == (N, 3, STAMP, STAMP)
    assert {"objid", "ra", "dec", "mag_r", "is_lens", "kind", "theta_e", "arc_snr"} <= set(table.columns)
    truth = read_truth(path)
    assert len(truth) == N and int(truth["is_lens"].sum()) == summary.n_lenses
    assert np.isfinite(truth["theta_e"][truth["is_lens"]]).all()
    assert not list(path.parent.glob(".*.partial"))


def test_exact_kind_counts(survey):
    path, summary = survey
    n_lens = round(N * FRACTION)
    with h5py.File(path, "r") as fh:
        kinds = np.char.decode(fh["kind"][()], "ascii")
        is_lens = fh["is_lens"][()]
    assert summary.n_lenses == n_lens == int(is_lens.sum()) == int((kinds == "lens").sum())
    share = np.array(list(NONLENS_FRACTIONS.values())) * (N - n_lens)
    for k, s in zip(NONLENS_FRACTIONS, share, strict=True):
        assert math.floor(s) <= summary.counts[k] <= math.ceil(s)
        assert summary.counts[k] == int((kinds == k).sum())
    assert sum(summary.counts.values()) == N and set(summary.counts) == set(KINDS)


def test_same_seed_identical_file_whatever_the_workers_and_rows_reproducible(survey, tmp_path):
    path, _ = survey
    again = tmp_path / "again.h5"
    simulate_survey_alt(N, FRACTION, SEED, again, stamp=STAMP, workers=1, progress=False)
    assert _sha(again) == _sha(path)
    other = tmp_path / "other.h5"
    simulate_survey_alt(N, FRACTION, SEED + 1, other, stamp=STAMP, workers=1, progress=False)
    with h5py.File(path, "r") as a, h5py.File(other, "r") as b:
        assert not np.array_equal(a["images"][()], b["images"][()])
        row = 3
        kind = a["kind"][row].decode()
        img, truth = simulate_cutout_alt(SEED, row, kind, ebv=float(a["ebv"][row]), stamp=STAMP)
        np.testing.assert_array_equal(img, a["images"][row])
        assert truth["mag_r"] == pytest.approx(float(a["mag_r"][row]), rel=1e-6, nan_ok=True)


def test_interrupted_run_resumes_to_the_same_file(survey, tmp_path, monkeypatch):
    path, _ = survey
    out = tmp_path / "resumed.h5"
    real = alt._render_chunk
    monkeypatch.setattr(alt_file, "WRITE_ROWS", 8)

    def stop_at_second_chunk(task):
        if task[1] >= alt.CHUNK:
            raise KeyboardInterrupt
        return real(task)

    monkeypatch.setattr(alt, "_render_chunk", stop_at_second_chunk)
    with pytest.raises(KeyboardInterrupt):
        simulate_survey_alt(N, FRACTION, SEED, out, stamp=STAMP, workers=1, progress=False)
    partial = out.with_name(f".{out.name}.partial")
    assert partial.exists() and not out.exists()
    monkeypatch.setattr(alt, "_render_chunk", real)
    summary = simulate_survey_alt(N, FRACTION, SEED, out, stamp=STAMP, workers=1, progress=False)
    assert summary.resumed_rows == alt.CHUNK and not partial.exists()
    with h5py.File(out, "r") as a, h5py.File(path, "r") as b:
        np.testing.assert_array_equal(a["images"][()], b["images"][()])
        np.testing.assert_array_equal(a["arc_snr"][()], b["arc_snr"][()])


@pytest.mark.parametrize("kwargs", [{"n": 0}, {"lens_fraction": 1.5}, {"seed": -1}, {"stamp": 16}, {"workers": 0}])
def test_invalid_arguments(kwargs, tmp_path):
    args = {"n": 4, "lens_fraction": 0.5, "seed": 1, "out": tmp_path / "s.h5"} | kwargs
    with pytest.raises(LenscatError):
        simulate_survey_alt(
            args.pop("n"), args.pop("lens_fraction"), args.pop("seed"), args.pop("out"), progress=False, **args
        )
    with pytest.raises(LenscatError, match="unknown kind"):
        simulate_cutout_alt(1, 0, "quasar")


def test_sie_reduces_to_sis_and_has_the_isothermal_elliptical_convergence():
    rng = np.random.default_rng(0)
    x, y = rng.uniform(-4, 4, (2, 500))
    ax, ay = sie_deflection(x, y, 1.7, 1.0, 0.3)
    np.testing.assert_allclose(np.hypot(ax, ay), 1.7, rtol=1e-9)
    ax2, ay2 = sie_deflection(x, y, 1.7, 0.9999, 0.3)  # the closed form tends to the SIS
    np.testing.assert_allclose(np.hypot(ax2, ay2), 1.7, rtol=1e-3)
    # kappa = div(alpha) / 2 by finite differences against kappa = theta_e / (2 r_circ), and no curl
    theta_e, q, phi, h = 1.3, 0.6, 0.7, 1e-5
    x, y = x[np.hypot(x, y) > 0.3], y[np.hypot(x, y) > 0.3]
    axp, ayp = sie_deflection(x + h, y, theta_e, q, phi)
    axm, aym = sie_deflection(x - h, y, theta_e, q, phi)
    bxp, byp = sie_deflection(x, y + h, theta_e, q, phi)
    bxm, bym = sie_deflection(x, y - h, theta_e, q, phi)
    kappa = 0.5 * ((axp - axm) + (byp - bym)) / (2 * h)
    u = x * math.cos(phi) + y * math.sin(phi)
    v = -x * math.sin(phi) + y * math.cos(phi)
    np.testing.assert_allclose(kappa, theta_e / (2 * np.sqrt(q * u * u + v * v / q)), rtol=1e-4)
    np.testing.assert_allclose((ayp - aym) / (2 * h), (bxp - bxm) / (2 * h), atol=1e-4)
    # external shear adds (g1 x + g2 y, g2 x - g1 y)
    sx, sy = sie_deflection(x, y, theta_e, q, phi, 0.05, -0.03)
    ox, oy = sie_deflection(x, y, theta_e, q, phi)
    np.testing.assert_allclose(sx - ox, 0.05 * x - 0.03 * y, atol=1e-12)
    np.testing.assert_allclose(sy - oy, -0.03 * x - 0.05 * y, atol=1e-12)


@pytest.mark.parametrize("fwhm, wing", [(1.1, 2.2), (1.5, 3.0)])
def test_psf_is_normalised_with_the_asked_fwhm(fwhm, wing):
    img = psf_image(fwhm, wing, 0.0, 0.0, size=61, sub=7)
    assert img.sum() == pytest.approx(1.0, abs=2e-3)
    # FWHM from the finely sampled central row, linearly interpolated at half the peak
    fine = psf_image(fwhm, wing, 0.0, 0.0, size=61, sub=1)  # point-sampled
    row = fine[30, 30:]
    k = int(np.argmax(row < row[0] / 2))
    half = (k - 1) + (row[k - 1] - row[0] / 2) / (row[k - 1] - row[k])
    assert 2 * half * PIXEL_SCALE == pytest.approx(fwhm, rel=0.01)
    # the analytic sum of squares (1 / noise-equivalent area) and the transfer function agree
    assert psf_sum_sq(fwhm, wing, 0.05, 0.4) == pytest.approx((psf_image(fwhm, wing, 0.05, 0.4) ** 2).sum(), rel=0.03)
    otf = psf_otf(fwhm, wing, 0.05, 0.4, (64, 64))
    assert otf[0, 0] == pytest.approx(1.0)
    kernel = np.fft.fftshift(np.fft.irfft2(otf, s=(64, 64)))
    assert kernel.sum() == pytest.approx(1.0) and np.unravel_index(kernel.argmax(), kernel.shape) == (32, 32)


def test_noise_of_empty_sky_matches_the_depth():
    rng = np.random.default_rng(np.random.SeedSequence(9))
    scene = draw_scene("elliptical", rng, 0.0, 96)
    empty = Scene(
        fwhm=scene.fwhm,
        wing_ratio=scene.wing_ratio,
        psf_e=scene.psf_e,
        psf_angle=scene.psf_angle,
        depth5=scene.depth5,
        e_per_nmgy=scene.e_per_nmgy,
        gain=scene.gain,
    )
    out = render_scene(empty, 96, np.random.default_rng(1))
    for b in range(3):
        sigma = float(out.images[b].std())
        assert sigma == pytest.approx(out.sky_sigma[b], rel=0.03)
        # depth from the measured sigma and a numerically summed PSF, as an observer would compute it
        nea = 1 / (psf_image(scene.fwhm[b], scene.wing_ratio, scene.psf_e, scene.psf_angle) ** 2).sum()
        depth = 22.5 - 2.5 * math.log10(5 * sigma * math.sqrt(nea))
        assert depth == pytest.approx(scene.depth5[b], abs=0.05)
    assert sky_sigma_for_depth(23.4, 1 / 50.0) == pytest.approx(10 ** (-0.4 * 0.9) / (5 * math.sqrt(50)))


def _annulus(img: np.ndarray, centre: float, half_width: float) -> np.ndarray:
    s = img.shape[-1]
    yy, xx = np.indices((s, s))
    r = np.hypot(xx - s // 2, yy - s // 2) * PIXEL_SCALE
    return img[:, np.abs(r - centre) < half_width].sum(axis=1)


def test_lenses_have_blue_arcs_near_the_einstein_radius():
    lens_colour, ell_colour = [], []
    for i in range(8):
        with_src, truth = simulate_cutout_alt(21, i, "lens", stamp=64, noise=False)
        without, _ = simulate_cutout_alt(21, i, "lens", stamp=64, noise=False, with_source=False)
        te = truth["theta_e"]
        assert 0.9 <= te <= 2.6 and truth["magnification"] > 1 and truth["is_lens"] == 1
        a, b = _annulus(with_src, te, 0.5), _annulus(without, te, 0.5)
        assert a[0] > b[0] * 1.05  # the source adds g light around theta_E ...
        assert a[0] / a[2] > b[0] / b[2]  # ... that is bluer than the deflector's
        assert truth["arc_snr"] >= 0
        assert 19.45 < 22.5 - 2.5 * math.log10(with_src[1].sum() - without[1].sum()) < 22.6  # lensed r
        lens_colour.append(a[0] / a[2])
        ell, t = simulate_cutout_alt(21, 100 + i, "elliptical", stamp=64, noise=False)
        assert math.isnan(t["theta_e"]) and t["is_lens"] == 0
        ell_colour.append(_annulus(ell, te, 0.5)[0] / _annulus(ell, te, 0.5)[2])
    assert np.median(lens_colour) > np.median(ell_colour)


def test_cli_option_dispatches_to_the_independent_simulator(tmp_path):
    from click.testing import CliRunner

    from lenscat.cli.simulate import simulate_survey_cmd

    out = tmp_path / "cli.h5"
    res = CliRunner().invoke(
        simulate_survey_cmd,
        [
            "--n",
            "6",
            "--lens-fraction",
            "0.5",
            "--stamp",
            "40",
            "--workers",
            "1",
            "--out",
            str(out),
            "--simulator",
            "independent",
        ],
    )
    assert res.exit_code == 0, res.output
    assert "wrote 6 cutouts (3 lenses)" in res.output
    with h5py.File(out, "r") as fh:
        assert fh.attrs["simulator"] == "lenscat-independent-v1"
