"""Follow-up target packs: ranked targets, observability, exposure hints, finding charts and target lists.

:func:`build_pack` reads the joint evidence of the selected candidates (:mod:`lenscat.evidence`),
gives each a priority, computes its observability from a site over a range of nights
(:mod:`lenscat.proposal.observability`, offline), an exposure hint (:mod:`lenscat.proposal.exposure`)
and a finding chart (:mod:`lenscat.proposal.charts`); :func:`write_pack` writes them into a
directory; :func:`pack_zip` returns the same files as a zip (the web download).

Priorities: 1 for a spectroscopically supported candidate or ``evidence_score >= 4`` dex; 2 for
``evidence_score >= 2``; 3 otherwise; a candidate vetoed by its model or rejected by the graders
is never above 3.
"""

from __future__ import annotations

import datetime as dt
import io
import math
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import astropy.units as u
import numpy as np
from astropy.coordinates import SkyCoord
from astropy.table import Column, MaskedColumn, Table
from sqlalchemy.orm import Session

from lenscat.errors import LenscatError, NotFoundError
from lenscat.evidence.service import joint_evidence
from lenscat.images.rgb import rgb_image
from lenscat.images.store import source_cutout
from lenscat.modelling.service import latest_lens_models, lens_model_for
from lenscat.modelling.types import LensModel
from lenscat.proposal import charts, exposure, starlists
from lenscat.proposal.observability import Observability, observability
from lenscat.proposal.sites import Site
from lenscat.proposal.sql import source_details
from lenscat.sky.coords import iau_names

EXTRA_FORMAT = "ds9 region file (targets.reg)"
"""The target-list format written besides the CSV/ECSV and the Keck starlist."""

DEFAULT_PIXEL_SCALE = 0.262
"""Pixel scale when neither the cutout file nor the survey records one [arcsec] (Legacy Surveys)."""


def priority_of(evidence_score: float, category: str) -> int:
    """The observing priority (1 highest) of a candidate from its joint evidence (module docstring)."""
    if category in ("vetoed by model", "rejected by graders"):
        return 3
    if category == "spectroscopically supported" or evidence_score >= 4.0:
        return 1
    return 2 if evidence_score >= 2.0 else 3


@dataclass
class Pack:
    """A built pack: the target table, the per-night observability and the charts' inputs."""

    targets: Table
    obs: Observability
    site: Site
    start: dt.date
    end: dt.date
    obs_ids: list[int] = field(default_factory=list)
    """Source ids in the order of the observability arrays."""
    charts: list[tuple[str, str, np.ndarray | None, float, LensModel | None, str]] = field(default_factory=list)
    """Per chart: file name, title, RGB image (or None), pixel scale [arcsec], lens model, subtitle."""
    notes: list[str] = field(default_factory=list)


def _chart_input(source_id: int, details: dict[str, Any], *, session: Session) -> tuple[np.ndarray | None, float, str]:
    scale = float(details.get("pixel_scale") or DEFAULT_PIXEL_SCALE)
    if not details.get("has_cutout"):
        return None, scale, "no cutout"
    try:
        data, bands = source_cutout(source_id, session=session)
    except (LenscatError, OSError, ValueError, KeyError) as exc:
        return None, scale, f"cutout unreadable: {exc}"
    return rgb_image(data, bands), scale, ""


def finding_chart_png(source_id: int, *, session: Session) -> bytes:
    """One source's finding chart as PNG bytes (the candidate page): cutout, compass, scale bar, critical curve.

    Raises
    ------
    NotFoundError
        No such source.
    """
    details = source_details([int(source_id)], session=session).get(int(source_id))
    if details is None:
        raise NotFoundError(f"no source with id {source_id}")
    rgb, scale, why = _chart_input(int(source_id), details, session=session)
    model = lens_model_for(int(source_id), session=session)
    ra, dec = float(details["ra"]), float(details["dec"])
    ra_s, dec_s = starlists.sexagesimal(SkyCoord(ra * u.deg, dec * u.deg))
    sub = (
        f'{model.lens_model}: theta_E {model.theta_e:.2f} ± {model.theta_e_err:.2f}"' if model else "no lens model"
    ) + (f" · {why}" if why else "")
    fig = charts.chart_figure(
        rgb, scale, title=f"{iau_names(np.array([ra]), np.array([dec]))[0]}   {ra_s} {dec_s}", subtitle=sub, model=model
    )
    buf = io.BytesIO()
    charts.save_chart_to(fig, buf, "png")
    return buf.getvalue()


