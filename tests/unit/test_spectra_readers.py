"""SDSS/BOSS and DESI spectrum readers on real files, modified copies and broken files."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from lenscat.errors import InputFileError, LenscatError
from lenscat.spectra.grid import WINDOW, to_grid
from lenscat.spectra.readers import detect_format, iter_spectrum_files, read_spectra
from lenscat.spectra.readers_fits import SpectrumReadError
from lenscat.spectra.readers_sdss import SPPIXMASK_BITS, SPPIXMASK_REJECT_VALUE, estimate_ivar
from lenscat.spectra.spectrum import Spectrum

DATA = Path(__file__).parents[1] / "data" / "spectra"
SDSS = DATA / "sdss"
DESI = DATA / "desi"
SPEC_0403 = SDSS / "spec-0403-51871-0462.fits"
SPEC_FILES = sorted(SDSS.glob("spec-*.fits"))
SPPLATE = SDSS / "spPlate-4055-55359-0020.fits"
COADD = DESI / "coadd-4-80613-thru20210324.fits"
REDROCK = DESI / "redrock-4-80613-thru20210324.fits"
COADD_EDGE = DESI / "coadd-5-169-thru20210419.fits"
ALL_SPECTRUM_FILES = sorted([*SPEC_FILES, SPPLATE, COADD, COADD_EDGE])


def _check_arrays(s: Spectrum) -> None:
    assert s.wave.dtype == np.float64 and s.flux.dtype == np.float32 and s.ivar.dtype == np.float32
    for a in (s.wave, s.flux, s.ivar, s.model, s.sky):
        if a is not None:
            assert a.dtype.isnative and a.shape == s.wave.shape
            assert np.all(np.isfinite(a))
    assert np.all(np.diff(s.wave) > 0)
    assert np.all(s.ivar >= 0)
    assert Path(s.path).is_absolute()


def _one_line_error(exc: pytest.ExceptionInfo[SpectrumReadError], path: Path, *words: str) -> None:
    msg = str(exc.value)
    assert isinstance(exc.value, InputFileError)
    assert "\n" not in msg and str(path) in msg, msg
    for w in words:
        assert w.lower() in msg.lower(), msg


# ------------------------------------------------------------------ SDSS spec files


def test_sdss_spec_0403_ids_redshift_and_arrays() -> None:
    (s,) = read_spectra(SPEC_0403)
    _check_arrays(s)
    assert detect_format(SPEC_0403) == "sdss-spec"
    assert s.survey == "sdss" and (s.plate, s.mjd, s.fiber) == (403, 51871, 462)
    assert s.key == "0403-51871-0462" and s.index == 0 and s.targetid is None
    assert s.ra == pytest.approx(29.312486, abs=1e-5) and s.dec == pytest.approx(0.2545985, abs=1e-5)
    assert s.z == pytest.approx(0.137, abs=1e-3) and s.z_err is not None and 0 < s.z_err < 1e-3
    assert s.spec_class == "GALAXY" and s.subclass is None
    assert s.meta["vdisp"] == pytest.approx(178.4, abs=0.1) and s.meta["zwarning"] == 0
    assert s.model is not None and s.sky is not None and not s.ivar_estimated
    # vacuum wavelengths exactly on the BOSS log10 grid (float32 loglam is not precise enough)
    k = np.log10(s.wave) / 1e-4
    assert np.max(np.abs(k - np.rint(k))) < 1e-6
    raw = fits.getdata(SPEC_0403, "COADD")
    assert np.allclose(s.wave, 10.0 ** raw["loglam"].astype(np.float64), rtol=1e-6)
    # the search window: the file starts at 3808 A, so all but its first pixels are covered
    assert s.wave[0] < 3810.0 and s.wave[-1] > 5000.0
    win = (s.wave >= 3800) & (s.wave <= 5000)
    assert (s.ivar[win] > 0).mean() > 0.95


@pytest.mark.parametrize("path", SPEC_FILES, ids=lambda p: p.name)
def test_every_sdss_spec_file_reads(path: Path) -> None:
    (s,) = read_spectra(path)
    _check_arrays(s)
    plate, mjd, fiber = (int(x) for x in path.stem.split("-")[1:4])
    assert (s.plate, s.mjd, s.fiber) == (plate, mjd, fiber)
    assert s.ra is not None and s.dec is not None and s.z is not None and 0.05 < s.z < 0.3
    assert s.wave[0] < 3830.0 and s.wave[-1] > 9000.0
    assert s.model is not None and s.meta["model_source"] == "sdss-model" and "model_note" not in s.meta


def test_emission_line_galaxy_subclass() -> None:
    (s,) = read_spectra(SDSS / "spec-0295-51585-0596.fits")
    assert s.subclass == "AGN" and s.z == pytest.approx(0.1379, abs=1e-3)


def test_sdss_and_mask_default_bits_zero_ivar(tmp_path: Path) -> None:
    """A pixel with a default and_mask bit gets ivar 0; a mild bit alone does not; NaN flux -> 0."""
    dst = tmp_path / "spec-0403-51871-0462.fits"
    with fits.open(SPEC_0403) as h:
        d = h["COADD"].data
        ivar, mask = d["ivar"], d["and_mask"]
        good = np.flatnonzero((ivar > 0) & (mask == 0))
        j_reject, j_mild, j_nan, j_fullrej = good[[100, 200, 300, 400]]
        mask[j_reject] = 1 << SPPIXMASK_BITS["COMBINEREJ"]
        mask[j_mild] = 1 << SPPIXMASK_BITS["NEARBADPIXEL"]
        mask[j_fullrej] = (1 << SPPIXMASK_BITS["FULLREJECT"]) | (1 << SPPIXMASK_BITS["LOWFLAT"])
        d["flux"][j_nan] = np.nan
        h.writeto(dst)
    (s,) = read_spectra(dst)
    (orig,) = read_spectra(SPEC_0403)
    assert s.ivar[j_reject] == 0 and s.ivar[j_fullrej] == 0
    assert s.ivar[j_mild] == orig.ivar[j_mild] > 0
    assert s.ivar[j_nan] == 0 and s.flux[j_nan] == 0
    assert SPPIXMASK_REJECT_VALUE & (1 << SPPIXMASK_BITS["BRIGHTSKY"])
    # the real file's BRIGHTSKY pixels (bit 23) are masked too
    brightsky = (fits.getdata(SPEC_0403, "COADD")["and_mask"] & (1 << 23)) != 0
    assert brightsky.sum() > 10 and np.all(orig.ivar[brightsky] == 0)


def _dr18_copy(src: Path, dst: Path) -> None:
    """UPPERCASE columns, SPECOBJ renamed SPALL and put before COADD, lower-case EXTNAME for COADD."""
    with fits.open(src) as h:
        coadd, obj = h["COADD"], h["SPECOBJ"]
        cols = [fits.Column(name=c.name.upper(), format=c.format, array=coadd.data[c.name]) for c in coadd.columns]
        new_coadd = fits.BinTableHDU.from_columns(cols)
        new_coadd.header["EXTNAME"] = "coadd"
        new_obj = fits.BinTableHDU(data=obj.data, header=obj.header)
        new_obj.header["EXTNAME"] = "SPALL"
        fits.HDUList([fits.PrimaryHDU(header=h[0].header), new_obj, new_coadd]).writeto(dst)


def test_dr18_style_uppercase_copy_reads_identically(tmp_path: Path) -> None:
    dst = tmp_path / "spec-0403-51871-0462.fits"
    _dr18_copy(SPEC_0403, dst)
    assert [x.upper() for x in fits.getdata(dst, 2).columns.names][:2] == ["FLUX", "LOGLAM"]
    (a,) = read_spectra(SPEC_0403)
    (b,) = read_spectra(dst)
    for name in ("wave", "flux", "ivar", "model", "sky"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    for name in ("plate", "mjd", "fiber", "ra", "dec", "z", "z_err", "spec_class", "subclass"):
        assert getattr(a, name) == getattr(b, name), name
    assert a.meta == b.meta and a.key == b.key


def test_spec_without_specobj_falls_back_to_file_name(tmp_path: Path) -> None:
    dst = tmp_path / "spec-0403-51871-0462.fits"
    with fits.open(SPEC_0403) as h:
        fits.HDUList([fits.PrimaryHDU(header=h[0].header), h["COADD"].copy()]).writeto(dst)
    (s,) = read_spectra(dst)
    assert (s.plate, s.mjd, s.fiber) == (403, 51871, 462) and s.z is None and s.ra is None


# ------------------------------------------------------------------ BOSS spPlate


def test_spplate_flux_only_estimates_ivar() -> None:
    spectra = read_spectra(SPPLATE)
    assert detect_format(SPPLATE) == "boss-spplate"
    assert len(spectra) == 20
    assert [s.fiber for s in spectra] == list(range(1, 21))
    assert [s.index for s in spectra] == list(range(20))
    assert len({s.key for s in spectra}) == 20 and spectra[0].key == "4055-55359-0001"
    for s in spectra:
        _check_arrays(s)
        assert s.survey == "boss" and (s.plate, s.mjd) == (4055, 55359)
        assert s.ra is None and s.dec is None and s.z is None
        assert s.ivar_estimated and (s.ivar > 0).mean() > 0.9
        assert s.model is None and s.sky is None
        assert s.meta["model_source"] is None
        assert s.meta["model_note"] == "no spZbest file next to the spPlate"
    hdr = fits.getheader(SPPLATE)
    assert np.allclose(np.log10(spectra[0].wave), hdr["COEFF0"] + hdr["COEFF1"] * np.arange(4637))
    assert spectra[0].wave[0] < 3800 and spectra[0].wave[-1] > 5000


def test_estimate_ivar_matches_pipeline_noise() -> None:
    """The pixel-scatter estimate is within a factor ~2 of the pipeline's ivar on a real spectrum."""
    (s,) = read_spectra(SPEC_0403)
    est = estimate_ivar(s.flux)
    ok = (s.ivar > 0) & (est > 0)
    assert ok.mean() > 0.9
    ratio = float(np.median(est[ok] / s.ivar[ok]))
    assert 0.5 < ratio < 2.5
    assert np.all(estimate_ivar(np.zeros(50)) == 0)


