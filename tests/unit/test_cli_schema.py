"""Which commands check the schema (``@needs_schema``), and that option checks come first."""

from __future__ import annotations

from collections.abc import Iterator

import click
import pytest
from click.testing import CliRunner

from lenscat.cli import cli
from lenscat.cli import common as cli_common

#: the commands that must start nothing (no server, no schema check)
NO_SCHEMA = {
    "db downgrade",
    "db start",
    "db status",
    "db stop",
    "db upgrade",
    "db url",
    "simulate catalog",
    "simulate survey",
    "spectra inject",
}


def _commands(group: click.Group, prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, click.Command]]:
    for name, cmd in sorted(group.commands.items()):
        if isinstance(cmd, click.Group):
            yield from _commands(cmd, (*prefix, name))
        else:
            yield " ".join((*prefix, name)), cmd


def test_every_database_command_declares_the_schema() -> None:
    commands = dict(_commands(cli))
    assert set(commands) >= NO_SCHEMA
    for path, cmd in commands.items():
        assert bool(getattr(cmd.callback, "needs_schema", False)) == (path not in NO_SCHEMA), path


class _SchemaTouched(Exception):
    pass


@pytest.fixture()
def no_database(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse() -> None:
        raise _SchemaTouched

    monkeypatch.setattr(cli_common, "ensure_schema", refuse)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["cone", "not-an-angle", "2"], None),
        (["similar", "--encoder", "e"], "give exactly one query"),
        (["encoder", "derive", "e"], "give --views and/or --readout"),
        (["classifier", "evaluate", "--name", "c", "--top-n", "x"], "--top-n takes comma-separated integers"),
        (["grade", "--grader", "g"], "give SOURCE_ID and GRADE (or --file)"),
        (["grader", "add", "g", "--no-password"], "--no-password needs --token"),
        (["export", "--grades", "A"], "nothing to do"),
    ],
)
def test_options_are_checked_before_the_schema(no_database: None, args: list[str], message: str | None) -> None:
    res = CliRunner().invoke(cli, args)
    assert not isinstance(res.exception, _SchemaTouched), args
    assert res.exception is not None
    if message is not None:
        assert message in str(res.exception) or message in res.output


def test_schema_is_checked_before_the_command(no_database: None) -> None:
    res = CliRunner().invoke(cli, ["jobs", "list"])
    assert isinstance(res.exception, _SchemaTouched)


def test_invalid_parameter_names_the_flag_on_the_terminal(
    no_database: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import sys

    from lenscat.cli import main

    monkeypatch.setattr(sys, "argv", ["lenscat", "export", "--grades", "Q", "--summary"])
    with pytest.raises(SystemExit) as exit_:
        main()
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("lenscat: error: unknown grade 'Q'") and "e.g. --grades A,B" in err


def test_invalid_parameter_message_names_the_parameter() -> None:
    import pickle

    from lenscat.cli.common import error_message
    from lenscat.errors import InvalidParameter, LenscatError

    exc = InvalidParameter(("val_fraction", "test_fraction"), "{val_fraction} and {test_fraction} must be < 1")
    assert isinstance(exc, LenscatError)
    assert exc.param == "val_fraction" and exc.params == ("val_fraction", "test_fraction")
    assert str(exc) == "val_fraction and test_fraction must be < 1"
    assert error_message(exc) == "--val-fraction and --test-fraction must be < 1"
    assert error_message(LenscatError("plain")) == "plain"
    again = pickle.loads(pickle.dumps(exc))
    assert str(again) == str(exc) and again.params == exc.params
