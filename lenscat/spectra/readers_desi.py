"""The DESI coadd reader (format ``desi-coadd``).

DESI ``coadd-*.fits``: arms ``{B,R,Z}_WAVELENGTH/_FLUX/_IVAR/_MASK/_RESOLUTION`` and ``FIBERMAP``, with
redshifts and redrock fits from ``redrock-*.fits`` (or ``zbest-*.fits``) of the same suffix next to
it. The arms share DESI's 0.8 A grid, so they are merged pixel by pixel with inverse-variance weights
on the overlaps (as desispec's ``coadd_cameras`` does); arms on different grids are instead used only
redward of the previous arm's last pixel (B, then R, then Z). Models are rebuilt from the redrock fit
(:mod:`lenscat.spectra.redrock`), evaluated per arm, convolved with the arm's ``*_RESOLUTION``
matrix and merged like the flux. Any DESI MASK bit sets ``ivar = 0``.

DESI keys: a TARGETID recurs across tiles and coadd groups, so for tile-based coadds
(``coadd-PETAL-TILE-GROUP.fits``, or TILEID in the header) ``meta['program']`` is
``'tile<TILEID>-<GROUP>'`` (e.g. ``tile80613-thru20210324``) and the file's own program, if any, is
kept as ``meta['desi_program']``; healpix coadds (``coadd-SURVEY-PROGRAM-HPX.fits``) keep the real
survey and program.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits

from lenscat.spectra.reader_table import register_reader
from lenscat.spectra.readers_fits import (
    SpectrumReadError,
    _check_wave,
    _clean,
    _columns,
    _find_hdu,
    _float,
    _hdu_names,
    _int,
    _pick,
    _read_fields,
    _read_image,
    _require_hdu,
    _str,
    _with_fits,
)
from lenscat.spectra.redrock import header_versions, load_templates
from lenscat.spectra.redrock_models import RedrockFit, coadd_models
from lenscat.spectra.spectrum import Spectrum

_COADD_NAME = re.compile(r"^coadd-", re.IGNORECASE)


_DESI_TILE_NAME = re.compile(r"^coadd-(\d+)-(\d+)-([A-Za-z]*\d+|all)", re.IGNORECASE)


_DESI_HPX_NAME = re.compile(r"^coadd-([A-Za-z][A-Za-z0-9]*)-([A-Za-z][A-Za-z0-9]*)-(\d+)", re.IGNORECASE)


def _find_redrock(path: Path) -> Path | None:
    m = _COADD_NAME.match(path.name)
    if m is None:
        return None
    suffix = path.name[m.end() :]
    for prefix in ("redrock-", "zbest-"):
        for suf in (suffix, suffix + ".gz", suffix.removesuffix(".gz")):
            cand = path.parent / (prefix + suf)
            if cand.is_file():
                return cand
    return None


def _read_redrock(zpath: Path) -> tuple[dict[int, dict[str, Any]], dict[str, str]]:
    """Per-TARGETID redshift rows (with COEFF/NCOEFF when present) and the header's template versions."""

    def read(h: fits.HDUList) -> tuple[dict[int, dict[str, Any]], dict[str, str]]:
        tab = _find_hdu(h, ("REDSHIFTS", "ZBEST"))
        if tab is None:
            raise SpectrumReadError(zpath, "missing HDU REDSHIFTS / ZBEST")
        cols = _columns(tab)
        for req in ("TARGETID", "Z"):
            if req not in cols:
                raise SpectrumReadError(zpath, f"missing column {req} in HDU {tab.name}")
        picks = {
            k: n
            for k, a in {
                "targetid": ("TARGETID",),
                "z": ("Z",),
                "z_err": ("ZERR", "Z_ERR"),
                "spectype": ("SPECTYPE",),
                "subtype": ("SUBTYPE",),
                "zwarn": ("ZWARN", "ZWARNING"),
                "chi2": ("CHI2",),
                "deltachi2": ("DELTACHI2",),
                "coeff": ("COEFF",),
                "ncoeff": ("NCOEFF",),
            }.items()
            if (n := _pick(cols, a)) is not None
        }
        vals = _read_fields(zpath, tab, picks.values())
        tids = vals[picks["targetid"]]
        rows = {int(t): {k: vals[n][r] for k, n in picks.items()} for r, t in enumerate(tids)}
        return rows, header_versions(h[0].header)

    return _with_fits(zpath, read)


