"""The TAP service (IVOA TAP 1.1): ``/tap/sync``, ``/tap/async`` (UWS 1.1), ``/tap/tables``,
``/tap/capabilities``, ``/tap/availability``.

Thin: parameters in (names case-insensitive, GET query or POST form), the tap domain
(:mod:`lenscat.tap`) does the work. Everything returning data needs a grader (session cookie,
``Authorization: Bearer TOKEN`` or, for Java clients, HTTP Basic with the grader's name and API
token: :mod:`lenscat.tap.auth`); capabilities and availability are public. A request with a
session cookie that changes state (POST) needs the CSRF token as the rest of the app.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import RedirectResponse, Response
from sqlalchemy.exc import SQLAlchemyError

from lenscat.db.session import session_scope
from lenscat.errors import InvalidParameter, LenscatError, NotFoundError
from lenscat.grading.auth import csrf_ok
from lenscat.settings import get_settings
from lenscat.tap import jobs
from lenscat.tap.auth import CHALLENGE, tap_login
from lenscat.tap.service import available, column_meta, published_tables
from lenscat.tap.types import MEDIA_TYPES
from lenscat.tap.votable import availability_xml, capabilities_xml, error_votable, tableset_xml
from lenscat.web.deps import SESSION_COOKIE

router = APIRouter()
XML = "text/xml; charset=utf-8"
_recovered = False


class _Refused(Exception):
    """Nobody (or a wrong credential) asked."""


async def _params(request: Request) -> dict[str, str]:
    """The request's parameters, names in lower case (DALI: case-insensitive); the form wins."""
    params = {k.lower(): v for k, v in request.query_params.items()}
    if request.method == "POST":
        form = await request.form()
        params.update({k.lower(): v for k, v in form.items() if isinstance(v, str)})
    return params


def _owner(request: Request, params: dict[str, str] | None = None) -> str:
    """The asking grader's name; a cookie-session POST needs its CSRF token."""
    with session_scope() as session:
        state = tap_login(request.headers.get("authorization"), request.cookies.get(SESSION_COOKIE), session=session)
    if state is None:
        raise _Refused()
    grader, ws = state
    if request.method != "GET" and not ws.bearer:
        token = (params or {}).get("csrf_token") or request.headers.get("x-csrf-token")
        if not csrf_ok(ws.csrf, token):
            raise _Refused()
    return grader.name


def _refused() -> Response:
    response = Response(
        error_votable(
            "authentication required: a session, an API token (Authorization: Bearer) "
            "or HTTP Basic with a grader name and API token"
        ),
        401,
        media_type=MEDIA_TYPES["votable"],
    )
    response.headers.append("WWW-Authenticate", CHALLENGE)
    response.headers.append("WWW-Authenticate", 'Bearer realm="lenscat TAP"')
    return response


def _error(exc: LenscatError) -> Response:
    status = 404 if isinstance(exc, NotFoundError) else 400
    return Response(error_votable(str(exc)), status, media_type=MEDIA_TYPES["votable"])


async def _answer(request: Request, work: Callable[[str, dict[str, str]], Response]) -> Response:
    """Authenticate, then run ``work(owner, params)`` in the thread pool; errors as error VOTables."""
    params = await _params(request)

    def call() -> Response:
        global _recovered
        try:
            owner = _owner(request, params)
            if not _recovered:
                jobs.recover_interrupted()
                _recovered = True
            return work(owner, params)
        except _Refused:
            return _refused()
        except LenscatError as exc:
            return _error(exc)

    return await run_in_threadpool(call)


def _base(request: Request) -> str:
    return str(request.base_url).rstrip("/") + "/tap"


# ------------------------------------------------------------------------------------------ sync
@router.api_route("/tap/sync", methods=["GET", "POST"])
async def tap_sync(request: Request) -> Response:
    """Run an ADQL query now (REQUEST=doQuery, LANG=ADQL, QUERY, MAXREC, FORMAT/RESPONSEFORMAT)."""

    def work(owner: str, params: dict[str, str]) -> Response:
        req = params.get("request", "doQuery")
        if req.lower() != "doquery":
            raise InvalidParameter("request", "{request} must be doQuery")
        jobs.check_params(params)
        body, media = jobs.render(params, timeout_s=float(get_settings().web_statement_timeout_s))
        return Response(body, 200, media_type=media)

    return await _answer(request, work)


# ----------------------------------------------------------------------------------------- async
@router.get("/tap/async")
async def tap_jobs(request: Request) -> Response:
    """The asker's jobs (UWS job list)."""
    return await _answer(
        request,
        lambda owner, p: Response(jobs.job_list_xml(jobs.list_jobs(owner), _base(request) + "/async"), media_type=XML),
    )


@router.post("/tap/async")
async def tap_create(request: Request) -> Response:
    """Create a job (PENDING; PHASE=RUN starts it at once); answers 303 to the job."""

    def work(owner: str, params: dict[str, str]) -> Response:
        job = jobs.create_job(owner, {k: v for k, v in params.items() if k not in ("phase", "csrf_token")})
        if params.get("phase", "").upper() == "RUN":
            jobs.start_job(job)
        return RedirectResponse(f"{_base(request)}/async/{job.job_id}", status_code=303)

    return await _answer(request, work)


@router.get("/tap/async/{job_id}")
async def tap_job(request: Request, job_id: str) -> Response:
    """The job document (UWS 1.1)."""
    return await _answer(
        request,
        lambda owner, p: Response(jobs.job_xml(jobs.get_job(job_id, owner), _base(request) + "/async"), media_type=XML),
    )