def test_spplate_full_format_and_spzbest(tmp_path: Path) -> None:
    """Optional HDUs at their format positions (unnamed), plugmap ids, spZbest redshifts and model."""
    with fits.open(SPPLATE) as h:
        flux = h[0].data.astype(np.float32)
        hdr = h[0].header.copy()
    nfib, npix = flux.shape
    ivar = np.full(flux.shape, 4.0, dtype=np.float32)
    andmask = np.zeros(flux.shape, dtype=np.int32)
    andmask[3, 1000] = 1 << SPPIXMASK_BITS["NODATA"]
    andmask[3, 1001] = 1 << SPPIXMASK_BITS["PARTIALREJECT"]
    fiberid = np.arange(101, 101 + nfib, dtype=np.int32)
    plug = fits.BinTableHDU.from_columns(
        [
            fits.Column(name="OBJTYPE", format="10A", array=np.array(["GALAXY"] * nfib)),
            fits.Column(name="RA", format="D", array=np.linspace(236.0, 237.0, nfib)),
            fits.Column(name="DEC", format="D", array=np.linspace(1.0, 2.0, nfib)),
            fits.Column(name="FIBERID", format="J", array=fiberid),
        ]
    )
    hdus = [
        fits.PrimaryHDU(flux, header=hdr),
        fits.ImageHDU(ivar),
        fits.ImageHDU(andmask),
        fits.ImageHDU(np.zeros_like(andmask)),
        fits.ImageHDU(np.ones_like(flux)),
        plug,
        fits.ImageHDU(np.full(flux.shape, 7.0, dtype=np.float32)),
    ]
    plate = tmp_path / "spPlate-4055-55359.fits"
    fits.HDUList(hdus).writeto(plate)
    order = fiberid[::-1]  # spZbest rows in another order: matched by FIBERID
    zb = fits.BinTableHDU.from_columns(
        [
            fits.Column(name="FIBERID", format="J", array=order),
            fits.Column(name="Z", format="E", array=(order - 100) * 0.01),
            fits.Column(name="Z_ERR", format="E", array=np.full(nfib, 1e-4)),
            fits.Column(name="CLASS", format="6A", array=np.array(["GALAXY"] * nfib)),
            fits.Column(name="SUBCLASS", format="21A", array=np.array([""] * nfib)),
            fits.Column(name="ZWARNING", format="J", array=np.zeros(nfib, dtype=np.int32)),
        ]
    )
    model = np.tile(np.arange(nfib, dtype=np.float32)[:, None], (1, npix))
    fits.HDUList([fits.PrimaryHDU(), zb, fits.ImageHDU(model)]).writeto(tmp_path / "spZbest-4055-55359.fits")

    spectra = read_spectra(plate)
    assert len(spectra) == nfib
    s = spectra[3]
    _check_arrays(s)
    assert not s.ivar_estimated and s.fiber == 104 and s.key == "4055-55359-0104"
    assert s.ra == pytest.approx(236.0 + 3 / 19) and s.dec == pytest.approx(1.0 + 3 / 19)
    assert s.z == pytest.approx(0.04) and s.spec_class == "GALAXY" and s.meta["objtype"] == "GALAXY"
    assert s.ivar[1000] == 0 and s.ivar[1001] == 4.0 and s.ivar[999] == 4.0
    assert s.sky is not None and np.all(s.sky == 7.0)
    assert s.model is not None and np.all(s.model == float(np.flatnonzero(order == 104)[0]))
    assert s.meta["model_source"] == "spzbest" and "model_note" not in s.meta
    assert list(iter_spectrum_files(tmp_path)) == [plate]  # the spZbest companion is skipped


