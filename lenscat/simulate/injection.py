"""Injection training sets: simulated lensed sources painted on a survey's own galaxies.

Lens searches that reach high purity train on simulated arcs added to the survey's real images of
plausible deflectors (Jacobs et al. 2019, Petrillo et al. 2019, Huang et al. 2020, Cañameras et al.
2020): the network then sees the survey's real noise, PSF, neighbours and artefacts around every
positive, and has to learn only the arc. :func:`inject_survey` does that for a catalogued survey:

1. :func:`select_hosts` picks massive, red, early-type-looking galaxies of the survey (bright, red
   g-r and r-z, extended, not point sources), from the catalogue columns where present and
   otherwise measured on the cutout (central colour in a 1.5 arcsec aperture, half-light radius),
   leaving out every source with a positive label and every source within 5 arcsec of a known lens
   (:func:`lenscat.classifiers.labels.near_known_lenses`).
2. Each host gets a lens rendered with lenstronomy: an SIE (axis ratio 0.5-1, any position angle)
   plus external shear (|gamma| Rayleigh with sigma 0.03, at most 0.1) centred on the host; a
   source of an elliptical Sérsic profile (R_eff 0.1-0.5 arcsec, n 0.7-1.5) plus 1-5 Gaussian
   star-forming clumps (sigma 0.05-0.12 arcsec, 10-40 % of the r flux, 0.3 mag bluer in g-r) placed
   uniformly (by area) within half an Einstein radius of the lens centre, i.e. mostly inside the
   caustics. theta_E, the unlensed source r magnitude and its g-r, r-z colours are drawn uniformly
   from the given ranges. The lensed light is ray-shot on a 4x supersampled grid, binned to the
   survey's pixels (``lenscat.surveys.pixel_scale_arcsec``, default 0.262 arcsec), convolved with
   the survey's PSF (a Moffat of index 3.5, or a Gaussian, of the band's FWHM: the median of the
   catalogue's ``psf_fwhm_<band>`` columns when kept in ``extra``, otherwise 1.3 arcsec), and ADDED
   to the host's real pixels, so the host, its noise and its neighbours are the survey's own.
   With a ``gain`` (electrons per nanomaggy) the added light gets its own Poisson noise; without
   one (the default) it is added noiseless: for DECaLS-like coadds (~10^4 e-/nanomaggy, sky
   ~0.01 nanomaggy/pixel) the arcs' own shot noise is < 2 % of the sky variance at r > 21.
3. The cutouts and their truth go to a Stein-layout HDF5 file (the datasets
   :mod:`lenscat.simulate.survey` writes: ``images`` and one dataset per catalogue or truth column), which
   is ingested as a survey of kind ``'injection'`` whose parent is the host survey; every injected
   source gets a label of origin ``injection`` (1, detail = its truth). Injected sources keep their
   host's RA/Dec and are left out of the sky queries, rankings, exports, grading samples and
   active-learning batches of the real surveys (:data:`lenscat.catalogue.surveys.REAL_SURVEYS_SQL`).

Everything is a deterministic function of the seed and the options: object ``k`` draws from
``numpy.random.SeedSequence([seed, ENTROPY]).spawn(n)[k]`` and the hosts are a seeded permutation
of the eligible galaxies, so a larger ``n`` with the same seed keeps the first rows. Rendering goes
in chunks to ``.OUT.partial``; an interrupted run resumes from its last chunk, and a completed file
is not rendered again, so running the same command twice changes nothing.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import astropy.units as u
import numpy as np
from sqlalchemy import text
from sqlalchemy.orm import Session

from lenscat.errors import LenscatError

__all__ = [
    "HostSelection",
    "InjectionSummary",
    "select_hosts",
    "inject_survey",
    "render_injection",
    "default_injection_path",
]

GENERATOR = "lenscat.simulate.injection"
ENTROPY = 0x1D7EC7  # mixed with the seed for the per-object streams
ZERO_POINT = 22.5  # AB magnitude of 1 nanomaggy
DEFAULT_PIXEL_SCALE = 0.262  # arcsec
DEFAULT_PSF_FWHM = 1.3  # arcsec, every band, when the catalogue does not say
MOFFAT_BETA = 3.5
SUPERSAMPLE = 4
CHUNK = 64  # cutouts rendered (and flushed to the partial file) at a time
KNOWN_LENS_RADIUS = 5 * u.arcsec
SUPPORTED_BANDS = ("g", "r", "i", "z")
APERTURE_ARCSEC = 1.5  # radius of the central-colour aperture
SIZE_RADIUS_ARCSEC = 5.0  # the half-light radius is measured within this radius


# ------------------------------------------------------------------------------------ results
@dataclass
class HostSelection:
    """Host galaxies chosen by :func:`select_hosts`.

    Attributes
    ----------
    source_ids
        Host source ids, in the (seeded) order they will be used.
    n_sources
        Sources of the survey with a cutout.
    n_excluded_known
        Of those, left out as labelled lenses or within 5 arcsec of a known lens.
    n_candidates
        Left after the catalogue cuts (magnitude, colour, not a point source).
    n_examined
        Candidates whose cutouts were measured.
    n_eligible
        Examined candidates passing every cut (at least ``len(source_ids)``).
    measured
        Host measurements: ``mag_r, g_r, r_z`` [mag] and ``r_half`` [arcsec], each from the
        catalogue where it has the value, else from the cutout, aligned with ``source_ids``.
    """

    source_ids: np.ndarray
    n_sources: int = 0
    n_excluded_known: int = 0
    n_candidates: int = 0
    n_examined: int = 0
    n_eligible: int = 0
    measured: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class InjectionSummary:
    """What :func:`inject_survey` did."""

    survey: str
    parent: str
    path: Path
    n: int
    n_sources: int
    n_excluded_known: int
    n_candidates: int
    n_eligible: int
    theta_e_range: tuple[float, float]
    arc_snr_range: tuple[float, float]
    magnification_range: tuple[float, float]
    n_labels_written: int
    n_labels_removed: int
    rendered: bool
    resumed_rows: int
    ingest: dict[str, Any]
    psf_fwhm: dict[str, float]
    pixel_scale_arcsec: float
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        """Plain dict for JSON output."""
        d = asdict(self)
        d["path"] = str(self.path)
        return d


# ------------------------------------------------------------------------------------ hosts
def _check_range(name: str, value: Sequence[float], lo: float, hi: float) -> tuple[float, float]:
    try:
        a, b = (float(value[0]), float(value[1]))
    except (TypeError, ValueError, IndexError):
        raise LenscatError(f"{name} must be a (min, max) pair, got {value!r}") from None
    if not (math.isfinite(a) and math.isfinite(b)):
        raise LenscatError(f"{name} must be finite, got {a:g}, {b:g}")
    if a > b:
        raise LenscatError(f"{name} range is inverted: min {a:g} > max {b:g}")
    if a < lo or b > hi:
        raise LenscatError(f"{name} must lie within [{lo:g}, {hi:g}], got {a:g}, {b:g}")
    return a, b


def _real_parent(survey: str, session: Session) -> Any:
    from lenscat.catalogue.surveys import get_survey

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
    from lenscat.classifiers.classifier import catalogue_images
    from lenscat.classifiers.labels import near_known_lenses

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


# ------------------------------------------------------------------------------------ rendering
def _band_mags(r: float, g_r: float, r_z: float, bands: Sequence[str]) -> np.ndarray:
    """AB magnitudes per band from r and two colours (i halfway between r and z)."""
    table = {"g": r + g_r, "r": r, "i": r - 0.5 * r_z, "z": r - r_z}
    return np.array([table[b] for b in bands])


def _psf_kernel(fwhm: float, pixel_scale: float, model: str) -> np.ndarray:
    """Pixel-integrated PSF of unit sum: Moffat (index 3.5) or Gaussian of this FWHM [arcsec]."""
    half = max(3, int(math.ceil(2.5 * fwhm / pixel_scale)))
    s = 5
    ax = (np.arange(-half * s, (half + 1) * s) - (s - 1) / 2.0) / s * pixel_scale
    x, y = np.meshgrid(ax, ax)
    r2 = x**2 + y**2
    if model == "gaussian":
        sig = fwhm / (2.0 * math.sqrt(2.0 * math.log(2.0)))
        img = np.exp(-0.5 * r2 / sig**2)
    else:
        alpha = fwhm / (2.0 * math.sqrt(2 ** (1.0 / MOFFAT_BETA) - 1.0))
        img = (1.0 + r2 / alpha**2) ** (-MOFFAT_BETA)
    k = img.reshape(2 * half + 1, s, 2 * half + 1, s).sum(axis=(1, 3))
    return k / k.sum()


@dataclass
class _Draw:
    theta_e: float
    q: float
    phi: float
    gamma1: float
    gamma2: float
    src_x: float
    src_y: float
    src_r_eff: float
    src_n: float
    src_q: float
    src_phi: float
    src_mag_r: float
    g_r: float
    r_z: float
    clump_fraction: float
    clumps: list[tuple[float, float, float, float]]  # (x, y, sigma, weight)


def _draw(
    rng: np.random.Generator,
    theta_e: tuple[float, float],
    source_mag: tuple[float, float],
    g_r: tuple[float, float],
    r_z: tuple[float, float],
) -> _Draw:
    te = float(rng.uniform(*theta_e))
    shear = min(float(rng.rayleigh(0.03)), 0.1)
    ang = float(rng.uniform(0, np.pi))
    rad = 0.5 * te * math.sqrt(float(rng.uniform()))
    pa = float(rng.uniform(0, 2 * np.pi))
    r_eff = float(rng.uniform(0.1, 0.5))
    n_clumps = int(rng.integers(1, 6))
    cx, cy = rad * math.cos(pa), rad * math.sin(pa)
    w = rng.dirichlet(np.ones(n_clumps))
    clumps = []
    for k in range(n_clumps):
        cr, ca = 1.5 * r_eff * math.sqrt(float(rng.uniform())), float(rng.uniform(0, 2 * np.pi))
        clumps.append((cx + cr * math.cos(ca), cy + cr * math.sin(ca), float(rng.uniform(0.05, 0.12)), float(w[k])))
    return _Draw(
        theta_e=te,
        q=float(rng.uniform(0.5, 1.0)),
        phi=float(rng.uniform(0, np.pi)),
        gamma1=shear * math.cos(2 * ang),
        gamma2=shear * math.sin(2 * ang),
        src_x=cx,
        src_y=cy,
        src_r_eff=r_eff,
        src_n=float(rng.uniform(0.7, 1.5)),
        src_q=float(rng.uniform(0.5, 1.0)),
        src_phi=float(rng.uniform(0, np.pi)),
        src_mag_r=float(rng.uniform(*source_mag)),
        g_r=float(rng.uniform(*g_r)),
        r_z=float(rng.uniform(*r_z)),
        clump_fraction=float(rng.uniform(0.1, 0.4)),
        clumps=clumps,
    )


def render_injection(
    d: _Draw, shape: tuple[int, int], bands: Sequence[str], pixel_scale: float, kernels: Sequence[np.ndarray]
) -> tuple[np.ndarray, dict[str, Any]]:
    """Lensed source light (bands, H, W) [nanomaggy] of one draw, and its truth.

    The lens is centred on the stamp centre; the source light is ray-shot through SIE + shear on a
    4x supersampled grid (lenstronomy) over the box that can hold it, binned to pixels and
    convolved with each band's kernel.
    """
    from lenstronomy.LensModel.lens_model import LensModel
    from lenstronomy.LightModel.light_model import LightModel
    from lenstronomy.Util.param_util import phi_q2_ellipticity
    from scipy.signal import fftconvolve

    h, w = shape
    s = SUPERSAMPLE
    # the lensed light lies within theta_E + |beta| + ~6 source radii of the lens centre: ray-shoot
    # only that box (a 152-pixel stamp costs ~5x less), then convolve on the whole stamp
    reach = d.theta_e + math.hypot(d.src_x, d.src_y) + 6.0 * d.src_r_eff + 1.0
    half = int(math.ceil(reach / pixel_scale)) + 2
    r0, r1 = max(0, int((h - 1) // 2) - half), min(h, int(h // 2) + half + 1)
    c0, c1 = max(0, int((w - 1) // 2) - half), min(w, int(w // 2) + half + 1)
    bh, bw = r1 - r0, c1 - c0
    ys = ((np.arange(r0 * s, r1 * s) + 0.5) / s - 0.5 - (h - 1) / 2.0) * pixel_scale
    xs = ((np.arange(c0 * s, c1 * s) + 0.5) / s - 0.5 - (w - 1) / 2.0) * pixel_scale
    x, y = np.meshgrid(xs, ys)
    e1, e2 = phi_q2_ellipticity(d.phi, d.q)
    lens = LensModel(["SIE", "SHEAR"])
    kw_lens = [
        {"theta_E": d.theta_e, "e1": e1, "e2": e2, "center_x": 0.0, "center_y": 0.0},
        {"gamma1": d.gamma1, "gamma2": d.gamma2, "ra_0": 0.0, "dec_0": 0.0},
    ]
    bx, by = lens.ray_shooting(x.ravel(), y.ravel(), kw_lens)
    se1, se2 = phi_q2_ellipticity(d.src_phi, d.src_q)
    sersic = LightModel(["SERSIC_ELLIPSE"])
    kw_s = [
        {
            "amp": 1.0,
            "R_sersic": d.src_r_eff,
            "n_sersic": d.src_n,
            "e1": se1,
            "e2": se2,
            "center_x": d.src_x,
            "center_y": d.src_y,
        }
    ]
    body_unit = float(np.sum(sersic.total_flux(kw_s)))
    body = sersic.surface_brightness(bx, by, kw_s).reshape(x.shape) / body_unit
    gauss = LightModel(["GAUSSIAN"] * len(d.clumps))
    kw_c = [{"amp": wt, "sigma": sg, "center_x": cx, "center_y": cy} for cx, cy, sg, wt in d.clumps]
    clumps = gauss.surface_brightness(bx, by, kw_c).reshape(x.shape)
    area = (pixel_scale / s) ** 2  # surface brightness per arcsec^2 -> flux per sub-pixel

    def binned(a: np.ndarray) -> np.ndarray:
        full = np.zeros((h, w))
        full[r0:r1, c0:c1] = a.reshape(bh, s, bw, s).sum(axis=(1, 3)) * area
        return full

    body_px, clump_px = binned(body), binned(clumps)
    body_mags = _band_mags(d.src_mag_r - 2.5 * math.log10(1 - d.clump_fraction), d.g_r, d.r_z, bands)
    clump_mags = _band_mags(d.src_mag_r - 2.5 * math.log10(d.clump_fraction), d.g_r - 0.3, d.r_z - 0.15, bands)
    body_f = 10 ** (-0.4 * (body_mags - ZERO_POINT))
    clump_f = 10 ** (-0.4 * (clump_mags - ZERO_POINT))
    out = np.empty((len(bands), h, w), dtype=np.float64)
    lensed_flux = np.empty(len(bands))
    for b in range(len(bands)):
        plane = body_f[b] * body_px + clump_f[b] * clump_px
        lensed_flux[b] = plane.sum()
        out[b] = fftconvolve(plane, kernels[b], mode="same")
    np.maximum(out, 0.0, out=out)  # FFT round-off below zero
    src_total = body_f + clump_f
    ir = list(bands).index("r")
    truth = {
        "theta_e": d.theta_e,
        "lens_q": d.q,
        "lens_phi": d.phi,
        "gamma1": d.gamma1,
        "gamma2": d.gamma2,
        "source_x": d.src_x,
        "source_y": d.src_y,
        "source_r_eff": d.src_r_eff,
        "source_n": d.src_n,
        "n_clumps": len(d.clumps),
        "clump_fraction": d.clump_fraction,
        **{f"source_mag_{b}": float(ZERO_POINT - 2.5 * math.log10(src_total[j])) for j, b in enumerate(bands)},
        "magnification": float(lensed_flux[ir] / src_total[ir]),
    }
    return out.astype(np.float32), truth


def _arc_snr(arc_r: np.ndarray, sigma_r: float) -> float:
    """S/N of the arc in r: its flux over the host's noise, summed over the pixels above 1 sigma."""
    if not sigma_r > 0:
        return float("nan")
    m = arc_r > sigma_r
    if not m.any():
        return 0.0
    return float(arc_r[m].sum() / (sigma_r * math.sqrt(int(m.sum()))))


