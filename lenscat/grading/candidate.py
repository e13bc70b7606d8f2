"""What a grader sees of one candidate: the candidate page's data, its cutout image, and the search box."""

from __future__ import annotations

import io
import re
from typing import Any

import astropy.units as u
import numpy as np
from PIL import Image
from sqlalchemy import text
from sqlalchemy.orm import Session

from lenscat.embeddings.similarity import query_from_source, similar
from lenscat.errors import LenscatError, NotFoundError
from lenscat.grading.grades import Grader, graded_by
from lenscat.grading.inspection import default_encoder
from lenscat.images.store import rgb_image, source_cutout
from lenscat.registry.versions import get_model
from lenscat.sky.coords import iau_name, parse_position
from lenscat.sky.service import cone_search

CUTOUT_SIZE = 152  # pixels shown per side at most (Stein et al.'s 152 x 152 cutouts)
SEARCH_RADIUS = 10 * u.arcsec
_POSITION = re.compile(r"^\s*([0-9:hms.+\-\s]+?)[\s,]+([+\-]?[0-9:dms'\".\s]+)\s*$")


def cutout_png_bytes(source_id: int, band: str = "rgb", *, session: Session) -> bytes:
    """PNG of a source's cutout: RGB (asinh, Legacy Surveys scales) or one band in grey."""
    img, bands = source_cutout(source_id, session=session)
    if band != "rgb":
        if band not in bands:
            raise LenscatError(f"source {source_id} has bands {', '.join(bands)}, not {band!r}")
        i = bands.index(band)
        img, bands = img[i : i + 1], [band]
    h, w = img.shape[-2:]
    if h > CUTOUT_SIZE or w > CUTOUT_SIZE:  # centre crop: graders look at the middle
        y0, x0 = (h - min(h, CUTOUT_SIZE)) // 2, (w - min(w, CUTOUT_SIZE)) // 2
        img = img[..., y0 : y0 + CUTOUT_SIZE, x0 : x0 + CUTOUT_SIZE]
    rgb = rgb_image(img, bands, scales="auto" if band != "rgb" else None)
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb[::-1])).save(buf, format="PNG")  # row 0 at the bottom
    return buf.getvalue()


def _rows(session: Session, sql: str, params: dict[str, Any]) -> list[dict[str, Any]]:
    return [dict(r) for r in session.execute(text(sql), params).mappings().all()]


def source_context(
    source_id: int, grader: Grader | None, *, session: Session, k_neighbours: int = 12
) -> dict[str, Any]:
    """Everything the candidate page shows about one source."""
    row = (
        session.execute(text("SELECT * FROM public.sources WHERE source_id = :i"), {"i": int(source_id)})
        .mappings()
        .first()
    )
    if row is None:
        raise NotFoundError(f"no source with source_id {source_id}")
    src = dict(row)
    p = {"i": int(source_id)}
    literature = _rows(
        session,
        """
        SELECT l.catalog, l.name, l.grade, l.z_lens, l.z_source, l.ra, l.dec, x.separation_arcsec, x.is_nearest
        FROM public.crossmatches x JOIN public.literature_lenses l USING (lens_id)
        WHERE x.source_id = :i ORDER BY x.separation_arcsec""",
        p,
    )
    scores = _rows(
        session,
        """
        SELECT classifier, classifier_version, score, encoder, created_at FROM public.scores
        WHERE source_id = :i ORDER BY classifier, classifier_version DESC""",
        p,
    )
    spectra = _rows(
        session,
        """
        SELECT spectrum_id, survey, spec_key, z, spec_class, source_sep_arcsec FROM public.spectra
        WHERE source_id = :i ORDER BY spectrum_id""",
        p,
    )
    hits = _rows(
        session,
        """
        SELECT spectrum_id, detector, detector_version, wavelength, z_source, snr, prob, line_flux, fwhm_kms,
               is_candidate, veto_oii, veto_skew, veto_overdensity
        FROM public.spectral_hits WHERE source_id = :i ORDER BY snr DESC NULLS LAST""",
        p,
    )
    grades = _rows(
        session,
        """
        SELECT grader, grade, comment, sample, created_at FROM public.grades WHERE source_id = :i
        ORDER BY grade_id DESC""",
        p,
    )
    consensus = session.execute(text("SELECT * FROM public.grade_consensus WHERE source_id = :i"), p).mappings().first()
    bands = list(src.get("bands") or [])
    has_cutout = src.get("cutout_file") is not None
    if has_cutout:
        try:
            bands = source_cutout(source_id, session=session)[1]
        except LenscatError:
            has_cutout = False
    neighbours: list[dict[str, Any]] = []
    neighbour_error: str | None = None
    encoder = default_encoder(source_id, session=session)
    if encoder:
        try:
            model = get_model("encoder", encoder, session=session)
            t = similar(
                query_from_source(source_id, model, session=session),
                encoder=model,
                k=k_neighbours,
                mag_window=None,
                exclude_radius=25 * u.arcsec,
                session=session,
            )
            neighbours = [{"source_id": int(r["source_id"]), "similarity": float(r["similarity"])} for r in t]
        except LenscatError as exc:
            neighbour_error = str(exc)
    mine = graded_by(grader, [source_id], session=session).get(source_id) if grader else None
    return {
        "src": src,
        "iau": iau_name(float(src["ra"]), float(src["dec"])),
        "literature": literature,
        "scores": scores,
        "spectra": spectra,
        "hits": hits,
        "grades": grades,
        "consensus": dict(consensus) if consensus else None,
        "bands": bands,
        "has_cutout": has_cutout,
        "neighbours": neighbours,
        "encoder": encoder,
        "neighbour_error": neighbour_error,
        "my_grade": mine,
    }


