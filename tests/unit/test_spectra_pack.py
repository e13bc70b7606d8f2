"""The full-range packed store: grids, datasets, continuum choices, old stores, the full-range fit."""

from pathlib import Path

import h5py
import numpy as np
import pytest

from lenscat.errors import LenscatError
from lenscat.spectra.continuum import robust_sigma_rows
from lenscat.spectra.continuum_full import fit_continua_full
from lenscat.spectra.grid import FULL, VETO, WINDOW, LogGrid, column_slice
from lenscat.spectra.masks import (
    FULL_SKY_LINES,
    galaxy_line_masks,
    sky_line_centres,
    sky_line_mask,
)
from lenscat.spectra.pack import PackedFull, PackStore, pack_spectra
from lenscat.spectra.readers import read_spectra
from lenscat.spectra.reference import eigen_basis

DATA = Path(__file__).parents[1] / "data" / "spectra"
SDSS = sorted((DATA / "sdss").glob("spec-*.fits"))


@pytest.fixture(scope="module")
def packed():
    """Two SDSS spec files (with a pipeline model) and the DESI coadd (without), packed."""
    spectra = [
        *read_spectra(SDSS[0]),
        *read_spectra(SDSS[1]),
        *read_spectra(DATA / "desi" / "coadd-4-80613-thru20210324.fits"),
    ]
    rows, full = pack_spectra(spectra)
    return spectra, rows, full


def test_window_and_veto_are_column_slices_of_full():
    assert FULL.n == 4608 and FULL.dlog == WINDOW.dlog
    assert abs(FULL.wave[0] - 3600) < 1.0 and abs(FULL.wave[-1] - 10400) < 1.5
    ws, vs = column_slice(FULL, WINDOW), column_slice(FULL, VETO)
    assert np.array_equal(FULL.wave[ws], WINDOW.wave) and np.array_equal(FULL.wave[vs], VETO.wave)
    assert PackedFull.window() == ws and PackedFull.veto() == vs
    with pytest.raises(LenscatError):
        column_slice(WINDOW, FULL)
    with pytest.raises(LenscatError):
        column_slice(FULL, LogGrid(k0=WINDOW.k0, n=10, dlog=2e-4))


def test_pack_keeps_the_model_beside_the_fit_and_the_window_is_the_full_slice(packed):
    spectra, rows, full = packed
    ws = PackedFull.window()
    assert full.flux.shape == (3, FULL.n) and rows.flux.shape == (3, WINDOW.n)
    assert list(full.has_model) == [True, True, False] and list(rows.has_model) == [True, True, False]
    assert list(rows.continuum_source) == [0, 0, 1]
    assert not np.any(full.model[2]) and np.all(np.any(full.fit != 0, axis=1))
    for a, b in ((full.flux, rows.flux), (full.ivar, rows.ivar), (full.fit, rows.continuum_fit)):
        assert np.array_equal(a[:, ws], b)
    assert np.array_equal(rows.continuum[:2], full.model[:2, ws])
    assert np.array_equal(rows.continuum[2], full.fit[2, ws])
    # the DESI arms reach 9824 A: the full range keeps their red pixels, the window does not
    assert (full.ivar[2] > 0).sum() > 3 * (rows.ivar[2] > 0).sum()
    assert np.allclose(full.z, [s.z for s in spectra])


def test_continuum_choices(packed):
    _, _, full = packed
    assert np.array_equal(full.continuum("fit"), full.fit)
    pipe = full.continuum("pipeline")
    assert np.array_equal(pipe[:2], full.model[:2]) and np.array_equal(pipe[2], full.fit[2])
    mixed = full.continuum(["fit", "pipeline", "pipeline"])
    assert np.array_equal(mixed[0], full.fit[0]) and np.array_equal(mixed[1], full.model[1])
    assert np.array_equal(mixed[2], full.fit[2])
    with pytest.raises(LenscatError, match="unknown continuum"):
        full.continuum("redrock")
    with pytest.raises(LenscatError, match="2 continuum choices for 3"):
        full.continuum(["fit", "fit"])


