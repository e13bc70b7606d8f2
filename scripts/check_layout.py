#!/usr/bin/env python3
"""The package layout of lenscat, and a check that the shells hold no SQL.

Prints each package under ``lenscat/`` with its module count and line count, and the modules over
400 lines; exits 1 when one of those is not explained (its path in backticks) in
``docs/architecture.md`` (checked when that file exists). Exits 1, naming ``file:line``, when a module
of the shells (``lenscat/cli/**``, ``lenscat/web/**``) contains SQL: a ``text(...)`` / ``sqlalchemy.text(...)`` or
``exec_driver_sql(...)`` call, or a string literal that is an SQL statement (SELECT ... FROM,
INSERT INTO, UPDATE ... SET, DELETE FROM, WITH ... AS (, CREATE/DROP/ALTER <object>, ...).
String constants are read with :mod:`ast`; docstrings and ``help=`` texts are skipped, and a
string counts only when it *starts* as a statement, so prose that mentions a keyword ("select
the top N", 'see: lenscat sql "SELECT * FROM ingest_rejects"') does not trip it.

Usage: ``python scripts/check_layout.py [ROOT]`` (ROOT: the repository, default this one).
"""

from __future__ import annotations

import ast
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

PACKAGE = "lenscat"
SHELLS = ("cli", "web")
MAX_LINES = 400
#: where a module over MAX_LINES says why it stays whole (its repository path in backticks)
ARCHITECTURE_DOC = "docs/architecture.md"

_NAME = r'[\w."]+'
_FLAGS = re.IGNORECASE | re.DOTALL
#: statements, anchored at the start of the string (after blanks and opening parentheses)
_STATEMENTS = [
    re.compile(
        r"select\s+(?:distinct\s+(?:on\s*\([^)]*\)\s*)?)?(?P<cols>.+?)\s+from\s+(?P<src>" + _NAME + r"|\()", _FLAGS
    ),
    re.compile(r"select\s+(?:[\w.]+\s*\(|[\w.]+\s*::|\d|'|:\w)", _FLAGS),  # SELECT f(...), SELECT 1, SELECT :p
    re.compile(r"insert\s+into\s+(?P<src>" + _NAME + ")", _FLAGS),
    re.compile(r"update\s+(?:only\s+)?(?P<src>" + _NAME + r")(?:\s+(?:as\s+)?\w+)?\s+set\s+[\w\"]+\s*=", _FLAGS),
    re.compile(r"delete\s+from\s+(?P<src>" + _NAME + ")", _FLAGS),
    re.compile(r"with\s+(?:recursive\s+)?\w+\s*(?:\([^)]*\)\s*)?as\s+(?:not\s+)?(?:materialized\s+)?\(", _FLAGS),
    re.compile(
        r"(?:create|drop|alter)\s+(?:or\s+replace\s+)?(?:(?:temp|temporary|unique|unlogged|materialized)\s+)*"
        r"(?:table|index|view|function|procedure|extension|schema|type|trigger|sequence|role|database|policy"
        r"|aggregate|operator|domain)\b",
        _FLAGS,
    ),
    re.compile(r"(?:analyze|vacuum(?:\s+full)?|truncate(?:\s+table)?|reindex\s+\w+)\s+" + _NAME + r"\s*;?\s*$", _FLAGS),
    re.compile(r"copy\s+" + _NAME + r"\s*(?:\([^)]*\)\s*)?(?:from|to)\s+(?:stdin|stdout|')", _FLAGS),
    re.compile(r"explain\s+(?:\(.*?\)\s*|analyze\s+)?(?:select|insert|update|delete|with)\b", _FLAGS),
    re.compile(r"set\s+(?:local\s+|session\s+)?\w+[._]\w+[\w.]*\s*(?:=|to)\s*\S", _FLAGS),
    re.compile(r"show\s+\w+_\w+\s*;?\s*$", _FLAGS),
]
#: words of prose, never of an SQL select list or a FROM target
_PROSE = {
    "the", "an", "of", "for", "each", "every", "which", "that", "this", "these", "those", "your", "their", "its",
    "them", "some", "top", "best", "first", "most", "you", "we", "will", "should", "can", "it", "his", "her",
}  # fmt: skip
_HELP_KEYWORDS = {"help", "short_help", "epilog", "metavar", "description", "summary"}


def looks_like_sql(s: str) -> bool:
    """True when the string starts as an SQL statement (case-insensitive), not as prose."""
    body = s.lstrip().lstrip("(").lstrip()
    for pattern in _STATEMENTS:
        m = pattern.match(body)
        if m is None:
            continue
        groups = m.groupdict()
        if "src" in groups and groups["src"].strip('"').lower() in _PROSE:
            continue
        if "cols" in groups and set(re.findall(r"[a-z]+", re.sub(r"'[^']*'", "", groups["cols"]).lower())) & _PROSE:
            continue
        return True
    return False


@dataclass(frozen=True)
class Finding:
    """One piece of SQL in a shell module."""

    path: Path
    line: int
    what: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.what}"


