"""Pipeline models of DESI spectra rebuilt from a redrock fit (:func:`coadd_models`, :class:`RedrockFit`).

The best-fit template of the fit's type (:func:`select_template`) is evaluated at the fitted redshift
with the fit's coefficients and convolved with each arm's resolution matrix
(:func:`lenscat.spectra.redrock.apply_resolution`); templates are read by :mod:`lenscat.spectra.redrock`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from lenscat.spectra.redrock import RedrockTemplate, apply_resolution, centers_to_edges, fulltype


def _used_terms(coeff: np.ndarray) -> int:
    nz = np.flatnonzero(np.asarray(coeff) != 0)
    return int(nz[-1]) + 1 if nz.size else 0


def select_template(
    templates: Sequence[RedrockTemplate],
    spectype: str | None,
    subtype: str | None,
    coeff: np.ndarray,
    ncoeff: int | None = None,
    versions: dict[str, str] | None = None,
) -> tuple[RedrockTemplate | None, str | None]:
    """The template a redrock fit was made with, or None and a one-line reason.

    Parameters
    ----------
    templates : sequence of RedrockTemplate
        Candidates, in order of preference (see :func:`~lenscat.spectra.redrock.load_templates`).
    spectype, subtype : str or None
        The fit's ``SPECTYPE`` / ``SUBTYPE``.
    coeff : numpy.ndarray
        The fit's ``COEFF`` row.
    ncoeff : int, optional
        The fit's ``NCOEFF``. Without it (older redrock files) the smallest template with at least
        as many basis vectors as the last non-zero coefficient needs is taken.
    versions : dict, optional
        Fulltype -> template version from the redrock file header (:func:`~lenscat.spectra.redrock.header_versions`).

    Returns
    -------
    (RedrockTemplate or None, str or None)
        The template and None, or None and why not.
    """
    st = (spectype or "").strip().upper()
    sub = (subtype or "").strip().upper()
    if not st:
        return None, "redrock row has no SPECTYPE"
    c = np.asarray(coeff, dtype=np.float64)
    if c.size == 0 or not np.all(np.isfinite(c)) or not np.any(c != 0):
        return None, "redrock row has no usable COEFF"
    ft = fulltype(st, sub)
    same = [t for t in templates if t.spectype == st and t.subtype == sub]
    if not same:
        have = ", ".join(sorted({t.fulltype for t in templates})) or "none"
        return None, (f"no redrock {ft} template available (have {have}; set LENSCAT_REDROCK_TEMPLATES)")
    if ncoeff is not None and ncoeff > 0:
        fits_n = [t for t in same if t.nbasis == ncoeff]
        want = f"{ncoeff} terms"
    else:
        used = _used_terms(c)
        fits_n = sorted((t for t in same if used <= t.nbasis <= c.size), key=lambda t: t.nbasis)
        fits_n = [t for t in fits_n if t.nbasis == fits_n[0].nbasis] if fits_n else []
        want = f"{used} non-zero terms"
    if not fits_n:
        have_n = ", ".join(str(n) for n in sorted({t.nbasis for t in same}))
        return None, (
            f"redrock COEFF has {want}; available {ft} templates have {have_n} (set LENSCAT_REDROCK_TEMPLATES)"
        )
    ver = (versions or {}).get(ft)
    if ver is not None:
        ok = [t for t in fits_n if t.version is None or t.version == ver]
        if not ok:
            have_v = ", ".join(sorted({str(t.version) for t in fits_n}))
            return None, (
                f"redrock used {ft} template version {ver}; available versions {have_v} (set LENSCAT_REDROCK_TEMPLATES)"
            )
        exact = [t for t in ok if t.version == ver]
        fits_n = exact or ok
    return fits_n[0], None


@dataclass(frozen=True)
class RedrockFit:
    """One row of a redrock ``REDSHIFTS`` table, as far as the model needs it.

    Attributes
    ----------
    z : float or None
        ``Z``.
    coeff : numpy.ndarray or None
        ``COEFF`` (float64).
    spectype, subtype : str or None
        ``SPECTYPE``, ``SUBTYPE``.
    ncoeff : int or None
        ``NCOEFF`` (None in files that predate it).
    """

    z: float | None
    coeff: np.ndarray | None
    spectype: str | None
    subtype: str | None
    ncoeff: int | None = None


def coadd_models(
    fits_: Sequence[RedrockFit | None],
    waves: Sequence[np.ndarray],
    resolution: Callable[[int, np.ndarray], np.ndarray | None],
    templates: Sequence[RedrockTemplate],
    versions: dict[str, str] | None = None,
    arm_names: Sequence[str] | None = None,
) -> tuple[list[list[np.ndarray] | None], list[str | None], list[str | None]]:
    """Redrock models of the targets of a DESI coadd, arm by arm, with each arm's resolution.

    Parameters
    ----------
    fits_ : sequence of RedrockFit or None
        The fit of each target (None: the redrock file has no row for it).
    waves : sequence of numpy.ndarray
        Each arm's pixel centres [Angstrom, vacuum].
    resolution : callable
        ``resolution(arm, rows)`` -> the (len(rows), ndiag, nwave) ``*_RESOLUTION`` data of those
        target rows for arm number ``arm``, or None when the coadd has none (the model is then
        left unconvolved and the note says so). Called at most once per arm, only when some
        target has a model.
    templates : sequence of RedrockTemplate
        See :func:`~lenscat.spectra.redrock.load_templates`.
    versions : dict, optional
        The redrock file's template versions (:func:`~lenscat.spectra.redrock.header_versions`).
    arm_names : sequence of str, optional
        Names of the arms (``B``, ``R``, ``Z``) for the notes.

    Returns
    -------
    (models, notes, names)
        Per target: a list of float32 arrays, one per arm [1e-17 erg/s/cm^2/A], or None; a
        one-line note (why there is no model, or a caveat), or None; the template file used, or None.
    """
    n = len(fits_)
    models: list[list[np.ndarray] | None] = [None] * n
    notes: list[str | None] = [None] * n
    names: list[str | None] = [None] * n
    chosen: dict[int, list[int]] = {}
    by_id: dict[int, RedrockTemplate] = {}
    edges = [centers_to_edges(w) for w in waves]
    for r, f in enumerate(fits_):
        if f is None:
            notes[r] = "target not in the redrock file"
            continue
        if f.z is None or not np.isfinite(f.z):
            notes[r] = "redrock row has no Z"
            continue
        if f.coeff is None:
            notes[r] = "redrock file has no COEFF column"
            continue
        t, why = select_template(templates, f.spectype, f.subtype, f.coeff, f.ncoeff, versions)
        if t is None:
            notes[r] = why
            continue
        if not all(t.covers(e, f.z) for e in edges):
            notes[r] = (
                f"{t.fulltype} template {t.name} covers {t.wave[0] * (1 + f.z):.0f}-"
                f"{t.wave[-1] * (1 + f.z):.0f} A at z = {f.z:.4f}, not the whole spectrum"
            )
            continue
        by_id[id(t)] = t
        chosen.setdefault(id(t), []).append(r)
        names[r] = t.name
    if not chosen:
        return models, notes, names
    rows_all = np.array(sorted(r for rs in chosen.values() for r in rs), dtype=np.int64)
    pos = {int(r): i for i, r in enumerate(rows_all)}
    per_arm = [np.empty((rows_all.size, w.size), dtype=np.float32) for w in waves]
    for key, rs in chosen.items():
        coeff = np.stack(
            [
                np.asarray(fits_[r].coeff, dtype=np.float64)  # type: ignore[union-attr]
                for r in rs
            ]
        )
        z = np.array([fits_[r].z for r in rs], dtype=np.float64)  # type: ignore[union-attr]
        idx = [pos[r] for r in rs]
        for arm, m in zip(per_arm, by_id[key].evaluate_arms(coeff, waves, z), strict=True):
            arm[idx] = m
    unconvolved: list[int] = []
    for a in range(len(waves)):
        rdata = resolution(a, rows_all)
        if rdata is None:
            unconvolved.append(a)
            continue
        per_arm[a] = apply_resolution(rdata, per_arm[a])
    for i, r in enumerate(rows_all):
        models[r] = [np.asarray(per_arm[a][i], dtype=np.float32) for a in range(len(waves))]
        if unconvolved:
            which = ", ".join(arm_names[a] if arm_names else str(a) for a in unconvolved)
            notes[r] = f"no resolution matrix for arm(s) {which}: model not convolved there"
    return models, notes, names