# ------------------------------------------------------------------ DESI coadds


def test_desi_coadd_with_redrock() -> None:
    (s,) = read_spectra(COADD)
    _check_arrays(s)
    assert detect_format(COADD) == "desi-coadd"
    assert s.survey == "desi" and s.targetid == 39633345008634465 and s.index == 0
    assert s.plate is None and s.fiber is None
    assert s.ra == pytest.approx(105.48977, abs=1e-4) and s.dec == pytest.approx(56.66930, abs=1e-4)
    assert s.z == pytest.approx(0.3687, abs=1e-4) and s.spec_class == "GALAXY"
    assert s.z_err is not None and s.z_err < 1e-4
    assert s.meta["tileid"] == 80613 and s.meta["petal"] == 4 and s.meta["deltachi2"] > 100
    assert s.key == "tile80613-thru20210324:39633345008634465"
    # one increasing wavelength array from 3600 to 9824 A on the common 0.8 A grid
    assert s.wave[0] == pytest.approx(3600.0) and s.wave[-1] == pytest.approx(9824.0)
    assert s.wave.size == round((9824.0 - 3600.0) / 0.8) + 1
    with fits.open(COADD) as h:
        bw, bf, bi = h["B_WAVELENGTH"].data, h["B_FLUX"].data[0], h["B_IVAR"].data[0]
        rw, rf, ri = h["R_WAVELENGTH"].data, h["R_FLUX"].data[0], h["R_IVAR"].data[0]
    b_only = s.wave < rw[0] - 0.1
    assert np.array_equal(s.flux[b_only], bf[: b_only.sum()].astype(np.float32))
    # B/R overlap: inverse-variance weighted
    j = int(np.searchsorted(s.wave, 5780.0))
    ib, ir = int(np.argmin(np.abs(bw - s.wave[j]))), int(np.argmin(np.abs(rw - s.wave[j])))
    assert s.ivar[j] == pytest.approx(bi[ib] + ri[ir], rel=1e-5)
    assert s.flux[j] == pytest.approx((bf[ib] * bi[ib] + rf[ir] * ri[ir]) / (bi[ib] + ri[ir]), rel=1e-4)
    win = (s.wave >= 3800) & (s.wave <= 5000)
    assert win.sum() >= 1500 and (s.ivar[win] > 0).mean() > 0.95