def _desi_models(
    h: fits.HDUList,
    path: Path,
    arms: list[tuple[str, np.ndarray, np.ndarray, np.ndarray]],
    targetids: np.ndarray,
    zrows: dict[int, dict[str, Any]],
    versions: dict[str, str],
    zpath: Path | None,
) -> tuple[list[list[np.ndarray] | None], list[str | None], list[str | None]]:
    """Per target: the redrock model of each arm (or None), a one-line note, the template used."""
    n = int(targetids.size)
    if zpath is None:
        return [None] * n, ["no redrock/zbest file next to the coadd"] * n, [None] * n
    fits_: list[RedrockFit | None] = []
    for t in targetids:
        zr = zrows.get(int(t))
        if zr is None:
            fits_.append(None)
            continue
        coeff = np.asarray(zr["coeff"], dtype=np.float64).ravel() if "coeff" in zr else None
        ncoeff = _int(zr.get("ncoeff"))
        if ncoeff is not None and (coeff is None or not 0 < ncoeff <= coeff.size):
            ncoeff = None  # TNULL or nonsense: infer from COEFF
        fits_.append(
            RedrockFit(
                z=_float(zr.get("z")),
                coeff=coeff,
                spectype=_str(zr.get("spectype")),
                subtype=_str(zr.get("subtype")),
                ncoeff=ncoeff,
            )
        )

    def resolution(a: int, rows: np.ndarray) -> np.ndarray | None:
        name, wave = arms[a][0], arms[a][1]
        hdu = _find_hdu(h, (f"{name}_RESOLUTION",))
        if hdu is None:
            return None
        if hdu.data is None:
            raise SpectrumReadError(path, f"HDU {name}_RESOLUTION has no data")
        data = np.asarray(hdu.data)  # FITS byte order: apply_resolution reads it as is, no copy
        if data.ndim == 2:
            data = data[None]
        if data.ndim != 3 or data.shape[0] != n or data.shape[2] != wave.size or data.shape[1] % 2 != 1:
            raise SpectrumReadError(
                path,
                f"HDU {name}_RESOLUTION has shape {data.shape}, expected ({n}, odd number of diagonals, {wave.size})",
            )
        return data if rows.size == n else data[rows]

    return coadd_models(
        fits_, [w for _, w, _, _ in arms], resolution, load_templates(), versions, arm_names=[a for a, _, _, _ in arms]
    )


