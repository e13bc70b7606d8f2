"""Command line for graders and grades: accounts, grading from scripts, consensus and conflicts."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click
import numpy as np

from lenscat.cli.common import FORMAT_OPTION, needs_schema
from lenscat.errors import LenscatError
from lenscat.io.output import write_rows, write_table


@click.group("grader")
def grader() -> None:
    """Grading accounts (hashed passwords or API tokens)."""


def _read_password(name: str, password_stdin: bool, with_token: bool, no_password: bool, **_: Any) -> dict[str, Any]:
    """The new account's password (stdin or prompt; None with --no-password), read before the database starts."""
    if no_password and not with_token:
        raise LenscatError("--no-password needs --token")
    password: str | None = None
    if not no_password:
        if password_stdin:
            password = sys.stdin.readline().rstrip("\r\n")
        else:
            password = click.prompt(f"password for {name}", hide_input=True, confirmation_prompt=True)
    return {"password": password}


@grader.command("add")
@click.argument("name")
@click.option("--full-name", default=None, help="Display name.")
@click.option("--password-stdin", is_flag=True, help="Read the password from the first line of stdin (scripts).")
@click.option(
    "--token", "with_token", is_flag=True, help="Also issue an API token (printed once; only its sha256 is stored)."
)
@click.option("--no-password", is_flag=True, help="Token-only account (with --token).")
@click.option(
    "--reset",
    is_flag=True,
    help="Set a new password/token for an existing account; ends its web sessions (a disabled "
    "account stays disabled: see grader enable).",
)
@needs_schema(before=_read_password)
def grader_add_cmd(
    name: str,
    full_name: str | None,
    password_stdin: bool,
    with_token: bool,
    no_password: bool,
    reset: bool,
    password: str | None = None,
) -> None:
    """Create a grader account NAME; the password is prompted for unless --password-stdin."""
    from lenscat.db.session import session_scope
    from lenscat.grading.accounts import add_grader

    with session_scope() as s:
        g, token = add_grader(name, password=password, full_name=full_name, token=with_token, reset=reset, session=s)
    if reset:
        click.echo(
            f"grader {g.name} updated; its web sessions were ended"
            + ("" if g.is_active else f" (the account stays disabled: lenscat grader enable {g.name})")
        )
    else:
        click.echo(f"grader {g.name} added")
    if token:
        click.echo(f"API token (shown once): {token}")


@grader.command("list")
@FORMAT_OPTION
@needs_schema
def grader_list_cmd(fmt: str) -> None:
    """Accounts, whether they have a password/token, their grade counts and live web sessions."""
    from lenscat.db.session import session_scope
    from lenscat.grading.accounts import list_graders

    with session_scope() as s:
        rows = list_graders(session=s)
    cols = [
        "name",
        "full_name",
        "is_active",
        "has_password",
        "has_token",
        "n_grades",
        "last_grade_at",
        "created_at",
        "n_sessions",
        "last_seen_at",
    ]
    write_rows(cols, [[r[c] for c in cols] for r in rows], fmt, sys.stdout)


@grader.command("disable")
@click.argument("name")
@needs_schema
def grader_disable_cmd(name: str) -> None:
    """Disable an account: it can no longer log in or grade, its web sessions end, its API token stops
    working (its grades stay)."""
    from lenscat.db.session import session_scope
    from lenscat.grading.accounts import set_active

    with session_scope() as s:
        set_active(name, False, session=s)
    click.echo(f"grader {name} disabled; its web sessions were ended")


@grader.command("enable")
@click.argument("name")
@needs_schema
def grader_enable_cmd(name: str) -> None:
    """Enable a disabled account again (it logs in afresh; ended sessions stay ended)."""
    from lenscat.db.session import session_scope
    from lenscat.grading.accounts import set_active

    with session_scope() as s:
        set_active(name, True, session=s)
    click.echo(f"grader {name} enabled")


@grader.command("logout")
@click.argument("name")
@needs_schema
def grader_logout_cmd(name: str) -> None:
    """End every web session of NAME at once (e.g. a lost laptop); the account stays usable."""
    from lenscat.db.session import session_scope
    from lenscat.grading.accounts import logout_grader

    with session_scope() as s:
        n = logout_grader(name, session=s)
    click.echo(f"grader {name}: {n} web session(s) ended")


def _grade_inputs(
    source_id: int | None,
    grade_value: str | None,
    comment: str | None,
    path: Path | None,
    request_id: str | None,
    **_: Any,
) -> dict[str, Any]:
    """The grades to record (one from the arguments, or a file's), read before the database starts."""
    from lenscat.grading.grades import GradeInput, parse_grade

    if path is not None:
        if source_id is not None:
            raise LenscatError("give either SOURCE_ID GRADE or --file, not both")
        return {"inputs": _read_grade_file(path)}
    if source_id is None or grade_value is None:
        raise LenscatError("give SOURCE_ID and GRADE (or --file)")
    return {"inputs": [GradeInput(source_id, parse_grade(grade_value), comment, request_id)]}


