"""Asynchronous TAP jobs (UWS 1.1): kept under ``LENSCAT_HOME/tap/jobs``, run in a thread of the server.

A job is a folder ``<job_id>/`` holding ``job.json`` (owner, phase, times, parameters, error) and,
once it has run, ``result`` (the answer in the job's format). The web process runs a job in a
daemon thread: the query runs on its own read-only connection (as the synchronous endpoint's), so
a thread is enough and no broker is needed; a job that was running when the server stopped is
marked ERROR at the next start of the store. The store is bounded: at most
``LENSCAT_TAP_ASYNC_MAX_JOBS`` jobs (the oldest finished ones are destroyed to make room; when every
kept job is still pending or running a new one is refused) and each job is destroyed
``LENSCAT_TAP_JOB_HOURS`` after its creation. Only a job's owner sees it.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import threading
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

from lenscat.db.session import session_scope
from lenscat.errors import InvalidParameter, LenscatError, NotFoundError
from lenscat.settings import get_settings
from lenscat.tap.service import row_limit, run_query
from lenscat.tap.types import FORMATS, MEDIA_TYPES
from lenscat.tap.votable import error_votable, to_csv, to_json, to_votable

PHASES = ("PENDING", "QUEUED", "EXECUTING", "COMPLETED", "ERROR", "ABORTED")
FINISHED = ("COMPLETED", "ERROR", "ABORTED")
_LOCK = threading.Lock()


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


def _stamp(t: dt.datetime) -> str:
    """A UTC time as DALI writes it (ISO 8601, ``Z``); such strings sort as the times do."""
    return t.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Job:
    """One asynchronous job (its ``job.json``)."""

    job_id: str
    owner: str
    phase: str
    created: str
    destruction: str
    execution_duration: int
    parameters: dict[str, str] = field(default_factory=dict)
    started: str | None = None
    ended: str | None = None
    error: str | None = None
    media_type: str | None = None


def jobs_dir() -> Path:
    """Where the jobs are kept."""
    return get_settings().home.expanduser().resolve() / "tap" / "jobs"


def _path(job_id: str) -> Path:
    if not job_id or not all(c in "0123456789abcdef" for c in job_id):
        raise NotFoundError(f"no TAP job {job_id[:40]!r}")
    return jobs_dir() / job_id


def _save(job: Job) -> None:
    p = _path(job.job_id)
    p.mkdir(parents=True, exist_ok=True)
    tmp = p / "job.json.tmp"
    tmp.write_text(json.dumps(asdict(job)))
    tmp.replace(p / "job.json")


def _load(job_id: str) -> Job | None:
    try:
        return Job(**json.loads((_path(job_id) / "job.json").read_text()))
    except (OSError, ValueError, TypeError):
        return None


def _all_jobs() -> list[Job]:
    root = jobs_dir()
    if not root.exists():
        return []
    jobs = [j for j in (_load(p.name) for p in root.iterdir() if p.is_dir()) if j is not None]
    now = _stamp(_now())
    kept = []
    for j in jobs:
        if j.destruction <= now:
            shutil.rmtree(_path(j.job_id), ignore_errors=True)
        else:
            kept.append(j)
    return sorted(kept, key=lambda j: j.created)


def list_jobs(owner: str) -> list[Job]:
    """The owner's jobs, oldest first (expired jobs are destroyed on the way)."""
    with _LOCK:
        return [j for j in _all_jobs() if j.owner == owner]


def get_job(job_id: str, owner: str) -> Job:
    """The owner's job ``job_id``.

    Raises
    ------
    NotFoundError
        No such job of this owner (another owner's job is not found either).
    """
    job = _load(job_id)
    if job is None or job.owner != owner or job.destruction <= _stamp(_now()):
        raise NotFoundError(f"no TAP job {job_id[:40]!r}")
    return job


def create_job(owner: str, params: dict[str, str]) -> Job:
    """A new PENDING job with the request's parameters (lower-case names).

    Raises
    ------
    InvalidParameter
        (``lang``, ``format``, ``maxrec``) a parameter this service does not take; (``query``) none given.
    LenscatError
        The store is full of unfinished jobs.
    """
    check_params(params)
    settings = get_settings()
    with _LOCK:
        jobs = _all_jobs()
        while len(jobs) >= int(settings.tap_async_max_jobs):
            done = [j for j in jobs if j.phase in FINISHED or j.phase == "PENDING"]
            if not done:
                raise LenscatError("too many asynchronous TAP jobs are running; try again later")
            shutil.rmtree(_path(done[0].job_id), ignore_errors=True)
            jobs.remove(done[0])
        now = _now()
        job = Job(
            job_id=uuid.uuid4().hex,
            owner=owner,
            phase="PENDING",
            created=_stamp(now),
            destruction=_stamp(now + dt.timedelta(hours=float(settings.tap_job_hours))),
            execution_duration=int(settings.tap_async_timeout_s),
            parameters=dict(params),
        )
        _save(job)
    return job


