"""Injection training sets: simulated lensed sources painted on a survey's own galaxies.

Lens searches that reach high purity train on simulated arcs added to the survey's real images of
plausible deflectors (Jacobs et al. 2019, Petrillo et al. 2019, Huang et al. 2020, Cañameras et al.
2020): the network then sees the survey's real noise, PSF, neighbours and artefacts around every
positive, and has to learn only the arc. :func:`inject_survey` does that for a catalogued survey:

1. :func:`~lenscat.simulate.injection_hosts.select_hosts` picks massive, red, early-type-looking galaxies of the survey
   (bright, red g-r and r-z, extended, not point sources), from the catalogue columns where present and
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
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import text
from sqlalchemy.orm import Session

from lenscat.catalogue.ingest import ingest_sources
from lenscat.catalogue.surveys import ensure_survey, get_survey
from lenscat.classifiers.inputs import catalogue_images
from lenscat.classifiers.labels import _upsert
from lenscat.db.session import session_scope
from lenscat.errors import LenscatError, Step
from lenscat.settings import get_settings
from lenscat.simulate.injection_file import _columns, _finished_key, _psf_from_catalogue, _render_file, _RenderJob
from lenscat.simulate.injection_hosts import _catalogue, _real_parent, select_hosts
from lenscat.simulate.injection_render import _psf_kernel
from lenscat.simulate.injection_types import (
    DEFAULT_PIXEL_SCALE,
    GENERATOR,
    InjectionSummary,
    _check_range,
)

__all__ = ["inject_survey", "default_injection_path"]


def default_injection_path(name: str, seed: int, n: int) -> Path:
    """``LENSCAT_HOME/injections/NAME-seedSEED-nN.h5``."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    return get_settings().home.expanduser().resolve() / "injections" / f"{safe}-seed{int(seed)}-n{int(n)}.h5"


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
        Host cuts (:func:`~lenscat.simulate.injection_hosts.select_hosts`).
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
            "{step} to see why",
            step=Step(("ingest", "status"), (), "look at the ingest's status"),
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
