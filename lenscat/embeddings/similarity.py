"""Similarity search ("more like this lens") on the HNSW index of one encoder version.

Following Stein et al. (2022): the query is a source's embedding (or the embedding of a user's
image); results are ranked by cosine similarity and filtered to what a person wants to inspect:
a magnitude window around the query (Stein used +-0.5 mag), a survey or sky region, nothing
within 25 arcsec of the query or of a better-ranked result (the same object or its neighbours
seen twice), optionally no known lenses.

Filters run inside the ANN query, with pgvector's iterative index scans, so a selective filter
still returns k rows; the "of each other" exclusion needs the ranked list and runs afterwards on an
over-fetched candidate list, fetching more when too many are dropped.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import astropy.units as u
import numpy as np
from astropy.coordinates import SkyCoord
from astropy.table import Table
from sqlalchemy import text
from sqlalchemy.orm import Session

from lenscat.catalogue.surveys import get_survey, has_injection_sets, real_source_sql
from lenscat.embeddings.embed import embed_images
from lenscat.embeddings.vectors import (
    embed_step,
    get_embedding,
    nearest_sql,
    normalise,
    set_search_params,
    vector_literal,
)
from lenscat.errors import LenscatError, NotFoundError
from lenscat.images.store import read_fits_cutout, resample
from lenscat.registry.versions import ModelVersion, get_model
from lenscat.sky.service import cone_ids, within
from lenscat.sky.units import rows_to_table

MAX_K = 1000
MAX_FETCH = 200_000
DEEP_SCAN = 5_000_000  # hnsw.max_scan_tuples when a selective filter leaves too few candidates


@dataclass
class Query:
    """What to search around: a vector plus, when known, a position and a magnitude."""

    vector: np.ndarray
    source_id: int | None = None
    coord: SkyCoord | None = None
    mag: float | None = None
    description: str = ""


def _source_row(source_id: int, band: str, session: Session) -> Any:
    return session.execute(
        text(
            """
            SELECT s.source_id, s.ra, s.dec, s.mag[array_position(v.bands, :band)] AS mag, v.name AS survey,
                   s.objid
            FROM lenscat.sources s JOIN lenscat.surveys v USING (survey_id) WHERE s.source_id = :id
            """
        ),
        {"id": int(source_id), "band": band},
    ).one_or_none()


def query_from_source(source_id: int, model: ModelVersion, *, mag_band: str = "r", session: Session) -> Query:
    """The query of a catalogued source: its stored embedding, position and magnitude."""
    row = _source_row(source_id, mag_band, session)
    if row is None:
        raise NotFoundError(f"no source with source_id {source_id}")
    vec = get_embedding(model, source_id, session=session)
    if vec is None:
        raise NotFoundError(
            f"source {source_id} ({row.survey} {row.objid}) has no embedding from encoder {model.label}; {{step}}",
            step=embed_step(model.name),
        )
    return Query(
        vec,
        int(source_id),
        SkyCoord(row.ra * u.deg, row.dec * u.deg),
        None if row.mag is None else float(row.mag),
        f"source {source_id} ({row.survey} {row.objid})",
    )


def query_from_position(
    coord: SkyCoord, model: ModelVersion, *, radius: u.Quantity = 2 * u.arcsec, mag_band: str = "r", session: Session
) -> Query:
    """The query of the nearest source with an embedding within ``radius`` of a position."""
    icrs = coord.icrs
    hits = cone_ids(coord, radius, session=session)
    embedded = set(
        session.execute(
            text(  # the model id inlined, as a constant the planner can prune partitions by
                "SELECT e.source_id FROM lenscat.embeddings e "
                f"WHERE e.model_id = {int(model.model_id)} AND e.source_id = ANY(:ids)"
            ),
            {"ids": hits.source_id.tolist()},
        ).scalars()
    )
    sid = next((int(x) for x in hits.source_id if int(x) in embedded), None)
    if sid is None:
        raise NotFoundError(
            f"no source with an embedding from {model.label} within {radius.to(u.arcsec):.1f} of "
            f"{icrs.to_string('hmsdms', precision=2)}; try a cutout of the object instead ({{image}})",
            params="image",
        )
    return query_from_source(int(sid), model, mag_band=mag_band, session=session)


def query_from_image(
    path: str | Path | list[str | Path], model: ModelVersion, *, device: str | None = None, mag: float | None = None
) -> Query:
    """The query of a user's image: FITS cutout(s) resampled to the encoder's pixels and embedded."""
    paths = path if isinstance(path, list) else [path]
    cut = read_fits_cutout(paths if len(paths) > 1 else paths[0])
    spec = model.input_spec or {}
    scale = float(spec.get("pixel_scale_arcsec", 0.262)) * u.arcsec
    stamp = int(spec.get("stamp", 152))
    bands = tuple(spec.get("bands", ("g", "r", "z")))
    res = resample(cut, pixel_scale=scale, shape=(stamp, stamp), bands=bands)
    vec = embed_images(model, res.data[None].astype(np.float32), device=device)[0]
    coord = None
    if cut.wcs is not None and cut.wcs.has_celestial:
        h, w = cut.data.shape[-2:]
        coord = cut.wcs.celestial.pixel_to_world((w - 1) / 2, (h - 1) / 2)
    return Query(vec, None, coord, mag, f"image {', '.join(str(p) for p in paths)}")


def _dedupe(ra: np.ndarray, dec: np.ndarray, radius_deg: float, k: int, query: SkyCoord | None) -> list[int]:
    """Greedy in rank order: keep a result unless within the radius of the query or of a kept one."""
    if len(ra) == 0:
        return []
    ra_r, dec_r = np.radians(ra), np.radians(dec)
    xyz = np.stack([np.cos(dec_r) * np.cos(ra_r), np.cos(dec_r) * np.sin(ra_r), np.sin(dec_r)], axis=1)
    min_dot = np.cos(np.radians(radius_deg))
    keep: list[int] = []
    kept_xyz = np.empty((0, 3))
    if query is not None:
        q = query.icrs
        qr, qd = q.ra.rad, q.dec.rad
        kept_xyz = np.array([[np.cos(qd) * np.cos(qr), np.cos(qd) * np.sin(qr), np.sin(qd)]])
    for i in range(len(ra)):
        if kept_xyz.shape[0] and float(np.max(kept_xyz @ xyz[i])) >= min_dot:
            continue
        keep.append(i)
        kept_xyz = np.vstack([kept_xyz, xyz[i]])
        if len(keep) == k:
            break
    return keep


RESULT_UNITS = {
    "ra": u.deg,
    "dec": u.deg,
    "separation_arcsec": u.arcsec,
    "mag_g": u.mag,
    "mag_r": u.mag,
    "mag_i": u.mag,
    "mag_z": u.mag,
}


def similar(
    query: Query,
    *,
    encoder: str | ModelVersion,
    k: int = 100,
    session: Session,
    mag_window: u.Quantity | None = 0.5 * u.mag,
    mag_band: str = "r",
    surveys: list[str] | None = None,
    region: tuple[SkyCoord, u.Quantity] | None = None,
    exclude_radius: u.Quantity | None = 25 * u.arcsec,
    exclude_known: bool = False,
    exclude_labelled: bool = False,
) -> Table:
    """The k sources most similar to ``query`` under an encoder, after filters.

    Parameters
    ----------
    query
        From :func:`query_from_source`, :func:`query_from_position` or :func:`query_from_image`.
    encoder
        Encoder name (latest version), ``name@version``, or a ModelVersion.
    k
        Rows wanted (1-1000).
    session
        Database session.
    mag_window
        Keep sources whose ``mag_band`` magnitude is within this of the query's (needs the
        query's magnitude; None disables).
    mag_band
        Band of the magnitude window.
    surveys
        Only sources of these surveys.
    region
        (centre, radius): only sources within the cone.
    exclude_radius
        Drop results within this of the query position or of a better-ranked result (None: keep).
    exclude_known
        Drop sources matched to any literature lens (``lenscat crossmatch``).
    exclude_labelled
        Drop sources that already carry a label (graded, listed or simulated; ``lenscat labels``).

    Returns
    -------
    astropy.table.Table
        ``rank, source_id, survey, objid, ra [deg], dec [deg], similarity`` (cosine, 1 = identical),
        ``separation_arcsec`` from the query, magnitudes, ``source_type``, ``known_lens``, cutout
        reference; ``meta`` records the query, encoder version and filters.
    """
    model = encoder if isinstance(encoder, ModelVersion) else get_model("encoder", encoder, session=session)
    if not 1 <= k <= MAX_K:
        raise LenscatError(f"k must be between 1 and {MAX_K}, got {k}")
    q = normalise(np.asarray(query.vector, dtype=np.float32)[None, :])[0]
    if model.output_dim and len(q) != model.output_dim:
        raise LenscatError(f"query vector has {len(q)} dimensions, encoder {model.label} makes {model.output_dim}")
    where: list[str] = []
    params: dict[str, Any] = {"q": vector_literal(q)}
    join = ""
    if query.source_id is not None:
        where.append("e.source_id <> :qid")
        params["qid"] = int(query.source_id)
    needs_source = mag_window is not None and query.mag is not None or bool(surveys) or region is not None
    if mag_window is not None and query.mag is not None:
        join += " JOIN lenscat.surveys v ON v.survey_id = s.survey_id"
        where.append("s.mag[array_position(v.bands, :band)] BETWEEN :mlo AND :mhi")
        w = float(mag_window.to_value(u.mag))
        params.update(band=mag_band, mlo=query.mag - w, mhi=query.mag + w)
    if surveys:
        where.append("s.survey_id = ANY(:sids)")
        params["sids"] = [get_survey(n, session=session).survey_id for n in surveys]
    elif has_injection_sets(session=session):  # injected cutouts answer only when their set is named
        where.append(real_source_sql("s.survey_id"))
        needs_source = True
    if region is not None:
        cone, cone_params = within("region", *region)
        where.append(cone)
        params.update(cone_params)
    if exclude_radius is not None and query.coord is not None:
        cone, cone_params = within("query", query.coord, exclude_radius, outside=True)
        where.append(cone)
        params.update(cone_params)
        needs_source = True
    if exclude_known:
        where.append("NOT EXISTS (SELECT 1 FROM lenscat.crossmatches x WHERE x.source_id = e.source_id)")
    if exclude_labelled:
        where.append("NOT EXISTS (SELECT 1 FROM lenscat.labels l WHERE l.source_id = e.source_id)")
    if needs_source:
        join = " JOIN lenscat.sources s ON s.source_id = e.source_id" + join
    where_sql = "".join(" AND " + w for w in where)

    fetch = k if exclude_radius is None else 2 * k + 20
    deep = False  # after a short answer, scan far more index tuples once before believing it
    while True:
        set_search_params(session=session, k=fetch, max_scan_tuples=DEEP_SCAN if deep else None)
        cand = session.execute(text(nearest_sql(model, where_sql, join)), {**params, "fetch": fetch}).all()
        if len(cand) < fetch and not deep and where:
            deep = True
            continue
        ids = np.array([int(r[0]) for r in cand], dtype=np.int64)
        dist = np.array([float(r[1]) for r in cand])
        details = _details(ids, mag_band, session)
        if exclude_radius is None:
            keep = list(range(min(k, len(ids))))
        else:
            keep = _dedupe(details["ra"], details["dec"], float(exclude_radius.to_value(u.deg)), k, query.coord)
        if len(keep) >= k or len(cand) < fetch or fetch >= MAX_FETCH:
            break
        fetch = min(MAX_FETCH, fetch * 4)
    out = _result_table(ids[keep], 1.0 - dist[keep], {c: v[keep] for c, v in details.items()}, query)
    out.meta.update(
        {
            "query": query.description,
            "query_source_id": query.source_id,
            "encoder": model.label,
            "k": k,
            "mag_window": None if mag_window is None or query.mag is None else str(mag_window),
            "mag_band": mag_band,
            "surveys": surveys or [],
            "exclude_radius": str(exclude_radius),
            "exclude_known": exclude_known,
            "exclude_labelled": exclude_labelled,
            "candidates_scanned": len(cand),
        }
    )
    return out


def _details(ids: np.ndarray, band: str, session: Session) -> dict[str, np.ndarray]:
    rows = (
        session.execute(
            text(
                """
            SELECT v.source_id, v.survey, v.objid, v.ra, v.dec, v.mag_g, v.mag_r, v.mag_z, v.source_type,
                   EXISTS (SELECT 1 FROM lenscat.crossmatches x WHERE x.source_id = v.source_id) AS known_lens,
                   v.cutout_file, v.cutout_row
            FROM public.sources v WHERE v.source_id = ANY(:ids)
            """
            ),
            {"ids": ids.tolist()},
        )
        .mappings()
        .all()
    )
    by_id = {int(r["source_id"]): r for r in rows}
    cols: dict[str, np.ndarray] = {}
    for name in (
        "survey",
        "objid",
        "ra",
        "dec",
        "mag_g",
        "mag_r",
        "mag_z",
        "source_type",
        "known_lens",
        "cutout_file",
        "cutout_row",
    ):
        vals = [by_id[int(i)][name] for i in ids]
        if name in ("ra", "dec", "mag_g", "mag_r", "mag_z"):
            cols[name] = np.array([np.nan if x is None else float(x) for x in vals])
        elif name == "known_lens":
            cols[name] = np.array(vals, dtype=bool)
        else:
            cols[name] = np.array(vals, dtype=object)
    return cols


def _result_table(ids: np.ndarray, sim: np.ndarray, det: dict[str, np.ndarray], query: Query) -> Table:
    names = [
        "rank",
        "source_id",
        "survey",
        "objid",
        "ra",
        "dec",
        "similarity",
        "separation_arcsec",
        "mag_g",
        "mag_r",
        "mag_z",
        "source_type",
        "known_lens",
        "cutout_file",
        "cutout_row",
    ]
    if query.coord is not None and len(ids):
        sep = query.coord.icrs.separation(SkyCoord(det["ra"] * u.deg, det["dec"] * u.deg)).arcsec
    else:
        sep = np.full(len(ids), np.nan)
    rows = [
        (
            i + 1,
            int(ids[i]),
            det["survey"][i],
            det["objid"][i],
            det["ra"][i],
            det["dec"][i],
            float(sim[i]),
            float(sep[i]),
            det["mag_g"][i],
            det["mag_r"][i],
            det["mag_z"][i],
            det["source_type"][i],
            bool(det["known_lens"][i]),
            det["cutout_file"][i],
            det["cutout_row"][i],
        )
        for i in range(len(ids))
    ]
    if not rows:
        return Table(
            names=names,
            dtype=[int, int, str, str, float, float, float, float, float, float, float, str, bool, str, int],
        )
    return rows_to_table(names, rows, RESULT_UNITS)