def _string_value(node: ast.expr) -> str | None:
    """The text of a string constant or f-string (each ``{...}`` read as an identifier)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        parts = []
        for v in node.values:
            if isinstance(v, ast.Constant) and isinstance(v.value, str):
                parts.append(v.value)
            else:
                parts.append("x_")
        return "".join(parts)
    return None


def _skipped_nodes(tree: ast.AST) -> set[int]:
    """ids of the string nodes not checked: docstrings, help texts, the pieces of an f-string."""
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):  # an f-string is read whole, not its pieces
            skip.update(id(v) for v in node.values)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and _string_value(body[0].value) is not None:
                skip.add(id(body[0].value))
        if isinstance(node, ast.Call):
            for kw in node.keywords:
                if kw.arg in _HELP_KEYWORDS:
                    for sub in ast.walk(kw.value):
                        skip.add(id(sub))
    return skip


def _is_sql_call(node: ast.Call) -> str | None:
    func = node.func
    if isinstance(func, ast.Name) and func.id == "text":
        return "text(...) call"
    if isinstance(func, ast.Attribute):
        if func.attr == "text" and isinstance(func.value, ast.Name) and func.value.id in ("sqlalchemy", "sa"):
            return f"{func.value.id}.text(...) call"
        if func.attr == "exec_driver_sql":
            return "exec_driver_sql(...) call"
    return None


def sql_in_module(path: Path) -> list[Finding]:
    """The SQL calls and SQL string literals of one Python module."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    skip = _skipped_nodes(tree)
    found: list[Finding] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            what = _is_sql_call(node)
            if what:
                found.append(Finding(path, node.lineno, what))
        if id(node) in skip or not isinstance(node, (ast.Constant, ast.JoinedStr)):
            continue
        value = _string_value(node)
        if value is not None and looks_like_sql(value):
            first = " ".join(value.split())[:60]
            found.append(Finding(path, node.lineno, f"SQL string: {first!r}"))
    return sorted(found, key=lambda f: f.line)


def _modules(root: Path) -> Iterator[Path]:
    yield from sorted(p for p in root.rglob("*.py") if "__pycache__" not in p.parts)


def _lines(path: Path) -> int:
    return len(path.read_text(encoding="utf-8").splitlines())


def main(argv: list[str] | None = None) -> int:
    """Print the layout; return 1 when a shell module holds SQL."""
    args = sys.argv[1:] if argv is None else argv
    repo = Path(args[0]) if args else Path(__file__).resolve().parent.parent
    pkg = repo / PACKAGE
    if not pkg.is_dir():
        print(f"check_layout: no {PACKAGE}/ under {repo}", file=sys.stderr)
        return 2
    groups: dict[str, list[Path]] = {}
    for path in _modules(pkg):
        rel = path.relative_to(pkg)
        key = PACKAGE if len(rel.parts) == 1 else f"{PACKAGE}/{rel.parts[0]}"
        groups.setdefault(key, []).append(path)
    total_modules = total_lines = 0
    big: list[tuple[Path, int]] = []
    print(f"{'package':<28} {'modules':>7} {'lines':>7}")
    for key in sorted(groups):
        counts = [(p, _lines(p)) for p in groups[key]]
        n_lines = sum(n for _, n in counts)
        total_modules += len(counts)
        total_lines += n_lines
        big.extend((p, n) for p, n in counts if n > MAX_LINES)
        print(f"{key:<28} {len(counts):>7} {n_lines:>7}")
    print(f"{'total':<28} {total_modules:>7} {total_lines:>7}")
    unexplained: list[tuple[Path, int]] = []
    doc = repo / ARCHITECTURE_DOC
    explained = doc.read_text() if doc.is_file() else None
    if big:
        print(f"\nmodules over {MAX_LINES} lines:")
        for p, n in sorted(big, key=lambda x: -x[1]):
            rel = p.relative_to(repo).as_posix()
            why = explained is None or f"`{rel}`" in explained
            print(f"  {rel}: {n}" + ("" if why else f"  <- not explained in {ARCHITECTURE_DOC}"))
            if not why:
                unexplained.append((p, n))
    findings: list[Finding] = []
    for shell in SHELLS:
        if (pkg / shell).is_dir():
            for path in _modules(pkg / shell):
                findings.extend(sql_in_module(path))
    status = 0
    if unexplained:
        print(
            f"\n{len(unexplained)} module(s) over {MAX_LINES} lines with no reason in {ARCHITECTURE_DOC}: "
            "split them, or say why under 'Modules over ~400 lines' (the path in backticks)"
        )
        status = 1
    if findings:
        print(f"\nSQL in the shells ({', '.join(f'{PACKAGE}/{s}/' for s in SHELLS)}); move it into a domain service:")
        for f in findings:
            print(f"  {Finding(f.path.relative_to(repo), f.line, f.what)}")
        return 1
    print("\nno SQL in the shells")
    return status


if __name__ == "__main__":
    sys.exit(main())
