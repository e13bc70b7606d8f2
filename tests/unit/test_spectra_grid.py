"""The search-window grid and resampling onto it."""

import numpy as np

from lenscat.spectra.grid import LYA, VETO, WINDOW, LogGrid, to_grid


def test_window_is_the_boss_pixels_from_3800_to_5000_angstrom():
    assert WINDOW.n == 1193 and WINDOW.dlog == 1e-4
    assert abs(WINDOW.wave[0] - 3800) < 1.0 and abs(WINDOW.wave[-1] - 5000) < 1.2
    assert abs(WINDOW.velocity_per_pixel - 69.0) < 0.1
    z = WINDOW.z_lya()
    assert abs(z[0] - (WINDOW.wave[0] / LYA - 1)) < 1e-12 and 2.12 < z[0] < 2.13 and 3.11 < z[-1] < 3.12
    # the veto range holds Hbeta, [OIII] and Halpha of an [OII] interloper anywhere in the window
    assert VETO.wave[0] <= WINDOW.wave[0] * 1.3042 and VETO.wave[-1] >= WINDOW.wave[-1] * 1.7607


def test_log_grid_spectra_are_copied_pixel_for_pixel():
    g = LogGrid(k0=35700, n=3000)
    wave = g.wave.astype(np.float32).astype(np.float64)  # float32 wavelengths are ~1e-3 px off
    flux = np.arange(g.n, dtype=np.float64)
    ivar = np.ones(g.n)
    ivar[WINDOW.k0 - g.k0 + 10] = 0
    iv, (f,) = to_grid(wave, flux, ivar=ivar)
    assert f is not None
    assert np.array_equal(f, flux[WINDOW.k0 - g.k0 : WINDOW.k0 - g.k0 + WINDOW.n])
    assert iv[10] == 0 and (iv > 0).sum() == WINDOW.n - 1


def test_linear_grid_resampling_conserves_flux_and_propagates_noise_exactly():
    wave = np.arange(3600.0, 5900.0, 0.8)
    ivar = np.full(wave.size, 4.0)
    ivar[700] = 0.0
    rng = np.random.default_rng(1)
    noise = rng.normal(size=(600, wave.size)) * 0.5
    iv, (f,) = to_grid(wave, np.full(wave.size, 2.0), ivar=ivar)
    assert f is not None
    assert np.allclose(f, 2.0)
    # a grid pixel touching the masked native pixel is masked, no other
    assert 1 <= (iv == 0).sum() <= 2
    out = np.array([to_grid(wave, x, ivar=ivar)[1][0] for x in noise])
    good = iv > 0
    pull = out[:, good].std(axis=0) * np.sqrt(iv[good])
    assert abs(pull.mean() - 1.0) < 0.02
    # an emission line keeps its integrated flux
    line = 10.0 * np.exp(-0.5 * ((wave - 4500.0) / 2.0) ** 2)
    _, (fl,) = to_grid(wave, line, ivar=np.ones(wave.size))
    assert abs(np.sum(fl * np.diff(WINDOW.edges)) - np.sum(line * 0.8)) < 1e-3 * np.sum(line * 0.8)


def test_pixels_outside_the_spectrum_are_masked():
    wave = np.arange(4200.0, 4600.0, 0.8)
    iv, (f,) = to_grid(wave, np.ones(wave.size), ivar=np.ones(wave.size))
    assert f is not None
    inside = (WINDOW.wave > 4201) & (WINDOW.wave < 4599)
    assert (iv[inside] > 0).all() and (iv[WINDOW.wave < 4199] == 0).all() and (f[WINDOW.wave > 4601] == 0).all()
