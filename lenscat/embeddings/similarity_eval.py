"""How well similarity search finds lenses: the "more like this lens" science check of Stein et al.

Every labelled lens (``lenscat labels``: literature cross-matches, simulation truth, human grades)
with an embedding is used as a query with the same filters as :func:`lenscat.embeddings.similarity.similar`
(a magnitude window, the 25 arcsec exclusion); the fraction of labelled lenses among its top-k
neighbours, divided by the base rate (labelled lenses per embedded source), is the enrichment.
Unlabelled sources count as non-lenses, so on real data, where unknown lenses are among the
neighbours, the figure is a lower bound.

Beside it, the *ceiling*: what a perfect encoder would reach under the same filters, every lens of
the query's magnitude window ranked first. A bright or faint lens has few sources in its window and
a small survey has few lenses in any window, so the ceiling says whether the survey can show an
enrichment at all (a 3,000-source survey with 3 % lenses caps it below 10x).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import astropy.units as u
import numpy as np
from astropy.table import Table
from sqlalchemy import text
from sqlalchemy.orm import Session
from tqdm import tqdm

from lenscat.catalogue.surveys import get_survey
from lenscat.classifiers.labels import resolve_labels
from lenscat.embeddings.similarity import MAX_K, _dedupe, query_from_source, similar
from lenscat.embeddings.vectors import embed_step
from lenscat.errors import LenscatError, MissingPrerequisite
from lenscat.registry.versions import ModelVersion

__all__ = ["Enrichment", "lens_query_enrichment"]


@dataclass
class Enrichment:
    """Result of :func:`lens_query_enrichment`.

    Attributes
    ----------
    encoder : str
        Encoder version label (``name@version``).
    k : int
        Neighbours per query.
    n_sources, n_lenses : int
        Embedded sources of the surveys, and the labelled lenses among them (the queries).
    base_rate : float
        ``n_lenses / n_sources``.
    lens_fraction : float
        Mean fraction of lenses among each query's neighbours.
    enrichment, ceiling : float
        ``lens_fraction / base_rate``, and the same for a perfect encoder under the same filters.
    queries : astropy.table.Table
        One row per query: ``source_id, objid, mag [mag], n_window, n_results, n_lenses_found,
        lens_fraction, ceiling_fraction``.
    filters : dict
        The filters used (magnitude window and band, exclusion radius, surveys, label origins).
    """

    encoder: str
    k: int
    n_sources: int
    n_lenses: int
    base_rate: float
    lens_fraction: float
    enrichment: float
    ceiling: float
    queries: Table
    filters: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """Plain dict of the figures (no per-query table), e.g. for JSON output."""
        return {
            "encoder": self.encoder,
            "k": self.k,
            "n_sources": self.n_sources,
            "n_lenses": self.n_lenses,
            "base_rate": round(self.base_rate, 6),
            "lens_fraction": round(self.lens_fraction, 6),
            "enrichment": round(self.enrichment, 3),
            "ceiling": round(self.ceiling, 3),
            **self.filters,
        }


def _embedded_sources(model: ModelVersion, survey_ids: list[int] | None, band: str, session: Session) -> np.ndarray:
    rows = session.execute(
        text(
            """
            SELECT s.source_id, s.ra, s.dec, s.mag[array_position(v.bands, :band)]
            FROM lenscat.embeddings e
            JOIN lenscat.sources s ON s.source_id = e.source_id
            JOIN lenscat.surveys v ON v.survey_id = s.survey_id
            WHERE e.model_id = :m AND (CAST(:sv AS int[]) IS NULL OR s.survey_id = ANY(CAST(:sv AS int[])))
            ORDER BY s.source_id
            """
        ),
        {"m": model.model_id, "band": band, "sv": survey_ids},
    ).all()
    return np.array(
        [(r[0], r[1], r[2], np.nan if r[3] is None else r[3]) for r in rows],
        dtype=[("id", "i8"), ("ra", "f8"), ("dec", "f8"), ("mag", "f8")],
    )


def lens_query_enrichment(
    model: ModelVersion,
    *,
    session: Session,
    k: int = 100,
    surveys: list[str] | None = None,
    origins: list[str] | None = None,
    mag_window: u.Quantity | None = 0.5 * u.mag,
    mag_band: str = "r",
    exclude_radius: u.Quantity | None = 25 * u.arcsec,
    max_queries: int | None = None,
    seed: int = 0,
    progress: bool = True,
) -> Enrichment:
    """Lenses among the top-k neighbours of every labelled lens, against the base rate.

    Parameters
    ----------
    model : ModelVersion
        Encoder version whose stored embeddings and HNSW index are searched.
    session : Session
        Database session (read only).
    k : int
        Neighbours per query (Stein et al.: 100).
    surveys : list of str, optional
        Queries, neighbours and the base rate come from these surveys (default: every embedded
        source).
    origins : list of str, optional
        Label origins that define the lenses (default: all; the most trusted label of a source wins).
    mag_window, mag_band, exclude_radius
        The filters of :func:`~lenscat.embeddings.similarity.similar` (``None``: off).
    max_queries : int, optional
        Use a random subset of this many lenses as queries (``seed``); the base rate still counts
        every lens.
    seed : int
        Seed of the query subset.
    progress : bool
        Show a progress bar over the queries.

    Returns
    -------
    Enrichment

    Raises
    ------
    LenscatError
        ``k`` out of range, no embedded source, or no labelled lens among them.
    """
    if not 1 <= k <= MAX_K:
        raise LenscatError(f"k must be between 1 and {MAX_K}, got {k}")
    survey_ids = [get_survey(n, session=session).survey_id for n in surveys] if surveys else None
    src = _embedded_sources(model, survey_ids, mag_band, session)
    where = f" in survey(s) {', '.join(surveys)}" if surveys else ""
    if len(src) == 0:
        raise MissingPrerequisite(f"encoder {model.label} has no embeddings{where}; {{step}}", embed_step(model.name))
    labels = resolve_labels(session=session, origins=origins, surveys=survey_ids)
    is_lens = np.array([labels.get(int(i), 0) == 1 for i in src["id"]])
    n_lens = int(is_lens.sum())
    if n_lens == 0:
        raise LenscatError(
            f"no labelled lens among the {len(src)} sources embedded by {model.label}{where}; "
            "add labels with `lenscat labels import` or `lenscat labels from-crossmatch`"
        )
    base_rate = n_lens / len(src)
    query_idx = np.flatnonzero(is_lens)
    if max_queries is not None and max_queries < len(query_idx):
        query_idx = np.sort(np.random.default_rng(seed).choice(query_idx, max_queries, replace=False))
    lens_set = {int(i) for i in src["id"][is_lens]}
    radius_deg = None if exclude_radius is None else float(exclude_radius.to_value(u.deg))
    window = None if mag_window is None else float(mag_window.to_value(u.mag))
    rows = []
    for i in tqdm(query_idx, desc="lens queries", unit="query", disable=not progress):
        q = query_from_source(int(src["id"][i]), model, mag_band=mag_band, session=session)
        res = similar(
            q,
            encoder=model,
            k=k,
            session=session,
            mag_window=mag_window,
            mag_band=mag_band,
            surveys=surveys,
            exclude_radius=exclude_radius,
        )
        found = sum(int(s) in lens_set for s in res["source_id"])
        ok = np.ones(len(src), bool)
        ok[i] = False
        if window is not None and q.mag is not None:
            ok &= np.abs(src["mag"] - q.mag) <= window
        cand = np.flatnonzero(ok)
        best = cand[np.argsort(~is_lens[cand], kind="stable")]  # a perfect ranking: every lens first
        if radius_deg is None:
            kept = best[:k]
        else:
            kept = best[_dedupe(src["ra"][best], src["dec"][best], radius_deg, k, q.coord)]
        rows.append(
            (
                int(src["id"][i]),
                q.mag,
                len(cand),
                len(res),
                found,
                found / len(res) if len(res) else 0.0,
                float(is_lens[kept].mean()) if len(kept) else 0.0,
            )
        )
    objids: dict[int, Any] = dict(
        session.execute(
            text("SELECT source_id, objid FROM lenscat.sources WHERE source_id = ANY(:ids)"),
            {"ids": [r[0] for r in rows]},
        ).all()
    )
    table = Table(
        rows=rows,
        names=("source_id", "mag", "n_window", "n_results", "n_lenses_found", "lens_fraction", "ceiling_fraction"),
        dtype=("i8", "f8", "i8", "i8", "i8", "f8", "f8"),
    )
    table.add_column([str(objids.get(int(s), "")) for s in table["source_id"]], name="objid", index=1)
    table["mag"].unit = u.mag
    frac = float(np.mean(table["lens_fraction"]))
    ceiling = float(np.mean(table["ceiling_fraction"]))
    filters = {
        "mag_window": None if window is None else window,
        "mag_band": mag_band,
        "exclude_radius_arcsec": None if exclude_radius is None else float(exclude_radius.to_value(u.arcsec)),
        "surveys": surveys or [],
        "label_origins": origins or [],
        "n_queries": len(table),
    }
    table.meta.update({"encoder": model.label, "k": k, "base_rate": base_rate, **filters})
    return Enrichment(
        model.label, k, len(src), n_lens, base_rate, frac, frac / base_rate, ceiling / base_rate, table, filters
    )
