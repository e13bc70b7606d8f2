"""Command line: ``lenscat classifier`` (train, score, list)."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from lenscat.cli.common import FORMAT_OPTION, RESTART_OPTION, _err, needs_schema, parse_origins
from lenscat.errors import LenscatError
from lenscat.io.output import write_rows


@click.group("classifier")
def classifier() -> None:
    """Lens classifiers (versioned): train, combine (ensemble), anomaly scores, score, evaluate, list."""


def _train_arch(
    arch: str | None, encoder_name: str | None, hard_negatives: tuple[str, ...] = (), **_: Any
) -> dict[str, Any]:
    """The architecture ``classifier train`` uses (checked before the database starts)."""
    if arch is None:
        arch = "linear" if encoder_name else "cnn"
    if hard_negatives and arch not in ("cnn", "radial"):
        raise LenscatError(f"--hard-negatives applies to --arch cnn and radial, not {arch}")
    return {"arch": arch}


@classifier.command("train")
@click.option("--name", required=True, help="Classifier name; a new checkpoint becomes its next version.")
@click.option(
    "--encoder",
    "encoder_name",
    default=None,
    help="Encoder (NAME or NAME@VERSION) whose embeddings the linear probe reads / that is fine-tuned.",
)
@click.option(
    "--arch",
    type=click.Choice(["cnn", "linear", "finetune", "radial"]),
    default=None,
    help="cnn (the default without --encoder): the few-label CNN recipe from scratch on the cutouts, every "
    "non-lens used, lenses oversampled with augmentations, early stopping on the validation split, "
    "8-view scores: the recipe measured best with few labels (150 labelled lenses + 1,500 injections, "
    "tested on a survey from an independent simulator: AUC 0.987, TPR10 0.73, against 0.863 for the "
    "radial baseline, 0.881 for a linear probe, 0.945 for their rank ensemble and 0.751 for the "
    "previous CNN settings; see docs/benchmarks.md); linear (the default with --encoder): "
    "logistic regression on the encoder's "
    "embeddings; finetune: encoder + head on images (GPU); radial: the 36-number radial "
    "colour-profile baseline (12 annuli x 3 bands) + logistic regression.",
)
@click.option(
    "--hard-negatives",
    "hard_negatives",
    multiple=True,
    metavar="CLASSIFIER|human",
    help="Oversample hard negatives (repeatable; cnn and radial): the top --hard-negative-top training "
    "non-lenses by a classifier's scores, or 'human': every training non-lens a grader called not a "
    "lens. Each is drawn --hard-negative-weight times per epoch.",
)
@click.option(
    "--hard-negative-top",
    type=click.IntRange(min=1),
    default=200,
    show_default=True,
    help="Hard negatives taken from each classifier named by --hard-negatives.",
)
@click.option(
    "--hard-negative-weight",
    type=click.IntRange(min=1),
    default=3,
    show_default=True,
    help="Times each hard negative is drawn per epoch (every other negative: once).",
)
@click.option(
    "--recipe",
    type=click.Choice(["cpu", "gpu", "legacy"]),
    default=None,
    help="CNN recipe: cpu (64-px crop, batches of 64; 6,000 cutouts in ~6 minutes on 2 cores) or gpu "
    "(wider network, 80-px crop, batches of 512, autocast; for 10^5-10^6 cutouts; default on CUDA); "
    "legacy: the settings before the recipe (ratio 100, lenses 5 %, 96-px crop, no early stopping), "
    "for comparisons.",
)
@click.option("--survey", "surveys", multiple=True, help="Train on this survey's sources (repeatable; default all).")
@click.option(
    "--labels",
    "origins",
    multiple=True,
    help="Label origins to use: literature, simulation, import, human, injection (comma-separated; default all).",
)
@click.option(
    "--ratio",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Non-lenses per lens in training (default: every non-lens for cnn and radial; 4000 linear, as "
    "Stein et al.; 100 finetune).",
)
@click.option(
    "--val-ratio",
    type=click.FloatRange(min=0, min_open=True),
    default=10000,
    show_default=True,
    help="Non-lenses per lens in the validation split (a realistic survey imbalance; cnn and radial: at "
    "most --val-fraction of the non-lenses).",
)
@click.option(
    "--val-fraction",
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    default=0.2,
    show_default=True,
    help="Fraction of the lenses held out for validation (epoch choice).",
)
@click.option(
    "--test-fraction",
    type=click.FloatRange(0, 1, max_open=True),
    default=0.2,
    show_default=True,
    help="Fraction of the lenses used neither to train nor to validate (left for `evaluate`; 0 when "
    "evaluating on another survey).",
)
@click.option(
    "--epochs",
    type=click.IntRange(min=1),
    default=None,
    help="L-BFGS epochs (default 30) or image epochs (default: cnn at most 30, finetune 3).",
)
@click.option(
    "--patience",
    type=click.IntRange(min=1),
    default=None,
    help="cnn: stop after this many epochs without a better validation average precision (default 6).",
)
@click.option("--l2", type=click.FloatRange(min=0), default=None, help="L2 penalty (default 1e-4 linear, 1e-3 radial).")
@click.option("--loss", type=click.Choice(["bce", "focal"]), default="bce", show_default=True)
@click.option("--focal-gamma", type=click.FloatRange(min=0), default=2.0, show_default=True)
@click.option("--class-weight", type=click.Choice(["none", "balanced"]), default="none", show_default=True)
@click.option(
    "--top-n",
    type=click.IntRange(min=1),
    default=None,
    help="Validation top N that picks the epoch (default: the number of validation lenses).",
)
@click.option("--batch-size", type=click.IntRange(min=2), default=None, help="Images per batch (default 64).")
@click.option(
    "--lr", type=float, default=None, help="Learning rate of the head (images; default cnn 2e-3, finetune 1e-3)."
)
@click.option(
    "--lens-fraction",
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    default=None,
    help="Lenses oversampled to this share of each image batch (default cnn 0.25; finetune 0.05, as Stein et al.).",
)
@click.option(
    "--crop",
    type=click.IntRange(min=16),
    default=None,
    help="Centre crop the image network sees [px] (default: cnn 64, else the encoder's, else 96).",
)
@click.option(
    "--max-steps", type=click.IntRange(min=1), default=None, help="Stop image training after this many steps."
)
@click.option("--device", default=None, help="cpu, cuda (image architectures; default LENSCAT_DEVICE, else CUDA).")
@click.option("--seed", type=int, default=0, show_default=True)
@RESTART_OPTION
@click.option("--json", "as_json", is_flag=True, help="Print the training report as JSON.")
@needs_schema(before=_train_arch)
def classifier_train_cmd(
    name: str,
    encoder_name: str | None,
    arch: str | None,
    recipe: str | None,
    surveys: tuple[str, ...],
    origins: tuple[str, ...],
    ratio: float | None,
    val_ratio: float,
    val_fraction: float,
    test_fraction: float,
    epochs: int | None,
    patience: int | None,
    l2: float | None,
    loss: str,
    focal_gamma: float,
    class_weight: str,
    top_n: int | None,
    batch_size: int | None,
    lr: float | None,
    lens_fraction: float | None,
    crop: int | None,
    max_steps: int | None,
    device: str | None,
    seed: int,
    restart: bool,
    as_json: bool,
    hard_negatives: tuple[str, ...] = (),
    hard_negative_top: int = 200,
    hard_negative_weight: int = 3,
) -> None:
    """Train a lens classifier and register it as a new version (same inputs: no new version).

    Without --arch and --encoder: the few-label CNN recipe (see --arch). The image architectures
    (finetune, cnn) save their training state every epoch, every 10 minutes and on Ctrl-C; the
    same command resumes an interrupted run.
    """
    from lenscat.classifiers.train_image import train_image_classifier_version
    from lenscat.classifiers.train_linear import train_linear_classifier
    from lenscat.classifiers.train_radial import train_radial_classifier
    from lenscat.db.session import session_scope

    assert arch is not None  # resolved by _train_arch
    hard: dict[str, Any] = {
        "hard_negatives": list(hard_negatives) or None,
        "hard_negative_top": hard_negative_top,
        "hard_negative_weight": hard_negative_weight,
    }
    with session_scope() as s:
        if arch == "linear":
            if not encoder_name:
                raise LenscatError("--arch linear needs --encoder (the embeddings it is trained on)")
            res = train_linear_classifier(
                name,
                encoder_name,
                session=s,
                surveys=list(surveys) or None,
                ratio=ratio or 4000,
                val_ratio=val_ratio,
                val_fraction=val_fraction,
                test_fraction=test_fraction,
                origins=parse_origins(origins),
                epochs=epochs or 30,
                l2=1e-4 if l2 is None else l2,
                loss=loss,
                focal_gamma=focal_gamma,
                class_weight=class_weight,
                top_n=top_n,
                seed=seed,
                progress=not as_json,
            )
        elif arch == "radial":
            res = train_radial_classifier(
                name,
                session=s,
                surveys=list(surveys) or None,
                ratio=ratio,
                val_ratio=val_ratio,
                val_fraction=val_fraction,
                test_fraction=test_fraction,
                origins=parse_origins(origins),
                epochs=epochs or 30,
                l2=1e-3 if l2 is None else l2,
                seed=seed,
                progress=not as_json,
                **hard,
            )
        else:
            res = train_image_classifier_version(
                name,
                arch=arch,
                session=s,
                encoder=encoder_name,
                surveys=list(surveys) or None,
                ratio=ratio,
                val_ratio=val_ratio,
                val_fraction=val_fraction,
                test_fraction=test_fraction,
                origins=parse_origins(origins),
                epochs=epochs,
                batch_size=batch_size,
                lr=lr,
                lens_fraction=lens_fraction,
                crop=crop,
                max_steps=max_steps,
                device=device,
                seed=seed,
                progress=not as_json,
                resume=not restart,
                recipe=recipe,
                patience=patience,
                **hard,
            )
    for note in res.report.get("notes", []):
        _err(f"lenscat: note: {note}")
    if as_json:
        click.echo(json.dumps({k: v for k, v in res.report.items() if k != "history"}, default=str))
        return
    r = res.report
    state = "registered" if res.created else "already registered (same checkpoint)"
    kept = ""
    if "epoch_kept" in r:
        kept = f"; kept epoch {r['epoch_kept']}, {int(r.get('val_top_n_hits', 0))} validation lenses in the top N"
    elif "best_epoch" in r:
        kept = (
            f"; kept epoch {r['best_epoch']} of {r.get('epochs_completed')} ({r.get('stop_reason')}), "
            f"validation AUC {r.get('val_auc')}, average precision {r.get('val_average_precision')}"
        )
    click.echo(
        f"classifier {res.model.label} {state}: {r['train_lenses']} lenses : {r['train_nonlenses']} non-lenses "
        f"(1:{r['train_ratio']:g}); validation {r['val_lenses']} : {r['val_nonlenses']} (1:{r['val_ratio']:g})" + kept
    )


@classifier.command("score")
@click.option("--name", required=True, help="Classifier (NAME or NAME@VERSION).")
@click.option("--survey", "surveys", multiple=True, help="Only this survey (repeatable).")
@click.option(
    "--chunk-size", type=click.IntRange(min=1), default=20_000, show_default=True, help="Sources per Celery task."
)
@click.option(
    "--local-workers",
    type=click.IntRange(min=0),
    default=None,
    help="Start this many worker processes here (default: 1 when none answers on the embedded broker).",
)
@click.option("--no-wait", is_flag=True, help="Submit and return; watch with `lenscat jobs show ID`.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@needs_schema
def classifier_score_cmd(
    name: str, surveys: tuple[str, ...], chunk_size: int, local_workers: int | None, no_wait: bool, as_json: bool
) -> None:
    """Score every source the classifier version has not scored yet, with Celery workers."""
    from lenscat.classifiers.scoring import plan_score_job
    from lenscat.db.session import session_scope
    from lenscat.jobs.service import pending_chunks
    from lenscat.jobs.submit import submit_and_wait
    from lenscat.tasks.names import SCORE_CHUNK

    with session_scope() as s:  # an ensemble whose member has not scored everything: the error names its command
        job = plan_score_job(name, surveys=list(surveys) or None, chunk_size=chunk_size, session=s)
        chunks = pending_chunks(job.job_id, session=s)
    if not as_json:
        _err(f"job {job.job_id}: {job.n_items} sources to score with {job.model.label} in {job.n_chunks} chunks")
    state = submit_and_wait(
        SCORE_CHUNK,
        job.job_id,
        chunks,
        wait=not no_wait,
        local_workers=local_workers,
        unit="src",
        desc=f"score {job.model.label}",
        progress=not as_json,
    )
    out: dict[str, Any] = {
        "job_id": job.job_id,
        "classifier": job.model.label,
        "queued": job.n_items,
        "chunks": job.n_chunks,
    }
    if state is not None:
        out.update(
            status=state.status,
            done=state.n_done,
            failed_chunks=state.n_chunks_failed,
            failed_sources=state.n_items_failed,
        )
        if state.n_items_failed and not as_json:
            _err(
                f"lenscat: {state.n_items_failed} sources could not be scored and were skipped; "
                f"reasons: `lenscat jobs show {job.job_id}`"
            )
        if state.status == "failed":
            raise LenscatError(f"job {job.job_id} failed: {state.message}")
        if job.n_items:
            _analyze_scores()
    click.echo(
        json.dumps(out)
        if as_json
        else f"{job.model.label}: {out.get('done', 0)} of {job.n_items} sources scored (job {job.job_id})"
    )


def _analyze_scores() -> None:
    """Fresh planner statistics after a bulk write, so top-N queries keep using the score index."""
    from lenscat.classifiers.service import analyze_scores
    from lenscat.db.session import session_scope

    with session_scope() as s:
        analyze_scores(session=s)


@classifier.command("list")
@FORMAT_OPTION
@needs_schema
def classifier_list_cmd(fmt: str) -> None:
    """Classifier versions with their encoder, training-set hash and number of scores (an ensemble: its members)."""
    from lenscat.classifiers.versions import CLASSIFIER_LIST_COLUMNS, list_classifiers
    from lenscat.db.session import session_scope

    with session_scope() as s:
        rows = list_classifiers(session=s)
    write_rows(list(CLASSIFIER_LIST_COLUMNS), rows, fmt, sys.stdout)