def test_store_round_trip_of_every_dataset(packed, tmp_path):
    _, rows, full = packed
    store = PackStore(tmp_path / "s.h5")
    assert not store.has_full
    with store.writer() as fh:
        assert store.append(fh, rows, full) == 0
        assert store.append(fh, rows.take(np.array([2])), full.take(np.array([2]))) == 3
    assert store.has_full and store.n_rows() == 4
    got = store.read(np.array([0, 1, 2]))
    for f in ("flux", "ivar", "continuum", "sky", "z", "continuum_source", "continuum_fit", "has_model"):
        assert np.array_equal(getattr(got, f), getattr(rows, f)), f
    assert store.read(np.array([0]), fit=False, sky=False).continuum_fit is None
    order = np.array([3, 0, 1, 0])  # any order, repeats kept
    f = store.read_full(order)
    for name in ("flux", "ivar", "model", "fit", "z", "has_model"):
        assert np.array_equal(getattr(f, name), getattr(full, name)[[2, 0, 1, 0]]), name
    w = store.read(order)
    assert np.array_equal(f.flux[:, f.window()], w.flux) and np.array_equal(f.fit[:, f.window()], w.continuum_fit)
    veto = store.read_veto(np.array([1, 2]))
    vs = column_slice(FULL, VETO)
    assert np.array_equal(veto.flux, full.flux[1:3, vs])
    assert np.array_equal(veto.continuum, full.continuum("pipeline")[1:3, vs])
    with h5py.File(store.path, "r") as fh:
        assert (int(fh.attrs["full_k0"]), int(fh.attrs["full_n"])) == (FULL.k0, FULL.n)
        assert "veto_flux" not in fh and fh["full_flux"].compression is not None
    with pytest.raises(LenscatError, match="outside the store"):
        store.read_full(np.array([4]))
    with pytest.raises(LenscatError, match="full range"):
        PackStore(store.path, full=LogGrid.window(3500.0, 10400.0)).read_full(np.array([0]))


def _old_store(path: Path, n: int = 3) -> None:
    """A store as written before full-range packing (window + 4900-8850 A veto datasets)."""
    rng = np.random.default_rng(3)
    with h5py.File(path, "w") as fh:
        fh.attrs.update(
            {"window_k0": WINDOW.k0, "window_n": WINDOW.n, "veto_k0": VETO.k0, "veto_n": VETO.n, "dlog": WINDOW.dlog}
        )
        for name in ("flux", "ivar", "continuum", "sky"):
            fh[name] = rng.normal(size=(n, WINDOW.n)).astype("f4")
        for name in ("veto_flux", "veto_ivar", "veto_continuum"):
            fh[name] = rng.normal(size=(n, VETO.n)).astype("f4")
        fh["z"] = np.full(n, 0.3)
        fh["continuum_source"] = np.array([0, 1, 0][:n], dtype="u1")


def test_an_old_store_is_read_but_has_no_full_range(tmp_path, packed):
    _, rows, full = packed
    path = tmp_path / "old.h5"
    _old_store(path)
    store = PackStore(path)
    assert not store.has_full
    got = store.read(np.array([0, 1, 2]))
    assert got.continuum_fit is None and list(got.has_model) == [True, False, True]
    with h5py.File(path, "r") as fh:
        assert np.array_equal(store.read_veto(np.array([2, 0])).flux, fh["veto_flux"][:][[2, 0]])
    with pytest.raises(LenscatError, match="predates full-range packing") as err:
        store.read_full(np.array([0]))
    assert "\n" not in str(err.value) and "new store" in str(err.value)
    with pytest.raises(LenscatError, match="predates full-range packing"), store.writer() as fh:
        store.append(fh, rows, full)