def test_desi_mask_applied(tmp_path: Path) -> None:
    dst = tmp_path / COADD.name
    with fits.open(COADD) as h:
        h["B_MASK"].data[0, 500] = 1 << 5
        h["B_MASK"].data[0, 501] = 1 << 20
        h["B_IVAR"].data[0, 502] = np.nan
        h.writeto(dst)
    (s,) = read_spectra(dst)
    (orig,) = read_spectra(COADD)
    assert orig.ivar[500] > 0 and orig.ivar[503] > 0
    assert s.ivar[500] == 0 and s.ivar[501] == 0 and s.ivar[502] == 0 and s.ivar[503] == orig.ivar[503]
    assert s.z is None  # no redrock file next to the copy


def test_desi_mostly_masked_file_reads() -> None:
    spectra = read_spectra(COADD_EDGE)
    assert len(spectra) == 5 and [s.index for s in spectra] == list(range(5))
    for s in spectra:
        _check_arrays(s)
        assert s.z is None and s.meta["tileid"] == 169
    assert sum((s.ivar > 0).any() for s in spectra) == 1
    assert spectra[0].targetid is not None and spectra[0].targetid < 0  # unassigned/sky fibers kept
    assert len({s.key for s in spectra}) == 5


def test_keys_unique_across_all_files() -> None:
    keys = [(s.survey, s.key) for p in ALL_SPECTRUM_FILES for s in read_spectra(p)]
    assert len(keys) == 4 + 20 + 1 + 5 and len(set(keys)) == len(keys)


def test_detect_format_uses_content_not_name(tmp_path: Path) -> None:
    for src, fmt in ((SPEC_0403, "sdss-spec"), (SPPLATE, "boss-spplate"), (COADD, "desi-coadd")):
        dst = tmp_path / f"renamed-{fmt}.fits"
        shutil.copy(src, dst)
        assert detect_format(dst) == fmt
        assert len(read_spectra(dst)) >= 1


# ------------------------------------------------------------------ the search-window grid


def test_grid_exact_copy_for_sdss() -> None:
    (s,) = read_spectra(SPEC_0403)
    ivar, (flux, model) = to_grid(s.wave, s.flux, s.model, ivar=s.ivar)
    dst = np.rint(np.log10(s.wave) / WINDOW.dlog).astype(int) - WINDOW.k0
    ok = (dst >= 0) & (dst < WINDOW.n)
    assert flux is not None and model is not None and s.model is not None
    assert np.array_equal(flux[dst[ok]], s.flux[ok]) and np.array_equal(model[dst[ok]], s.model[ok])
    assert np.array_equal(ivar[dst[ok]], s.ivar[ok])
    assert np.all(ivar[: dst[ok][0]] == 0)  # window pixels below the file's first pixel