def build_pack(
    *,
    session: Session,
    site: Site,
    start: dt.date,
    end: dt.date,
    grades: str | None = "A,B",
    classifier: str | None = None,
    top: int | None = None,
    source_ids: list[int] | None = None,
    min_altitude: u.Quantity = 30 * u.deg,
    max_targets: int = 500,
    inst: exposure.Instrument | None = None,
    spec: exposure.Spectrograph | None = None,
) -> Pack:
    """Everything a pack holds, read and computed (nothing written).

    Raises
    ------
    NotFoundError
        No candidate matches the selection.
    InvalidParameter
        A bad date range, altitude, grade or classifier selection.
    """
    inst = inst or exposure.Instrument()
    spec = spec or exposure.Spectrograph()
    ev = joint_evidence(session=session, grades=grades, classifier=classifier, top=top, source_ids=source_ids)
    if len(ev) == 0:
        raise NotFoundError(
            "no candidates to observe: no source matches the selection (grade some, or check the grades and "
            "classifier asked for)"
        )
    ev = ev[:max_targets]
    ids = [int(i) for i in ev["source_id"]]
    ra = np.asarray(ev["ra"], dtype=float)
    dec = np.asarray(ev["dec"], dtype=float)
    coords = SkyCoord(ra * u.deg, dec * u.deg, frame="icrs")
    obs = observability(coords, site, start, end, min_altitude=min_altitude)
    summ = obs.summary()
    details = source_details(ids, session=session)
    names = iau_names(ra, dec)
    pri = [priority_of(float(s), str(c)) for s, c in zip(ev["evidence_score"], ev["category"], strict=True)]
    hint_s, spec_s, arc_used, arc_src, band_used = [], [], [], [], []
    latest = latest_lens_models(ids, session=session)
    models: list[LensModel | None] = [latest.get(int(i)) for i in ids]
    for k, sid in enumerate(ids):
        m = models[k]
        if m is not None and m.arc_band and m.arc_band.lower()[:1] in exposure.BANDWIDTH:
            band = m.arc_band.lower()[:1]
        else:  # arcs are blue: the bluest band with a lens magnitude, else g
            known = [b for b in "griz" if details.get(sid, {}).get(f"mag_{b}") is not None]
            band = known[0] if known else "g"
        lens_mag = details.get(sid, {}).get(f"mag_{band}")
        mag, src = exposure.arc_magnitude(m.arc_mag if m is not None else None, lens_mag)
        airmass = float(summ["obs_best_airmass"][k]) if math.isfinite(summ["obs_best_airmass"][k]) else 1.5
        theta = float(m.theta_e) if m is not None else 1.0
        moon = float(summ["obs_moon_illumination"][k])
        hint_s.append(
            exposure.time_to_snr(mag, band, theta_e_arcsec=theta, airmass=airmass, moon_illumination=moon, inst=inst)
        )
        spec_s.append(
            exposure.spectro_time_to_snr(
                mag, band, theta_e_arcsec=theta, airmass=airmass, moon_illumination=moon, spec=spec
            )
        )
        arc_used.append(mag)
        arc_src.append(src)
        band_used.append(band)
    t = Table()
    t["priority"] = Column(pri, dtype=np.int64, description="Observing priority, 1 highest (lenscat.proposal).")
    t["name"] = Column(names, description="IAU-style name from the position.")
    t["source_id"] = Column(ids, dtype=np.int64, description="lenscat source id.")
    t["ra"] = Column(ra, unit=u.deg, description="Right ascension, ICRS.")
    t["dec"] = Column(dec, unit=u.deg, description="Declination, ICRS.")
    ra_s, dec_s = zip(*(starlists.sexagesimal(c) for c in coords), strict=True)
    t["ra_hms"] = Column(list(ra_s), description="Right ascension hh mm ss.ss.")
    t["dec_dms"] = Column(list(dec_s), description="Declination +dd mm ss.s.")
    for col in ("category", "evidence_score", "consensus_grade", "image_score", "theta_e", "theta_e_err"):
        t[col] = ev[col]
    t["obs_hours_total"] = Column(summ["obs_hours_total"], unit=u.hour, description=obs._hours_doc() + " Summed.")
    t["obs_nights"] = Column(summ["obs_nights"], dtype=np.int64, description="Nights with at least 1 h (count).")
    best = summ["obs_best_airmass"]
    t["obs_best_airmass"] = MaskedColumn(
        np.nan_to_num(best, nan=0.0), mask=~np.isfinite(best), description="Lowest airmass in the range."
    )
    t["obs_best_night"] = Column(summ["obs_best_night"], description="Evening date of the best airmass.")
    t["obs_moon_sep"] = Column(summ["obs_moon_sep"], unit=u.deg, description="Moon separation that night.")
    t["obs_moon_illumination"] = Column(summ["obs_moon_illumination"], description="Moon illumination, 0-1.")
    t["arc_mag_used"] = Column(arc_used, unit=u.mag, description="Arc AB magnitude planned with.")
    t["arc_mag_from"] = Column(arc_src, description="model, lens+2.0 (lens magnitude + 2) or default (22.5).")
    t["hint_band"] = Column(band_used, description="Band of the exposure hint.")
    t["exptime_snr10"] = Column(
        hint_s,
        unit=u.s,
        description=f"Exposure to S/N 10 on the arc: {inst.aperture_m:g} m, throughput {inst.throughput:g}, "
        f"seeing {inst.seeing_arcsec:g} arcsec, ring aperture around theta_E (1 arcsec without a model), at the "
        "best airmass (1.5 if never up) and that night's Moon.",
    )
    t["spec_exptime_snr5"] = Column(
        spec_s,
        unit=u.s,
        description=f"Long-slit exposure to S/N 5 per resolution element on the arc's continuum in the hint band: "
        f"{spec.aperture_m:g} m, R {spec.resolution:g}, slit {spec.slit_arcsec:g} arcsec through the lens centre, "
        f"throughput {spec.throughput:g}, seeing {spec.seeing_arcsec:g} arcsec (lenscat.proposal.exposure).",
    )
    order = np.lexsort((-np.asarray(t["evidence_score"], dtype=float), np.asarray(t["priority"])))
    t = t[order]
    t.meta["SITE"] = site.label
    t.meta["NIGHTS"] = f"{start.isoformat()} to {end.isoformat()} (evenings)"
    t.meta["MINALT"] = obs.min_altitude_deg
    t.meta["PRIORITY"] = "1: spectroscopically supported or evidence_score >= 4; 2: >= 2; 3: otherwise"
    pack = Pack(targets=t, obs=obs, site=site, start=start, end=end, obs_ids=ids)
    by_id = {sid: k for k, sid in enumerate(ids)}
    for row in t:
        k = by_id[int(row["source_id"])]
        rgb, scale, why = _chart_input(ids[k], details.get(ids[k], {}), session=session)
        if why:
            pack.notes.append(f"{names[k]}: {why}")
        m = models[k]
        sub = f"priority {row['priority']} · {row['category']} · evidence {float(row['evidence_score']):.2f} dex" + (
            f' · theta_E {m.theta_e:.2f} ± {m.theta_e_err:.2f}"' if m is not None else " · no lens model"
        )
        title = f"{names[k]}   {row['ra_hms']} {row['dec_dms']} (ICRS)"
        pack.charts.append((names[k], title, rgb, scale, m, sub))
    return pack


