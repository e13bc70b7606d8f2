"""Typed row access for tests that talk to PostgreSQL through psycopg directly."""

from __future__ import annotations

from typing import TypeVar

import psycopg

Row = TypeVar("Row")


def one(cursor: psycopg.Cursor[Row]) -> Row:
    """Return the single row a query gives.

    Parameters
    ----------
    cursor : psycopg.Cursor
        The cursor ``conn.execute(...)`` returned.

    Returns
    -------
    Row
        The first row (a tuple with the default row factory); the test fails if there is none.
    """
    row = cursor.fetchone()
    assert row is not None, "the query returned no row"
    return row