def check_params(params: dict[str, str]) -> None:
    """Check LANG, QUERY, FORMAT/RESPONSEFORMAT and MAXREC (names in lower case); UPLOAD is refused."""
    lang = params.get("lang", "ADQL")
    if lang.upper() not in ("ADQL", "ADQL-2.0", "ADQL-2.1"):
        raise InvalidParameter("lang", "{lang} must be ADQL")
    if not params.get("query", "").strip():
        raise InvalidParameter("query", "{query} is missing: give an ADQL SELECT statement")
    if params.get("upload"):
        raise InvalidParameter("upload", "{upload} is not supported by this service: query the published tables")
    output_format(params)
    row_limit(params.get("maxrec"))


def output_format(params: dict[str, str]) -> str:
    """The output format asked for (RESPONSEFORMAT or FORMAT; default votable)."""
    value = (params.get("responseformat") or params.get("format") or "votable").strip().lower()
    value = value.split(";")[0].strip()
    if value not in FORMATS:
        raise InvalidParameter("format", "{format} must be votable, csv or json")
    return FORMATS[value]


def render(params: dict[str, str], *, timeout_s: float) -> tuple[bytes, str]:
    """Run a query's parameters and write the answer: (body, media type). Errors propagate."""
    fmt = output_format(params)
    with session_scope() as session:
        result = run_query(
            params.get("query", ""), maxrec=row_limit(params.get("maxrec")), timeout_s=timeout_s, session=session
        )
    body = {"votable": to_votable, "csv": to_csv, "json": to_json}[fmt](result)
    return body, MEDIA_TYPES[fmt]


def _run(job_id: str) -> None:
    job = _load(job_id)
    if job is None or job.phase != "QUEUED":
        return
    job.phase, job.started = "EXECUTING", _stamp(_now())
    _save(job)
    error: str | None = None
    try:
        body, media = render(job.parameters, timeout_s=float(job.execution_duration))
    except LenscatError as exc:
        body, media, error = error_votable(str(exc)), MEDIA_TYPES["votable"], str(exc)
    except Exception as exc:  # noqa: BLE001 - a job ends in ERROR whatever went wrong
        body, media, error = (
            error_votable("internal error"),
            MEDIA_TYPES["votable"],
            f"internal error: {type(exc).__name__}",
        )
    current = _load(job_id)
    if current is None or current.phase == "ABORTED":
        return
    (_path(job_id) / "result").write_bytes(body)
    current.phase = "ERROR" if error else "COMPLETED"
    current.error, current.media_type, current.ended = error, media, _stamp(_now())
    _save(current)


def start_job(job: Job) -> Job:
    """PHASE=RUN: queue the job and run it in a daemon thread (a finished job is left as it is)."""
    with _LOCK:
        current = _load(job.job_id) or job
        if current.phase != "PENDING":
            return current
        current.phase = "QUEUED"
        _save(current)
    threading.Thread(target=_run, args=(job.job_id,), name=f"tap-{job.job_id[:8]}", daemon=True).start()
    return current


def abort_job(job: Job) -> Job:
    """PHASE=ABORT: an unfinished job becomes ABORTED (a running query ends at its timeout)."""
    with _LOCK:
        current = _load(job.job_id) or job
        if current.phase not in FINISHED:
            current.phase, current.ended = "ABORTED", _stamp(_now())
            _save(current)
        return current


def delete_job(job: Job) -> None:
    """Destroy the job and its result."""
    with _LOCK:
        shutil.rmtree(_path(job.job_id), ignore_errors=True)


def set_destruction(job: Job, value: str) -> Job:
    """Bring the destruction time forward (never later than the store keeps jobs).

    Raises
    ------
    InvalidParameter
        (``destruction``) not an ISO 8601 time.
    """
    try:
        t = dt.datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError as exc:
        raise InvalidParameter("destruction", "{destruction} must be an ISO 8601 time") from exc
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.UTC)
    with _LOCK:
        current = _load(job.job_id) or job
        current.destruction = min(current.destruction, _stamp(t))
        _save(current)
        return current