# ------------------------------------------------------------------------------------ file
COLUMNS: dict[str, tuple[str, str | None, str]] = {
    "objid": ("i8", None, "object id in the injection set: (seed mod 1e6) * 1e10 + row + 1"),
    "ra": ("f8", "deg", "right ascension of the host (ICRS)"),
    "dec": ("f8", "deg", "declination of the host (ICRS)"),
    "ebv": ("f4", "mag", "host's E(B-V) (-99: unknown)"),
    "source_type": ("S3", None, "host's catalogue type"),
    "z_phot_mean": ("f4", None, "host's photometric redshift (-99: none)"),
    "is_lens": ("i1", None, "truth: 1 (every row is an injected lens)"),
    "kind": ("S14", None, "truth: 'injection'"),
    "theta_e": ("f4", "arcsec", "truth: SIE Einstein radius"),
    "z_lens": ("f4", None, "truth: host's photometric redshift (NaN: unknown)"),
    "z_source": ("f4", None, "truth: not drawn (NaN)"),
    "host_source_id": ("i8", None, "truth: lenscat source_id of the host galaxy"),
    "host_objid": ("S40", None, "truth: objid of the host in its survey"),
    "lens_q": ("f4", None, "truth: SIE axis ratio"),
    "lens_phi": ("f4", "rad", "truth: SIE position angle, from +x (columns) towards +y (rows)"),
    "gamma1": ("f4", None, "truth: external shear component 1"),
    "gamma2": ("f4", None, "truth: external shear component 2"),
    "source_x": ("f4", "arcsec", "truth: source centre offset along +x from the lens centre"),
    "source_y": ("f4", "arcsec", "truth: source centre offset along +y from the lens centre"),
    "source_r_eff": ("f4", "arcsec", "truth: Sersic half-light radius of the source"),
    "source_n": ("f4", None, "truth: Sersic index of the source"),
    "n_clumps": ("i2", None, "truth: number of Gaussian star-forming clumps"),
    "clump_fraction": ("f4", None, "truth: fraction of the r flux in the clumps"),
    "magnification": ("f4", None, "truth: total r magnification (lensed over unlensed flux)"),
    "arc_snr": ("f4", None, "truth: lensed r flux over the host's noise, summed over the pixels above 1 sigma"),
    "injection_seed": ("i8", None, "truth: seed of the injection set (row k draws from spawn k)"),
}


