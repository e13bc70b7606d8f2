"""Exceptions whose message is a complete one-line explanation for the user.

A message never names a command-line flag or command: it names the domain function's parameters
(``{param}`` placeholders) and the step to take first (a ``{step}`` placeholder holding a
:class:`Step`), and each shell spells them its own way: the CLI as flags and a command line
(:func:`lenscat.cli.common.error_message`), the web and library callers as plain names and a
sentence (``str(exc)``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Step:
    """An action the user should take first, which each shell spells its own way.

    Parameters
    ----------
    action : tuple of str
        The action's path, the words of the CLI command (``("embed",)``, ``("classifier", "score")``).
    args : tuple of (str or None, str) pairs
        Its arguments in order: ``(param, value)`` for a keyword parameter (the CLI writes
        ``--param value``), ``(None, value)`` for a positional one.
    text : str
        The step as a sentence for the web and library callers, e.g.
        ``"embed the sources with encoder moco"``.
    """

    action: tuple[str, ...]
    args: tuple[tuple[str | None, str], ...] = ()
    text: str = ""


def _plain(name: str) -> str:
    return name


def _sentence(step: Step) -> str:
    return step.text


def _rebuild(cls: type[LenscatError], message: str, state: dict[str, Any]) -> LenscatError:
    """Unpickle any :class:`LenscatError`, whatever its ``__init__`` takes (Celery results)."""
    exc = cls.__new__(cls)
    Exception.__init__(exc, message)
    exc.__dict__.update(state)
    return exc


class LenscatError(Exception):
    """Base class: the CLI prints ``lenscat: error: <message>`` and exits with status 2.

    Parameters
    ----------
    message
        The explanation. It may write a parameter of the domain function as ``{name}`` (listed in
        ``params``) and the step to take first as ``{step}``; ``str(exc)`` shows the plain names
        and ``step.text``, :meth:`render` lets a shell spell both its own way.
    params
        The parameter (or parameters) the message is about, e.g. ``"id_col"``.
    step
        The action to take first (:class:`Step`), written where the message has ``{step}``.
    """

    def __init__(self, message: str = "", *, params: str | tuple[str, ...] = (), step: Step | None = None) -> None:
        self.params: tuple[str, ...] = (params,) if isinstance(params, str) else tuple(params)
        self.template = message
        self.step = step
        super().__init__(self.render())

    @property
    def param(self) -> str | None:
        """The (first) parameter the message is about, or None; the web names it as the form field."""
        return self.params[0] if self.params else None

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), str(self), dict(self.__dict__)))

    def render(self, spell: Callable[[str], str] = _plain, spell_step: Callable[[Step], str] = _sentence) -> str:
        """The message with each ``{param}`` spelled by ``spell`` and ``{step}`` by ``spell_step``.

        Parameters
        ----------
        spell
            How a parameter is written (the CLI: ``lambda p: "--" + p``); the plain name by default.
        spell_step
            How the step is written (the CLI: the command line); ``step.text`` by default.

        Returns
        -------
        str
            The one-line message.
        """
        out = self.template
        for name in self.params:
            out = out.replace("{" + name + "}", spell(name))
        if self.step is not None:
            out = out.replace("{step}", spell_step(self.step))
        return out


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
    step
        An action to take instead or first, written where the message has ``{step}``.
    """

    def __init__(self, param: str | tuple[str, ...], message: str, *, step: Step | None = None) -> None:
        super().__init__(message, params=param, step=step)

    @property
    def param(self) -> str:
        """The (first) parameter the message is about."""
        return self.params[0]


class MissingPrerequisite(LenscatError):
    """What was asked needs an earlier step (embed, score, cross-match, ...) that has not been done.

    The message writes the step as ``{step}``: the CLI shows the command to run
    (``run `lenscat embed --encoder moco``), the web and library callers the step's sentence.

    Parameters
    ----------
    message
        The explanation, with ``{step}`` where the step goes.
    step
        The step to take first.
    params
        The parameter(s) the message is about, if any.
    """

    def __init__(self, message: str, step: Step, *, params: str | tuple[str, ...] = ()) -> None:
        super().__init__(message, params=params, step=step)
