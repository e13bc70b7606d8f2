"""The cutout store: HDF5 random access, real FITS cutouts, resampling, RGB rendering."""

from pathlib import Path

import astropy.units as u
import h5py
import numpy as np
import pytest
from PIL import Image

from lenscat.errors import InputFileError, LenscatError
from lenscat.images.store import (
    HDF5CutoutStore,
    open_store,
    read_fits_cutout,
    resample,
    rgb_image,
    save_png,
)

IMAGES = Path(__file__).parents[1] / "data" / "images"
PS1 = IMAGES / "ps1_sled_lenses"


@pytest.fixture
def h5file(tmp_path):
    path = tmp_path / "stein.h5"
    imgs = np.arange(20 * 3 * 8 * 8, dtype=">f4").reshape(20, 3, 8, 8)  # big-endian on purpose
    with h5py.File(path, "w") as fh:
        fh.create_dataset("images", data=imgs, chunks=(1, 3, 8, 8))
        fh["ra"] = np.zeros(20)
        fh.attrs["pixel_scale_arcsec"] = 0.262
    return path, imgs.astype("<f4")


def test_hdf5_random_order_and_duplicates(h5file):
    path, imgs = h5file
    with HDF5CutoutStore(path) as store:
        rows = [7, 2, 19, 2, 0]
        got = store.get(rows)
        assert got.dtype == np.float32 and got.dtype.isnative
        np.testing.assert_array_equal(got, imgs[rows])
        np.testing.assert_array_equal(store.get(np.arange(3, 9)), imgs[3:9])
        assert len(store) == 20 and store.bands == ["g", "r", "z"]
        assert store.pixel_scale == 0.262 * u.arcsec
        seen = np.concatenate([r for r, _ in store.iter_batches([5, 1, 9, 1, 3], batch_size=2)])
        np.testing.assert_array_equal(seen, [1, 3, 5, 9])
        with pytest.raises(LenscatError, match=r"stein.h5: row 20 is outside"):
            store.get([1, 20])
    assert open_store(path) is open_store(path)


def test_missing_and_bad_files(tmp_path):
    with pytest.raises(InputFileError, match="nope.h5: cutout file not found"):
        HDF5CutoutStore(tmp_path / "nope.h5").get([0])
    (tmp_path / "junk.h5").write_bytes(b"garbage")
    with pytest.raises(InputFileError, match="junk.h5: cannot open as HDF5"):
        HDF5CutoutStore(tmp_path / "junk.h5").get([0])


def test_ps1_per_band_files_with_wcs_and_zero_points():
    c = read_fits_cutout(sorted(PS1.glob("SDSSJ1430_6104_PS1_*.fits")))
    assert c.bands == ["g", "r", "i", "z", "y"] and c.data.shape == (5, 120, 120)  # ordered by wavelength
    c = read_fits_cutout(sorted(PS1.glob("SDSSJ1430_6104_PS1_[grz].fits")))
    assert c.bands == ["g", "r", "z"] and c.data.shape == (3, 120, 120)
    assert c.pixel_scale.to_value(u.arcsec) == pytest.approx(0.25, rel=1e-6)
    assert c.unit == "nanomaggy" and c.wcs is not None
    # the SLACS lens galaxy (r ~ 17) is a red early-type: more flux in z than in g
    flux = c.data.sum(axis=(1, 2))
    assert 15.5 < 22.5 - 2.5 * np.log10(flux[1]) < 18.5 and flux[2] > flux[0]


def test_hst_and_euclid_layouts():
    h = read_fits_cutout(IMAGES / "hst_slacs" / "SDSSJ0029-0055_F814W_99px.fits")
    assert h.bands == ["F814W"] and h.pixel_scale.to_value(u.arcsec) == pytest.approx(0.05)
    e = read_fits_cutout(next((IMAGES / "euclid_q1").glob("*.fits")))
    assert len(e.bands) == 8 and {"g", "r", "i", "z", "VIS"} <= set(e.bands)
    assert e.psf is not None and set(e.psf) == set(e.bands) and e.pixel_scale.to_value(u.arcsec) == pytest.approx(0.1)
    with pytest.raises(LenscatError, match="band"):
        read_fits_cutout(IMAGES / "hst_slacs" / "SDSSJ0029-0055_F814W_99px.fits", bands=["g"])


def test_mismatched_band_shapes_are_refused(tmp_path):
    from astropy.io import fits

    fits.PrimaryHDU(np.zeros((10, 10), np.float32)).writeto(tmp_path / "x_g.fits")
    fits.PrimaryHDU(np.zeros((12, 12), np.float32)).writeto(tmp_path / "x_r.fits")
    with pytest.raises(InputFileError, match="x_r.fits: band r is 12x12 pixels but g is 10x10"):
        read_fits_cutout([tmp_path / "x_g.fits", tmp_path / "x_r.fits"])


def test_resample_conserves_flux_and_centres():
    c = read_fits_cutout(sorted(PS1.glob("SDSSJ1430_6104_PS1_[grz].fits")))
    yy, xx = np.mgrid[:120, :120] - 59.5
    c.data[:] = np.exp(-(xx**2 + yy**2) / (2 * 6.0**2))[None]  # smooth source at the centre
    r = resample(c, 0.262 * u.arcsec, (152, 152))
    assert r.data.shape == (3, 152, 152) and r.bands == ["g", "r", "z"]
    np.testing.assert_allclose(r.data.sum(axis=(1, 2)), c.data.sum(axis=(1, 2)), rtol=0.01)
    peak = np.unravel_index(np.argmax(r.data[1]), r.data[1].shape)
    assert abs(peak[0] - 75.5) <= 1 and abs(peak[1] - 75.5) <= 1
    hst = read_fits_cutout(IMAGES / "hst_slacs" / "SDSSJ0029-0055_F814W_99px.fits")
    assert resample(hst).bands == ["g", "r", "z"]  # nearest band in wavelength fills in


def test_rgb(tmp_path):
    img = np.zeros((3, 16, 16), np.float32)
    img[0, 4:8, 4:8] = 1.0  # g only: blue
    img[2, 10, 10] = np.nan
    rgb = rgb_image(img)
    assert rgb.shape == (16, 16, 3) and rgb.dtype == np.uint8
    # NaN counts as 0: the same (Legacy-viewer sky-offset) grey as an empty pixel
    assert rgb[5, 5, 2] > rgb[5, 5, 0] and (rgb[10, 10] == rgb[0, 0]).all() and rgb[0, 0].max() < 64
    assert rgb_image(img, stretch="lupton").shape == (16, 16, 3)
    path = save_png(rgb, tmp_path / "x.png")
    assert Image.open(path).size == (16, 16)
