"""Training sets of the lens modelling network: simulated lenses with the truth of every parameter.

Lenses come from the default (lenstronomy) simulator's own scene drawing and rendering
(:func:`lenscat.simulate.survey_objects.draw_scene`, :func:`lenscat.simulate.survey_render.render_scene`):
EPL (near-isothermal) + external shear, 1-3 Sersic sources with star-forming clumps, the deflector's
light, field objects, the survey's Moffat PSF, pixels and noise. Each scene is rendered on a
``stamp``-pixel cutout and a ``crop``-pixel window is cut from it at a random whole-pixel offset of
up to ``max_shift`` pixels, so the lens centre varies over the window (the simulator itself puts it
within half a pixel of the catalogue position). The truth of the first (brightest) source gives
``source_x/y``.

Truth is converted to the sky frame of :mod:`lenscat.modelling.frames`. With ``hosts`` (cutouts of a
survey's own galaxies, :func:`injected_lens_set`), injections add lensed sources rendered by
:func:`lenscat.simulate.injection_render.render_injection` to the real pixels.

Object ``i`` of a set draws everything from ``SeedSequence((seed, ENTROPY), spawn_key=(i,))``, so a
set depends only on its arguments.
"""

from __future__ import annotations

import hashlib
import math
import multiprocessing
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from lenscat.errors import InvalidParameter
from lenscat.modelling.frames import pixel_row, sky_from_pixel

if TYPE_CHECKING:
    from lenscat.simulate.survey_render import Scene

ENTROPY = 0x1E45_30DE
"""Mixed with the seed, so a set never shares random streams with a simulated survey of the same seed."""

PIXEL_SCALE = 0.262
"""Arcsec per pixel of the simulated cutouts (Legacy Surveys)."""

NONLENS_KINDS: tuple[str, ...] = ("elliptical", "spiral", "ring", "blue_companion", "merger", "close_pair", "disk")
"""The default simulator's non-lens impostor kinds (its ``star`` aside): the negatives of the lens
probability, and the impostors of the vetting benchmarks."""


@dataclass
class LensSet:
    """Cutout windows and their truth.

    Attributes
    ----------
    images
        (N, 3, crop, crop) float32, g, r, z nanomaggies, FITS orientation (north up, east left).
    targets
        (N, 9) sky-frame truth in :data:`~lenscat.modelling.types.PARAMS` order (NaN rows: non-lenses).
    kinds
        (N,) object kinds (``'lens'`` or a non-lens kind; ``'injection'`` for injected lenses).
    psf_fwhm
        (N, 3) PSF FWHM [arcsec] per band.
    sky_sigma
        (N, 3) per-pixel sky noise [nanomaggies] per band.
    meta
        How the set was made (for the version's hyper-parameters).
    """

    images: np.ndarray
    targets: np.ndarray
    kinds: np.ndarray
    psf_fwhm: np.ndarray
    sky_sigma: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.images)

    def digest(self) -> str:
        """sha256 of the images and targets: the training-set identity of a version."""
        h = hashlib.sha256()
        h.update(np.ascontiguousarray(self.images, dtype="<f4").tobytes())
        h.update(np.ascontiguousarray(self.targets, dtype="<f8").tobytes())
        return h.hexdigest()

    def subset(self, idx: np.ndarray) -> LensSet:
        """The rows ``idx``."""
        return LensSet(
            self.images[idx], self.targets[idx], self.kinds[idx], self.psf_fwhm[idx], self.sky_sigma[idx], self.meta
        )


def concat(sets: list[LensSet]) -> LensSet:
    """Rows of several sets, in order (meta of the first, with ``parts`` listing all)."""
    return LensSet(
        np.concatenate([s.images for s in sets]),
        np.concatenate([s.targets for s in sets]),
        np.concatenate([s.kinds for s in sets]),
        np.concatenate([s.psf_fwhm for s in sets]),
        np.concatenate([s.sky_sigma for s in sets]),
        {**sets[0].meta, "parts": [s.meta for s in sets]},
    )


