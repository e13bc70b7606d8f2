"""Command line for ensembles of classifiers and the anomaly score (``lenscat classifier ensemble|anomaly``)."""

from __future__ import annotations

import json

import click

from lenscat.cli.common import _err, needs_schema, parse_origins


@click.command("ensemble")
@click.option("--name", required=True, help="Ensemble name; a new combination becomes its next version.")
@click.option(
    "--member",
    "members",
    multiple=True,
    required=True,
    help="Member classifier (NAME or NAME@VERSION); repeat for each (at least two).",
)
@click.option(
    "--method",
    type=click.Choice(["rank", "stack"]),
    default="rank",
    show_default=True,
    help="rank: average of each member's rank percentile; stack: logistic regression on the members' "
    "logits, fitted on half of the labelled sources no member trained or validated on "
    "(needs 10+ such lenses).",
)
@click.option(
    "--survey",
    "surveys",
    multiple=True,
    help="Sources whose member scores define the combination (repeatable; default all real surveys).",
)
@click.option("--labels", "origins", multiple=True, help="Label origins counted as truth for stacking (default all).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the stacking half-split.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@needs_schema
def ensemble_cmd(
    name: str,
    members: tuple[str, ...],
    method: str,
    surveys: tuple[str, ...],
    origins: tuple[str, ...],
    seed: int,
    as_json: bool,
) -> None:
    """Combine classifier versions (e.g. probe, CNN, fine-tuned encoder) into one classifier version.

    The members must have scored their sources first (`lenscat classifier score`). Score the
    ensemble with `lenscat classifier score --name NAME`; `lenscat classifier evaluate --name NAME`
    shows it beside each member on the same sources.
    """
    from lenscat.classifiers.ensemble import train_ensemble
    from lenscat.db.session import session_scope

    with session_scope() as s:  # a member that has not scored everything: the error names its command
        res = train_ensemble(
            name,
            list(members),
            method=method,
            surveys=list(surveys) or None,
            origins=parse_origins(origins),
            seed=seed,
            session=s,
        )
    r = res.report
    if as_json:
        click.echo(json.dumps(r, default=str))
        return
    state = "registered" if res.created else "already registered (same members and combination)"
    extra = (
        f"; stacked on {r['fit_lenses']} lenses and {r['fit_nonlenses']} non-lenses no member saw "
        f"(weights {', '.join(f'{k} {v:.3g}' for k, v in r['coef'].items())})"
        if method == "stack"
        else ""
    )
    click.echo(
        f"classifier {res.model.label} {state}: {method} ensemble of {', '.join(r['members'])} over "
        f"{r['n_reference']:,} sources scored by every member{extra}"
    )
    _err(f"next: lenscat classifier score --name {res.model.label}")


@click.command("anomaly")
@click.option("--name", required=True, help="Classifier name the anomaly score is registered under.")
@click.option(
    "--encoder", "encoder_name", required=True, help="Encoder (NAME or NAME@VERSION) whose embeddings are searched."
)
@click.option(
    "--k",
    "k",
    type=click.IntRange(min=1),
    default=20,
    show_default=True,
    help="Nearest neighbours whose mean cosine distance is the score.",
)
@click.option(
    "--survey",
    "surveys",
    multiple=True,
    help="Reference set and sources scored: this survey's embedded sources (repeatable; default all real surveys).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@needs_schema
def anomaly_cmd(name: str, encoder_name: str, k: int, surveys: tuple[str, ...], as_json: bool) -> None:
    """An anomaly score: isolation of each source in an encoder's embedding space (mean distance to its
    k nearest neighbours), stored and queried like a classifier score.

    Score it with `lenscat classifier score --name NAME`, then `lenscat top --classifier NAME` lists
    the most unusual sources (a sample for the grading grid).
    """
    from lenscat.db.session import session_scope
    from lenscat.embeddings.anomaly import fit_anomaly

    with session_scope() as s:
        res = fit_anomaly(name, encoder_name, k=k, surveys=list(surveys) or None, session=s)
    r = res.report
    if as_json:
        click.echo(json.dumps(r, default=str))
        return
    state = "registered" if res.created else "already registered (same encoder, k and reference set)"
    click.echo(
        f"classifier {res.model.label} {state}: anomaly score, mean cosine distance to the {k} nearest of "
        f"{r['n_reference']:,} {r['encoder']} embeddings"
    )
    _err(f"next: lenscat classifier score --name {res.model.label}")
