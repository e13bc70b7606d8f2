"""Catalogue tasks: cross-matching a literature catalogue in a worker."""

from __future__ import annotations

from typing import Any

import astropy.units as u
from sqlalchemy.exc import OperationalError

from lenscat.db.session import session_scope
from lenscat.literature.crossmatch import crossmatch_catalog
from lenscat.tasks.app import get_app
from lenscat.tasks.names import CROSSMATCH_CATALOG

app = get_app()


@app.task(
    name=CROSSMATCH_CATALOG,
    acks_late=True,
    autoretry_for=(OperationalError,),
    retry_backoff=True,
    max_retries=5,
)
def crossmatch_catalog_task(
    catalog: str, radius_arcsec: float = 5.0, surveys: list[str] | None = None
) -> dict[str, Any]:
    """Cross-match ``catalog`` within ``radius_arcsec``; idempotent (results are replaced)."""
    with session_scope() as session:
        summary = crossmatch_catalog(catalog, radius_arcsec * u.arcsec, session=session, surveys=surveys)
    return summary.as_dict()
