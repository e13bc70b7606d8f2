"""Types of the TAP service: published column metadata, query results, output formats."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

#: FORMAT / RESPONSEFORMAT values -> the output format's name.
FORMATS: dict[str, str] = {
    "votable": "votable",
    "application/x-votable+xml": "votable",
    "text/xml": "votable",
    "application/xml": "votable",
    "votable/td": "votable",
    "csv": "csv",
    "text/csv": "csv",
    "json": "json",
    "application/json": "json",
}

#: Media type of each output format.
MEDIA_TYPES: dict[str, str] = {
    "votable": "application/x-votable+xml",
    "csv": "text/csv; charset=utf-8",
    "json": "application/json",
}


@dataclass(frozen=True)
class ColumnMeta:
    """What TAP_SCHEMA.columns says of a published column.

    Attributes
    ----------
    table_name, column_name
        The published table (view) and the column.
    description
        The column comment.
    unit
        VOUnit from the comment's trailing ``[unit]``; None without one.
    ucd
        UCD1+ word(s); None when the column has none.
    datatype
        VOTable datatype (``long``, ``double``, ``char``, ...).
    """

    table_name: str
    column_name: str
    description: str | None
    unit: str | None
    ucd: str | None
    datatype: str


@dataclass
class TapResult:
    """The answer to one ADQL query.

    Attributes
    ----------
    columns
        Output column names, in order.
    rows
        At most the row limit's rows.
    overflow
        True when the query had more rows than were returned (MAXREC or the hard limit), not when
        it stopped at its own ``TOP``.
    meta
        Metadata of the output columns that are published columns of the tables read (by name).
    sql
        The PostgreSQL that ran.
    """

    columns: list[str]
    rows: list[tuple[Any, ...]]
    overflow: bool
    meta: dict[str, ColumnMeta] = field(default_factory=dict)
    sql: str = ""