def test_full_range_fit_matches_the_pipeline_model_on_real_spectra():
    spectra = [read_spectra(p)[0] for p in SDSS]
    _, full = pack_spectra(spectra)
    ws = PackedFull.window()
    good = (full.ivar > 0) & ~galaxy_line_masks(FULL.wave, full.z, full_range=True)
    good &= ~sky_line_mask(FULL.wave, full_range=True)[None, :]
    for cols in (slice(None), ws):
        chi_fit = (full.flux - full.fit)[:, cols] * np.sqrt(full.ivar[:, cols])
        chi_model = (full.flux - full.model)[:, cols] * np.sqrt(full.ivar[:, cols])
        s_fit = robust_sigma_rows(chi_fit, good[:, cols])
        s_model = robust_sigma_rows(chi_model, good[:, cols])
        assert np.all(s_fit < 1.15), s_fit
        assert np.all(s_fit <= s_model + 0.03), (s_fit, s_model)


@pytest.mark.parametrize("z", [0.05, 0.6, 1.15, np.nan])
def test_full_range_fit_recovers_a_tilted_galaxy_at_any_redshift(z):
    # an early-type-like eigen combination, multiplied by a smooth calibration tilt, plus noise;
    # z = 1.15 leaves 3600-3870 A beyond the eigenbasis (per-segment polynomial there)
    rng = np.random.default_rng(11)
    eb = eigen_basis()
    zz = 0.3 if np.isnan(z) else z
    rest = FULL.wave / (1.0 + zz)
    t = np.array([np.interp(rest, eb.wave, b) for b in eb.basis])
    x = np.linspace(-1, 1, FULL.n)
    truth = (t.T @ np.array([1.0, 0.2, -0.1, 0.05])) * (1.0 + 0.3 * x - 0.1 * x**2)
    truth = 20.0 * truth / np.median(np.abs(truth))
    ivar = np.full((1, FULL.n), 0.25)
    flux = truth[None, :] + rng.normal(size=(1, FULL.n)) * 2.0
    fit = fit_continua_full(FULL.wave, flux, ivar, np.array([z]))
    chi = (flux - fit) * np.sqrt(ivar)
    assert np.all(np.isfinite(fit))
    good = np.ones_like(chi, dtype=bool)
    if np.isnan(z):  # a polynomial only: no absorption features, a looser bound
        assert robust_sigma_rows(chi, good)[0] < 3.0
    else:
        assert robust_sigma_rows(chi, good)[0] < 1.1
        assert np.abs(fit - truth).mean() < 0.5  # [1e-17 erg/s/cm^2/A], against a noise of 2


def test_full_range_masks():
    sky = sky_line_mask(FULL.wave, full_range=True, half_width_px=2)
    for c in FULL_SKY_LINES:  # every pixel within 2 pixel widths of each line (Na D 5890/5896 overlap)
        i = int(np.argmin(np.abs(FULL.wave - c)))
        assert sky[i - 1 : i + 2].all() and sky[i - 2] | sky[i + 2]
    assert 3 * len(FULL_SKY_LINES) <= sky.sum() <= 5 * len(FULL_SKY_LINES)
    assert sky[np.argmin(np.abs(FULL.wave - 6302.05))]  # [O I] 6300 (vacuum 6302)
    assert not sky_line_mask(FULL.wave)[np.argmin(np.abs(FULL.wave - 6302.05))]
    assert set(sky_line_centres()) <= set(np.round(sky_line_centres(True), 3)) | set(sky_line_centres())
    by_kms = sky_line_mask(FULL.wave, full_range=True, half_width_kms=150.0)
    assert by_kms[np.argmin(np.abs(FULL.wave - 8401.47))]
    halpha = np.argmin(np.abs(FULL.wave - 6564.6 * 1.1))
    assert galaxy_line_masks(FULL.wave, np.array([0.1]), full_range=True)[0, halpha]
    assert not galaxy_line_masks(FULL.wave, np.array([0.1]), extended=True)[0, halpha]
    assert not galaxy_line_masks(FULL.wave, np.array([np.nan]), full_range=True).any()
