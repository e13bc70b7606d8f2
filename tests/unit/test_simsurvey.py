"""The simulated DECaLS-like survey: file layout, determinism, truth, photometry, arcs, noise."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import h5py
import numpy as np
import pytest

from lenscat.errors import LenscatError
from lenscat.simulate.survey import (
    KINDS,
    NONLENS_FRACTIONS,
    _allocate,
    _object_rng,
    n_lenses_for,
    simulate_cutout,
    simulate_survey,
)
from lenscat.simulate.survey_file import COLUMNS, read_truth
from lenscat.simulate.survey_render import DEPTH5, FWHM_MEDIAN, PIXEL_SCALE, psf_kernel

N, FRACTION, SEED = 60, 0.3, 11


@pytest.fixture(scope="module")
def survey(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    path = tmp_path_factory.mktemp("sim") / "survey.h5"
    summary = simulate_survey(N, FRACTION, SEED, path, workers=2, progress=False)
    return path, summary


@pytest.fixture(scope="module")
def data(survey: tuple[Path, object]) -> dict[str, np.ndarray]:
    with h5py.File(survey[0], "r") as fh:
        out = {k: fh[k][()] for k in fh if k != "images"}
        out["images"] = fh["images"][()]
    out["kind"] = np.char.decode(out["kind"], "ascii")
    return out


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _radius(stamp: int = 152) -> np.ndarray:
    y, x = np.indices((stamp, stamp))
    return np.hypot(x - stamp // 2, y - stamp // 2) * PIXEL_SCALE


def test_layout_dtypes_and_attributes(survey):
    path, summary = survey
    with h5py.File(path, "r") as fh:
        images = fh["images"]
        assert images.shape == (N, 3, 152, 152) and images.dtype == np.float32
        assert images.chunks == (1, 3, 152, 152)
        for name, (dtype, unit, _) in COLUMNS.items():
            ds = fh[name]
            assert ds.shape == (N,), name
            assert ds.dtype == np.dtype(dtype), name
            if unit:
                assert ds.attrs["unit"] == unit
        assert fh["objid"].dtype == np.int64 and len(np.unique(fh["objid"][()])) == N
        assert fh["source_type"].dtype.kind == "S"
        attrs = dict(fh.attrs)
    assert attrs["pixel_scale_arcsec"] == pytest.approx(0.262)
    assert attrs["bands"] == "grz" and attrs["unit"] == "nanomaggy" and attrs["zero_point"] == 22.5
    assert attrs["seed"] == SEED and attrs["lens_fraction"] == pytest.approx(FRACTION)
    assert attrs["generator"] == "lenscat.simulate.survey" and attrs["lenstronomy_version"]
    assert summary.n == N and summary.path == path.resolve() and summary.seconds > 0
    assert not list(path.parent.glob(".*.partial"))


def test_same_seed_gives_identical_file_whatever_the_workers(survey, tmp_path):
    path, _ = survey
    again = tmp_path / "again.h5"
    simulate_survey(N, FRACTION, SEED, again, workers=1, progress=False)
    assert _sha(again) == _sha(path)
    other = tmp_path / "other.h5"
    simulate_survey(8, FRACTION, SEED + 1, other, workers=1, progress=False)
    with h5py.File(path, "r") as a, h5py.File(other, "r") as b:
        assert not np.array_equal(a["images"][:8], b["images"][:8])


def test_object_seeds_are_the_spawned_children():
    children = np.random.SeedSequence(5).spawn(4)
    for i, child in enumerate(children):
        a = _object_rng(5, i).standard_normal(3)
        b = np.random.default_rng(child).standard_normal(3)
        assert np.array_equal(a, b)


def test_counts_and_kinds(survey, data):
    _, summary = survey
    assert summary.n_lenses == round(N * FRACTION) == int(data["is_lens"].sum())
    assert summary.counts == {k: int((data["kind"] == k).sum()) for k in KINDS}
    assert set(data["kind"]) == set(KINDS)  # every kind, including the impostors
    assert ((data["kind"] == "lens") == (data["is_lens"] == 1)).all()
    assert (data["source_type"][data["kind"] == "star"] == b"PSF").all()
    assert set(data["source_type"]) <= {b"PSF", b"REX", b"EXP", b"DEV", b"SER"}


def test_lens_count_rounding_and_allocation():
    assert n_lenses_for(10, 0.25) == 3  # half up
    assert n_lenses_for(10, 0.01) == 1  # at least one when asked for lenses
    assert n_lenses_for(10, 0.99) == 9  # at least one non-lens when f < 1
    assert n_lenses_for(1, 0.5) == 1
    assert n_lenses_for(5, 0.0) == 0 and n_lenses_for(5, 1.0) == 5
    alloc = _allocate(42, NONLENS_FRACTIONS)
    assert sum(alloc.values()) == 42 and min(alloc.values()) >= 2
    assert max(alloc, key=lambda k: alloc[k]) == "elliptical"


def test_truth_columns(data):
    lens = data["is_lens"] == 1
    te = data["theta_e"]
    assert ((te[lens] >= 0.8) & (te[lens] <= 3.0)).all()
    assert np.isnan(te[~lens]).all()
    assert (data["z_lens"][lens] >= 0.2).all() and (data["z_lens"][lens] <= 0.8).all()
    assert (data["z_source"][lens] > data["z_lens"][lens]).all()
    for name in ("z_lens", "z_source", "lens_q", "lens_phi", "gamma1", "gamma2", "source_mag_r", "magnification"):
        assert np.isfinite(data[name][lens]).all(), name
        assert np.isnan(data[name][~lens]).all(), name
    assert (np.hypot(data["gamma1"][lens], data["gamma2"][lens]) <= 0.1 + 1e-6).all()
    assert (data["n_sources"][lens] >= 1).all() and (data["n_sources"][~lens] == 0).all()
    # blue sources; lensed (magnified) arcs of the detectable population, r ~ 19-21.5; red deflectors
    src_gr = data["source_mag_g"][lens] - data["source_mag_r"][lens]
    assert ((src_gr > -0.2) & (src_gr < 0.8)).all()
    arc_r = data["source_mag_r"][lens] - 2.5 * np.log10(data["magnification"][lens])
    assert ((arc_r > 18.9) & (arc_r < 21.6)).all()
    assert (data["magnification"][lens] > 1).all()
    lens_gr = data["mag_g"][lens] - data["mag_r"][lens]
    assert np.median(lens_gr) > 1.3
    assert ((data["mag_r"][lens] > 17.9) & (data["mag_r"][lens] < 21.7)).all()


def test_catalogue_columns(survey, data):
    from lenscat.simulate.catalogue import in_footprint

    assert in_footprint(data["ra"], data["dec"]).all()
    assert ((data["ebv"] > 0) & (data["ebv"] < 0.6)).all()
    for b in "grz":
        assert np.isfinite(data[f"mag_{b}"]).all()
    star = data["kind"] == "star"
    assert (data["z_phot_mean"][star] == -99).all()
    assert (data["z_phot_mean"][~star] > 0).all()


def test_images_are_nanomaggies_consistent_with_the_catalogue(data):
    images = data["images"]
    assert np.isfinite(images).all()
    rad = _radius()
    iso = np.flatnonzero(
        (data["kind"] == "elliptical")
        & (data["saturated"] == 0)
        & (data["mag_r"] < 20.5)
        & ~(data["nearest_neighbour"] < 12.0)
    )
    assert len(iso) >= 4
    for i in iso:
        ap = float(images[i, 1][rad < 10.0].sum())
        mag = 22.5 - 2.5 * math.log10(ap)
        assert abs(mag - data["mag_r"][i]) < 0.3, (i, mag, data["mag_r"][i])


def test_noise_matches_declared_depth(data):
    images = data["images"]
    ratios = []
    for b, band in enumerate("grz"):
        sig = data[f"sky_sigma_{band}"]
        for i in range(N):
            corner = images[i, b, :30, :30].ravel().astype(np.float64)
            mad = 1.4826 * np.median(np.abs(corner - np.median(corner)))
            ratios.append(mad / sig[i])
        # sky sigma <-> 5-sigma PSF-photometry depth, through each object's own PSF
        for i in range(0, N, 7):
            k = psf_kernel(float(data[f"psf_fwhm_{band}"][i]), float(data["psf_beta"][i]))
            depth = 22.5 - 2.5 * math.log10(5 * sig[i] / math.sqrt(float((k**2).sum())))
            assert depth == pytest.approx(float(data[f"depth5_{band}"][i]), abs=0.01)
        assert abs(np.median(data[f"depth5_{band}"]) - DEPTH5[b]) < 0.15
        assert abs(np.median(data[f"psf_fwhm_{band}"]) - FWHM_MEDIAN[b]) < 0.1
    assert 0.9 < np.median(ratios) < 1.1
    assert np.median(data["sky_sigma_g"]) < np.median(data["sky_sigma_r"]) < np.median(data["sky_sigma_z"])


@pytest.mark.parametrize(("fwhm", "beta", "size"), [(1.3, 3.5, 41), (0.6, 2.2, 41), (2.1, 4.8, 15)])
def test_psf_kernel_is_the_pixel_mean_of_the_moffat_profile(fwhm, beta, size):
    from lenscat.simulate.survey_render import _moffat_pixels

    # the full 5x sub-pixel grid, evaluated directly (psf_kernel uses one quadrant and a matrix product)
    offs = (np.arange(5) + 0.5) / 5 - 0.5
    ax = ((np.arange(-(size // 2), size // 2 + 1)[:, None] + offs[None, :]).ravel()) * PIXEL_SCALE
    x, y = np.meshgrid(ax, ax)
    direct = _moffat_pixels(x, y, fwhm, beta).reshape(size, 5, size, 5).mean(axis=(1, 3))
    k = psf_kernel(fwhm, beta, size)
    assert k.shape == (size, size) and k.sum() == pytest.approx(1.0, abs=1e-12)
    np.testing.assert_allclose(k, direct / direct.sum(), rtol=1e-12, atol=0)
    np.testing.assert_allclose(k, k.T, rtol=1e-12)
    np.testing.assert_allclose(k, k[::-1, ::-1], rtol=1e-12)
    assert k.argmax() == (size * size) // 2  # peaked on the centre pixel


def test_lenses_have_blue_arcs_beyond_their_lens_light(data):
    images = data["images"]
    rad = _radius()
    lenses = np.flatnonzero(data["is_lens"] == 1)
    detected = 0
    for i in lenses:
        te = float(data["theta_e"][i])
        light, _ = simulate_cutout(SEED, int(i), "lens", ebv=float(data["ebv"][i]), noise=False, with_source=False)
        resid = images[i].astype(np.float64) - light
        ring = (rad > 0.4 * te) & (rad < 1.8 * te + 1.0)
        g_excess = resid[0][ring].sum()
        noise = float(data["sky_sigma_g"][i]) * math.sqrt(ring.sum())
        if g_excess > 5 * noise:
            detected += 1
            # the arcs are bluer than the deflector
            assert resid[0][ring].sum() / resid[1][ring].sum() > light[0][ring].sum() / light[1][ring].sum()
    assert detected >= 0.8 * len(lenses)


def test_simulate_cutout_reproduces_a_row(data):
    i = int(np.flatnonzero(data["is_lens"] == 1)[0])
    img, row = simulate_cutout(SEED, i, "lens", ebv=float(data["ebv"][i]))
    assert np.array_equal(img, data["images"][i])
    assert row["theta_e"] == pytest.approx(float(data["theta_e"][i]), rel=1e-6)
    with pytest.raises(LenscatError):
        simulate_cutout(SEED, 0, "quasar")


def test_read_table_and_read_truth(survey):
    from lenscat.io.readers import read_table

    path, summary = survey
    table = read_table(path)
    assert table.format == "hdf5-stein"
    assert table.images_shape == (N, 3, 152, 152)
    assert table.n_rows == N and table.units["ra"] == "deg"
    truth = read_truth(path)
    assert list(truth.colnames) == ["objid", "ra", "dec", "is_lens", "kind", "theta_e", "z_lens", "z_source"]
    assert str(truth["theta_e"].unit) == "arcsec" and str(truth["ra"].unit) == "deg"
    assert int(truth["is_lens"].sum()) == summary.n_lenses
    assert set(truth["kind"]) == set(KINDS)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"n": 0}, "n must be"),
        ({"n": 2.5}, "n must be"),
        ({"lens_fraction": -0.1}, "lens fraction"),
        ({"lens_fraction": 1.5}, "lens fraction"),
        ({"lens_fraction": float("nan")}, "lens fraction"),
        ({"seed": -1}, "seed"),
        ({"stamp": 16}, "stamp"),
        ({"workers": 0}, "workers"),
        ({"out": "missing-dir/x.h5"}, "does not exist"),
    ],
)
def test_bad_inputs_raise(tmp_path, kwargs, match):
    args = {"n": 4, "lens_fraction": 0.5, "seed": 1, "out": tmp_path / "x.h5"}
    args.update(kwargs)
    if kwargs.get("out"):
        args["out"] = tmp_path / str(kwargs["out"])
    out = args.pop("out")
    extra = {k: args.pop(k) for k in ("stamp", "workers") if k in args}
    with pytest.raises(LenscatError, match=match):
        simulate_survey(args["n"], args["lens_fraction"], args["seed"], out, progress=False, **extra)
    assert not list(tmp_path.iterdir())


def test_a_failed_run_leaves_no_file(tmp_path, monkeypatch):
    import lenscat.simulate.survey as sim

    def boom(task):
        raise OSError("disk full")

    monkeypatch.setattr(sim, "_render_chunk", boom)
    out = tmp_path / "s.h5"
    with pytest.raises(LenscatError, match="cannot write"):
        simulate_survey(4, 0.5, 1, out, workers=1, progress=False)
    assert not list(tmp_path.iterdir())


def _contents(path: Path) -> tuple[dict[str, np.ndarray], dict[str, object]]:
    with h5py.File(path, "r") as fh:
        return {k: fh[k][()] for k in fh}, {k: v for k, v in fh.attrs.items() if k != "lenstronomy_version"}


def test_an_interrupted_run_resumes_where_it_stopped(survey, tmp_path, monkeypatch):
    """Ctrl-C keeps the finished rows in .OUT.partial; the same command renders only the rest."""
    import lenscat.simulate.survey as sim

    real = sim._render_chunk
    calls: list[int] = []

    def interrupted(task):
        calls.append(task[1])
        if calls == [0, sim.CHUNK, 2 * sim.CHUNK]:  # Ctrl-C while the third chunk renders
            raise KeyboardInterrupt
        return real(task)

    monkeypatch.setattr(sim, "_render_chunk", interrupted)
    out = tmp_path / "s.h5"
    with pytest.raises(KeyboardInterrupt):
        simulate_survey(N, FRACTION, SEED, out, workers=1, progress=False)
    partial = tmp_path / ".s.h5.partial"
    assert not out.exists() and partial.exists()
    with h5py.File(partial, "r") as fh:
        assert fh.attrs["rows_done"] == 2 * sim.CHUNK

    calls.clear()
    summary = simulate_survey(N, FRACTION, SEED, out, workers=1, progress=False)
    assert summary.resumed_rows == 2 * sim.CHUNK and calls[0] == 2 * sim.CHUNK  # finished rows not redone
    assert len(calls) == -(-N // sim.CHUNK) - 2 and not partial.exists()
    data, attrs = _contents(out)
    ref_data, ref_attrs = _contents(survey[0])
    assert attrs == ref_attrs and data.keys() == ref_data.keys()
    for k, v in ref_data.items():
        assert np.array_equal(data[k], v, equal_nan=v.dtype.kind == "f"), k


def test_a_partial_file_for_other_arguments_is_started_over(tmp_path, monkeypatch):
    import lenscat.simulate.survey as sim

    real = sim._render_chunk

    def stop_second(task):
        if task[1] >= sim.CHUNK:
            raise KeyboardInterrupt
        return real(task)

    monkeypatch.setattr(sim, "_render_chunk", stop_second)
    out = tmp_path / "s.h5"
    with pytest.raises(KeyboardInterrupt):
        simulate_survey(20, 0.5, 3, out, workers=1, progress=False)
    monkeypatch.setattr(sim, "_render_chunk", real)
    summary = simulate_survey(20, 0.5, 4, out, workers=1, progress=False)  # another seed
    assert summary.resumed_rows == 0
    fresh = tmp_path / "fresh.h5"
    simulate_survey(20, 0.5, 4, fresh, workers=1, progress=False)
    assert _sha(out) == _sha(fresh)


def test_a_partial_file_another_run_is_writing_is_left_alone(tmp_path):
    import subprocess
    import sys

    partial = tmp_path / ".s.h5.partial"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import h5py, sys, time\nf = h5py.File({str(partial)!r}, 'w'); print('open', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "open"
        with pytest.raises(LenscatError, match="being written by another run"):
            simulate_survey(4, 0.5, 1, tmp_path / "s.h5", workers=1, progress=False)
        assert partial.exists()
    finally:
        holder.kill()
        holder.wait()


def test_sigterm_from_a_batch_system_leaves_a_resumable_partial_file(tmp_path):
    """The CLI killed by SIGTERM (a job's time limit) exits 130; the same command then resumes."""
    import signal
    import subprocess
    import sys
    import time

    cmd = [
        sys.executable,
        "-m",
        "lenscat.cli",
        "simulate",
        "survey",
        "--n",
        "400",
        "--seed",
        "5",
        "--workers",
        "1",
        "--out",
        str(tmp_path / "s.h5"),
    ]
    partial = tmp_path / ".s.h5.partial"
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while (not partial.exists() or partial.stat().st_size < 20 * 277_000) and time.monotonic() < deadline:
        time.sleep(0.05)  # wait for a few chunks to be written
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "interrupted" in err
    assert partial.exists() and not (tmp_path / "s.h5").exists()
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "(resumed: " in res.stdout and not partial.exists()


def test_small_stamp_and_all_lenses(tmp_path):
    out = tmp_path / "small.h5"
    summary = simulate_survey(3, 1.0, 2, out, stamp=48, workers=1, progress=False)
    assert summary.n_lenses == 3
    with h5py.File(out, "r") as fh:
        assert fh["images"].shape == (3, 3, 48, 48)
        assert np.isfinite(fh["images"][()]).all()
