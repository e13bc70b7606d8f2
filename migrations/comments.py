"""Helpers shared by the migrations: COMMENT ON statements from {column: text} dictionaries."""

from __future__ import annotations


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