def _merge_arms(
    arms: list[tuple[np.ndarray, np.ndarray, np.ndarray]], models: list[np.ndarray] | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """One increasing spectrum from arms sorted by start wavelength (see the module docstring).

    ``models`` (one array per arm, or None) are merged with the same inverse-variance weights as
    the flux; the fourth value is the merged model (None without ``models``).
    """
    if len(arms) == 1:
        return (*arms[0], None if models is None else models[0])
    w0 = arms[0][0]
    dw = float(np.median(np.diff(w0)))
    offsets: list[int] = []
    aligned = dw > 0
    for w, _, _ in arms:
        d = np.diff(w)
        off = (w[0] - w0[0]) / dw if dw > 0 else 0.0
        if not (np.allclose(d, dw, rtol=1e-6, atol=1e-9) and abs(off - round(off)) < 1e-3):
            aligned = False
            break
        offsets.append(int(round(off)))
    mods = models if models is not None else [None] * len(arms)
    if aligned:
        n = max(o + w.size for o, (w, _, _) in zip(offsets, arms, strict=True))
        wave = np.full(n, np.nan)
        num = np.zeros(n)
        den = np.zeros(n)
        first = np.full(n, np.nan)
        mnum = np.zeros(n) if models is not None else None
        mfirst = np.full(n, np.nan) if models is not None else None
        for o, (w, f, iv), m in zip(offsets, arms, mods, strict=True):
            sl = slice(o, o + w.size)
            unset = np.isnan(wave[sl])
            wave[sl][unset] = w[unset]
            first[sl][unset] = f[unset]
            num[sl] += f.astype(np.float64) * iv
            den[sl] += iv
            if m is not None and mnum is not None and mfirst is not None:
                mfirst[sl][unset] = m[unset]
                mnum[sl] += m.astype(np.float64) * iv
        if not np.isnan(wave).any():
            with np.errstate(invalid="ignore", divide="ignore"):
                flux = np.where(den > 0, num / den, first)
                model = (
                    None if mnum is None or mfirst is None else np.where(den > 0, mnum / den, mfirst).astype(np.float32)
                )
            return wave, flux.astype(np.float32), den.astype(np.float32), model
    # different grids: each arm only redward of the previous one's last pixel
    ws, fs, ivs, ms = [arms[0][0]], [arms[0][1]], [arms[0][2]], [mods[0]]
    for (w, f, iv), m in zip(arms[1:], mods[1:], strict=True):
        keep = w > ws[-1][-1]
        ws.append(w[keep])
        fs.append(f[keep])
        ivs.append(iv[keep])
        ms.append(None if m is None else m[keep])
    merged = None if models is None else np.concatenate([m for m in ms if m is not None])
    return np.concatenate(ws), np.concatenate(fs), np.concatenate(ivs), merged


def _read_desi_coadd(h: fits.HDUList, path: Path) -> list[Spectrum]:
    hdr0 = h[0].header
    names = _hdu_names(h)
    arm_names = [
        n[: -len("_WAVELENGTH")]
        for n in names
        if n.endswith("_WAVELENGTH") and n[: -len("_WAVELENGTH")] + "_FLUX" in names
    ]
    fmap = _require_hdu(h, path, ("FIBERMAP",))
    fcols = _columns(fmap)
    if "TARGETID" not in fcols:
        raise SpectrumReadError(path, f"missing column TARGETID in HDU {fmap.name}")
    picks = {
        k: n
        for k, a in {
            "targetid": ("TARGETID",),
            "ra": ("TARGET_RA", "RA"),
            "dec": ("TARGET_DEC", "DEC"),
            "fiber": ("FIBER",),
            "objtype": ("OBJTYPE",),
            "fiberstatus": ("COADD_FIBERSTATUS", "FIBERSTATUS"),
            "tileid": ("TILEID",),
            "petal": ("PETAL_LOC",),
            "survey": ("SURVEY",),
            "program": ("PROGRAM",),
        }.items()
        if (n := _pick(fcols, a)) is not None
    }
    fm = _read_fields(path, fmap, picks.values())
    fm = {k: fm[n] for k, n in picks.items()}
    ntarget = fm["targetid"].size

    arms: list[tuple[str, np.ndarray, np.ndarray, np.ndarray]] = []
    for a in arm_names:
        wave = _read_image(path, _require_hdu(h, path, (f"{a}_WAVELENGTH",)), f"{a}_WAVELENGTH")
        wave = np.asarray(wave, dtype=np.float64).ravel()
        _check_wave(path, wave, f" in HDU {a}_WAVELENGTH")
        flux = np.atleast_2d(_read_image(path, _require_hdu(h, path, (f"{a}_FLUX",)), f"{a}_FLUX"))
        ivar = np.atleast_2d(_read_image(path, _require_hdu(h, path, (f"{a}_IVAR",)), f"{a}_IVAR"))
        if flux.shape != (ntarget, wave.size) or ivar.shape != flux.shape:
            raise SpectrumReadError(
                path,
                f"arm {a}: flux {flux.shape} / ivar {ivar.shape} do not match "
                f"{ntarget} FIBERMAP rows x {wave.size} wavelengths",
            )
        ivar = np.array(ivar, dtype=np.float32)
        mhdu = _find_hdu(h, (f"{a}_MASK",))
        if mhdu is not None:
            mask = np.atleast_2d(_read_image(path, mhdu, f"{a}_MASK"))
            if mask.shape == flux.shape:
                ivar[mask != 0] = 0.0
        arms.append((a, wave, flux, ivar))
    arms.sort(key=lambda t: float(t[1][0]))

    # identifiers that make Spectrum.key unique across files
    base: dict[str, Any] = {}
    survey_h, program_h = _str(hdr0.get("SURVEY")), _str(hdr0.get("PROGRAM")) or _str(hdr0.get("FAPRGRM"))
    mt, mh = _DESI_TILE_NAME.match(path.name), _DESI_HPX_NAME.match(path.name)
    tile = _int(hdr0.get("TILEID"))
    petal = _int(hdr0.get("PETAL"))
    if tile is None and mt is not None:
        tile, petal = int(mt.group(2)), int(mt.group(1)) if petal is None else petal
    if (
        tile is None
        and "tileid" in fm
        and ntarget
        and np.all(fm["tileid"] == fm["tileid"][0])
        and mh is None
        and hdr0.get("HPXPIXEL") is None
    ):
        tile = int(fm["tileid"][0])
    if tile is not None:
        spgrp, spval = _str(hdr0.get("SPGRP")), _str(hdr0.get("SPGRPVAL"))
        if mt is not None and mt.group(3):
            group = mt.group(3)
        elif spgrp == "cumulative" and spval:
            group = f"thru{spval}"
        else:
            group = f"{spgrp or ''}{spval or ''}"
        base["tileid"] = tile
        if petal is not None:
            base["petal"] = petal
        if spgrp:
            base["spgrp"] = spgrp
        if spval:
            base["spgrpval"] = spval
        base["program"] = f"tile{tile}-{group}" if group else f"tile{tile}"
        if program_h:
            base["desi_program"] = program_h
        if survey_h:
            base["survey"] = survey_h
    else:
        hpx = _int(hdr0.get("HPXPIXEL"))
        if mh is not None:
            survey_h = survey_h or mh.group(1).lower()
            program_h = program_h or mh.group(2).lower()
            hpx = hpx if hpx is not None else int(mh.group(3))
        if survey_h:
            base["survey"] = survey_h
        if program_h:
            base["program"] = program_h
        if hpx is not None:
            base["healpix"] = hpx

    zpath = _find_redrock(path)
    zrows, versions = _read_redrock(zpath) if zpath is not None else ({}, {})
    models, notes, templates = _desi_models(h, path, arms, fm["targetid"], zrows, versions, zpath)
    abspath = str(path.absolute())
    out: list[Spectrum] = []
    for r in range(ntarget):
        tid = int(fm["targetid"][r])
        wave, flux, ivar, model = _merge_arms([(w, f[r].astype(np.float32), iv[r]) for _, w, f, iv in arms], models[r])
        flux, ivar, (model,) = _clean(flux, ivar, model)
        meta = dict(base)
        meta["model_source"] = "redrock" if model is not None else None
        if templates[r] is not None:
            meta["model_template"] = templates[r]
        if notes[r] is not None:
            meta["model_note"] = notes[r]
        if tile is None:
            for k in ("survey", "program"):
                if k in fm and (s := _str(fm[k][r])) and k not in meta:
                    meta[k] = s
        for k in ("fiber", "fiberstatus"):
            if k in fm:
                meta[k] = int(fm[k][r])
        if "objtype" in fm and (ot := _str(fm["objtype"][r])):
            meta["objtype"] = ot
        zr = zrows.get(tid, {})
        for k in ("zwarn",):
            if k in zr:
                meta[k] = int(zr[k])
        for k in ("chi2", "deltachi2"):
            if k in zr and (v := _float(zr[k])) is not None:
                meta[k] = v
        if zpath is not None:
            meta["redshift_file"] = zpath.name
        out.append(
            Spectrum(
                survey="desi",
                wave=wave,
                flux=flux,
                ivar=ivar,
                model=model,
                ra=_float(fm["ra"][r]) if "ra" in fm else None,
                dec=_float(fm["dec"][r]) if "dec" in fm else None,
                z=_float(zr.get("z")),
                z_err=_float(zr.get("z_err")),
                spec_class=_str(zr.get("spectype")) if zr else None,
                subclass=_str(zr.get("subtype")) if zr else None,
                targetid=tid,
                path=abspath,
                index=r,
                meta=meta,
            )
        )
    return out


def _is_desi_coadd(h: fits.HDUList) -> bool:
    names = _hdu_names(h)
    return any(n.endswith("_WAVELENGTH") and n[: -len("_WAVELENGTH")] + "_FLUX" in names for n in names)


register_reader(
    "desi-coadd",
    label="DESI coadd",
    detect=_is_desi_coadd,
    read=_read_desi_coadd,
    file_name=_COADD_NAME,
    companion_name=re.compile(r"^(redrock|zbest)-", re.IGNORECASE),
    order=30,
)
