import numpy as np

from lenscat.simulate.catalogue import in_footprint, simulate_catalog


def test_simulated_catalogue_is_realistic_and_deterministic(data_dir):
    a = simulate_catalog(2000, seed=3)
    b = simulate_catalog(2000, seed=3)
    assert len(a) == 2000 and np.array_equal(a["ra"], b["ra"])
    assert in_footprint(np.asarray(a["ra"]), np.asarray(a["dec"])).all()
    r = np.asarray(a["mag_r"])
    assert r.min() >= 14 and r.max() <= 23.5 and np.median(r) > 21  # faint galaxies dominate
    assert set(np.unique(a["type"])) <= {"PSF", "REX", "EXP", "DEV", "SER"}
    assert ((np.asarray(a["ebv"]) > 0) & (np.asarray(a["ebv"]) < 0.6)).all()
    keys = set(zip(a["brickid"].tolist(), a["objid"].tolist(), strict=True))
    assert len(keys) == len(a)


def test_lens_positions_get_a_deflector(data_dir):
    t = simulate_catalog(100, seed=1, lens_list=data_dir / "catalogs" / "stein2021_new_lenses.tsv")
    assert len(t) > 100 + 500  # most Stein lenses are inside the DECaLS-like footprint
