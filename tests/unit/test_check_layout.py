"""scripts/check_layout.py: the package table, and SQL in the CLI or web shells fails it."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "check_layout.py"


def _script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("check_layout", SCRIPT)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["check_layout"] = mod
    spec.loader.exec_module(mod)
    return mod


CLEAN_CLI = '''"""Commands. SELECT a FROM b in a docstring is documentation, not SQL."""

import click

from lenscat.catalogue.service import count_rows


@click.command("top")
@click.option("--n", help="Select the top N from the ranking.")
def top(n: int) -> None:
    """SELECT * FROM candidates, as a command."""
    click.echo("select the top N sources")
    click.echo('see: lenscat sql "SELECT * FROM ingest_rejects"')
    click.echo("Update the catalogue, then delete from the list what you do not need")
    click.echo(f"{count_rows()} rows; create a table of them with --out")
'''

DOMAIN_SQL = """from sqlalchemy import text


def count_rows(*, session):
    return session.execute(text("SELECT count(*) FROM lenscat.sources")).scalar_one()
"""

DIRTY_WEB = '''import sqlalchemy as sa


def handler(session, name):
    session.execute(sa.text("UPDATE lenscat.graders SET active = false WHERE name = :n"), {"n": name})
    return QUERIES[name]


QUERIES = {"n": f"""
    select count(*)
      from lenscat.{'grades'}
"""}
'''


def _tree(root: Path, files: dict[str, str]) -> Path:
    for rel, body in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(body)
    return root


def _run(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), str(root)], capture_output=True, text=True, check=False)


def test_clean_tree_passes_and_lists_packages(tmp_path: Path) -> None:
    root = _tree(
        tmp_path,
        {
            "lenscat/__init__.py": "",
            "lenscat/cli/__init__.py": "",
            "lenscat/cli/main.py": CLEAN_CLI,
            "lenscat/catalogue/__init__.py": "",
            "lenscat/catalogue/service.py": DOMAIN_SQL,
            "lenscat/catalogue/big.py": "x = 1\n" * 401,
        },
    )
    res = _run(root)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "lenscat/catalogue" in res.stdout and "lenscat/cli" in res.stdout
    assert "lenscat/catalogue/big.py: 401" in res.stdout
    assert "no SQL in the shells" in res.stdout


def test_a_big_module_needs_a_reason_in_the_architecture_doc(tmp_path: Path) -> None:
    files = {
        "lenscat/__init__.py": "",
        "lenscat/catalogue/__init__.py": "",
        "lenscat/catalogue/big.py": "x = 1\n" * 401,
    }
    root = _tree(tmp_path, {**files, "docs/architecture.md": "# Architecture\n\nNothing about sizes.\n"})
    res = _run(root)
    assert res.returncode == 1
    assert "lenscat/catalogue/big.py: 401  <- not explained in docs/architecture.md" in res.stdout
    (root / "docs/architecture.md").write_text("* `lenscat/catalogue/big.py`: one cohesive job.\n")
    res = _run(root)
    assert res.returncode == 0, res.stdout + res.stderr


def test_sql_in_a_shell_fails_naming_file_and_line(tmp_path: Path) -> None:
    root = _tree(
        tmp_path,
        {
            "lenscat/__init__.py": "",
            "lenscat/cli/__init__.py": "",
            "lenscat/cli/main.py": CLEAN_CLI,
            "lenscat/web/__init__.py": "",
            "lenscat/web/app.py": DIRTY_WEB,
            "lenscat/catalogue/service.py": DOMAIN_SQL,
        },
    )
    res = _run(root)
    assert res.returncode == 1
    out = res.stdout
    assert "lenscat/web/app.py:5: sa.text(...) call" in out
    assert "lenscat/web/app.py:5: SQL string: 'UPDATE lenscat.graders SET" in out
    assert "lenscat/web/app.py:9: SQL string: 'select count(*) from lenscat.x_'" in out
    assert "lenscat/cli/" not in out.split("move it into a domain service:")[1]
    assert "lenscat/catalogue/service.py" not in out.split("move it into a domain service:")[1]


@pytest.mark.parametrize(
    ("s", "sql"),
    [
        ("SELECT job_id, kind FROM public.jobs ORDER BY job_id DESC LIMIT :n", True),
        ("select count(*) from lenscat.labels where origin = 'human'", True),
        ("SELECT 1", True),
        ("  (SELECT a FROM b)", True),
        ("INSERT INTO lenscat.labels (source_id) VALUES (:s)", True),
        ("UPDATE lenscat.jobs SET status = 'done'", True),
        ("DELETE FROM lenscat.web_sessions WHERE true", True),
        ("WITH t AS (SELECT 1) SELECT * FROM t", True),
        ("CREATE INDEX IF NOT EXISTS i ON t (x)", True),
        ("drop table lenscat.x", True),
        ("ALTER TABLE lenscat.x ADD COLUMN y int", True),
        ("ANALYZE lenscat.scores", True),
        ("SHOW server_version", True),
        ("SET LOCAL synchronous_commit = on", True),
        ("select the top N", False),
        ("Select the top N candidates from the scores", False),
        ("select sources from the catalogue", False),
        ("Update the catalogue set", False),
        ("delete from the list", False),
        ("Create a table of sources", False),
        ("with care as the docs say", False),
        ("Analyze the scores", False),
        ("Show all", False),
        ("Set it to 3", False),
        ('see: lenscat sql "SELECT * FROM ingest_rejects"', False),
    ],
)
def test_what_counts_as_sql(s: str, sql: bool) -> None:
    assert _script().looks_like_sql(s) is sql