def _readme(pack: Pack, files: list[str]) -> str:
    t = pack.targets
    lines = [
        "lenscat follow-up target pack",
        "=============================",
        f"site: {pack.site.label}",
        f"nights: {pack.start.isoformat()} to {pack.end.isoformat()} (evening dates), "
        f"minimum altitude {pack.obs.min_altitude_deg:g} deg, astronomical darkness (Sun < -18 deg)",
        f"targets: {len(t)} ("
        + ", ".join(f"{int((t['priority'] == p).sum())} at priority {p}" for p in (1, 2, 3))
        + ")",
        "",
        "priority  name                       category                     score  h(sum)  airmass  t(S/N10)  "
        "t(spec S/N5)",
    ]
    for r in t:
        air = "" if np.ma.is_masked(r["obs_best_airmass"]) else f"{float(r['obs_best_airmass']):.2f}"
        lines.append(
            f"{int(r['priority']):>8}  {r['name']:<25}  {r['category']:<27}  {float(r['evidence_score']):5.2f}  "
            f"{float(r['obs_hours_total']):6.1f}  {air:>7}  {float(r['exptime_snr10']):7.0f} s  "
            f"{float(r['spec_exptime_snr5']):10.0f} s"
        )
    lines += [
        "",
        "files:",
        *(f"  {f}" for f in files),
        "",
        "priorities: " + str(t.meta["PRIORITY"]),
        "target lists: targets.csv (units in the column names) and targets.ecsv (units and descriptions), "
        f"starlist.txt (Keck starlist), {EXTRA_FORMAT}; per-night observability in nights.ecsv.",
        "exposure hints: lenscat.proposal.exposure (CCD equation; dark/bright sky per band, ring aperture of one "
        "seeing FWHM around theta_E; spectroscopic: S/N 5 per resolution element on the arc's continuum in a "
        "long slit through the lens centre).",
    ]
    if pack.notes:
        lines += ["", "notes:", *(f"  {n}" for n in pack.notes)]
    return "\n".join(lines) + "\n"


