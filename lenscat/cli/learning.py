"""Command line for active-learning campaigns: start, propose the next batch, status, current batch."""

from __future__ import annotations

import sys
from typing import Any

import click

from lenscat.cli.common import FORMAT_OPTION, _err, needs_schema
from lenscat.errors import LenscatError
from lenscat.io.output import write_rows, write_table


@click.group("learn")
def learn() -> None:
    """Active learning: the linear probe retrained on human grades after every graded batch."""


def _describe(loop: Any) -> str:
    if loop.model is None:
        how = "a random batch (no lens labels yet)"
    elif loop.detail.get("start_classifier"):
        how = f"the top of {loop.model} (no lens labels yet)"
    else:
        sec = loop.detail.get("seconds", {})
        how = (
            f"ranked by {loop.model} trained on {loop.n_positive} lenses : {loop.n_negative} non-lenses "
            f"in {sec.get('train', 0):.2f} s ({sec.get('total', 0):.2f} s in all)"
        )
    return f"campaign {loop.campaign}: loop {loop.loop_no}, {len(loop.batch)} sources to grade, {how}"


@learn.command("start")
@click.argument("name")
@click.option("--encoder", required=True, help="Encoder (NAME = its latest version, or NAME@VERSION).")
@click.option(
    "--batch",
    "batch_size",
    type=click.IntRange(min=1),
    default=100,
    show_default=True,
    help="Sources proposed per loop.",
)
@click.option(
    "--strategy",
    type=click.Choice(["top", "uncertainty"]),
    default="top",
    show_default=True,
    help="top: highest scores among ungraded sources; uncertainty: nearest the decision boundary "
    "(0.5 once corrected for the training imbalance).",
)
@click.option(
    "--seed-labels",
    default=None,
    metavar="ORIGINS",
    help="Also train on the lens labels of these origins, comma-separated: literature, import, simulation.",
)
@click.option("--seed-negatives", is_flag=True, help="Also train on those origins' non-lens labels.")
@click.option("--ratio", type=float, default=None, help="Random survey negatives per lens label (default 1000).")
@click.option("--survey", "surveys", multiple=True, help="Only sources of this survey (repeatable).")
@click.option(
    "--start-classifier",
    default=None,
    metavar="CLASSIFIER",
    help="With no lens label yet, propose the top of this classifier's scores instead of a random batch "
    "(e.g. an anomaly score: `lenscat classifier anomaly`).",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed of the proposals.")
@needs_schema
def learn_start_cmd(
    name: str,
    encoder: str,
    batch_size: int,
    strategy: str,
    seed_labels: str | None,
    seed_negatives: bool,
    ratio: float | None,
    surveys: tuple[str, ...],
    start_classifier: str | None,
    seed: int,
) -> None:
    """Create campaign NAME on an encoder's embeddings and propose its first batch.

    Re-running with the same options shows the current loop; different options are refused.
    """
    from lenscat.db.session import session_scope
    from lenscat.learning.active import propose_next
    from lenscat.learning.campaigns import create_campaign

    settings: dict[str, Any] = {
        "seed_origins": [o.strip() for o in (seed_labels or "").split(",") if o.strip()],
        "seed_negatives": seed_negatives,
        "surveys": list(surveys),
    }
    if ratio is not None:
        settings["ratio"] = ratio
    if start_classifier:
        settings["start_classifier"] = start_classifier
    with session_scope() as s:
        camp = create_campaign(name, encoder, batch_size=batch_size, strategy=strategy, settings=settings, session=s)
        loop = propose_next(camp, seed=seed, session=s)
    click.echo(_describe(loop))
    click.echo(f"see it with: lenscat learn batch {name}")


@learn.command("next")
@click.argument("name")
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed of the proposal.")
@needs_schema
def learn_next_cmd(name: str, seed: int) -> None:
    """Retrain and propose the next batch of NAME, once every source of the current one is graded."""
    from lenscat.db.session import session_scope
    from lenscat.learning.active import propose_next
    from lenscat.learning.campaigns import current_loop

    with session_scope() as s:
        cur = current_loop(name, session=s)
        if cur is not None and not cur.completed:
            raise LenscatError(
                f"loop {cur.loop_no} of campaign {name!r} is not complete: {cur.n_inspected} of "
                f"{len(cur.batch)} sources inspected; grade the rest first "
                f"(lenscat learn batch {name})"
            )
        loop = propose_next(name, seed=seed, session=s)
    if cur is not None:
        _err(f"loop {cur.loop_no}: {cur.n_found} lenses found among {cur.n_graded} graded sources")
    click.echo(_describe(loop))


@learn.command("status")
@click.argument("name")
@FORMAT_OPTION
@needs_schema
def learn_status_cmd(name: str, fmt: str) -> None:
    """One row per loop of NAME: model version, labels used, inspected, lenses found (and cumulated)."""
    from lenscat.db.session import session_scope
    from lenscat.learning.tables import loops_table

    with session_scope() as s:
        table = loops_table(name, session=s)
    write_table(table, fmt, sys.stdout)


@learn.command("batch")
@click.argument("name")
@click.option(
    "--loop", "loop_no", type=click.IntRange(min=1), default=None, help="An earlier loop (default: the current one)."
)
@FORMAT_OPTION
@needs_schema
def learn_batch_cmd(name: str, loop_no: int | None, fmt: str) -> None:
    """The sources of NAME's current batch in proposal order, with score and whether graded yet."""
    from lenscat.db.session import session_scope
    from lenscat.learning.campaigns import campaign_loops, current_loop
    from lenscat.learning.tables import batch_table

    with session_scope() as s:
        if loop_no is None:
            loop = current_loop(name, session=s)
        else:
            loop = next((lp for lp in campaign_loops(name, session=s) if lp.loop_no == loop_no), None)
            if loop is None:
                raise LenscatError(f"campaign {name!r} has no loop {loop_no}")
        if loop is None:
            raise LenscatError(f"campaign {name!r} has no loop yet: lenscat learn next {name}")
        table = batch_table(loop, session=s)
    _err(
        f"campaign {name}: loop {loop.loop_no}, {loop.n_inspected} of {len(loop.batch)} inspected, "
        f"grade with: lenscat grade SOURCE_ID GRADE --grader NAME --sample {loop.sample}"
    )
    write_table(table, fmt, sys.stdout)


@learn.command("list")
@FORMAT_OPTION
@needs_schema
def learn_list_cmd(fmt: str) -> None:
    """Every campaign: encoder, strategy, loops, sources proposed and graded, lenses found."""
    from lenscat.db.session import session_scope
    from lenscat.learning.campaigns import list_campaigns

    with session_scope() as s:
        rows = list_campaigns(session=s)
    cols = [
        "name",
        "encoder",
        "strategy",
        "batch_size",
        "n_loops",
        "n_proposed",
        "n_graded",
        "n_found",
        "current_loop",
        "current_complete",
        "created_at",
    ]
    write_rows(cols, [[r[c] for c in cols] for r in rows], fmt, sys.stdout)