def test_grid_resamples_desi() -> None:
    (s,) = read_spectra(COADD)
    ivar, (flux,) = to_grid(s.wave, s.flux, ivar=s.ivar)
    assert flux is not None and np.all(np.isfinite(flux)) and np.all(np.isfinite(ivar))
    assert (ivar > 0).mean() > 0.9
    # flux-conserving: the window mean agrees with the native mean over the same range
    win = (s.wave >= WINDOW.edges[0]) & (s.wave <= WINDOW.edges[-1])
    assert float(np.mean(flux)) == pytest.approx(float(np.mean(s.flux[win])), rel=0.02)


# ------------------------------------------------------------------ files and errors


def test_iter_spectrum_files_on_test_data() -> None:
    assert sorted(iter_spectrum_files(DATA)) == ALL_SPECTRUM_FILES
    assert sorted(iter_spectrum_files([str(SDSS / "spec-*.fits"), COADD])) == sorted([*SPEC_FILES, COADD])
    assert list(iter_spectrum_files(SPEC_0403)) == [SPEC_0403]


def test_iter_spectrum_files_skips_companions_and_other_fits(tmp_path: Path) -> None:
    shutil.copy(REDROCK, tmp_path / REDROCK.name)
    shutil.copy(SPEC_0403, tmp_path / "mystery.fits")  # recognised by content
    (tmp_path / "notes.txt").write_text("not a spectrum")
    (tmp_path / "broken.fits").write_text("not FITS either")
    fits.BinTableHDU.from_columns([fits.Column(name="RA", format="D", array=[1.0])]).writeto(
        tmp_path / "tractor-1.fits"
    )
    sub = tmp_path / "sub"
    sub.mkdir()
    shutil.copy(COADD, sub / COADD.name)
    assert list(iter_spectrum_files(tmp_path)) == [tmp_path / "mystery.fits", sub / COADD.name]
    # named on its own, a file is never dropped unseen: reading it reports what is wrong
    named = [tmp_path / "notes.txt", tmp_path / "tractor-1.fits", tmp_path / "notes.txt"]
    assert list(iter_spectrum_files(named)) == named[:2]
    with pytest.raises(SpectrumReadError) as exc:
        list(iter_spectrum_files(tmp_path / "nothing-here"))
    _one_line_error(exc, tmp_path / "nothing-here", "no such file")


@pytest.mark.parametrize("src", [SPEC_0403, COADD, SPPLATE], ids=lambda p: p.name)
def test_truncated_file(tmp_path: Path, src: Path) -> None:
    dst = tmp_path / src.name
    dst.write_bytes(src.read_bytes()[:1000])
    with pytest.raises(SpectrumReadError) as exc:
        read_spectra(dst)
    _one_line_error(exc, dst, "truncated")


@pytest.mark.parametrize("nbytes", [2880 * 10, 2880 * 20, 2880 * 52, 2880 * 57 + 1440])
def test_truncated_at_block_boundary(tmp_path: Path, nbytes: int) -> None:
    """Cut inside the COADD data or the SPECOBJ header on a 2880-byte boundary, or mid-block in
    the last HDU (SPZLINE, which the reader does not otherwise read)."""
    dst = tmp_path / SPEC_0403.name
    dst.write_bytes(SPEC_0403.read_bytes()[:nbytes])
    with pytest.raises(SpectrumReadError) as exc:
        read_spectra(dst)
    _one_line_error(exc, dst)
    assert "truncated" in str(exc.value).lower() or "corrupt" in str(exc.value).lower()


def test_text_file_named_fits(tmp_path: Path) -> None:
    dst = tmp_path / "spec-0001-50000-0001.fits"
    dst.write_text("plate,mjd,fiber\n1,50000,1\n")
    with pytest.raises(SpectrumReadError) as exc:
        read_spectra(dst)
    _one_line_error(exc, dst, "not a FITS file")
    empty = tmp_path / "empty.fits"
    empty.write_bytes(b"")
    with pytest.raises(SpectrumReadError) as exc:
        detect_format(empty)
    _one_line_error(exc, empty, "empty")


def test_missing_hdu_and_columns(tmp_path: Path) -> None:
    only_primary = tmp_path / "spec-0403-51871-0462.fits"
    fits.PrimaryHDU().writeto(only_primary)
    with pytest.raises(SpectrumReadError) as exc:
        read_spectra(only_primary)
    _one_line_error(exc, only_primary, "unknown format")

    no_flux = tmp_path / "noflux.fits"
    with fits.open(SPEC_0403) as h:
        c = h["COADD"]
        cols = [fits.Column(name=x.name, format=x.format, array=c.data[x.name]) for x in c.columns if x.name != "flux"]
        fits.HDUList([fits.PrimaryHDU(header=h[0].header), fits.BinTableHDU.from_columns(cols, name="COADD")]).writeto(
            no_flux
        )
    with pytest.raises(SpectrumReadError) as exc:
        read_spectra(no_flux)
    _one_line_error(exc, no_flux, "missing column flux", "COADD")

    no_fibermap = tmp_path / "coadd-nofibermap.fits"
    with fits.open(COADD) as h:
        fits.HDUList([h[0].copy()] + [x.copy() for x in h[1:] if x.name != "FIBERMAP"]).writeto(no_fibermap)
    with pytest.raises(SpectrumReadError) as exc:
        read_spectra(no_fibermap)
    _one_line_error(exc, no_fibermap, "missing HDU FIBERMAP")

    with pytest.raises(SpectrumReadError) as exc:
        read_spectra(REDROCK)
    _one_line_error(exc, REDROCK, "redrock")

    with pytest.raises(SpectrumReadError) as exc:
        read_spectra(tmp_path / "absent.fits")
    _one_line_error(exc, tmp_path / "absent.fits", "no such file")


