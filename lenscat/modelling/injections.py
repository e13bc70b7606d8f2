"""Lenses injected into a survey's own galaxies, with the truth of every parameter (training data).

The hosts are the survey's massive red galaxies that are not known lenses
(:func:`lenscat.simulate.injection_hosts.select_hosts`); each gets a lensed source drawn and
rendered as ``lenscat simulate inject`` does (:mod:`lenscat.simulate.injection_render`: SIE + shear
centred on the host, a Sersic source with clumps, ray-shot with lenstronomy and convolved with the
survey's PSF), added to its real pixels. Nothing is written to the database or a file: the windows
go straight into the training set.

The injection renderer centres the lens at array position ``((H - 1) / 2, (W - 1) / 2)``, half a pixel
from the window centre ``H // 2`` of an even cutout; the truth accounts for it.
"""

from __future__ import annotations

import numpy as np
from sqlalchemy.orm import Session

from lenscat.classifiers.inputs import catalogue_images
from lenscat.errors import LenscatError
from lenscat.modelling.frames import pixel_row, sky_from_pixel
from lenscat.modelling.training_set import ENTROPY, LensSet
from lenscat.simulate.injection_file import _psf_from_catalogue
from lenscat.simulate.injection_hosts import _catalogue, _real_parent, select_hosts
from lenscat.simulate.injection_render import _draw, _psf_kernel, render_injection
from lenscat.simulate.injection_types import DEFAULT_PIXEL_SCALE

THETA_E = (0.8, 3.0)
SOURCE_MAG = (21.5, 24.0)
SOURCE_G_R = (0.0, 0.6)
SOURCE_R_Z = (-0.1, 0.5)


def host_window_set(survey: str, n: int, *, seed: int, crop: int = 48, session: Session) -> LensSet:
    """``n`` windows of the survey's injection hosts as they are, without an arc: non-lens examples.

    The same hosts as :func:`injected_lens_set` draws from (another order, ``seed`` + 1), so the
    lens-probability head sees the survey's own red galaxies both with and without lensed light
    and cannot learn the survey's pixels as "lens". Targets are NaN; kind ``'host'``.

    Raises
    ------
    LenscatError
        As :func:`injected_lens_set`.
    """
    parent = _real_parent(survey, session)
    bands = list(parent.bands)
    if not {"g", "r", "z"} <= set(bands):
        raise LenscatError(f"survey {survey!r} lacks one of the g, r, z bands the network reads")
    ib = [bands.index(b) for b in ("g", "r", "z")]
    hosts = select_hosts(survey, session=session, n=n, seed=seed + 1)
    if not len(hosts.source_ids):
        raise LenscatError(f"survey {survey!r} has no galaxy eligible to host an injected lens")
    fwhm = _psf_from_catalogue(_catalogue(parent.survey_id, bands, session), bands)
    host_ids = np.resize(np.asarray(hosts.source_ids, dtype=np.int64), n)
    imgs = np.asarray(catalogue_images(host_ids, session=session).get(np.arange(n)), dtype=np.float32)
    h, w = imgs.shape[-2:]
    if h < crop or w < crop:
        raise LenscatError(f"cutouts of {h}x{w} pixels are smaller than the {crop}-pixel window")
    oy, ox = (h - crop) // 2, (w - crop) // 2
    return LensSet(
        np.ascontiguousarray(imgs[:, ib, oy : oy + crop, ox : ox + crop]),
        np.full((n, 9), np.nan),
        np.array(["host"] * n, dtype=object),
        np.tile([fwhm[b] for b in ("g", "r", "z")], (n, 1)),
        np.full((n, 3), np.nan),
        {"hosts_as_nonlenses": survey, "n": n, "seed": seed + 1, "hosts": int(len(hosts.source_ids))},
    )


def injected_lens_set(survey: str, n: int, *, seed: int, crop: int = 48, session: Session) -> LensSet:
    """``n`` windows of the survey's galaxies with an injected lensed source (hosts reused if too few).

    Parameters
    ----------
    survey
        A real survey with g, r, z cutouts at the network's pixel scale.
    n
        Number of injected lenses.
    seed
        Seed of the host order and of every draw.
    crop
        Window side [pixels].
    session
        Session to read the hosts through.

    Raises
    ------
    LenscatError
        The survey lacks g, r, z, has no eligible host, or its cutouts are smaller than the window.
    """
    parent = _real_parent(survey, session)
    bands = list(parent.bands)
    ib = [bands.index(b) for b in ("g", "r", "z")]
    scale = float(parent.pixel_scale_arcsec or DEFAULT_PIXEL_SCALE)
    if abs(scale - 0.262) > 0.01:
        raise LenscatError(f"survey {survey!r} has {scale:g} arcsec pixels; the network reads 0.262 arcsec pixels")
    hosts = select_hosts(survey, session=session, n=n, seed=seed)
    if not len(hosts.source_ids):
        raise LenscatError(f"survey {survey!r} has no galaxy eligible to host an injected lens")
    fwhm = _psf_from_catalogue(_catalogue(parent.survey_id, bands, session), bands)
    kernels = [_psf_kernel(fwhm[b], scale, "moffat") for b in bands]
    host_ids = np.resize(np.asarray(hosts.source_ids, dtype=np.int64), n)
    imgs = catalogue_images(host_ids, session=session)
    windows, truths = [], []
    for i in range(n):
        host = np.asarray(imgs.get(np.array([i]))[0], dtype=np.float64)
        h, w = host.shape[-2:]
        if h < crop or w < crop:
            raise LenscatError(f"cutouts of {h}x{w} pixels are smaller than the {crop}-pixel window")
        rng = np.random.default_rng(np.random.SeedSequence((seed, ENTROPY + 2), spawn_key=(i,)))
        d = _draw(rng, THETA_E, SOURCE_MAG, SOURCE_G_R, SOURCE_R_Z)
        arc, _ = render_injection(d, (h, w), bands, scale, kernels)
        full = host + arc
        oy, ox = (h - crop) // 2, (w - crop) // 2
        windows.append(full[ib, oy : oy + crop, ox : ox + crop].astype(np.float32))
        cx, cy = ((w - 1) / 2 - (ox + crop // 2)) * scale, ((h - 1) / 2 - (oy + crop // 2)) * scale
        truths.append(
            sky_from_pixel(pixel_row(d.theta_e, d.q, d.phi, d.gamma1, d.gamma2, cx, cy, cx + d.src_x, cy + d.src_y))
        )
    return LensSet(
        np.stack(windows),
        np.stack(truths),
        np.array(["injection"] * n, dtype=object),
        np.tile([fwhm[b] for b in ("g", "r", "z")], (n, 1)),
        np.full((n, 3), np.nan),
        {"injections": survey, "n": n, "seed": seed, "hosts": int(len(hosts.source_ids)), "psf_fwhm": fwhm},
    )