@router.delete("/tap/async/{job_id}")
async def tap_delete(request: Request, job_id: str) -> Response:
    """Destroy the job; answers 303 to the job list."""

    def work(owner: str, params: dict[str, str]) -> Response:
        jobs.delete_job(jobs.get_job(job_id, owner))
        return RedirectResponse(f"{_base(request)}/async", status_code=303)

    return await _answer(request, work)


@router.post("/tap/async/{job_id}")
async def tap_job_action(request: Request, job_id: str) -> Response:
    """ACTION=DELETE destroys the job (UWS for clients that cannot send DELETE)."""

    def work(owner: str, params: dict[str, str]) -> Response:
        job = jobs.get_job(job_id, owner)
        if params.get("action", "").upper() != "DELETE":
            raise InvalidParameter("action", "{action} must be DELETE")
        jobs.delete_job(job)
        return RedirectResponse(f"{_base(request)}/async", status_code=303)

    return await _answer(request, work)


_TEXT_ATTRS: dict[str, Callable[[jobs.Job], Any]] = {
    "phase": lambda j: j.phase,
    "quote": lambda j: "",
    "executionduration": lambda j: j.execution_duration,
    "destruction": lambda j: j.destruction,
    "owner": lambda j: j.owner,
}


@router.get("/tap/async/{job_id}/{attribute}")
async def tap_job_attribute(request: Request, job_id: str, attribute: str) -> Response:
    """One attribute of a job: phase, quote, executionduration, destruction, owner (text), results,
    parameters or error."""

    def work(owner: str, params: dict[str, str]) -> Response:
        job = jobs.get_job(job_id, owner)
        name = attribute.lower()
        if name in _TEXT_ATTRS:
            return Response(str(_TEXT_ATTRS[name](job)), media_type="text/plain; charset=utf-8")
        if name == "results":
            return Response(jobs.results_xml(job, _base(request) + "/async"), media_type=XML)
        if name == "error":
            if job.phase != "ERROR":
                raise NotFoundError(f"TAP job {job.job_id} has no error")
            body, media = jobs.result_of(job)
            return Response(body, media_type=media)
        if name == "parameters":
            doc = jobs.job_xml(job, _base(request) + "/async")
            return Response(doc, media_type=XML)
        raise NotFoundError(f"TAP jobs have no {attribute[:40]!r}")

    return await _answer(request, work)


@router.get("/tap/async/{job_id}/results/result")
async def tap_job_result(request: Request, job_id: str) -> Response:
    """The job's result (its format's media type)."""

    def work(owner: str, params: dict[str, str]) -> Response:
        body, media = jobs.result_of(jobs.get_job(job_id, owner))
        return Response(body, media_type=media)

    return await _answer(request, work)


@router.post("/tap/async/{job_id}/{attribute}")
async def tap_job_set(request: Request, job_id: str, attribute: str) -> Response:
    """PHASE=RUN|ABORT, EXECUTIONDURATION=s, DESTRUCTION=time; answers 303 to the job."""

    def work(owner: str, params: dict[str, str]) -> Response:
        job = jobs.get_job(job_id, owner)
        name = attribute.lower()
        if name == "phase":
            phase = params.get("phase", "").upper()
            if phase == "RUN":
                jobs.start_job(job)
            elif phase == "ABORT":
                jobs.abort_job(job)
            else:
                raise InvalidParameter("phase", "{phase} must be RUN or ABORT")
        elif name == "executionduration":
            jobs.set_execution_duration(job, params.get("executionduration", ""))
        elif name == "destruction":
            jobs.set_destruction(job, params.get("destruction", ""))
        else:
            raise NotFoundError(f"TAP job attribute {attribute[:40]!r} cannot be set")
        return RedirectResponse(f"{_base(request)}/async/{job.job_id}", status_code=303)

    return await _answer(request, work)


# ------------------------------------------------------------------------------------------ VOSI
@router.get("/tap/tables")
async def tap_tables(request: Request) -> Response:
    """VOSI tables: the published views with their columns' descriptions, units, UCDs and types."""

    def work(owner: str, params: dict[str, str]) -> Response:
        with session_scope() as session:
            body = tableset_xml(published_tables(session=session), column_meta(session=session))
        return Response(body, media_type=XML)

    return await _answer(request, work)


@router.get("/tap/capabilities")
def tap_capabilities(request: Request) -> Response:
    """VOSI capabilities (public)."""
    s = get_settings()
    body = capabilities_xml(
        _base(request),
        default_maxrec=int(s.tap_default_maxrec),
        max_rec=int(s.tap_max_rec),
        job_seconds=int(float(s.tap_job_hours) * 3600),
        timeout_s=int(s.tap_async_timeout_s),
    )
    return Response(body, media_type=XML)


@router.get("/tap/availability")
def tap_availability() -> Response:
    """VOSI availability (public): whether the database answers."""
    try:
        with session_scope() as session:
            ok = available(session=session)
    except SQLAlchemyError:  # the failed check's transaction cannot commit either
        ok = False
    return Response(
        availability_xml(ok, "accepting queries" if ok else "the database does not answer"),
        200 if ok else 503,
        media_type=XML,
    )


@router.get("/tap")
def tap_home(request: Request) -> Response:
    """The service's base URL: where its endpoints are."""
    return RedirectResponse(f"{_base(request)}/capabilities", status_code=303)
