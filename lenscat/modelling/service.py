"""Lens-model reads and writes the shells, workers and other domains call.

``lens_model_for`` is the public read (the joint evidence and the proposal packs use it);
``store_lens_models`` is the one write: COPY into a staging table, one upsert on the natural key
``(model_id, source_id)``, so re-running a source with the same version replaces its row.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from typing import Any

from psycopg.types.json import Jsonb
from sqlalchemy import text
from sqlalchemy.orm import Session

from lenscat.db.session import raw_connection
from lenscat.errors import InvalidParameter, LenscatError, MissingPrerequisite, Step
from lenscat.modelling import sql
from lenscat.modelling.types import PARAMS, LensModel
from lenscat.registry.versions import ModelVersion, get_model


def _from_row(r: Any) -> LensModel:
    m = dict(r._mapping)
    detail = m.pop("vet_detail") or {}
    if isinstance(detail, str):
        detail = json.loads(detail)
    flags = tuple(m.pop("vet_flags") or ())
    floats: dict[str, Any] = {c: float(m.pop(c)) for c in sql.VALUE_COLUMNS}
    arc_mag = m.pop("arc_mag")
    return LensModel(
        **floats,
        arc_mag=None if arc_mag is None else float(arc_mag),
        vet_flags=flags,
        vet_detail=dict(detail),
        **m,
    )


def lens_model_for(source_id: int, *, session: Session, model_id: int | None = None) -> LensModel | None:
    """The lens model of a source: by the latest registered lensmodel version that modelled it.

    Parameters
    ----------
    source_id
        The source (``lenscat.sources.source_id``).
    session
        The session to read through.
    model_id
        A particular version instead of the latest one that has a row for this source.

    Returns
    -------
    LensModel or None
        The stored model, or None when no version modelled the source.
    """
    if model_id is None:
        return latest_lens_models([source_id], session=session).get(int(source_id))
    row = session.execute(text(sql.FOR_SOURCE_AND_MODEL), {"sid": int(source_id), "mid": int(model_id)}).one_or_none()
    return None if row is None else _from_row(row)


def latest_lens_models(source_ids: Sequence[int], *, session: Session) -> dict[int, LensModel]:
    """The lens model of each source by the latest registered lensmodel version that modelled it, in one query.

    Parameters
    ----------
    source_ids
        The sources (``lenscat.sources.source_id``).
    session
        The session to read through.

    Returns
    -------
    dict
        ``source_id`` -> stored model; sources no version modelled are absent.
    """
    ids = [int(s) for s in source_ids]
    if not ids:
        return {}
    rows = session.execute(text(sql.LATEST_FOR_SOURCES), {"sids": ids}).all()
    return {int(r.source_id): _from_row(r) for r in rows}


def lens_models_of(
    model_id: int, *, session: Session, top: int | None = None, source_ids: Sequence[int] = ()
) -> list[LensModel]:
    """Stored models of one version: for ``source_ids``, or the ``top`` largest Einstein radii.

    Parameters
    ----------
    model_id
        The lensmodel version.
    session
        The session to read through.
    top
        How many rows, largest θ_E first (ignored when ``source_ids`` is given).
    source_ids
        The sources to read, ordered by id.

    Returns
    -------
    list of LensModel
    """
    if source_ids:
        rows = session.execute(
            text(sql.FOR_MODEL_AND_IDS), {"mid": int(model_id), "sids": [int(s) for s in source_ids]}
        ).all()
    else:
        if top is None or top < 1:
            raise InvalidParameter("top", "{top} must be a positive number of rows")
        rows = session.execute(text(sql.TOP_FOR_MODEL), {"mid": int(model_id), "n": int(top)}).all()
    return [_from_row(r) for r in rows]


def count_lens_models(model_id: int, *, session: Session) -> int:
    """Number of stored rows of one lensmodel version."""
    return int(session.execute(text(sql.COUNT_FOR_MODEL), {"mid": int(model_id)}).scalar_one())


def _check(m: LensModel) -> None:
    for c in sql.VALUE_COLUMNS:
        v = float(getattr(m, c))
        if not math.isfinite(v):
            raise LenscatError(f"{c} of source {m.source_id} must be finite, not {v}")
    for p in PARAMS:
        if float(getattr(m, f"{p}_err")) < 0:
            raise LenscatError(f"{p}_err of source {m.source_id} must be >= 0")
    if m.theta_e < 0:
        raise LenscatError(f"theta_e of source {m.source_id} must be >= 0")
    if m.arc_mag is not None and not math.isfinite(m.arc_mag):
        raise LenscatError(f"arc_mag of source {m.source_id} must be finite or missing")


def store_lens_models(rows: Iterable[LensModel], *, model_id: int, job_id: int | None, session: Session) -> int:
    """Write lens models of one version; idempotent on ``(model_id, source_id)``.

    The rows go through COPY into a temporary staging table and one ``INSERT … ON CONFLICT … DO
    UPDATE`` (rows whose values did not change are left alone). The caller commits.

    Parameters
    ----------
    rows
        The models; their ``model_id`` is replaced by ``model_id`` and ``job_id`` by ``job_id``.
    model_id
        The lensmodel version that made them.
    job_id
        The job writing them, or None outside a job.
    session
        The session to write through (not committed).

    Returns
    -------
    int
        Rows inserted or changed.
    """
    items = list(rows)
    if not items:
        return 0
    for m in items:
        _check(m)
    conn = raw_connection(session)
    with conn.cursor() as cur:
        cur.execute(sql.CREATE_STAGE)
        cur.execute(sql.TRUNCATE_STAGE)
        with cur.copy(sql.COPY_STAGE) as copy:
            for m in items:
                copy.write_row(
                    (
                        int(model_id),
                        int(m.source_id),
                        *(float(getattr(m, c)) for c in sql.VALUE_COLUMNS),
                        None if m.arc_mag is None else float(m.arc_mag),
                        m.arc_band,
                        list(m.vet_flags),
                        Jsonb(m.vet_detail),
                        job_id,
                    )
                )
        cur.execute(sql.UPSERT_FROM_STAGE)
        n = cur.rowcount
        cur.execute(sql.TRUNCATE_STAGE)
    return int(n)


def analyze_lens_models(*, session: Session) -> None:
    """Fresh planner statistics after a bulk write."""
    session.execute(text(sql.ANALYZE))


SHOW_COLUMNS: tuple[str, ...] = (
    "source_id",
    "lens_model",
    "theta_e",
    "theta_e_err",
    "q",
    "pa_deg",
    "gamma_ext",
    "gamma_pa_deg",
    "center_x",
    "center_y",
    "source_x",
    "source_y",
    "arc_mag",
    "arc_band",
    "vet_flags",
)
"""Columns of ``lenscat model show``."""

SHOW_UNITS: dict[str, str] = {
    "theta_e": "arcsec",
    "theta_e_err": "arcsec",
    "pa_deg": "deg E of N",
    "gamma_pa_deg": "deg E of N",
    "center_x": "arcsec E",
    "center_y": "arcsec N",
    "source_x": "arcsec E",
    "source_y": "arcsec N",
    "arc_mag": "AB mag",
}
"""Units of :data:`SHOW_COLUMNS`."""


def show_rows(models: Sequence[LensModel]) -> list[list[Any]]:
    """Rows of :data:`SHOW_COLUMNS` for printing (rounded)."""
    out = []
    for m in models:
        out.append(
            [
                m.source_id,
                m.lens_model,
                round(m.theta_e, 3),
                round(m.theta_e_err, 3),
                round(m.q, 3),
                round(m.pa_deg, 1),
                round(m.gamma_ext, 3),
                round(m.gamma_pa_deg, 1),
                round(m.center_x, 3),
                round(m.center_y, 3),
                round(m.source_x, 3),
                round(m.source_y, 3),
                None if m.arc_mag is None else round(m.arc_mag, 2),
                m.arc_band,
                ",".join(m.vet_flags) or "passed",
            ]
        )
    return out


def latest_lensmodel(*, session: Session) -> ModelVersion:
    """The most recently registered lensmodel version.

    Raises
    ------
    MissingPrerequisite
        None is registered.
    """
    row = session.execute(text(sql.LATEST_VERSION)).scalar_one_or_none()
    if row is None:
        raise MissingPrerequisite(
            "no lens modelling network is registered yet; {step}",
            Step(("model", "train"), (("name", "lensnet"),), "train one (a lensmodel version)"),
        )
    return get_model("lensmodel", int(row), session=session)
