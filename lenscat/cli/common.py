"""Shared pieces of the command line: the --format option, the schema check, error echo, origins."""

from __future__ import annotations

import functools
import shlex
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar, overload

import click

from lenscat.errors import LenscatError, Step
from lenscat.io.output import FORMATS

FORMAT_OPTION = click.option(
    "--format",
    "fmt",
    type=click.Choice(FORMATS),
    default="table",
    show_default=True,
    help="Output format: aligned table, CSV, or JSON lines (one object per row) on stdout.",
)


RESTART_OPTION = click.option(
    "--restart",
    is_flag=True,
    help="Start over, discarding the saved state of an interrupted run with the same options.",
)


def parse_origins(values: tuple[str, ...]) -> list[str] | None:
    """Label origins from repeatable, comma-separated ``--labels`` values (None: all origins)."""
    return [v.strip() for x in values for v in x.split(",") if v.strip()] or None


def _err(msg: str) -> None:
    click.echo(msg, err=True)


def report_rejects(rejects: list[Any], path: Path, show: int = 20) -> None:
    """Echo the first ``show`` rejected rows of an ingest (``r.line(path)`` each) to stderr, then a count.

    A reason that names an ingest parameter (``Reject.params``) names it as its flag here.
    """
    for r in rejects[:show]:
        _err(r.line(path, flag))
    if len(rejects) > show:
        _err(f'... and {len(rejects) - show} more rejected rows (see: lenscat sql "SELECT * FROM ingest_rejects")')


PLURAL_PARAMS = {"surveys": "survey", "members": "member"}
"""Domain parameters holding a list whose repeatable flag is singular (``--survey A --survey B``)."""


def flag(param: str) -> str:
    """The command-line flag of a domain parameter: ``min_spread`` -> ``--min-spread``, ``surveys`` -> ``--survey``."""
    return "--" + PLURAL_PARAMS.get(param, param).replace("_", "-")


def command_line(step: Step) -> str:
    """A :class:`~lenscat.errors.Step` as the command to run: ``run `lenscat embed --encoder moco```."""
    words = ["lenscat", *step.action]
    for param, value in step.args:
        if param is not None:
            words.append(flag(param))
        words.append(shlex.quote(value))
    return f"run `{' '.join(words)}`"


def error_message(exc: Exception) -> str:
    """The one-line text of a domain error for the terminal: parameters as flags, steps as commands."""
    if isinstance(exc, LenscatError):
        return exc.render(flag, command_line)
    return str(exc)


F = TypeVar("F", bound=Callable[..., Any])


def ensure_schema() -> None:
    """:func:`lenscat.db.migrate.ensure_schema`, imported when a command first needs the database.

    Importing alembic costs about a second, which ``lenscat --help`` and the commands that start
    nothing should not pay.
    """
    from lenscat.db.migrate import ensure_schema as bring_to_head

    bring_to_head()


@overload
def needs_schema(fn: F) -> F: ...


@overload
def needs_schema(*, before: Callable[..., dict[str, Any] | None]) -> Callable[[F], F]: ...


def needs_schema(fn: F | None = None, *, before: Callable[..., dict[str, Any] | None] | None = None) -> Any:
    """Declare that a command uses the database: its schema is brought to head (or checked) first.

    Put it directly above the ``def`` (under the click decorators). The schema check is
    :func:`lenscat.db.migrate.ensure_schema`: on the embedded default it starts the server and
    upgrades the schema; on a user-managed database it raises
    :class:`lenscat.errors.SchemaOutOfDate` when the schema is behind. Commands without it
    (``db status``, ``version``, ``--help``, ...) start nothing.

    Parameters
    ----------
    fn
        The command callback (when used bare, ``@needs_schema``).
    before
        Run first, with the command's keyword arguments and without the database: validates the
        options (raising before any server starts) and may return a dict of values it derived,
        passed to the command as further keyword arguments (or replacing some).

    Returns
    -------
    callable
        The wrapped callback (``needs_schema`` is set on it), or a decorator when only ``before``
        is given.
    """

    def decorate(f: F) -> F:
        @functools.wraps(f)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if before is not None:
                kwargs.update(before(**kwargs) or {})
            ensure_schema()
            return f(*args, **kwargs)

        wrapper.needs_schema = True  # type: ignore[attr-defined]
        return wrapper  # type: ignore[return-value]

    return decorate(fn) if fn is not None else decorate