def test_decreasing_wavelength_rejected(tmp_path: Path) -> None:
    dst = tmp_path / "spPlate-4055-55359.fits"
    with fits.open(SPPLATE) as h:
        h[0].header["COEFF1"] = -1e-4
        h.writeto(dst)
    with pytest.raises(SpectrumReadError) as exc:
        read_spectra(dst)
    _one_line_error(exc, dst, "wavelength not increasing")


def test_broken_redrock_companion_is_named(tmp_path: Path) -> None:
    shutil.copy(COADD, tmp_path / COADD.name)
    bad = tmp_path / REDROCK.name
    bad.write_bytes(REDROCK.read_bytes()[:1000])
    with pytest.raises(SpectrumReadError) as exc:
        read_spectra(tmp_path / COADD.name)
    _one_line_error(exc, bad, "truncated")


def test_gzipped_spec_file_reads_identically(tmp_path: Path) -> None:
    import gzip

    dst = tmp_path / (SPEC_0403.name + ".gz")
    with gzip.open(dst, "wb") as g:
        g.write(SPEC_0403.read_bytes())
    (a,) = read_spectra(SPEC_0403)
    (b,) = read_spectra(dst)
    assert np.array_equal(a.flux, b.flux) and np.array_equal(a.wave, b.wave) and a.z == b.z
    assert list(iter_spectrum_files(tmp_path)) == [dst]


# ------------------------------------------------------------------ pipeline models (redrock)

SHIPPED_TEMPLATE = "rrtemplate-galaxy-2016-a85ec73.fits.gz"


def _dense_resolution(rdata: np.ndarray) -> np.ndarray:
    """The resolution matrix written out from DESI's definition: diagonal d = ndiag//2 - k of
    column j is rdata[k, j], i.e. R[j - d, j] = rdata[k, j]."""
    ndiag, n = rdata.shape
    dense = np.zeros((n, n))
    for k in range(ndiag):
        d = ndiag // 2 - k
        for j in range(n):
            if 0 <= j - d < n:
                dense[j - d, j] = rdata[k, j]
    return dense