def _columns(bands: Sequence[str]) -> dict[str, tuple[str, str | None, str]]:
    cols = dict(COLUMNS)
    for b in bands:
        cols[f"mag_{b}"] = ("f4", "mag", f"host's catalogue AB magnitude, {b} (-99: unknown)")
        cols[f"source_mag_{b}"] = ("f4", "mag", f"truth: unlensed AB magnitude of the source, {b}")
        cols[f"psf_fwhm_{b}"] = ("f4", "arcsec", f"truth: PSF FWHM used, {b}")
        cols[f"sky_sigma_{b}"] = ("f4", "nanomaggy", f"truth: robust per-pixel noise of the host cutout, {b}")
    return cols


def _open_partial(
    partial: Path, key: str, n: int, shape: tuple[int, int, int], cols: dict[str, tuple[str, str | None, str]]
) -> tuple[Any, int]:
    """The partial file to fill and its rows already done (an interrupted run with the same key)."""
    import h5py

    if partial.exists():
        try:
            fh = h5py.File(partial, "a")
        except OSError as exc:
            if "lock" in str(exc).lower():
                raise LenscatError(f"{partial} is being written by another run; wait for it or stop it") from None
            partial.unlink()
        else:
            if fh.attrs.get("resume_key") == key and "rows_done" in fh.attrs:
                return fh, int(fh.attrs["rows_done"])
            fh.close()
            partial.unlink()
    fh = h5py.File(partial, "w", libver="latest")
    fh.create_dataset("images", shape=(n, *shape), dtype="f4", chunks=(1, *shape))
    for name, (dtype, unit, desc) in cols.items():
        ds = fh.create_dataset(name, shape=(n,), dtype=dtype)
        if unit:
            ds.attrs["unit"] = unit
        ds.attrs["description"] = desc
    fh.attrs["resume_key"] = key
    fh.attrs["rows_done"] = 0
    fh.flush()
    return fh, 0