@click.command("grade")
@click.argument("source_id", type=int, required=False)
@click.argument("grade_value", metavar="GRADE", required=False)
@click.option("--grader", "grader_name", required=True, help="Grader account name.")
@click.option("--comment", default=None, help="Comment stored with the grade.")
@click.option(
    "--file",
    "path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Grade many: a CSV/ECSV table with source_id, grade and optional comment columns.",
)
@click.option(
    "--request-id",
    default=None,
    help="UUID of this grading action: repeating the command with the same id records it once.",
)
@click.option("--sample", default="cli", show_default=True, help="Where the grade comes from (stored with it).")
@needs_schema(before=_grade_inputs)
def grade_cmd(
    source_id: int | None,
    grade_value: str | None,
    grader_name: str,
    comment: str | None,
    path: Path | None,
    request_id: str | None,
    sample: str,
    inputs: list[Any] | None = None,
) -> None:
    """Record GRADE (A, B, C, N = not a lens, S = skip) for SOURCE_ID by --grader (append-only)."""
    from lenscat.db.session import session_scope
    from lenscat.grading.accounts import get_grader
    from lenscat.grading.grades import record_grades

    assert inputs is not None
    with session_scope() as s:
        g = get_grader(grader_name, session=s)
        n = record_grades(g, inputs, sample=sample, session=s)
    click.echo(
        f"{n} grade(s) recorded for {g.name}" + (f" ({len(inputs) - n} already recorded)" if n < len(inputs) else "")
    )


def _read_grade_file(path: Path) -> list[Any]:
    from lenscat.errors import InputFileError
    from lenscat.grading.grades import GradeInput, parse_grade
    from lenscat.io.readers import read_table

    table = read_table(path)
    names = {c.lower(): c for c in table.columns}
    for need in ("source_id", "grade"):
        if need not in names:
            raise InputFileError(f"{path}: no '{need}' column (columns: {', '.join(table.columns)})")

    def col(name: str) -> list[Any] | None:
        if name not in names:
            return None
        arr = table.columns[names[name]]
        mask = np.ma.getmaskarray(arr)
        return [None if m else v for v, m in zip(np.asarray(arr).tolist(), mask.tolist(), strict=True)]

    sids, letters, comments, rids = col("source_id"), col("grade"), col("comment"), col("request_id")
    assert sids is not None and letters is not None
    out = []
    for i in range(table.n_rows):
        try:
            if sids[i] is None:
                raise LenscatError("empty source_id")
            sid = int(sids[i])
            letter = parse_grade(str(letters[i]))
        except (ValueError, TypeError, LenscatError) as exc:
            raise InputFileError(f"{path}: row {i + 1}: {exc}") from exc
        comment = str(comments[i]) if comments and comments[i] not in (None, "") else None
        rid = str(rids[i]) if rids and rids[i] not in (None, "") else None
        out.append(GradeInput(sid, letter, comment, rid))
    return out


@click.group("grades")
def grades() -> None:
    """Read grades: every grade, the consensus per source, conflicts between graders."""


@grades.command("list")
@click.option("--grader", "grader_name", default=None, help="Only this grader's grades.")
@click.option("--source-id", type=int, default=None, help="Only this source.")
@click.option("--limit", type=click.IntRange(min=1), default=None)
@FORMAT_OPTION
@needs_schema
def grades_list_cmd(grader_name: str | None, source_id: int | None, limit: int | None, fmt: str) -> None:
    """Grades, newest first (the grades view)."""
    from lenscat.db.session import session_scope
    from lenscat.grading.grades import grades_table

    with session_scope() as s:
        table = grades_table(grader=grader_name, source_id=source_id, limit=limit, session=s)
    write_table(table, fmt, sys.stdout)


@grades.command("consensus")
@click.option("--grades", "grade_list", default=None, help="Only these consensus grades, e.g. A,B.")
@click.option("--limit", type=click.IntRange(min=1), default=None)
@FORMAT_OPTION
@needs_schema
def grades_consensus_cmd(grade_list: str | None, limit: int | None, fmt: str) -> None:
    """One row per graded source: mean of A=3/B=2/C=1/N=0 over graders, votes, disagreement."""
    from lenscat.db.session import session_scope
    from lenscat.grading.grades import consensus_table

    with session_scope() as s:
        table = consensus_table(grades=grade_list.split(",") if grade_list else None, limit=limit, session=s)
    write_table(table, fmt, sys.stdout)


@grades.command("conflicts")
@click.option(
    "--min-spread",
    type=click.IntRange(1, 3),
    default=2,
    show_default=True,
    help="Grade points between the highest and lowest vote.",
)
@click.option("--limit", type=click.IntRange(min=1), default=None)
@FORMAT_OPTION
@needs_schema
def grades_conflicts_cmd(min_spread: int, limit: int | None, fmt: str) -> None:
    """Sources whose graders disagree (to be discussed or re-graded)."""
    from lenscat.db.session import session_scope
    from lenscat.grading.grades import conflicts_table

    with session_scope() as s:
        table = conflicts_table(min_spread=min_spread, limit=limit, session=s)
    write_table(table, fmt, sys.stdout)


@grades.command("relabel")
@click.option(
    "--positive-grades", default="A,B", show_default=True, help="Consensus grades that count as lenses for training."
)
@needs_schema
def grades_relabel_cmd(positive_grades: str) -> None:
    """Rebuild every human label from the consensus (after changing --positive-grades)."""
    from lenscat.classifiers.service import count_human_labels
    from lenscat.db.session import session_scope
    from lenscat.grading.grades import refresh_human_labels

    with session_scope() as s:
        refresh_human_labels(None, positive_grades=positive_grades.split(","), session=s)
        n = count_human_labels(session=s)
    click.echo(json.dumps({"human_labels": n}))
