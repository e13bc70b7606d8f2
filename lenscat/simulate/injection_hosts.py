"""Host galaxies of an injection run (:func:`select_hosts`, :func:`measure_hosts`).

Massive, red, early-type-looking galaxies of the survey (bright, red g-r and r-z, extended, not point
sources), from the catalogue columns where present and otherwise measured on the cutout (central
colour in a 1.5 arcsec aperture, half-light radius), leaving out every source with a positive label
and every source within 5 arcsec of a known lens.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sqlalchemy import text
from sqlalchemy.orm import Session

from lenscat.catalogue.surveys import get_survey
from lenscat.classifiers.inputs import catalogue_images
from lenscat.classifiers.labels import near_known_lenses
from lenscat.errors import LenscatError
from lenscat.simulate.injection_types import (
    APERTURE_ARCSEC,
    DEFAULT_PIXEL_SCALE,
    ENTROPY,
    KNOWN_LENS_RADIUS,
    SIZE_RADIUS_ARCSEC,
    SUPPORTED_BANDS,
    ZERO_POINT,
    HostSelection,
    _check_range,
)

__all__ = ["select_hosts"]


def _real_parent(survey: str, session: Session) -> Any:
    s = get_survey(survey, session=session)
    if s.kind != "survey":
        raise LenscatError(f"survey {survey!r} is an injection set; choose hosts from a real survey")
    missing = [b for b in ("g", "r", "z") if b not in s.bands]
    unsupported = [b for b in s.bands if b not in SUPPORTED_BANDS]
    if missing or unsupported:
        raise LenscatError(
            f"survey {survey!r} has bands {','.join(s.bands) or '(none)'}; injections need g, r "
            f"and z and support only {', '.join(SUPPORTED_BANDS)}"
        )
    return s


def _catalogue(survey_id: int, bands: list[str], session: Session) -> dict[str, np.ndarray]:
    """Catalogue columns of the survey's sources with cutouts, sorted by source id."""
    rows = session.execute(
        text(
            """
            SELECT s.source_id, s.objid, s.ra, s.dec, s.mag, s.ebv, s.source_type, s.z_phot, s.extra
            FROM lenscat.sources s
            WHERE s.survey_id = :sv AND s.cutout_file_id IS NOT NULL
            ORDER BY s.source_id
            """
        ),
        {"sv": survey_id},
    ).all()
    n = len(rows)

    def band_mag(b: str) -> np.ndarray:
        j = bands.index(b)
        return np.array(
            [np.nan if r.mag is None or len(r.mag) <= j or r.mag[j] is None else float(r.mag[j]) for r in rows],
            dtype=np.float64,
        )

    def extra(key: str) -> np.ndarray:
        return np.array(
            [float(r.extra[key]) if r.extra and isinstance(r.extra.get(key), int | float) else np.nan for r in rows],
            dtype=np.float64,
        )

    return {
        "source_id": np.array([r.source_id for r in rows], dtype=np.int64).reshape(n),
        "objid": np.array([str(r.objid) for r in rows], dtype=object).reshape(n),
        "ra": np.array([r.ra for r in rows], dtype=np.float64).reshape(n),
        "dec": np.array([r.dec for r in rows], dtype=np.float64).reshape(n),
        **{f"mag_{b}": band_mag(b) for b in bands},
        "ebv": np.array([np.nan if r.ebv is None else float(r.ebv) for r in rows], dtype=np.float64).reshape(n),
        "source_type": np.array([(r.source_type or "").strip().upper() for r in rows], dtype=object).reshape(n),
        "z_phot": np.array([np.nan if r.z_phot is None else float(r.z_phot) for r in rows], dtype=np.float64).reshape(
            n
        ),
        "shape_r": extra("shape_r"),
        **{f"psf_fwhm_{b}": extra(f"psf_fwhm_{b}") for b in bands},
    }