def set_execution_duration(job: Job, value: str) -> Job:
    """Shorten the job's execution duration [s] (never above ``LENSCAT_TAP_ASYNC_TIMEOUT_S``).

    Raises
    ------
    InvalidParameter
        (``executionduration``) not a positive integer.
    """
    try:
        seconds = int(value)
    except ValueError as exc:
        raise InvalidParameter("executionduration", "{executionduration} must be a positive integer") from exc
    if seconds <= 0:
        raise InvalidParameter("executionduration", "{executionduration} must be a positive integer")
    with _LOCK:
        current = _load(job.job_id) or job
        if current.phase == "PENDING":
            current.execution_duration = min(seconds, int(get_settings().tap_async_timeout_s))
            _save(current)
        return current


def result_of(job: Job) -> tuple[bytes, str]:
    """The finished job's result: (body, media type).

    Raises
    ------
    NotFoundError
        The job has no result (yet).
    """
    path = _path(job.job_id) / "result"
    if job.phase not in ("COMPLETED", "ERROR") or not path.exists():
        raise NotFoundError(f"TAP job {job.job_id} has no result (phase {job.phase})")
    return path.read_bytes(), job.media_type or MEDIA_TYPES["votable"]


# ------------------------------------------------------------------------------------------- UWS
_UWS = (
    'xmlns:uws="http://www.ivoa.net/xml/UWS/v1.0" xmlns:xlink="http://www.w3.org/1999/xlink" '
    'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"'
)


def _t(name: str, value: Any) -> str:
    if value is None or value == "":
        return f'  <uws:{name} xsi:nil="true"/>'
    return f"  <uws:{name}>{escape(str(value))}</uws:{name}>"


def job_xml(job: Job, base: str) -> bytes:
    """The UWS 1.1 job document; ``base`` is the job list's URL (``…/tap/async``)."""
    url = f"{base}/{job.job_id}"
    params = "\n".join(
        f'    <uws:parameter id="{escape(k)}">{escape(v)}</uws:parameter>' for k, v in job.parameters.items()
    )
    results = (
        f'    <uws:result id="result" xlink:href="{escape(url)}/results/result"/>'
        if job.phase in ("COMPLETED", "ERROR")
        else ""
    )
    lines = [
        '<?xml version="1.0" encoding="utf-8"?>',
        f'<uws:job {_UWS} version="1.1">',
        _t("jobId", job.job_id),
        '  <uws:runId xsi:nil="true"/>',
        _t("ownerId", job.owner),
        _t("phase", job.phase),
        '  <uws:quote xsi:nil="true"/>',
        _t("creationTime", job.created),
        _t("startTime", job.started),
        _t("endTime", job.ended),
        _t("executionDuration", job.execution_duration),
        _t("destruction", job.destruction),
        "  <uws:parameters>",
        params,
        "  </uws:parameters>",
        "  <uws:results>",
        results,
        "  </uws:results>",
    ]
    if job.error:
        lines += [
            '  <uws:errorSummary type="fatal" hasDetail="true">',
            f"    <uws:message>{escape(job.error)}</uws:message>",
            "  </uws:errorSummary>",
        ]
    lines.append("</uws:job>")
    return ("\n".join(line for line in lines if line) + "\n").encode()


def job_list_xml(jobs: list[Job], base: str) -> bytes:
    """The UWS 1.1 job list."""
    refs = "\n".join(
        f'  <uws:jobref id="{j.job_id}" xlink:href="{escape(base)}/{j.job_id}">'
        f"<uws:phase>{j.phase}</uws:phase><uws:creationTime>{j.created}</uws:creationTime></uws:jobref>"
        for j in jobs
    )
    return f'<?xml version="1.0" encoding="utf-8"?>\n<uws:jobs {_UWS} version="1.1">\n{refs}\n</uws:jobs>\n'.encode()


def results_xml(job: Job, base: str) -> bytes:
    """The UWS results list of a job."""
    inner = (
        f'  <uws:result id="result" xlink:href="{escape(base)}/{job.job_id}/results/result"/>\n'
        if job.phase in ("COMPLETED", "ERROR")
        else ""
    )
    return f'<?xml version="1.0" encoding="utf-8"?>\n<uws:results {_UWS}>\n{inner}</uws:results>\n'.encode()


def recover_interrupted() -> int:
    """Mark the jobs left QUEUED or EXECUTING by a stopped server as ERROR; how many there were."""
    n = 0
    with _LOCK:
        for j in _all_jobs():
            if j.phase in ("QUEUED", "EXECUTING"):
                j.phase, j.error, j.ended = "ERROR", "the server stopped while the job ran", _stamp(_now())
                _save(j)
                n += 1
    return n
