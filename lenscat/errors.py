"""Exceptions whose message is a complete one-line explanation for the user."""

from __future__ import annotations

from collections.abc import Callable


class LenscatError(Exception):
    """Base class: the CLI prints ``lenscat: error: <message>`` and exits with status 2."""


class InputFileError(LenscatError):
    """An input file is missing, unreadable, truncated, corrupt, or lacks a required column."""


class NotFoundError(LenscatError):
    """A named survey, catalogue, source or model does not exist."""


class ReadOnlyError(LenscatError):
    """A write was attempted through the read-only SQL interface."""


class Interrupted(KeyboardInterrupt):
    """Long work stopped by Ctrl-C after saving what it had done; the message says how to resume."""


class SchemaOutOfDate(LenscatError):
    """A user-managed database whose schema is behind the code (``lenscat db upgrade`` brings it up)."""


class CheckpointError(InputFileError):
    """A registered model version's checkpoint is missing, or differs from its recorded sha256."""


class InvalidParameter(LenscatError):
    """A caller-supplied value is invalid; the message names the parameter(s), not a CLI flag.

    Parameters
    ----------
    param
        The parameter name (the domain function's keyword, e.g. ``"l2"``, ``"min_spread"``), or
        several when the message is about their combination.
    message
        The explanation, with each parameter written as ``{name}`` (e.g. ``"{l2} must be positive"``).
        ``str(exc)`` shows the plain names ("l2 must be positive"); :meth:`render` lets a shell
        show them its own way: the CLI as flags (``--l2``), the web as form fields.
    """

    def __init__(self, param: str | tuple[str, ...], message: str) -> None:
        self.params: tuple[str, ...] = (param,) if isinstance(param, str) else tuple(param)
        self.param: str = self.params[0]
        self.template = message
        super().__init__(self.render(lambda name: name))

    def __reduce__(self) -> tuple[type[InvalidParameter], tuple[tuple[str, ...], str]]:
        return (type(self), (self.params, self.template))

    def render(self, spell: Callable[[str], str]) -> str:
        """The message with each ``{param}`` spelled by ``spell`` (e.g. ``lambda p: "--" + p``)."""
        out = self.template
        for name in self.params:
            out = out.replace("{" + name + "}", spell(name))
        return out