def measure_hosts(images: np.ndarray, bands: list[str], pixel_scale: float) -> dict[str, np.ndarray]:
    """Central colours, r magnitude and half-light radius measured on cutouts.

    Parameters
    ----------
    images
        (N, bands, H, W) cutouts [nanomaggy], centred on the galaxy.
    bands
        Band names of the image planes.
    pixel_scale
        [arcsec/pixel].

    Returns
    -------
    dict
        ``g_r, r_z`` [mag] in a 1.5 arcsec radius aperture; ``mag_r`` [mag] within 5 arcsec;
        ``r_half`` [arcsec], the radius holding half the r flux within 5 arcsec; and ``sigma``
        (N, bands), the robust per-pixel noise [nanomaggy] outside 40 % of the half-width. The
        background is the median of the pixels beyond 5 arcsec (or the outer ring).
    """
    n, nb, h, w = images.shape
    yy, xx = np.mgrid[0:h, 0:w]
    rr = np.hypot(yy - (h - 1) / 2.0, xx - (w - 1) / 2.0) * pixel_scale
    half = min(h, w) / 2.0 * pixel_scale
    r_size = min(SIZE_RADIUS_ARCSEC, 0.8 * half)
    outer = rr > max(r_size, 0.4 * half)
    if outer.sum() < 16:
        outer = rr > 0.6 * half
    flat = images.reshape(n, nb, -1)
    bg = np.median(flat[:, :, outer.ravel()], axis=2)
    dev = flat[:, :, outer.ravel()] - bg[:, :, None]
    sigma = 1.4826 * np.median(np.abs(dev), axis=2)
    sub = images - bg[:, :, None, None]
    ap = rr <= APERTURE_ARCSEC
    ap_flux = sub[:, :, ap].sum(axis=2)
    with np.errstate(divide="ignore", invalid="ignore"):
        ap_mag = ZERO_POINT - 2.5 * np.log10(np.where(ap_flux > 0, ap_flux, np.nan))
    ig, ir, iz = bands.index("g"), bands.index("r"), bands.index("z")
    inside = rr <= r_size
    order = np.argsort(rr[inside])
    radii = rr[inside][order]
    prof = np.cumsum(sub[:, ir][:, inside][:, order], axis=1)
    total = prof[:, -1]
    r_half = np.full(n, np.nan)
    for k in range(n):
        if total[k] > 0:
            r_half[k] = float(radii[min(int(np.searchsorted(prof[k], 0.5 * total[k])), len(radii) - 1)])
    with np.errstate(divide="ignore", invalid="ignore"):
        mag_r = ZERO_POINT - 2.5 * np.log10(np.where(total > 0, total, np.nan))
    return {
        "g_r": ap_mag[:, ig] - ap_mag[:, ir],
        "r_z": ap_mag[:, ir] - ap_mag[:, iz],
        "mag_r": mag_r,
        "r_half": r_half,
        "sigma": sigma,
    }