def _template_average(wave_rest: np.ndarray, y: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Pixel averages of the piecewise-linear y(wave_rest) between observed-frame ``edges`` already
    divided by (1 + z): trapezoids over the union of the samples and the edges (exact)."""
    pts = np.union1d(wave_rest[(wave_rest > edges[0]) & (wave_rest < edges[-1])], edges)
    vals = np.interp(pts, wave_rest, y)
    cum = np.concatenate([[0.0], np.cumsum(0.5 * (vals[1:] + vals[:-1]) * np.diff(pts))])
    at = cum[np.searchsorted(pts, edges)]
    return np.diff(at) / np.diff(edges)


def test_resolution_product_equals_dense_matrix() -> None:
    from scipy.sparse import dia_matrix

    from lenscat.spectra.redrock import apply_resolution

    rng = np.random.default_rng(31)
    with fits.open(COADD) as h:
        real = np.asarray(h["B_RESOLUTION"].data[0][:, 500:560], dtype=np.float64)
    for rdata in (real, rng.normal(size=(11, 60)), rng.normal(size=(5, 7)), rng.normal(size=(11, 4))):
        n = rdata.shape[1]
        f = rng.normal(size=(n,))
        dense = _dense_resolution(rdata)
        offsets = np.arange(rdata.shape[0] // 2, -(rdata.shape[0] // 2) - 1, -1)
        assert np.allclose(dia_matrix((rdata, offsets), shape=(n, n)).toarray(), dense)
        assert np.allclose(apply_resolution(rdata, f), dense @ f, rtol=1e-12, atol=1e-12)
    # batched: one matrix per row; big-endian float32 as FITS stores it
    rs = rng.normal(size=(3, 11, 40)).astype(">f4")
    fs = rng.normal(size=(3, 40)).astype(np.float32)
    out = apply_resolution(rs, fs)
    assert out.dtype == np.float32
    for i in range(3):
        assert np.allclose(out[i], _dense_resolution(rs[i].astype(np.float64)) @ fs[i], rtol=1e-5, atol=1e-5)


def _write_redrock(src: Path, dst: Path, coeff: np.ndarray, ncoeff: int | None) -> None:
    with fits.open(src) as h:
        tab = h["REDSHIFTS"].data.copy()
        tab["COEFF"][0] = coeff
        if ncoeff is not None:
            tab["NCOEFF"][0] = ncoeff
        fits.HDUList([fits.PrimaryHDU(header=h[0].header), fits.BinTableHDU(tab, name="REDSHIFTS")]).writeto(dst)


def test_desi_redrock_model_matches_flux_made_from_it(tmp_path: Path) -> None:
    """A coadd whose flux is the shipped 5-term template (z, COEFF of its redrock file) convolved
    with each arm's own resolution matrix, plus noise: the reader's model is that flux to far
    below the noise."""
    from lenscat.spectra.reference import data_path

    with fits.open(data_path(SHIPPED_TEMPLATE)) as t:
        basis = np.asarray(t[0].data, dtype=np.float64)
        rest = t[0].header["CRVAL1"] + t[0].header["CDELT1"] * np.arange(basis.shape[1])
    z = float(fits.getdata(REDROCK, "REDSHIFTS")["Z"][0])
    rng = np.random.default_rng(5)
    shape = np.array([1.0, 0.3, -0.2, 0.1, 0.05])
    coadd = tmp_path / COADD.name
    truth: dict[str, np.ndarray] = {}
    raw: dict[str, np.ndarray] = {}
    with fits.open(COADD) as h:
        scale = float(np.median(h["R_FLUX"].data[0]))  # a model as bright as the real galaxy
        for a in ("B", "R", "Z"):
            w = np.asarray(h[f"{a}_WAVELENGTH"].data, dtype=np.float64)
            mid = 0.5 * (w[1:] + w[:-1])
            edges = np.concatenate([[w[0] - (mid[0] - w[0])], mid, [w[-1] + (w[-1] - mid[-1])]])
            raw[a] = _template_average(rest, shape @ basis, edges / (1.0 + z))
            truth[a] = _dense_resolution(np.asarray(h[f"{a}_RESOLUTION"].data[0], dtype=np.float64)) @ raw[a]
        norm = scale / float(np.median(truth["R"]))
        for a in ("B", "R", "Z"):
            truth[a] *= norm
            raw[a] *= norm
            ivar = np.asarray(h[f"{a}_IVAR"].data, dtype=np.float32).copy()
            ivar[ivar <= 0] = np.median(ivar[ivar > 0])
            noise = rng.normal(size=ivar.shape) / np.sqrt(ivar)
            h[f"{a}_FLUX"].data = (truth[a][None, :] + noise).astype(np.float32)
            h[f"{a}_IVAR"].data = ivar
            h[f"{a}_MASK"].data = np.zeros(ivar.shape, dtype=np.int32)
        h.writeto(coadd)
    _write_redrock(REDROCK, tmp_path / REDROCK.name, np.concatenate([shape * norm, np.zeros(5)]), 5)

    (s,) = read_spectra(coadd)
    _check_arrays(s)
    assert s.meta["model_source"] == "redrock" and s.meta["model_template"] == SHIPPED_TEMPLATE
    assert "model_note" not in s.meta and s.model is not None
    # the noiseless truth merged as the reader merges arms (inverse-variance weights)
    num, den, unconv = np.zeros(s.wave.size), np.zeros(s.wave.size), np.zeros(s.wave.size)
    with fits.open(coadd) as h:
        for a in ("B", "R", "Z"):
            idx = np.searchsorted(s.wave, h[f"{a}_WAVELENGTH"].data - 0.01)
            assert np.allclose(s.wave[idx], h[f"{a}_WAVELENGTH"].data)
            iv = h[f"{a}_IVAR"].data[0].astype(np.float64)
            np.add.at(num, idx, truth[a] * iv)
            np.add.at(unconv, idx, raw[a] * iv)
            np.add.at(den, idx, iv)
    expected, expected_raw = num / den, unconv / den
    sigma = 1.0 / np.sqrt(s.ivar)
    # model against the noiseless flux: a tiny fraction of the noise (float32 rounding)
    assert np.max(np.abs(s.model - expected) / sigma) < 1e-3
    assert np.max(np.abs(s.model - expected)) < 1e-5 * np.max(np.abs(expected))
    # against the noisy flux: residuals are the noise (chi2 per pixel ~ 1)
    chi2 = float(np.mean((s.flux - s.model) ** 2 * s.ivar))
    assert 0.95 < chi2 < 1.05, chi2
    # the resolution matters at this precision: without it the model would be off
    assert np.max(np.abs(expected_raw - expected) / sigma) > 0.05


def test_desi_ten_term_redrock_fit_falls_back_with_a_note() -> None:
    (s,) = read_spectra(COADD)
    assert s.model is None and s.meta["model_source"] is None and "model_template" not in s.meta
    assert s.meta["model_note"] == (
        "redrock COEFF has 10 terms; available GALAXY templates have 5 (set LENSCAT_REDROCK_TEMPLATES)"
    )
    (e, *_) = read_spectra(COADD_EDGE)
    assert e.model is None and e.meta["model_note"] == "no redrock/zbest file next to the coadd"


def _write_template(path: Path, nbasis: int, version: str | None) -> None:
    from lenscat.spectra.reference import data_path

    with fits.open(data_path(SHIPPED_TEMPLATE)) as t:
        hdr = t[0].header
        basis = np.asarray(t[0].data)
        keep = slice(10_000, 62_000)  # rest 2167-7367 A: covers z = 0.3687 at 3600-9824 A
        rest0 = hdr["CRVAL1"] + hdr["CDELT1"] * keep.start
        data = np.concatenate([basis[:, keep], 0.5 * basis[:, keep]])[:nbasis].astype(np.float32)
    out = fits.PrimaryHDU(data)
    out.header["EXTNAME"] = "BASIS_VECTORS"
    out.header["CRVAL1"] = rest0
    out.header["CDELT1"] = hdr["CDELT1"]
    out.header["RRTYPE"] = "GALAXY"
    out.header["RRSUBTYP"] = ""
    if version is not None:
        out.header["VERSION"] = version
    out.writeto(path)


def test_user_template_directory_setting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """LENSCAT_REDROCK_TEMPLATES: a 10-term GALAXY template of the version the redrock file names
    rebuilds the real fit; one of another version is refused with a note."""
    from lenscat.settings import get_settings

    good, other = tmp_path / "good", tmp_path / "other"
    good.mkdir()
    other.mkdir()
    _write_template(good / "rrtemplate-GALAXY-None-v2.6.fits", 10, "2.6")
    _write_template(other / "rrtemplate-GALAXY-None-v9.9.fits", 10, "9.9")
    try:
        monkeypatch.setenv("LENSCAT_REDROCK_TEMPLATES", str(good))
        get_settings.cache_clear()
        (s,) = read_spectra(COADD)
        assert s.meta["model_source"] == "redrock" and s.model is not None
        assert s.meta["model_template"] == "rrtemplate-GALAXY-None-v2.6.fits"
        assert np.all(np.isfinite(s.model)) and np.any(s.model != 0)
        monkeypatch.setenv("LENSCAT_REDROCK_TEMPLATES", str(other))
        get_settings.cache_clear()
        (s,) = read_spectra(COADD)
        assert s.model is None and s.meta["model_note"] == (
            "redrock used GALAXY template version 2.6; available versions 9.9 (set LENSCAT_REDROCK_TEMPLATES)"
        )
        monkeypatch.setenv("LENSCAT_REDROCK_TEMPLATES", str(tmp_path / "missing"))
        get_settings.cache_clear()
        with pytest.raises(LenscatError, match="redrock template directory does not exist"):
            read_spectra(COADD)
    finally:
        get_settings.cache_clear()


def test_select_template_rules() -> None:
    from lenscat.spectra.redrock import RedrockTemplate
    from lenscat.spectra.redrock_models import select_template

    wave = np.linspace(1000.0, 2000.0, 11)

    def tmpl(st: str, sub: str, n: int, version: str | None = None) -> RedrockTemplate:
        return RedrockTemplate(st, sub, version, wave, np.ones((n, wave.size), np.float32), f"{st}{sub}{n}")

    ts = [tmpl("GALAXY", "", 5), tmpl("GALAXY", "", 10), tmpl("QSO", "HIZ", 4), tmpl("STAR", "K", 5)]
    c = np.array([1.0, 2, 3, 0, 0, 0, 0, 0, 0, 0])
    assert select_template(ts, "GALAXY", "", c, 10)[0] is ts[1]
    assert select_template(ts, "GALAXY", None, c, 5)[0] is ts[0]
    assert select_template(ts, "qso", "hiz", c, 4)[0] is ts[2]
    assert select_template(ts, "STAR", "K", c, 5)[0] is ts[3]
    # no NCOEFF (older files): the smallest template that holds the non-zero terms
    assert select_template(ts, "GALAXY", "", c, None)[0] is ts[0]
    assert select_template(ts, "GALAXY", "", np.arange(1.0, 11.0), None)[0] is ts[1]
    t, why = select_template(ts, "STAR", "M", c, 5)
    assert t is None and why == (
        "no redrock STAR:::M template available (have GALAXY, QSO:::HIZ, STAR:::K; set LENSCAT_REDROCK_TEMPLATES)"
    )
    t, why = select_template(ts, "GALAXY", "", np.zeros(10), 5)
    assert t is None and why == "redrock row has no usable COEFF"
