"""Command line: ``lenscat classifier evaluate`` and ``lenscat top`` (rankings of sources)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from lenscat.cli.common import FORMAT_OPTION, _err, needs_schema, parse_origins
from lenscat.errors import LenscatError
from lenscat.io.output import write_table


def _parse_top_n(top_n: str | None, **_: Any) -> dict[str, Any]:
    """``--top-n`` as a list of integers (None: the defaults), checked before the database starts."""
    ns = None
    if top_n:
        try:
            ns = [int(x) for x in top_n.split(",") if x.strip()]
        except ValueError as exc:
            raise LenscatError(f"--top-n takes comma-separated integers, got {top_n!r}") from exc
    return {"top_n": ns}


@click.command("evaluate")
@click.option("--name", required=True, help="Classifier (NAME or NAME@VERSION).")
@click.option(
    "--baseline",
    "baselines",
    multiple=True,
    help="Classifier(s) evaluated on the same sources beside it, e.g. the supervised CNN "
    "(default for an ensemble: its members).",
)
@click.option("--survey", "surveys", multiple=True, help="Only this survey (repeatable).")
@click.option("--labels", "origins", multiple=True, help="Label origins counted as truth (default all).")
@click.option(
    "--top-n",
    "top_n",
    default=None,
    help="Comma-separated N for precision in the top N (default: the number of lenses, 1%, 100, 1000).",
)
@click.option(
    "--plots",
    "plots",
    type=click.Path(path_type=Path),
    default=None,
    help="Directory for PNG plots (precision/recall vs N, score distributions, ROC).",
)
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
@needs_schema(before=_parse_top_n)
def classifier_evaluate_cmd(
    name: str,
    baselines: tuple[str, ...],
    surveys: tuple[str, ...],
    origins: tuple[str, ...],
    top_n: list[int] | None,
    plots: Path | None,
    fmt: str,
) -> None:
    """Precision in the top N, recall vs images inspected, AUC, TPR0 and TPR10 on sources not trained on.

    An ensemble is evaluated beside each of its members on the same sources (unless --baseline is given).
    """
    from lenscat.classifiers.evaluation_plot import format_metrics
    from lenscat.classifiers.ranking import evaluate_classifier
    from lenscat.db.session import session_scope

    with session_scope() as s:
        if not baselines:  # an ensemble is shown beside each of its members
            from lenscat.classifiers.ensemble import member_labels
            from lenscat.registry.versions import get_model

            model = get_model("classifier", name, session=s)
            baselines = tuple(member_labels(model)) if model.architecture == "ensemble" else ()
        res = evaluate_classifier(
            name,
            baselines=list(baselines),
            surveys=list(surveys) or None,
            origins=parse_origins(origins),
            top_n=top_n,
            plots=plots,
            session=s,
        )
    if fmt == "json":
        click.echo(json.dumps(res, default=str))
        return
    click.echo(
        f"evaluated on {res['n_eval']} sources ({res['n_lenses']} lenses; "
        f"{res['excluded_training_sources']} training/validation sources left out)"
    )
    for label, m in res["models"].items():
        click.echo(format_metrics(label, m))
    for p in res.get("plots", []):
        click.echo(f"wrote {p}")


@click.command("top")
@click.option("--classifier", "classifier_name", required=True, help="Classifier (NAME or NAME@VERSION).")
@click.option("-n", "n", type=click.IntRange(min=1), default=100, show_default=True, help="Rows wanted.")
@click.option("--survey", "surveys", multiple=True, help="Only this survey (repeatable).")
@click.option("--min-score", type=click.FloatRange(0, 1), default=None)
@click.option("--exclude-known", is_flag=True, help="Drop sources matched to literature lenses.")
@click.option("--exclude-labelled", is_flag=True, help="Drop sources that already carry a label.")
@FORMAT_OPTION
@needs_schema
def top_cmd(
    classifier_name: str,
    n: int,
    surveys: tuple[str, ...],
    min_score: float | None,
    exclude_known: bool,
    exclude_labelled: bool,
    fmt: str,
) -> None:
    """The N highest-scoring sources of a classifier: the sample for human inspection."""
    from lenscat.classifiers.ranking import top_candidates
    from lenscat.db.session import session_scope

    with session_scope() as s:
        table = top_candidates(
            classifier_name,
            n,
            surveys=list(surveys) or None,
            min_score=min_score,
            exclude_known=exclude_known,
            exclude_labelled=exclude_labelled,
            session=s,
        )
    if fmt == "table":
        _err(f"classifier {table.meta['classifier']}: top {len(table)} of n={n}")
    write_table(table, fmt, sys.stdout)
