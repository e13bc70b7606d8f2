"""SQL text of the TAP service: reads of the ``tap_schema`` views (migration 0019)."""

from __future__ import annotations

COLUMNS_SQL = """
    SELECT c.table_name, c.column_name, c.description, c.unit, c.ucd, c.datatype
    FROM tap_schema.columns c
    JOIN tap_schema.tables t ON t.table_name = c.table_name
    WHERE (:all OR c.table_name = ANY(:tables))
    ORDER BY t.table_index, c.column_index
"""
"""Published columns of ``:tables`` (all published tables with ``:all``), table by table in order."""

TABLES_SQL = """
    SELECT t.schema_name, t.table_name, t.table_type, t.description
    FROM tap_schema.tables t
    ORDER BY t.table_index
"""
"""The published tables."""

ALIVE_SQL = "SELECT count(*) FROM tap_schema.tables"
"""A cheap read that fails when the database or the TAP schema is not there."""
