"""Helpers shared by the migrations: COMMENT ON statements from {column: text} dictionaries."""

from __future__ import annotations

from typing import Any


def comment_sql(obj: str, comments: dict[str, str], kind: str = "TABLE") -> list[str]:
    """``COMMENT ON`` statements for ``obj`` (key ``""``) and its columns.

    Parameters
    ----------
    obj
        Qualified table or view name.
    comments
        Column name -> comment text; the key ``""`` comments the object itself.
    kind
        ``TABLE`` or ``VIEW``.
    """
    out = []
    for col, text in comments.items():
        lit = "'" + text.replace("'", "''") + "'"
        if col == "":
            out.append(f"COMMENT ON {kind} {obj} IS {lit}")
        else:
            out.append(f"COMMENT ON COLUMN {obj}.{col} IS {lit}")
    return out


def apply_comments(op: Any, tables: dict[str, dict[str, str]], views: dict[str, dict[str, str]] | None = None) -> None:
    """Run the ``COMMENT ON`` statements of ``tables`` and ``views`` ({object: {column: text}})."""
    for table, comments in tables.items():
        for stmt in comment_sql(table, comments):
            op.execute(stmt)
    for view, comments in (views or {}).items():
        for stmt in comment_sql(view, comments, kind="VIEW"):
            op.execute(stmt)


def grant_reader(op: Any, objects: list[str]) -> None:
    """``GRANT SELECT`` on ``objects`` to the ``lenscat_reader`` role when that role exists."""
    op.execute(
        f"""
        DO $$
        BEGIN
            IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'lenscat_reader') THEN
                GRANT SELECT ON {", ".join(objects)} TO lenscat_reader;
            END IF;
        END
        $$"""
    )