def _csv_table(t: Table) -> Table:
    out = Table()
    for name in t.colnames:
        col = t[name]
        label = f"{name}_{col.unit.to_string().replace(' ', '')}" if col.unit is not None else name
        out[label] = col.filled("") if hasattr(col, "filled") and col.dtype.kind in "US" else col
        out[label].unit = None
    return out


def write_pack(pack: Pack, out_dir: Path, *, progress: bool = False) -> list[Path]:
    """Write the pack's files into ``out_dir`` (created); returns them, README.txt last."""
    from tqdm import tqdm

    out_dir = Path(out_dir)
    (out_dir / "charts").mkdir(parents=True, exist_ok=True)
    t = pack.targets
    written: list[Path] = []
    t.write(out_dir / "targets.ecsv", format="ascii.ecsv", overwrite=True)
    _csv_table(t).write(out_dir / "targets.csv", format="ascii.csv", overwrite=True)
    coords = SkyCoord(np.asarray(t["ra"]) * u.deg, np.asarray(t["dec"]) * u.deg)
    kw = [
        {"priority": str(int(r["priority"]))}
        | ({"theta_e": f"{float(r['theta_e']):.2f}"} if not np.ma.is_masked(r["theta_e"]) else {})
        for r in t
    ]
    (out_dir / "starlist.txt").write_text(
        starlists.keck_starlist(list(t["name"]), coords, keywords=kw, comments=[str(c) for c in t["category"]])
    )
    (out_dir / "targets.reg").write_text(starlists.ds9_regions(list(t["name"]), coords))
    name_of = {int(i): str(n) for i, n in zip(t["source_id"], t["name"], strict=True)}
    nights = pack.obs.nights_table([name_of[i] for i in pack.obs_ids])
    nights.write(out_dir / "nights.ecsv", format="ascii.ecsv", overwrite=True)
    written += [out_dir / f for f in ("targets.ecsv", "targets.csv", "starlist.txt", "targets.reg", "nights.ecsv")]
    for name, title, rgb, scale, model, sub in tqdm(
        pack.charts, desc="finding charts", unit="chart", disable=not progress
    ):
        fig = charts.chart_figure(rgb, scale, title=title, subtitle=sub, model=model)
        png, pdf = out_dir / "charts" / f"{name}.png", out_dir / "charts" / f"{name}.pdf"
        charts.save_chart(fig, png, pdf)
        written += [png, pdf]
    readme = out_dir / "README.txt"
    readme.write_text(_readme(pack, [str(p.relative_to(out_dir)) for p in written]))
    written.append(readme)
    return written


def pack_zip(pack: Pack) -> bytes:
    """The pack's files as a zip archive (``lenscat_proposal/...``)."""
    buf = io.BytesIO()
    with tempfile.TemporaryDirectory(prefix="lenscat-pack-") as tmp:
        root = Path(tmp) / "lenscat_proposal"
        files = write_pack(pack, root)
        with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for f in files:
                zf.write(f, arcname=str(f.relative_to(Path(tmp))))
    return buf.getvalue()