def _rng(seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence((seed, ENTROPY), spawn_key=(index,)))


def _light_rng(seed: int, index: int) -> np.random.Generator:
    """Object ``index``'s stream of the lens-light shift: a child of its own, so the scene and the noise
    draw exactly what they draw without the shift."""
    return np.random.default_rng(np.random.SeedSequence((seed, ENTROPY), spawn_key=(index, 1)))


def shift_central_light(scene: Scene, dm: float) -> None:
    """Make the central object's light (the lens's deflector) ``dm`` magnitudes fainter, in place.

    Scales the flux of the scene's image-plane components and points flagged ``central`` by
    ``10 ** (-0.4 dm)``; lensed sources (``plane='source'``, normalised to the scene's ``arc_mag_r``
    when rendered) and field objects keep theirs.
    """
    f = 10.0 ** (-0.4 * dm)
    for comp in scene.comps:
        if comp.central and comp.plane == "image":
            comp.flux = comp.flux * f
    for point in scene.points:
        if point.central:
            point.flux = point.flux * f


def _scene(
    task: tuple[int, int, str, int, int, int, tuple[float, float] | None, tuple[float, float] | None],
) -> tuple[Scene, np.random.Generator, int, int, float]:
    """Object ``index``'s scene, its noise generator, the window offset (di, dj) and the light shift [mag]."""
    from lenscat.simulate.survey_objects import draw_scene

    seed, index, kind, stamp, _crop, max_shift, arc_mag_r, lens_light_dm = task
    rng = _rng(seed, index)
    ebv = float(np.clip(rng.lognormal(math.log(0.03), 0.6), 0.0, 0.3))
    scene = draw_scene(kind, rng, ebv, stamp)
    if arc_mag_r is not None and scene.lens is not None:
        scene.lens.arc_mag_r = float(rng.uniform(*arc_mag_r))
    di, dj = (int(v) for v in rng.integers(-max_shift, max_shift + 1, 2))
    dm = 0.0
    if lens_light_dm is not None:
        dm = float(_light_rng(seed, index).uniform(*lens_light_dm))
        shift_central_light(scene, dm)
    return scene, rng, di, dj, dm