def search_sources(q: str, *, session: Session, limit: int = 100) -> tuple[list[dict[str, Any]], str]:
    """Sources matching a search box entry: a source id, "RA Dec" (degrees or sexagesimal), a
    literature lens name (substring, case-insensitive) or a survey object id.

    Returns
    -------
    rows, note
        Matching sources (source_id, survey, objid, ra, dec, why) and a line saying how they matched.
    """
    q = q.strip()[:200]
    if not q:
        return [], ""
    if q.isdigit():
        rows = _rows(
            session,
            "SELECT source_id, survey, objid, ra, dec, 'source id' AS why FROM public.sources WHERE source_id = :i",
            {"i": int(q)},
        )
        if rows:
            return rows, "source id"
    m = _POSITION.match(q)
    if m and any(ch.isdigit() for ch in m.group(2)):
        try:
            coord = parse_position(m.group(1).strip(), m.group(2).strip())
        except LenscatError:
            coord = None
        if coord is not None:
            t = cone_search(coord, SEARCH_RADIUS, session=session, limit=limit)
            rows = [
                {
                    "source_id": int(r["source_id"]),
                    "survey": r["survey"],
                    "objid": r["objid"],
                    "ra": float(r["ra"]),
                    "dec": float(r["dec"]),
                    "why": f"{float(r['separation']):.2f} arcsec from the position",
                }
                for r in t
            ]
            return rows, f"within {SEARCH_RADIUS:.0f} of ({coord.ra.deg:.5f}, {coord.dec.deg:+.5f}) deg"
    like = "%" + q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
    rows = _rows(
        session,
        """
        SELECT DISTINCT ON (v.source_id) v.source_id, v.survey, v.objid, v.ra, v.dec,
               'literature lens ' || l.name || ' (' || l.catalog || ')' AS why
        FROM public.literature_lenses l JOIN public.crossmatches x ON x.lens_id = l.lens_id AND x.is_nearest
        JOIN public.sources v ON v.source_id = x.source_id
        WHERE l.name ILIKE :like ESCAPE '\\'
        ORDER BY v.source_id LIMIT :limit""",
        {"like": like, "limit": limit},
    )
    rows += _rows(
        session,
        """
        SELECT source_id, survey, objid, ra, dec, 'object id' AS why FROM public.sources
        WHERE objid = :q ORDER BY source_id LIMIT :limit""",
        {"q": q, "limit": limit},
    )
    seen: set[int] = set()
    out = []
    for r in rows:
        if r["source_id"] not in seen:
            seen.add(r["source_id"])
            out.append(r)
    return out, "lens name or object id"
