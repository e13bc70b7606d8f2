"""The DESI pipeline's own model of a spectrum, rebuilt from its redrock fit.

DESI coadds carry no model array; redrock's best fit is stored as numbers in the ``REDSHIFTS``
table of ``redrock-*.fits`` (``Z``, ``COEFF``, ``SPECTYPE``, ``SUBTYPE``, ``NCOEFF``). The model
is rebuilt as redrock's own ``eval_model`` does it::

    model_arm = R_arm . rebin( sum_i COEFF_i T_i(lambda / (1 + z)) )

where ``T_i`` are the basis vectors of the redrock template of that SPECTYPE/SUBTYPE (rest-frame
vacuum wavelength), ``rebin`` averages the piecewise-linear redshifted template over each
pixel's edges (redrock's ``trapz_rebin``; no (1+z) flux factor, as in redrock) and ``R_arm`` is
the arm's resolution matrix (coadd HDU ``B/R/Z_RESOLUTION``, DESI's band-diagonal storage, see
:func:`apply_resolution`). No IGM transmission is applied (redrock's ``eval_model`` applies none).

Templates
---------
One template ships with lenscat: ``rrtemplate-galaxy-2016-a85ec73.fits.gz`` (redrock GALAXY, 5
basis vectors, rest 1166.7-10000 A at 0.1 A; a float32 copy, BSD-3, see
``lenscat/data/spectra/README.md``). DESI's production fits (fuji, iron...) used later template
sets (GALAXY with 10 basis vectors, QSO, STAR subtypes) that do not ship with lenscat nor with the
``redrock`` package on PyPI. Point the setting ``redrock_templates``
(``LENSCAT_REDROCK_TEMPLATES``) at a directory of ``rrtemplate-*.fits`` files (a checkout of
desihub/redrock-templates) to use them; they take precedence over the shipped one.

A fit is rebuilt only with a template of the same type and subtype whose number of basis vectors
equals the fit's ``NCOEFF`` (and, where both the redrock file header and the template name a
template version, the same version); otherwise the model is None and a one-line note says why.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits

from lenscat.errors import LenscatError

#: the template file shipped in ``lenscat/data/spectra``
SHIPPED_TEMPLATES: tuple[str, ...] = ("rrtemplate-galaxy-2016-a85ec73.fits.gz",)

_TEMPLATE_GLOBS = ("rrtemplate-*.fits", "rrtemplate-*.fits.gz")
_TEMNAM = re.compile(r"^TEMNAM(\d+)$")


@dataclass(frozen=True)
class RedrockTemplate:
    """One redrock template: rest-frame basis vectors of a spectral type.

    Attributes
    ----------
    spectype : str
        ``RRTYPE`` (``GALAXY``, ``QSO``, ``STAR``), upper case.
    subtype : str
        ``RRSUBTYP`` (e.g. ``K`` for STAR:::K, ``HIZ`` for QSO:::HIZ), upper case, ``''`` if none.
    version : str or None
        ``VERSION`` header keyword, when the file has one.
    wave : numpy.ndarray
        Rest-frame vacuum wavelength of each sample [Angstrom], float64, increasing.
    basis : numpy.ndarray
        (nbasis, nwave) basis vectors, float32, in the flux units the redrock coefficients assume
        (the coefficients turn them into 1e-17 erg/s/cm^2/A).
    name : str
        File name the template was read from.
    """

    spectype: str
    subtype: str
    version: str | None
    wave: np.ndarray
    basis: np.ndarray
    name: str

    @property
    def nbasis(self) -> int:
        """Number of basis vectors (the ``NCOEFF`` of a fit made with this template)."""
        return int(self.basis.shape[0])

    @property
    def fulltype(self) -> str:
        """``SPECTYPE`` or ``SPECTYPE:::SUBTYPE``, as redrock writes it."""
        return fulltype(self.spectype, self.subtype)

    @cached_property
    def _table(self) -> np.ndarray:
        """(nwave - 1, 3, nbasis) per template interval: integral of each basis vector from
        ``wave[0]`` to the interval's start, its value there, its slope (one gather per pixel edge
        then gives all basis vectors)."""
        y = self.basis.astype(np.float64)
        dx = np.diff(self.wave)
        cum = np.zeros_like(y)
        np.cumsum(0.5 * (y[:, 1:] + y[:, :-1]) * dx, axis=1, out=cum[:, 1:])
        slope = np.diff(y, axis=1) / dx
        return np.ascontiguousarray(np.stack([cum[:, :-1], y[:, :-1], slope]).transpose(2, 0, 1))

    @cached_property
    def _uniform(self) -> tuple[float, float] | None:
        """(first wavelength, step) when the rest wavelengths are evenly spaced, else None."""
        d = np.diff(self.wave)
        return (float(self.wave[0]), float(d[0])) if np.allclose(d, d[0], rtol=1e-9, atol=0) else None

    def covers(self, edges: np.ndarray, z: float) -> bool:
        """True when the template at redshift ``z`` covers pixel ``edges`` [Angstrom] (see
        :func:`centers_to_edges`) from first to last."""
        return bool(edges[0] >= self.wave[0] * (1.0 + z) and edges[-1] <= self.wave[-1] * (1.0 + z))

    def evaluate(self, coeff: np.ndarray, wave: np.ndarray, z: np.ndarray | float) -> np.ndarray:
        """The template at redshift ``z``, averaged over each pixel of ``wave`` (no resolution).

        Parameters
        ----------
        coeff : numpy.ndarray
            (nbasis_or_more,) or (m, nbasis_or_more) coefficients; only the first :attr:`nbasis`
            of each row are used, as redrock does.
        wave : numpy.ndarray
            Observed vacuum wavelength of the pixel centres [Angstrom], increasing.
        z : float or numpy.ndarray
            Redshift, one per row of ``coeff``.

        Returns
        -------
        numpy.ndarray
            float64 flux density per pixel [1e-17 erg/s/cm^2/A], (n,) or (m, n) as ``coeff``.

        Raises
        ------
        ValueError
            If the redshifted template does not cover the pixels' edges for some row.
        """
        (out,) = self.evaluate_arms(coeff, [wave], z)
        return out

    def evaluate_arms(
        self, coeff: np.ndarray, waves: Sequence[np.ndarray], z: np.ndarray | float, chunk: int = 32
    ) -> list[np.ndarray]:
        """:meth:`evaluate` on several pixel grids (a coadd's arms) at once.

        The redshifted template ``coeff . basis`` is taken as piecewise linear between its
        samples, integrated exactly between the pixel edges (:func:`centers_to_edges`) and
        divided by the pixel width: redrock's ``trapz_rebin`` (a flux density stays a density;
        no (1+z) factor, as in redrock's ``eval_model``).

        Parameters
        ----------
        coeff : numpy.ndarray
            (nbasis_or_more,) or (m, nbasis_or_more) coefficients.
        waves : sequence of numpy.ndarray
            Pixel centres of each grid [Angstrom, vacuum], each increasing.
        z : float or numpy.ndarray
            Redshift, one per row of ``coeff``.
        chunk : int
            Rows evaluated together (bounds the memory of the work arrays).

        Returns
        -------
        list of numpy.ndarray
            One float64 array per grid, (n_pixels,) or (m, n_pixels) as ``coeff``.

        Raises
        ------
        ValueError
            If the redshifted template does not cover some grid's edges for some row.
        """
        c = np.asarray(coeff, dtype=np.float64)
        single = c.ndim == 1
        c = np.atleast_2d(c)
        if c.shape[1] < self.nbasis:
            raise ValueError(f"{c.shape[1]} coefficients for a template of {self.nbasis} basis vectors")
        c = c[:, : self.nbasis]
        zz = np.broadcast_to(np.asarray(z, dtype=np.float64), (c.shape[0],))
        edges = [centers_to_edges(w) for w in waves]
        cuts = np.cumsum([0] + [e.size for e in edges])
        allx = np.concatenate(edges)
        x = self.wave
        lo_e, hi_e = float(allx.min()), float(allx.max())
        outs = [np.empty((c.shape[0], e.size - 1)) for e in edges]
        step = max(int(chunk), 1)
        for a in range(0, c.shape[0], step):
            b = min(a + step, c.shape[0])
            zc = zz[a:b]
            bad = (lo_e / (1.0 + zc) < x[0]) | (hi_e / (1.0 + zc) > x[-1])
            if bad.any():
                zb = float(zc[np.flatnonzero(bad)[0]])
                raise ValueError(
                    f"{self.fulltype} template covers {x[0] * (1 + zb):.0f}-"
                    f"{x[-1] * (1 + zb):.0f} A at z = {zb:.4f}, the pixels "
                    f"{lo_e:.0f}-{hi_e:.0f} A"
                )
            er = allx[None, :] / (1.0 + zc[:, None])  # rest-frame edges (m, n)
            if self._uniform is not None:  # the interval of each edge, by arithmetic
                k = ((er - self._uniform[0]) / self._uniform[1]).astype(np.int64)
            else:
                k = np.searchsorted(x, er, side="right") - 1
            np.clip(k, 0, x.size - 2, out=k)
            # (m, n, 3): integral to the interval start, value and slope of coeff . basis at each edge
            parts = np.matmul(self._table[k].reshape(b - a, -1, self.nbasis), c[a:b, :, None])
            parts = parts.reshape(b - a, -1, 3)
            t = er - x[k]
            integral = parts[..., 0] + t * (parts[..., 1] + 0.5 * parts[..., 2] * t)
            for j, out in enumerate(outs):
                sl = slice(int(cuts[j]), int(cuts[j + 1]))
                out[a:b] = np.diff(integral[:, sl], axis=1) / np.diff(er[:, sl], axis=1)
        return [o[0] for o in outs] if single else outs


def fulltype(spectype: str, subtype: str) -> str:
    """Redrock's name of a template: ``SPECTYPE`` or ``SPECTYPE:::SUBTYPE``."""
    return f"{spectype}:::{subtype}" if subtype else spectype


def centers_to_edges(wave: np.ndarray) -> np.ndarray:
    """Pixel edges from pixel centres: midpoints, the outer edges half a pixel out (as redrock).

    Parameters
    ----------
    wave : numpy.ndarray
        Pixel centres [Angstrom], increasing, at least 2.

    Returns
    -------
    numpy.ndarray
        ``wave.size + 1`` edges [Angstrom], float64.
    """
    w = np.asarray(wave, dtype=np.float64)
    mid = 0.5 * (w[1:] + w[:-1])
    return np.concatenate([[w[0] - (mid[0] - w[0])], mid, [w[-1] + (w[-1] - mid[-1])]])


def apply_resolution(rdata: np.ndarray, flux: np.ndarray) -> np.ndarray:
    """Multiply flux by DESI resolution matrices stored in band-diagonal form.

    ``rdata[..., k, j]`` is the element of diagonal ``d_k = ndiag // 2 - k`` in column ``j``
    (``scipy.sparse.dia_matrix((rdata, offsets))`` with ``offsets = ndiag//2 ... -ndiag//2``,
    as ``desispec.resolution.Resolution`` builds it), so
    ``(R f)[i] = sum_k rdata[k, i + d_k] * f[i + d_k]`` over the columns that exist.

    Parameters
    ----------
    rdata : numpy.ndarray
        (..., ndiag, nwave) diagonals (a coadd's ``*_RESOLUTION`` rows), ndiag odd.
    flux : numpy.ndarray
        (..., nwave) spectra on the same pixels; leading dimensions broadcast against ``rdata``'s.

    Returns
    -------
    numpy.ndarray
        (..., nwave) convolved spectra, float32 when both inputs are float32, else float64.
    """
    r = np.asarray(rdata)
    f = np.asarray(flux)
    dtype = np.result_type(r.dtype, f.dtype, np.float32)
    ndiag, n = r.shape[-2], r.shape[-1]
    if ndiag % 2 != 1:
        raise ValueError(f"resolution data has {ndiag} diagonals, expected an odd number")
    if f.shape[-1] != n:
        raise ValueError(f"resolution data has {n} columns, flux {f.shape[-1]} pixels")
    out = np.zeros(np.broadcast_shapes(r.shape[:-2], f.shape[:-1]) + (n,), dtype=dtype)
    half = ndiag // 2
    for k in range(ndiag):
        d = half - k
        if abs(d) >= n:
            continue
        if d >= 0:
            out[..., : n - d] += r[..., k, d:] * f[..., d:]
        else:
            out[..., -d:] += r[..., k, : n + d] * f[..., : n + d]
    return out


# --------------------------------------------------------------------------------------------
# template files


def read_template(path: str | Path) -> RedrockTemplate:
    """Read one ``rrtemplate-*.fits`` file (HDU ``BASIS_VECTORS``, or the primary HDU).

    The rest wavelength is ``CRVAL1 + CDELT1 i`` (``10**`` of it when the header has ``LOGLAM``
    true), as redrock reads it.

    Parameters
    ----------
    path : str or pathlib.Path

    Returns
    -------
    RedrockTemplate

    Raises
    ------
    LenscatError
        If the file is not a redrock template (one line naming it).
    """
    p = Path(path)
    try:
        with fits.open(p, memmap=False) as h:
            hdu = h["BASIS_VECTORS"] if "BASIS_VECTORS" in h else h[0]
            hd = hdu.header
            data = hdu.data
            if data is None or data.ndim not in (1, 2) or "RRTYPE" not in hd or "CRVAL1" not in hd:
                raise LenscatError(f"{p}: not a redrock template (needs BASIS_VECTORS with RRTYPE, CRVAL1, CDELT1)")
            basis = np.atleast_2d(np.asarray(data, dtype=np.float32))
            i = np.arange(basis.shape[1], dtype=np.float64)
            wave = float(hd["CRVAL1"]) + float(hd.get("CDELT1", 1.0)) * i
            if hd.get("LOGLAM"):
                wave = 10.0**wave
            version = str(hd["VERSION"]).strip() if "VERSION" in hd else None
            return RedrockTemplate(
                spectype=str(hd["RRTYPE"]).strip().upper(),
                subtype=str(hd.get("RRSUBTYP", "") or "").strip().upper(),
                version=version or None,
                wave=np.asarray(wave),
                basis=np.ascontiguousarray(basis),
                name=p.name,
            )
    except LenscatError:
        raise
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise LenscatError(
            f"{p}: not a readable redrock template ({type(exc).__name__}: {' '.join(str(exc).split())})"
        ) from exc


def _template_files(where: Path) -> list[Path]:
    if where.is_file():
        return [where]
    if not where.is_dir():
        raise LenscatError(f"{where}: redrock template directory does not exist")
    found = sorted({q for g in _TEMPLATE_GLOBS for q in where.glob(g) if q.is_file()})
    if not found:
        raise LenscatError(f"{where}: no rrtemplate-*.fits files in the redrock template directory")
    return found


@lru_cache(maxsize=8)
def _load(where: str | None) -> tuple[RedrockTemplate, ...]:
    from lenscat.spectra.reference import data_path

    user = [read_template(p) for p in _template_files(Path(where).expanduser())] if where else []
    return (*user, *(read_template(data_path(n)) for n in SHIPPED_TEMPLATES))


def load_templates(directory: str | Path | None = None) -> tuple[RedrockTemplate, ...]:
    """The redrock templates available: a user directory's first, then the shipped one.

    Parameters
    ----------
    directory : str or pathlib.Path, optional
        A directory of ``rrtemplate-*.fits`` (or ``.fits.gz``) files, or one such file. Default:
        the ``redrock_templates`` setting (``LENSCAT_REDROCK_TEMPLATES``), if set.

    Returns
    -------
    tuple of RedrockTemplate
        Read once per process and directory.

    Raises
    ------
    LenscatError
        If the directory does not exist, holds no template file, or a file in it is not a template.
    """
    if directory is None:
        from lenscat.settings import get_settings

        directory = get_settings().redrock_templates
    return _load(str(directory) if directory is not None else None)


# --------------------------------------------------------------------------------------------
# choosing the template of a fit


def header_versions(header: Any) -> dict[str, str]:
    """Template versions a redrock file's primary header names: ``TEMNAMnn`` -> ``TEMVERnn``.

    Parameters
    ----------
    header : astropy.io.fits.Header or mapping

    Returns
    -------
    dict
        Upper-case fulltype (``GALAXY``, ``QSO:::HIZ``...) -> version string (``'unknown'`` left out).
    """
    out: dict[str, str] = {}
    for key in list(header.keys()):
        m = _TEMNAM.match(str(key))
        if m is None:
            continue
        ver = str(header.get(f"TEMVER{m.group(1)}", "") or "").strip()
        name = str(header[key] or "").strip().upper()
        if name and ver and ver.lower() != "unknown":
            out[name] = ver
    return out