def select_hosts(
    survey: str,
    *,
    session: Session,
    n: int,
    seed: int = 0,
    min_mag_r: float = 16.0,
    max_mag_r: float = 21.5,
    min_g_r: float = 1.0,
    min_r_z: float = 0.5,
    min_size_arcsec: float = 0.6,
    exclude_point_sources: bool = True,
) -> HostSelection:
    """Pick ``n`` host galaxies for injections: massive, red, early-type-looking, not known lenses.

    Sources with a positive label (any origin) or within 5 arcsec of a known lens (a positive label
    or a literature lens: :func:`lenscat.classifiers.labels.near_known_lenses`) are left out. The cuts use the
    catalogue where it has the value (``mag`` per band; ``extra.shape_r`` [arcsec], the Legacy
    Surveys half-light radius, when kept; ``source_type`` 'PSF' is a point source) and otherwise
    the cutout (:func:`measure_hosts`). The candidates passing the catalogue cuts are taken in a
    seeded random order and their cutouts measured until ``n`` pass, so the first hosts do not
    depend on ``n``.

    Parameters
    ----------
    survey
        A real survey (not an injection set) with g, r and z bands and cutouts.
    n
        Hosts wanted.
    seed
        Seed of the order.
    min_mag_r, max_mag_r
        r magnitude range [mag] (massive galaxies are bright).
    min_g_r, min_r_z
        Smallest g-r and r-z colours [mag] (red sequence).
    min_size_arcsec
        Smallest half-light radius [arcsec] (extended, not a star; measured half-light radii
        include the PSF).
    exclude_point_sources
        Leave out catalogue type 'PSF'.

    Returns
    -------
    HostSelection

    Raises
    ------
    LenscatError
        Unknown survey, an injection set, bands other than g, r, (i,) z, or fewer eligible hosts
        than ``n``.
    """
    if int(n) < 1:
        raise LenscatError(f"the number of injections must be at least 1, got {n}")
    _check_range("host r magnitude", (min_mag_r, max_mag_r), 0.0, 40.0)
    s = _real_parent(survey, session)
    cat = _catalogue(s.survey_id, s.bands, session)
    ids = cat["source_id"]
    if len(ids) == 0:
        raise LenscatError(f"survey {survey!r} has no sources with cutouts to host injections")
    positives = {
        int(x)
        for x in session.execute(
            text(
                "SELECT DISTINCT l.source_id FROM lenscat.labels l JOIN lenscat.sources s USING (source_id) "
                "WHERE l.label = 1 AND s.survey_id = :sv"
            ),
            {"sv": s.survey_id},
        ).scalars()
    }
    near = near_known_lenses(session=session, radius=KNOWN_LENS_RADIUS, candidates=ids)
    known = np.isin(ids, np.fromiter(positives | near, np.int64, len(positives | near)))
    mag_r = cat["mag_r"]
    g_r = cat["mag_g"] - cat["mag_r"]
    r_z = cat["mag_r"] - cat["mag_z"]

    def passes(v: np.ndarray, lo: float, hi: float = np.inf) -> np.ndarray:
        return np.isnan(v) | ((v >= lo) & (v <= hi))  # NaN: decided on the cutout

    ok = (
        ~known
        & passes(mag_r, min_mag_r, max_mag_r)
        & passes(g_r, min_g_r)
        & passes(r_z, min_r_z)
        & passes(cat["shape_r"], min_size_arcsec)
    )
    if exclude_point_sources:
        ok &= cat["source_type"] != "PSF"
    cand = np.nonzero(ok)[0]
    order = cand[np.random.default_rng(np.random.SeedSequence([int(seed), ENTROPY, 1])).permutation(len(cand))]
    scale = float(s.pixel_scale_arcsec or DEFAULT_PIXEL_SCALE)
    chosen: list[int] = []
    meas: dict[str, list[float]] = {"mag_r": [], "g_r": [], "r_z": [], "r_half": []}
    examined = eligible = 0
    batch = 256
    for start in range(0, len(order), batch):
        idx = order[start : start + batch]
        imgs = catalogue_images(ids[idx], session=session)
        m = measure_hosts(imgs.get(np.arange(len(idx))), s.bands, scale)
        examined += len(idx)
        vals = {
            "mag_r": np.where(np.isnan(mag_r[idx]), m["mag_r"], mag_r[idx]),
            "g_r": np.where(np.isnan(g_r[idx]), m["g_r"], g_r[idx]),
            "r_z": np.where(np.isnan(r_z[idx]), m["r_z"], r_z[idx]),
            "r_half": np.where(np.isnan(cat["shape_r"][idx]), m["r_half"], cat["shape_r"][idx]),
        }
        good = (
            (vals["mag_r"] >= min_mag_r)
            & (vals["mag_r"] <= max_mag_r)
            & (vals["g_r"] >= min_g_r)
            & (vals["r_z"] >= min_r_z)
            & (vals["r_half"] >= min_size_arcsec)
        )
        for j in np.nonzero(good)[0]:
            eligible += 1
            if len(chosen) < n:
                chosen.append(int(idx[j]))
                for k in meas:
                    meas[k].append(float(vals[k][j]))
        if len(chosen) >= n:
            break
    if len(chosen) < n:
        raise LenscatError(
            f"only {eligible} of the {len(ids)} sources of {survey!r} with cutouts are eligible hosts "
            f"({int(known.sum())} excluded as known lenses or near one, {len(cand)} pass the catalogue cuts); "
            f"{n} injections asked: ask for fewer or loosen the host cuts"
        )
    return HostSelection(
        source_ids=ids[np.array(chosen, dtype=np.int64)],
        n_sources=len(ids),
        n_excluded_known=int(known.sum()),
        n_candidates=len(cand),
        n_examined=examined,
        n_eligible=eligible,
        measured={k: np.array(v) for k, v in meas.items()},
    )