def _finished_key(path: Path) -> str | None:
    import h5py

    try:
        with h5py.File(path, "r") as fh:
            v = fh.attrs.get("injection_key")
            return str(v) if v is not None else None
    except OSError:
        return None


def default_injection_path(name: str, seed: int, n: int) -> Path:
    """``LENSCAT_HOME/injections/NAME-seedSEED-nN.h5``."""
    from lenscat.settings import get_settings

    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    return get_settings().home.expanduser().resolve() / "injections" / f"{safe}-seed{int(seed)}-n{int(n)}.h5"


def _psf_from_catalogue(cat: dict[str, np.ndarray], bands: list[str]) -> dict[str, float]:
    out = {}
    for b in bands:
        v = cat[f"psf_fwhm_{b}"]
        v = v[np.isfinite(v) & (v > 0)]
        out[b] = float(np.median(v)) if len(v) else DEFAULT_PSF_FWHM
    return out


@dataclass
class _RenderJob:
    """What one injection file is rendered from (``key`` identifies it for resuming)."""

    key: str
    n: int
    seed: int
    shape: tuple[int, int, int]
    bands: list[str]
    scale: float
    fwhm: dict[str, float]
    kernels: list[np.ndarray]
    gain: float | None
    priors: tuple[tuple[float, float], ...]  # theta_E, source r mag, g-r, r-z ranges
    cols: dict[str, tuple[str, str | None, str]]
    parent: str