def _one(
    task: tuple[int, int, str, int, int, int, tuple[float, float] | None, tuple[float, float] | None],
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Render object ``index``: (window, sky-frame truth, PSF FWHM, sky sigma)."""
    from lenscat.simulate.survey_render import render_scene

    stamp, crop = task[3], task[4]
    scene, rng, di, dj, _ = _scene(task)
    out = render_scene(scene, stamp, rng)
    c, h = stamp // 2, crop // 2
    # window centre at stamp pixel (c + di, c + dj): pixel-frame position (dj, di) * scale
    win = out.images[:, c + di - h : c + di - h + crop, c + dj - h : c + dj - h + crop]
    truth = np.full(9, np.nan)
    if scene.lens is not None:
        kl, ks = scene.lens.kwargs
        src = next(comp for comp in scene.comps if comp.plane == "source")
        ox, oy = dj * PIXEL_SCALE, di * PIXEL_SCALE
        t = scene.truth
        pix = pixel_row(
            float(scene.lens.theta_e),
            float(t["lens_q"]),
            float(t["lens_phi"]),
            float(ks["gamma1"]),
            float(ks["gamma2"]),
            float(kl["center_x"]) - ox,
            float(kl["center_y"]) - oy,
            float(src.x) - ox,
            float(src.y) - oy,
        )
        truth = sky_from_pixel(pix)
    return np.ascontiguousarray(win, dtype=np.float32), truth, np.asarray(scene.fwhm), np.asarray(out.sky_sigma)


def simulate_lens_set(
    n: int,
    *,
    seed: int,
    kinds: tuple[str, ...] = ("lens",),
    stamp: int = 64,
    crop: int = 48,
    max_shift: int = 2,
    workers: int = 1,
    arc_mag_r: tuple[float, float] | None = None,
    lens_light_dm: tuple[float, float] | None = None,
) -> LensSet:
    """``n`` windows from the default simulator, the kinds taken in turn (``kinds[i % len(kinds)]``).

    Parameters
    ----------
    n
        Number of windows.
    seed
        Seed of the set.
    kinds
        Object kinds of :data:`lenscat.simulate.survey_objects.KINDS` (``'lens'``: with truth).
    stamp, crop
        Rendered cutout and window sides [pixels].
    max_shift
        Largest whole-pixel offset of the window centre from the stamp centre.
    workers
        Processes rendering in parallel.
    arc_mag_r
        Range of the total lensed r magnitude (uniform); None keeps the simulator's 19.0-21.5.
    lens_light_dm
        Domain randomisation of the training sets: the central object's light (a lens's deflector, an
        impostor's main galaxy; not the arcs, not field objects) made fainter by a magnitude shift drawn
        uniformly from (lo, hi) per object (:func:`shift_central_light`; negative: brighter), from a
        stream of the object's own that nothing else draws from, so the arcs, the field and the noise
        draws are those without it. The simulator ties a lens's brightness to its θ_E; the shift breaks
        that tie (docs/benchmarks.md, "Lens-light randomisation"). None (the default) leaves the
        set bit-identical to the simulator's.
    """
    from lenscat.simulate.survey_objects import KINDS

    if n < 1:
        raise InvalidParameter("n", "{n} must be a positive number of cutouts")
    bad = [k for k in kinds if k not in KINDS]
    if bad or not kinds:
        raise InvalidParameter("kinds", f"unknown kind {bad[0] if bad else ''!r}; choose from {', '.join(KINDS)}")
    if crop + 2 * max_shift > stamp:
        raise InvalidParameter("crop", f"{{crop}} + 2 x shift ({crop + 2 * max_shift}) exceeds the stamp of {stamp}")
    if lens_light_dm is not None and not (
        len(lens_light_dm) == 2
        and all(math.isfinite(v) and abs(v) <= 5.0 for v in lens_light_dm)
        and lens_light_dm[0] <= lens_light_dm[1]
    ):
        raise InvalidParameter("lens_light_dm", "{lens_light_dm} must be LO,HI magnitudes with -5 <= LO <= HI <= 5")
    tasks = [(seed, i, kinds[i % len(kinds)], stamp, crop, max_shift, arc_mag_r, lens_light_dm) for i in range(n)]
    if workers > 1:
        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            rows = pool.map(_one, tasks, chunksize=16)
    else:
        rows = [_one(t) for t in tasks]
    return LensSet(
        np.stack([r[0] for r in rows]),
        np.stack([r[1] for r in rows]),
        np.array([t[2] for t in tasks], dtype=object),
        np.stack([r[2] for r in rows]),
        np.stack([r[3] for r in rows]),
        {
            "simulator": "lenscat.simulate.survey",
            "n": n,
            "seed": seed,
            "kinds": list(kinds),
            "stamp": stamp,
            "crop": crop,
            "max_shift": max_shift,
            "arc_mag_r": None if arc_mag_r is None else list(arc_mag_r),
            **({} if lens_light_dm is None else {"lens_light_dm": list(lens_light_dm)}),
        },
    )


def split(n: int, fractions: tuple[float, ...], seed: int) -> list[np.ndarray]:
    """Random disjoint index sets of ``round(f * n)`` rows for each fraction (the last takes the rest)."""
    order = np.random.default_rng(seed).permutation(n)
    out, start = [], 0
    for k, f in enumerate(fractions):
        stop = n if k == len(fractions) - 1 else start + int(round(f * n))
        out.append(np.sort(order[start:stop]))
        start = stop
    return out
