"""Command line for embedding vectors: ``ingest embeddings``, ``embed``, ``similar``, ``encoder evaluate``."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from lenscat.cli.common import FORMAT_OPTION, _err, needs_schema, parse_origins
from lenscat.errors import LenscatError
from lenscat.io.output import write_rows, write_table


@click.command("embeddings")
@click.argument("path", type=click.Path(path_type=Path))
@click.option(
    "--encoder",
    "encoder_name",
    required=True,
    help="Encoder name (new names are registered as 'external'), or NAME@VERSION of an existing one.",
)
@click.option("--survey", required=True, help="Survey whose object ids key the vectors.")
@click.option("--id-col", default="objid", show_default=True, help="Array/dataset of survey object ids.")
@click.option("--dataset", default=None, help="Array/dataset of vectors (default: embeddings, representations, ...).")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@needs_schema
def ingest_embeddings_cmd(
    path: Path, encoder_name: str, survey: str, id_col: str, dataset: str | None, as_json: bool
) -> None:
    """Load precomputed embeddings (npz / HDF5 with ids and vectors; .npy with PATH.objid.txt)."""
    from lenscat.db.session import session_scope
    from lenscat.embeddings.encoder_import import ingest_vectors

    with session_scope() as s:
        res = ingest_vectors(path, encoder_name, survey, id_col=id_col, dataset=dataset, session=s)
    if as_json:
        click.echo(json.dumps(res.as_dict()))
        return
    click.echo(
        f"{path}: {res.n_loaded} of {res.n_rows} vectors loaded as encoder {res.encoder}; {len(res.rejects)} rejected"
    )
    for row, objid, why in res.rejects[:20]:
        _err(f"  {path}: row {row}, column {id_col}={objid}: {why}")
    if len(res.rejects) > 20:
        _err(f"  ... and {len(res.rejects) - 20} more")


@click.command("embed")
@click.option("--encoder", "encoder_name", required=True, help="Encoder name (latest version) or NAME@VERSION.")
@click.option("--survey", "surveys", multiple=True, help="Only this survey's sources (repeatable).")
@click.option(
    "--chunk-size", type=click.IntRange(min=1), default=1024, show_default=True, help="Sources per Celery task."
)
@click.option(
    "--batch-size", type=click.IntRange(min=1), default=128, show_default=True, help="Images per forward pass."
)
@click.option(
    "--local-workers",
    type=click.IntRange(min=0),
    default=None,
    help="Start this many worker processes here (default: 1 when no worker answers on the embedded broker, else 0).",
)
@click.option("--no-wait", is_flag=True, help="Submit and return; watch with `lenscat jobs show ID`.")
@click.option("--no-index", is_flag=True, help="Do not build the encoder's HNSW index afterwards.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@needs_schema
def embed_cmd(
    encoder_name: str,
    surveys: tuple[str, ...],
    chunk_size: int,
    batch_size: int,
    local_workers: int | None,
    no_wait: bool,
    no_index: bool,
    as_json: bool,
) -> None:
    """Compute the missing embeddings of an encoder version with Celery workers.

    Only sources without a vector from this encoder version are queued, so re-running resumes
    an interrupted run and a new version recomputes everything. Progress is read from the jobs
    table. Afterwards the encoder's HNSW index is built if it does not exist.
    """
    from lenscat.db.session import session_scope
    from lenscat.embeddings.embed import plan_embed_job
    from lenscat.jobs.service import pending_chunks
    from lenscat.jobs.submit import submit_and_wait
    from lenscat.tasks.names import EMBED_CHUNK

    with session_scope() as s:
        job = plan_embed_job(
            encoder_name, surveys=list(surveys), chunk_size=chunk_size, batch_size=batch_size, session=s
        )
        chunks = pending_chunks(job.job_id, session=s)
    if job.n_items == 0:
        _err(f"lenscat: every source with a cutout already has an embedding from {job.model.label}")
    else:
        _err(f"lenscat: job {job.job_id}: {job.n_items} sources in {job.n_chunks} chunks for {job.model.label}")
    state = submit_and_wait(
        EMBED_CHUNK,
        job.job_id,
        chunks,
        wait=not no_wait,
        local_workers=local_workers,
        unit="img",
        desc=f"embed {job.model.label}",
    )
    index_s = None
    if state is not None and state.status == "done" and not no_index:
        from lenscat.embeddings.vectors import ensure_hnsw_index

        with session_scope() as s:
            index_s = ensure_hnsw_index(job.model, session=s)
    out = {
        "job_id": job.job_id,
        "encoder": job.model.label,
        "n_items": job.n_items,
        "n_chunks": job.n_chunks,
        "status": state.status if state else "submitted",
        "n_done": state.n_done if state else 0,
        "n_retried": state.n_retried if state else 0,
        "n_items_failed": state.n_items_failed if state else 0,
        "index_build_s": None if index_s is None else round(index_s, 2),
    }
    if as_json:
        click.echo(json.dumps(out))
    else:
        extra = f"; HNSW index built in {index_s:.1f} s" if index_s is not None else ""
        click.echo(
            f"job {out['job_id']} {out['status']}: {out['n_done']}/{out['n_items']} embedded with "
            f"{out['encoder']}{extra}"
        )
    if out["n_items_failed"]:
        _err(
            f"lenscat: {out['n_items_failed']} sources could not be embedded and were skipped; "
            f"reasons: `lenscat jobs show {job.job_id}`"
        )
    if state is not None and state.status == "failed":
        raise LenscatError(f"job {job.job_id} failed: {state.message}")


def _check_similar_query(
    source_id: int | None, ra: str | None, dec: str | None, images: tuple[Path, ...], **_: Any
) -> None:
    """``similar`` has exactly one query (checked before the database starts)."""
    given = sum([source_id is not None, ra is not None or dec is not None, bool(images)])
    if given != 1:
        raise LenscatError("give exactly one query: --source-id ID, --ra RA --dec DEC, or --image FILE")
    if (ra is None) != (dec is None):
        raise LenscatError("--ra and --dec go together")


@click.command("similar")
@click.option("--encoder", "encoder_name", required=True, help="Encoder name (latest version) or NAME@VERSION.")
@click.option("--source-id", type=int, default=None, help="Query: a catalogued source.")
@click.option("--ra", default=None, help="Query: the source nearest this position (deg or hh:mm:ss).")
@click.option("--dec", default=None, help="Declination of the query position (deg or dd:mm:ss).")
@click.option(
    "--image",
    "images",
    multiple=True,
    type=click.Path(path_type=Path),
    help="Query: a FITS cutout (repeat for one file per band), resampled to the encoder's pixels.",
)
@click.option("-k", "k", type=click.IntRange(1, 1000), default=20, show_default=True, help="Results wanted.")
@click.option(
    "--mag-window",
    type=float,
    default=0.5,
    show_default=True,
    help="Keep sources within this many mag of the query (0 or negative: no window).",
)
@click.option("--mag-band", default="r", show_default=True)
@click.option("--mag", "query_mag", type=float, default=None, help="Query magnitude for --image queries.")
@click.option("--survey", "surveys", multiple=True, help="Only this survey (repeatable).")
@click.option(
    "--region", nargs=3, default=None, metavar="RA DEC RADIUS", help="Only sources within RADIUS (e.g. 2deg) of RA DEC."
)
@click.option(
    "--exclude-radius",
    default="25arcsec",
    show_default=True,
    help="Drop results this close to the query or to a better-ranked result ('0' keeps all).",
)
@click.option("--exclude-known", is_flag=True, help="Drop sources matched to literature lenses.")
@click.option("--exclude-labelled", is_flag=True, help="Drop sources already graded or labelled (lenscat labels).")
@click.option("--device", default=None, help="Torch device for --image queries.")
@FORMAT_OPTION
@needs_schema(before=_check_similar_query)
def similar_cmd(
    encoder_name: str,
    source_id: int | None,
    ra: str | None,
    dec: str | None,
    images: tuple[Path, ...],
    k: int,
    mag_window: float,
    mag_band: str,
    query_mag: float | None,
    surveys: tuple[str, ...],
    region: tuple[str, str, str] | None,
    exclude_radius: str,
    exclude_known: bool,
    exclude_labelled: bool,
    device: str | None,
    fmt: str,
) -> None:
    """The k sources most similar to a source, a position or an image ("more like this lens")."""
    import astropy.units as u

    from lenscat.db.session import session_scope
    from lenscat.embeddings.similarity import (
        query_from_image,
        query_from_position,
        query_from_source,
        similar,
    )
    from lenscat.registry.versions import get_model
    from lenscat.sky.coords import parse_angle_quantity, parse_position

    xr = parse_angle_quantity(exclude_radius)
    reg = None
    if region:
        reg = (parse_position(region[0], region[1]), parse_angle_quantity(region[2], u.deg))
    with session_scope() as s:
        model = get_model("encoder", encoder_name, session=s)
        if source_id is not None:
            q = query_from_source(source_id, model, mag_band=mag_band, session=s)
        elif images:
            q = query_from_image(list(images), model, device=device, mag=query_mag)
        else:
            assert ra is not None and dec is not None
            q = query_from_position(parse_position(ra, dec), model, mag_band=mag_band, session=s)
        table = similar(
            q,
            encoder=model,
            k=k,
            session=s,
            mag_window=mag_window * u.mag if mag_window > 0 else None,
            mag_band=mag_band,
            surveys=list(surveys) or None,
            region=reg,
            exclude_radius=xr if xr.value > 0 else None,
            exclude_known=exclude_known,
            exclude_labelled=exclude_labelled,
        )
    if fmt == "table":
        _err(f"query: {q.description}; encoder {model.label}; {len(table)} of k={k}")
    write_table(table, fmt, sys.stdout)


@click.command("evaluate")
@click.option("--name", "encoder_name", required=True, help="Encoder name (latest version) or NAME@VERSION.")
@click.option("--survey", "surveys", multiple=True, help="Only this survey's sources (repeatable; default all).")
@click.option(
    "--labels",
    "origins",
    multiple=True,
    help="Lenses are the positive labels of these origins: literature, simulation, import, human, "
    "injection (comma-separated; default all).",
)
@click.option("-k", "k", type=click.IntRange(1, 1000), default=100, show_default=True, help="Neighbours per query.")
@click.option(
    "--mag-window",
    type=float,
    default=0.5,
    show_default=True,
    help="As for `lenscat similar` (0 or negative: no window).",
)
@click.option("--mag-band", default="r", show_default=True)
@click.option("--exclude-radius", default="25arcsec", show_default=True, help="As for `lenscat similar` ('0': off).")
@click.option(
    "--max-queries",
    type=click.IntRange(min=1),
    default=None,
    help="Query with a random subset of this many lenses (default: every lens).",
)
@click.option("--per-query", is_flag=True, help="Print one row per query lens instead of the summary.")
@FORMAT_OPTION
@needs_schema
def encoder_evaluate_cmd(
    encoder_name: str,
    surveys: tuple[str, ...],
    origins: tuple[str, ...],
    k: int,
    mag_window: float,
    mag_band: str,
    exclude_radius: str,
    max_queries: int | None,
    per_query: bool,
    fmt: str,
) -> None:
    """More like this lens, measured: lenses among the top-k neighbours of every labelled lens.

    Each labelled, embedded lens queries `lenscat similar` with the same filters; the fraction of
    lenses among its neighbours over the base rate (lenses per embedded source) is the enrichment
    (Stein et al. 2022: ~500x on DECaLS). The ceiling is what a perfect encoder would reach under
    the same filters. Unlabelled sources count as non-lenses.
    """
    import astropy.units as u

    from lenscat.db.session import session_scope
    from lenscat.embeddings.similarity_eval import lens_query_enrichment
    from lenscat.registry.versions import get_model
    from lenscat.sky.coords import parse_angle_quantity

    xr = parse_angle_quantity(exclude_radius)
    with session_scope() as s:
        model = get_model("encoder", encoder_name, session=s)
        res = lens_query_enrichment(
            model,
            session=s,
            k=k,
            surveys=list(surveys) or None,
            origins=parse_origins(origins),
            mag_window=mag_window * u.mag if mag_window > 0 else None,
            mag_band=mag_band,
            exclude_radius=xr if xr.value > 0 else None,
            max_queries=max_queries,
            progress=sys.stderr.isatty(),
        )
    if per_query:
        write_table(res.queries, fmt, sys.stdout)
        return
    summary = res.summary()
    if fmt == "table":
        click.echo(
            f"encoder {res.encoder}: {res.filters['n_queries']} lens queries, top {k} neighbours each; "
            f"lens fraction {res.lens_fraction:.4f} against a base rate of {res.base_rate:.4f} "
            f"({res.n_lenses} lenses in {res.n_sources} sources): enrichment {res.enrichment:.1f}x "
            f"(a perfect encoder with these filters: {res.ceiling:.1f}x)"
        )
        return
    write_rows(list(summary), [list(summary.values())], fmt, sys.stdout)