def _render_file(path: Path, job: _RenderJob, images: Any, hosts: dict[str, np.ndarray], *, progress: bool) -> int:
    """Render every injection of ``job`` into ``path`` in chunks, through ``.PATH.partial``; the rows resumed.

    ``images`` reads the host cutouts by row (``get(rows)``); ``hosts`` holds their catalogue
    columns in the same order. An interrupted or failed run leaves the partial file, and the same
    job resumes after its last finished chunk.
    """
    from tqdm import tqdm

    bands, n = job.bands, job.n
    ir = bands.index("r")
    partial = path.with_name(f".{path.name}.partial")
    seqs = np.random.SeedSequence([job.seed, ENTROPY]).spawn(n)
    objid = (job.seed % 1_000_000) * 10_000_000_000 + np.arange(1, n + 1, dtype=np.int64)

    def or_null(v: float) -> float:
        return -99.0 if np.isnan(v) else float(v)

    try:
        fh, done = _open_partial(partial, job.key, n, job.shape, job.cols)
        try:
            with tqdm(
                total=n, initial=done, disable=not progress, unit="cutout", desc="inject", dynamic_ncols=True
            ) as bar:
                for start in range(done, n, CHUNK):
                    stop = min(start + CHUNK, n)
                    host_px = images.get(np.arange(start, stop))
                    sig = measure_hosts(host_px, bands, job.scale)["sigma"]
                    rows: dict[str, list[Any]] = {c: [] for c in job.cols}
                    for j, k in enumerate(range(start, stop)):
                        rng = np.random.default_rng(seqs[k])
                        arc, truth = render_injection(
                            _draw(rng, *job.priors), job.shape[1:], bands, job.scale, job.kernels
                        )
                        if job.gain is not None:
                            arc = (rng.poisson(arc.astype(np.float64) * job.gain) / job.gain).astype(np.float32)
                        host_px[j] += arc
                        truth["arc_snr"] = _arc_snr(arc[ir], float(sig[j, ir]))
                        values = {
                            "objid": objid[k],
                            "ra": hosts["ra"][k],
                            "dec": hosts["dec"][k],
                            "ebv": or_null(hosts["ebv"][k]),
                            "source_type": hosts["source_type"][k] or "",
                            "is_lens": 1,
                            "kind": "injection",
                            "z_phot_mean": or_null(hosts["z_phot"][k]),
                            "z_lens": hosts["z_phot"][k],
                            "z_source": np.nan,
                            "host_source_id": int(hosts["source_id"][k]),
                            "host_objid": str(hosts["objid"][k]),
                            "injection_seed": job.seed,
                            **truth,
                            **{f"mag_{b}": or_null(hosts[f"mag_{b}"][k]) for b in bands},
                            **{f"psf_fwhm_{b}": job.fwhm[b] for b in bands},
                            **{f"sky_sigma_{b}": float(sig[j, i]) for i, b in enumerate(bands)},
                        }
                        for c in job.cols:
                            rows[c].append(values[c])
                    fh["images"][start:stop] = host_px
                    for c, (dtype, _, _) in job.cols.items():
                        v = np.array(rows[c])
                        fh[c][start:stop] = (
                            np.char.encode(v.astype(str), "ascii") if dtype.startswith("S") else v
                        ).astype(dtype)
                    fh.attrs["rows_done"] = stop
                    fh.flush()
                    bar.update(stop - start)
            for a in ("resume_key", "rows_done"):
                del fh.attrs[a]
            fh["images"].attrs.update({"unit": "nanomaggy", "bands": "".join(bands), "pixel_scale_arcsec": job.scale})
            fh.attrs.update(
                {
                    "unit": "nanomaggy",
                    "bands": "".join(bands),
                    "pixel_scale_arcsec": job.scale,
                    "zero_point": ZERO_POINT,
                    "generator": GENERATOR,
                    "parent_survey": job.parent,
                    "seed": job.seed,
                    "injection_key": job.key,
                }
            )
        finally:
            fh.close()
        partial.replace(path)
    except OSError as exc:
        raise LenscatError(f"{path}: cannot write: {exc}") from exc
    return done


