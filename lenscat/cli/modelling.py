"""Command line: ``lenscat model`` (train, run, show, evaluate) -- the lens modelling network (issue 33)."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from lenscat.cli.common import FORMAT_OPTION, _err, needs_schema
from lenscat.errors import LenscatError


@click.group("model")
def model() -> None:
    """Lens models of candidates: a CNN predicting SIE + shear + source position with calibrated errors."""


@model.command("train")
@click.option("--name", required=True, help="Model name; a new checkpoint becomes its next version.")
@click.option("--survey", default=None, help="Also train on lenses injected into this survey's own galaxies.")
@click.option("--n", "n", type=click.IntRange(min=100), default=4000, show_default=True, help="Simulated lenses.")
@click.option("--n-injections", type=click.IntRange(min=1), default=None, help="Injected lenses (default n / 4).")
@click.option("--epochs", type=click.IntRange(min=1), default=20, show_default=True)
@click.option("--members", type=click.IntRange(min=1), default=1, show_default=True, help="Deep-ensemble size.")
@click.option("--width", type=click.IntRange(min=4), default=16, show_default=True, help="Channels of the first block.")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True, help="Simulation processes.")
@click.option(
    "--arc-mag-r",
    type=(float, float),
    default=None,
    help="MIN MAX total lensed r magnitude of the simulated lenses (default 19.0 23.0 with the lens "
    "probability, the simulator's 19.0 21.5 with --nonlens-ratio 0).",
)
@click.option(
    "--nonlens-ratio",
    type=click.FloatRange(0.0, 10.0),
    default=1.0,
    show_default=True,
    help="Non-lens impostors per lens, for the lens probability (0: lenses only, no probability).",
)
@click.option(
    "--max-lens-loss",
    type=click.FloatRange(0.0, 0.5, max_open=True),
    default=0.01,
    show_default=True,
    help="Fraction of held-out simulated lenses the lens-probability threshold may flag.",
)
@click.option(
    "--lens-light-dm",
    default="none",
    show_default=True,
    help="LO,HI: make each simulated lens galaxy's (and impostor's) own light fainter by a magnitude drawn "
    "uniformly from LO..HI (negative: brighter), so θ_E cannot be read from its brightness; 'none': as simulated.",
)
@click.option("--device", default=None, help="cpu or cuda (default LENSCAT_DEVICE, else CPU).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the training report as JSON.")
@needs_schema
def model_train_cmd(
    name: str,
    survey: str | None,
    n: int,
    n_injections: int | None,
    epochs: int,
    members: int,
    width: int,
    workers: int,
    arc_mag_r: tuple[float, float] | None,
    nonlens_ratio: float,
    max_lens_loss: float,
    lens_light_dm: str,
    device: str | None,
    seed: int,
    as_json: bool,
) -> None:
    """Simulate lenses, train and calibrate the network, register the version."""
    from lenscat.db.session import session_scope
    from lenscat.modelling.training import LensTrainOptions, train_lens_model

    opts = LensTrainOptions(
        n=n,
        epochs=epochs,
        members=members,
        width=width,
        seed=seed,
        survey=survey,
        n_injections=n_injections,
        workers=workers,
        device=device,
        arc_mag_r=arc_mag_r,
        nonlens_ratio=nonlens_ratio,
        max_lens_loss=max_lens_loss,
        lens_light_dm=_magnitude_range(lens_light_dm),
    )
    with session_scope() as s:
        res = train_lens_model(name, opts, session=s, progress=not as_json)
    if as_json:
        click.echo(json.dumps(res.report, default=str))
        return
    cal = ", ".join(f"{k} x{v:g}" for k, v in res.report["calibration"].items())
    state = "registered" if res.created else "already registered (same checkpoint)"
    click.echo(f"lensmodel {res.model.label} {state}; sizes {res.report['sizes']}; sigma calibration: {cal}")
    prob = res.report.get("lens_probability")
    if prob:
        m = prob["calibration_set"]
        click.echo(
            f"lens probability: threshold {prob['threshold']:.3g} keeps {m['lenses_kept']:.1%} of held-out lenses, "
            f"flags {m['nonlenses_flagged']:.1%} of held-out impostors (AUC {m['auc']:.3f})"
        )


def _magnitude_range(text: str) -> tuple[float, float] | None:
    """``'LO,HI'`` -> (LO, HI); ``'none'`` -> None (the range itself is checked by the training options)."""
    if text.strip().lower() == "none":
        return None
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise click.BadParameter(f"{text!r} is not LO,HI magnitudes or 'none'", param_hint="--lens-light-dm") from None
    return lo, hi


@model.command("run")
@click.option("--model", "model_ref", default=None, help="Lensmodel (NAME or NAME@VERSION; default the latest).")
@click.option("--classifier", default=None, help="Model the top candidates of this classifier version...")
@click.option("--top", type=click.IntRange(min=1), default=None, help="...this many of them.")
@click.option("--grades", default=None, help="Or model the sources with these consensus grades, e.g. A,B.")
@click.option("--chunk-size", type=click.IntRange(min=1), default=500, show_default=True, help="Sources per task.")
@click.option("--local-workers", type=click.IntRange(min=0), default=None, help="Worker processes to start here.")
@click.option("--here", is_flag=True, help="Run the chunks in this process (no broker or worker).")
@click.option("--no-wait", is_flag=True, help="Submit and return; watch with `lenscat jobs show ID`.")
@click.option(
    "--refine/--no-refine",
    default=False,
    show_default=True,
    help="Refine the network's values by fitting an SIE + shear forward model to each cutout (slower).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@needs_schema
def model_run_cmd(
    model_ref: str | None,
    classifier: str | None,
    top: int | None,
    grades: str | None,
    chunk_size: int,
    local_workers: int | None,
    here: bool,
    no_wait: bool,
    refine: bool,
    as_json: bool,
) -> None:
    """Model candidates (a classifier's top N, or graded sources) with Celery workers; results in lens_models."""
    from lenscat.db.session import session_scope
    from lenscat.grading.grades import parse_consensus_grades
    from lenscat.jobs.service import pending_chunks, run_here
    from lenscat.jobs.submit import submit_and_wait
    from lenscat.modelling.running import model_chunk, plan_lensmodel_job, select_sources
    from lenscat.modelling.service import analyze_lens_models, latest_lensmodel
    from lenscat.tasks.names import LENSMODEL_CHUNK

    grade_list = list(parse_consensus_grades(grades)) if grades else []
    with session_scope() as s:
        ids = select_sources(session=s, classifier=classifier, top=top, grades=grade_list)
        mv = latest_lensmodel(session=s) if model_ref is None else model_ref
        selection: dict[str, object] = {"classifier": classifier, "top": top} if classifier else {"grades": grade_list}
        selection["refine"] = refine
        job = plan_lensmodel_job(mv, ids, chunk_size=chunk_size, selection=selection, session=s)
        chunks = pending_chunks(job.job_id, session=s)
    if not as_json:
        _err(f"job {job.job_id}: {job.n_items} sources to model with {job.model.label} in {job.n_chunks} chunks")
    out: dict[str, Any] = {"job_id": job.job_id, "lensmodel": job.model.label, "queued": job.n_items}
    if here:
        with session_scope() as s:
            out["done"] = run_here(job.job_id, model_chunk, session=s, progress=not as_json, desc="model")
        from lenscat.jobs.service import job_state

        with session_scope() as s:
            state = job_state(job.job_id, session=s)
        out.update(status=state.status, failed_sources=state.n_items_failed)
    else:
        st = submit_and_wait(
            LENSMODEL_CHUNK,
            job.job_id,
            chunks,
            wait=not no_wait,
            local_workers=local_workers,
            unit="src",
            desc=f"model {job.model.label}",
            progress=not as_json,
        )
        if st is not None:
            out.update(status=st.status, done=st.n_done, failed_sources=st.n_items_failed)
            if st.status == "failed":
                raise LenscatError(f"job {job.job_id} failed: {st.message}")
    if out.get("done"):
        with session_scope() as s:
            analyze_lens_models(session=s)
    if out.get("failed_sources") and not as_json:
        _err(
            f"lenscat: {out['failed_sources']} sources could not be modelled; reasons: `lenscat jobs show {job.job_id}`"
        )
    click.echo(
        json.dumps(out)
        if as_json
        else f"{job.model.label}: {out.get('done', 0)} of {job.n_items} sources modelled (job {job.job_id})"
    )


@model.command("show")
@click.argument("source_id", type=int, required=False)
@click.option("--top", type=click.IntRange(min=1), default=None, help="The N largest Einstein radii instead.")
@click.option("--model", "model_ref", default=None, help="Lensmodel (NAME or NAME@VERSION; default the latest).")
@FORMAT_OPTION
@needs_schema
def model_show_cmd(source_id: int | None, top: int | None, model_ref: str | None, fmt: str) -> None:
    """Stored lens models (units in the header): one source, or the top N of a version by theta_E."""
    from lenscat.db.session import session_scope
    from lenscat.io.output import write_rows
    from lenscat.modelling.service import (
        SHOW_COLUMNS,
        SHOW_UNITS,
        latest_lensmodel,
        lens_model_for,
        lens_models_of,
        show_rows,
    )
    from lenscat.registry.versions import get_model

    if (source_id is None) == (top is None):
        raise click.UsageError("give a SOURCE_ID or --top N")
    with session_scope() as s:
        mv = get_model("lensmodel", model_ref, session=s) if model_ref else None
        if source_id is not None:
            one = lens_model_for(source_id, session=s, model_id=None if mv is None else mv.model_id)
            if one is None:
                raise LenscatError(f"source {source_id} has no lens model")
            models = [one]
        else:
            mv = mv or latest_lensmodel(session=s)
            models = lens_models_of(mv.model_id, top=top, session=s)
    write_rows(list(SHOW_COLUMNS), show_rows(models), fmt, sys.stdout, units=SHOW_UNITS)


@model.command("evaluate")
@click.option("--model", "model_ref", default=None, help="Lensmodel (NAME or NAME@VERSION; default the latest).")
@click.option("--simulator", type=click.Choice(["independent", "default"]), default="independent", show_default=True)
@click.option("--n", "n", type=click.IntRange(min=1), default=500, show_default=True)
@click.option("--seed", type=int, default=1, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the metrics as JSON.")
@needs_schema
def model_evaluate_cmd(model_ref: str | None, simulator: str, n: int, seed: int, as_json: bool) -> None:
    """Bias, scatter and 68 / 95 % coverage per parameter on fresh simulated lenses."""
    from lenscat.db.session import session_scope
    from lenscat.io.output import write_rows
    from lenscat.modelling.evaluation import evaluate_modeller
    from lenscat.modelling.service import latest_lensmodel
    from lenscat.registry.loaders import load_model
    from lenscat.registry.versions import get_model

    with session_scope() as s:
        mv = get_model("lensmodel", model_ref, session=s) if model_ref else latest_lensmodel(session=s)
    res = evaluate_modeller(load_model(mv), simulator=simulator, n=n, seed=seed)
    res["lensmodel"] = mv.label
    if as_json:
        click.echo(json.dumps(res))
        return
    cols = ["subset", "param", "n", "bias", "scatter", "nmad", "cover68", "cover95", "median_sigma"]
    rows = [
        [label, p, m["n"], *(round(m[k], 4) for k in cols[3:])]
        for label, key in (("all", "all"), (f"theta_E>={res['theta_e_min']:g}", "above_theta_e_min"))
        for p, m in res[key].items()
    ]
    _err(f"{mv.label} on {n} lenses of the {simulator} simulator (seed {seed})")
    write_rows(cols, rows, "table", sys.stdout)
