"""Shared handling of option dataclasses (augmentation, preprocessing) stored as JSON dicts."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields
from typing import Any

from lenscat.errors import LenscatError


def dataclass_kwargs(cls: type, data: Mapping[str, Any], what: str) -> dict[str, Any]:
    """``data`` as keyword arguments of dataclass ``cls``: lists become tuples; unknown keys raise.

    Parameters
    ----------
    cls
        The dataclass.
    data
        Options, e.g. from JSON (tuples arrive as lists).
    what
        Name of the options in the error message, e.g. ``'augmentation'``.
    """
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise LenscatError(f"unknown {what} option(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}")
    return {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