def inject_survey(
    survey: str,
    n: int,
    out: str | Path | None = None,
    *,
    session: Session,
    name: str | None = None,
    seed: int = 0,
    theta_e: Sequence[float] = (0.8, 3.0),
    source_mag: Sequence[float] = (21.5, 24.0),
    source_g_r: Sequence[float] = (0.0, 0.6),
    source_r_z: Sequence[float] = (-0.1, 0.5),
    psf_fwhm: dict[str, float] | float | None = None,
    psf_model: str = "moffat",
    gain: float | None = None,
    host_min_mag_r: float = 16.0,
    host_max_mag_r: float = 21.5,
    host_min_g_r: float = 1.0,
    host_min_r_z: float = 0.5,
    host_min_size_arcsec: float = 0.6,
    progress: bool = True,
) -> InjectionSummary:
    """Paint ``n`` simulated lensed sources on host galaxies of ``survey``; store them as an injection set.

    See the module docstring for the physics. The cutouts are written to ``out`` (Stein layout;
    default :func:`default_injection_path`) and ingested as survey ``name`` (kind ``'injection'``,
    parent ``survey``); each gets a label of origin ``injection`` (1, detail = its truth,
    provenance = the file's path). The file and the ingest commit as they go, like
    ``lenscat ingest sources`` (so an interrupted run resumes); host selection and the labels use
    ``session``, which the caller commits. Running it again with the same arguments changes nothing;
    another seed, ``n`` or ``out`` adds another set (into the same survey when ``name`` is the same).

    Parameters
    ----------
    survey
        Host survey (a real survey with g, r, z cutouts).
    n
        Number of injections (at most the number of eligible hosts).
    out
        HDF5 file to write.
    name
        Name of the injection survey (default ``f"{survey}-inject"``).
    seed
        Seed of the host order and of every draw.
    theta_e
        Einstein radius range [arcsec] (uniform).
    source_mag
        Unlensed source r magnitude range [mag, AB] (uniform). The default, 21.5-24, gives lensed
        images of r ~ 19.6-22 at the typical magnification of 6: the arcs of the lenses found in
        DECaLS-depth imaging, down to the faint end where a search stops seeing them (brighter
        injections teach a network only the easy, bright arcs).
    source_g_r, source_r_z
        Source colour ranges [mag] of the Sérsic body (clumps 0.3 mag bluer in g-r, 0.15 in r-z).
    psf_fwhm
        PSF FWHM [arcsec]: one value for every band or {band: value}; default from the catalogue's
        ``psf_fwhm_<band>`` (kept in ``extra``), else 1.3 arcsec.
    psf_model
        ``'moffat'`` (index 3.5) or ``'gaussian'``.
    gain
        Electrons per nanomaggy: add the Poisson noise of the added light (default: none).
    host_min_mag_r, host_max_mag_r, host_min_g_r, host_min_r_z, host_min_size_arcsec
        Host cuts (:func:`select_hosts`).
    progress
        Show a progress bar.

    Returns
    -------
    InjectionSummary

    Raises
    ------
    LenscatError
        Unknown or unsuitable survey, invalid ranges, too few eligible hosts, an unwritable file.
    """
    from lenscat.catalogue.ingest import ingest_sources
    from lenscat.catalogue.surveys import ensure_survey, get_survey
    from lenscat.classifiers.classifier import catalogue_images
    from lenscat.classifiers.labels import _upsert
    from lenscat.db.session import session_scope

    t0 = time.perf_counter()
    te = _check_range("theta_E", theta_e, 0.05, 20.0)
    sm = _check_range("source magnitude", source_mag, 10.0, 35.0)
    sgr = _check_range("source g-r", source_g_r, -3.0, 5.0)
    srz = _check_range("source r-z", source_r_z, -3.0, 5.0)
    if psf_model not in ("moffat", "gaussian"):
        raise LenscatError(f"PSF model must be 'moffat' or 'gaussian', not {psf_model!r}")
    if gain is not None and not (math.isfinite(float(gain)) and float(gain) > 0):
        raise LenscatError(f"gain must be a positive number of electrons per nanomaggy, got {gain!r}")
    if int(seed) < 0:
        raise LenscatError(f"seed must be non-negative, got {seed}")
    n, seed = int(n), int(seed)
    parent = _real_parent(survey, session)
    name = name or f"{survey}-inject"
    if name == survey:
        raise LenscatError("the injection set needs a name of its own, not the host survey's")
    row = session.execute(text("SELECT kind FROM lenscat.surveys WHERE name = :n"), {"n": name}).one_or_none()
    if row is not None and row[0] != "injection":
        raise LenscatError(f"survey {name!r} exists and is not an injection set; choose another name")
    hosts = select_hosts(
        survey,
        session=session,
        n=n,
        seed=seed,
        min_mag_r=host_min_mag_r,
        max_mag_r=host_max_mag_r,
        min_g_r=host_min_g_r,
        min_r_z=host_min_r_z,
        min_size_arcsec=host_min_size_arcsec,
    )
    bands = list(parent.bands)
    scale = float(parent.pixel_scale_arcsec or DEFAULT_PIXEL_SCALE)
    cat = _catalogue(parent.survey_id, bands, session)
    if psf_fwhm is None:
        fwhm = _psf_from_catalogue(cat, bands)
    elif isinstance(psf_fwhm, dict):
        missing = [b for b in bands if b not in psf_fwhm]
        if missing:
            raise LenscatError(f"PSF FWHM missing for band(s) {', '.join(missing)}")
        fwhm = {b: float(psf_fwhm[b]) for b in bands}
    else:
        fwhm = {b: float(psf_fwhm) for b in bands}
    if not all(math.isfinite(v) and 0.05 <= v <= 20 for v in fwhm.values()):
        raise LenscatError(f"PSF FWHM must be in [0.05, 20] arcsec, got {fwhm}")
    kernels = [_psf_kernel(fwhm[b], scale, psf_model) for b in bands]
    pos = np.searchsorted(cat["source_id"], hosts.source_ids)
    images = catalogue_images(hosts.source_ids, session=session)
    shapes = (
        session.execute(
            text(
                "SELECT DISTINCT f.image_shape FROM lenscat.sources s JOIN lenscat.cutout_files f "
                "ON f.file_id = s.cutout_file_id WHERE s.source_id = ANY(:ids)"
            ),
            {"ids": [int(x) for x in hosts.source_ids]},
        )
        .scalars()
        .all()
    )
    if len(shapes) != 1 or shapes[0] is None or len(shapes[0]) != 3 or int(shapes[0][0]) != len(bands):
        raise LenscatError(
            f"the host cutouts of {survey!r} have shapes {sorted(map(str, shapes))}; injections need "
            f"one shape with {len(bands)} band planes"
        )
    shape = (int(shapes[0][0]), int(shapes[0][1]), int(shapes[0][2]))
    path = Path(out).expanduser() if out is not None else default_injection_path(name, seed, n)
    path = path.resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    options = {
        "generator": GENERATOR,
        "parent": survey,
        "n": n,
        "seed": seed,
        "theta_e": te,
        "source_mag": sm,
        "source_g_r": sgr,
        "source_r_z": srz,
        "psf_fwhm": fwhm,
        "psf_model": psf_model,
        "gain": gain,
        "pixel_scale_arcsec": scale,
        "bands": bands,
        "shape": list(shape),
        "hosts": [int(x) for x in hosts.source_ids],
    }
    key = json.dumps(options, sort_keys=True)
    cols = _columns(bands)
    rendered, done = False, 0
    if not (path.exists() and _finished_key(path) == key):
        rendered = True
        job = _RenderJob(
            key=key,
            n=n,
            seed=seed,
            shape=shape,
            bands=bands,
            scale=scale,
            fwhm=fwhm,
            kernels=kernels,
            gain=None if gain is None else float(gain),
            priors=(te, sm, sgr, srz),
            cols=cols,
            parent=survey,
        )
        done = _render_file(path, job, images, {k: v[pos] for k, v in cat.items()}, progress=progress)
    # the survey row is made an injection set before its sources exist (committed, as the ingest is)
    with session_scope() as s2:
        ensure_survey(name, bands, session=s2, pixel_scale_arcsec=scale)
        s2.execute(
            text(
                "UPDATE lenscat.surveys SET kind = 'injection', parent_survey_id = :p, "
                "description = coalesce(description, :d) WHERE name = :n"
            ),
            {
                "p": parent.survey_id,
                "n": name,
                "d": f"injected lenses on galaxies of {survey} (lenscat simulate inject)",
            },
        )
    ing = ingest_sources(path, name, progress=progress, pixel_scale=scale)
    target = get_survey(name, session=session)
    with _h5(path) as fh:
        objids = fh["objid"][()].astype(np.int64)
        truth_cols = {
            c: fh[c][()]
            for c in cols
            if c not in ("objid", "ra", "dec", "kind", "source_type", "host_objid") and not c.startswith("mag_")
        }
        host_objids = np.char.decode(fh["host_objid"][()].astype("S"), "ascii")
    idmap: dict[str, int] = dict(
        session.execute(
            text("SELECT objid, source_id FROM lenscat.sources WHERE survey_id = :sv AND objid = ANY(:o)"),
            {"sv": target.survey_id, "o": [str(x) for x in objids]},
        ).all()
    )
    missing = [str(x) for x in objids if str(x) not in idmap]
    if missing:
        raise LenscatError(
            f"{len(missing)} injected cutouts of {path} were not ingested (first objid {missing[0]}); "
            "see lenscat ingest status"
        )
    details = []
    for k in range(len(objids)):
        d: dict[str, Any] = {"kind": "injection", "host_objid": str(host_objids[k]), "file": str(path)}
        for c, v in truth_cols.items():
            x = v[k].item()
            d[c] = (
                None if isinstance(x, float) and not math.isfinite(x) else (round(x, 6) if isinstance(x, float) else x)
            )
        details.append(d)
    sids = np.array([int(idmap[str(x)]) for x in objids], dtype=np.int64)
    written, removed = _upsert(
        sids, np.ones(len(sids), dtype=np.int8), details, "injection", str(path), session=session, replace=True
    )
    te_v, snr_v, mu_v = (
        truth_cols["theta_e"].astype(float),
        truth_cols["arc_snr"].astype(float),
        truth_cols["magnification"].astype(float),
    )

    def rng_of(v: np.ndarray) -> tuple[float, float]:
        v = v[np.isfinite(v)]
        return (float(v.min()), float(v.max())) if len(v) else (float("nan"), float("nan"))

    return InjectionSummary(
        survey=name,
        parent=survey,
        path=path,
        n=n,
        n_sources=hosts.n_sources,
        n_excluded_known=hosts.n_excluded_known,
        n_candidates=hosts.n_candidates,
        n_eligible=hosts.n_eligible,
        theta_e_range=rng_of(te_v),
        arc_snr_range=rng_of(snr_v),
        magnification_range=rng_of(mu_v),
        n_labels_written=written,
        n_labels_removed=removed,
        rendered=rendered,
        resumed_rows=done,
        ingest={
            "ingest_id": ing.ingest_id,
            "inserted": ing.inserted,
            "updated": ing.updated,
            "unchanged": ing.unchanged,
            "rejected": ing.rejected,
            "batches_written": ing.batches_total - ing.batches_skipped,
        },
        psf_fwhm=fwhm,
        pixel_scale_arcsec=scale,
        seconds=time.perf_counter() - t0,
    )


def _h5(path: Path) -> Any:
    import h5py

    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise LenscatError(f"{path}: cannot open as HDF5: {exc}") from exc
