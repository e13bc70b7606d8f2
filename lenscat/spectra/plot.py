"""Plots of a stored spectrum's search window with its line hits (for candidate pages)."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from sqlalchemy import text
from sqlalchemy.orm import Session

from lenscat.errors import NotFoundError
from lenscat.spectra.grid import LYA, WINDOW
from lenscat.spectra.pack import PackStore


def spectrum_window(spectrum_id: int, *, session: Session) -> dict[str, Any]:
    """The packed window of one spectrum: wavelength [Angstrom], flux, ivar, continuum, and its hits.

    Flux and continuum are in the survey's units (1e-17 erg/s/cm^2/Angstrom for SDSS/BOSS/DESI).
    """
    row = session.execute(
        text(
            """
            SELECT s.spectrum_id, s.survey, s.spec_key, s.z, p.path, s.pack_row
            FROM lenscat.spectra s JOIN lenscat.spectrum_packs p USING (pack_id) WHERE s.spectrum_id = :i
            """
        ),
        {"i": int(spectrum_id)},
    ).first()
    if row is None:
        raise NotFoundError(f"no spectrum with spectrum_id {spectrum_id}")
    packed = PackStore(row.path).read(np.array([int(row.pack_row)]), sky=False)
    hits = (
        session.execute(
            text(
                """
            SELECT detector, wavelength, z_source, snr, prob, is_candidate
            FROM public.spectral_hits WHERE spectrum_id = :i ORDER BY wavelength
            """
            ),
            {"i": int(spectrum_id)},
        )
        .mappings()
        .all()
    )
    return {
        "spectrum_id": int(row.spectrum_id),
        "survey": row.survey,
        "spec_key": row.spec_key,
        "z": row.z,
        "wave": WINDOW.wave,
        "flux": packed.flux[0],
        "ivar": packed.ivar[0],
        "continuum": packed.continuum[0],
        "hits": [dict(h) for h in hits],
    }


def spectrum_png(spectrum_id: int, *, session: Session, width: float = 9.0, height: float = 3.2) -> bytes:
    """A PNG of the window (flux, 1-sigma band, continuum) with each hit marked by its z_source."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    w = spectrum_window(spectrum_id, session=session)
    good = w["ivar"] > 0
    flux = np.where(good, w["flux"], np.nan)
    sigma = np.where(good, 1.0 / np.sqrt(np.where(good, w["ivar"], 1.0)), np.nan)
    fig, ax = plt.subplots(figsize=(width, height), constrained_layout=True)
    try:
        ax.fill_between(w["wave"], flux - sigma, flux + sigma, color="0.8", step="mid", lw=0, label="±1σ")
        ax.step(w["wave"], flux, where="mid", color="k", lw=0.6, label="flux")
        ax.plot(w["wave"], w["continuum"], color="tab:blue", lw=1.0, label="continuum model")
        for h in w["hits"]:
            colour = "tab:red" if h["is_candidate"] else "tab:orange"
            ax.axvline(h["wavelength"], color=colour, lw=1.0, ls="--")
            stat = f"S/N {h['snr']:.1f}" if h["snr"] is not None else f"p {h['prob']:.2f}"
            z_src = h["z_source"] if h["z_source"] is not None else h["wavelength"] / LYA - 1
            ax.annotate(
                f"Lyα z={z_src:.3f}\n{stat} ({h['detector']})",
                (h["wavelength"], 1.0),
                xycoords=("data", "axes fraction"),
                va="top",
                ha="left",
                fontsize=7,
                color=colour,
            )
        finite = flux[np.isfinite(flux)]
        if finite.size:
            lo, hi = np.percentile(finite, [0.5, 99.5])
            pad = 0.15 * (hi - lo + 1e-9)
            ax.set_ylim(lo - pad, hi + 3 * pad)
        ax.set_xlabel("observed wavelength [Å]")
        ax.set_ylabel("flux [1e-17 erg s⁻¹ cm⁻² Å⁻¹]")
        z_txt = f", z = {w['z']:.4f}" if w["z"] is not None else ""
        ax.set_title(f"{w['survey']} {w['spec_key']}{z_txt}", fontsize=9)
        ax.legend(loc="lower right", fontsize=7)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100)
    finally:
        plt.close(fig)
    return buf.getvalue()
