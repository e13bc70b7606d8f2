"""Exceptions whose message is a complete one-line explanation for the user."""

from __future__ import annotations


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
