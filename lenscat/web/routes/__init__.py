"""The web app's routes, one :class:`fastapi.APIRouter` per part of the app (:data:`ROUTERS`)."""

from __future__ import annotations

from lenscat.web.routes import api, auth, export, grids, pages, proposal, query, tap

ROUTERS = (
    auth.router,
    pages.router,
    grids.router,
    query.router,
    export.router,
    proposal.router,
    api.router,
    tap.router,
)
