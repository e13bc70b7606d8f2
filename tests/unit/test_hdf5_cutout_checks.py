"""Stein-layout HDF5 files: wrong-shaped cutouts are refused, and the file digest covers the pixels."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from lenscat.catalogue.ingest_log import file_sha256
from lenscat.catalogue.ingest_validate import prepare_sources
from lenscat.errors import InputFileError
from lenscat.io.hdf5 import hdf5_fingerprint
from lenscat.io.readers import read_table


def _write(path, images) -> None:
    n = images.shape[0]
    with h5py.File(path, "w") as fh:
        fh["ra"] = np.linspace(150, 151, n)
        fh["dec"] = np.linspace(2, 3, n)
        fh["objid"] = np.arange(n)
        fh["images"] = images


@pytest.mark.parametrize("shape", [(4, 152, 152), (4, 3, 4, 4), (4, 3, 152), (4, 40, 32, 32)])
def test_wrong_shaped_images_are_refused_naming_file_dataset_and_expected_shape(tmp_path, shape):
    p = tmp_path / "bad.h5"
    _write(p, np.zeros(shape, np.float32))
    with pytest.raises(InputFileError) as err:
        prepare_sources(p, "s")
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(f"{p}: dataset 'images' has shape {shape}")
    assert "expected (N, bands, H, W)" in msg and "(N, 3, 152, 152)" in msg


def test_digest_covers_pixels_and_finds_the_changed_rows(tmp_path):
    rng = np.random.default_rng(0)
    p = tmp_path / "s.h5"
    _write(p, rng.normal(size=(5, 3, 20, 20)).astype(np.float32))
    before = read_table(p)
    assert before.sha256 == file_sha256(p)  # the ingest's digest is the one `db files` recomputes
    assert before.image_digests is not None and before.image_digests.shape == (5, 16)
    with h5py.File(p, "r+") as fh:  # one pixel of row 3, in place
        fh["images"][3, 1, 7, 7] += 1.0
    after = read_table(p)
    assert after.image_digests is not None
    assert after.sha256 != before.sha256 and after.sha256 == file_sha256(p)
    changed = np.flatnonzero((after.image_digests != before.image_digests).any(axis=1))
    assert changed.tolist() == [3]
    with h5py.File(p, "r") as fh:  # the catalogue part alone is unchanged (what older ingests recorded)
        fp = hdf5_fingerprint(fh, progress=False)
    assert fp.sha256 == after.sha256 and fp.catalogue_sha256 != fp.sha256


def test_files_without_images_keep_their_digest(tmp_path):
    p = tmp_path / "cat.h5"
    with h5py.File(p, "w") as fh:
        fh["ra"] = np.array([1.0, 2.0])
        fh["dec"] = np.array([3.0, 4.0])
    with h5py.File(p, "r") as fh:
        fp = hdf5_fingerprint(fh, progress=False)
    assert fp.image_digests is None and fp.sha256 == fp.catalogue_sha256 == file_sha256(p)
