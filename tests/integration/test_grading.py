"""Graders and grades on the real database: accounts, append-only grades, consensus, conflicts,
human labels, and the grader/grade/grades commands."""

from __future__ import annotations

import json
import uuid

import pytest
from sqlalchemy import text

from lenscat.catalogue.surveys import ensure_survey
from lenscat.errors import LenscatError, NotFoundError
from lenscat.grading.accounts import (
    add_grader,
    authenticate,
    authenticate_token,
    get_grader,
    set_active,
    verify_password,
)
from lenscat.grading.grades import (
    GradeInput,
    conflicts_table,
    consensus_table,
    parse_grade,
    record_grades,
    refresh_human_labels,
)
from tests.integration.test_cli import run


@pytest.fixture
def ids(session):
    sv = ensure_survey("gradetest", ["r"], session=session)
    return (
        session.execute(
            text(
                "INSERT INTO lenscat.sources (survey_id, objid, ra, dec) SELECT :sv, 'g' || i, 30 + i * 0.01, 5 "
                "FROM generate_series(1, 6) i ORDER BY i RETURNING source_id"
            ),
            {"sv": sv.survey_id},
        )
        .scalars()
        .all()
    )


def _labels(session, sid):
    return (
        session.execute(text("SELECT label FROM lenscat.labels WHERE source_id = :s AND origin = 'human'"), {"s": sid})
        .scalars()
        .all()
    )


def test_accounts_hash_passwords_and_tokens(session):
    g, token = add_grader("carol", password="long enough pw", full_name="Carol", token=True, session=session)
    stored = session.execute(text("SELECT password_hash, token_sha256 FROM lenscat.graders WHERE name = 'carol'")).one()
    assert stored.password_hash.startswith("scrypt$") and "long enough pw" not in stored.password_hash
    assert token and token not in stored.token_sha256 and len(stored.token_sha256) == 64
    assert verify_password("long enough pw", stored.password_hash) and not verify_password(
        "wrong", stored.password_hash
    )
    assert authenticate("carol", "long enough pw", session=session) == g
    assert authenticate("carol", "long enough px", session=session) is None
    assert authenticate("nobody", "long enough pw", session=session) is None
    assert authenticate_token(token, session=session) == g and authenticate_token("x" * 32, session=session) is None
    with pytest.raises(LenscatError, match="already exists"):
        add_grader("carol", password="another password", session=session)
    add_grader("carol", password="a new password", reset=True, session=session)
    assert authenticate("carol", "a new password", session=session) is not None
    with pytest.raises(LenscatError, match="at least 8"):
        add_grader("dave", password="short", session=session)
    with pytest.raises(LenscatError, match="must be 1-64"):
        add_grader("bad name; drop", password="long enough pw", session=session)
    set_active("carol", False, session=session)
    assert authenticate("carol", "a new password", session=session) is None
    with pytest.raises(LenscatError, match="disabled"):
        get_grader("carol", session=session)


def test_grades_are_append_only_idempotent_per_request_and_drive_the_consensus(session, ids):
    a, _ = add_grader("ann", password="password-a", session=session)
    b, _ = add_grader("ben", password="password-b", session=session)
    rid = str(uuid.uuid4())
    assert record_grades(a, [GradeInput(ids[0], "A", "arc", rid)], session=session) == 1
    assert record_grades(a, [GradeInput(ids[0], "A", "arc", rid)], session=session) == 0  # resubmitted
    assert _labels(session, ids[0]) == [1]
    record_grades(b, [GradeInput(ids[0], "c")], session=session)
    cons = consensus_table(source_ids=[ids[0]], session=session)
    assert (cons["consensus_grade"][0], cons["n_votes"][0], cons["disagreement"][0]) == ("B", 2, 2)
    assert cons["grades"][0] == "ann:A ben:C"
    assert list(conflicts_table(session=session)["source_id"]) == [ids[0]]
    # ann changes her mind: a new row, the latest counts, the old one stays
    record_grades(a, [GradeInput(ids[0], "N")], session=session)
    n = session.execute(text("SELECT count(*) FROM lenscat.grades WHERE source_id = :s"), {"s": ids[0]}).scalar()
    assert n == 3
    cons = consensus_table(source_ids=[ids[0]], session=session)
    assert cons["consensus_grade"][0] == "C" and float(cons["mean_grade"][0]) == 0.5
    assert _labels(session, ids[0]) == []  # C is not a training label by default
    refresh_human_labels(None, positive_grades=["A", "B", "C"], session=session)
    assert _labels(session, ids[0]) == [1]
    # a skip is recorded but does not vote
    record_grades(a, [GradeInput(ids[1], "S"), GradeInput(ids[2], "not a lens")], session=session)
    assert consensus_table(source_ids=[ids[1]], session=session).__len__() == 0
    assert _labels(session, ids[2]) == [0]
    assert len(conflicts_table(min_spread=3, session=session)) == 0
    with pytest.raises(NotFoundError, match="no source with id 999999999"):
        record_grades(a, [GradeInput(999999999, "A")], session=session)
    with pytest.raises(LenscatError, match="unknown grade"):
        record_grades(a, [GradeInput(ids[3], "maybe")], session=session)
    with pytest.raises(LenscatError, match="not a UUID"):
        record_grades(a, [GradeInput(ids[3], "A", None, "abc")], session=session)
    assert parse_grade("3") == "A" and parse_grade(" b ") == "B" and parse_grade("skip") == "S"


def test_grading_commands_from_the_cli(session, ids, monkeypatch, capsys, tmp_path):
    monkeypatch.setattr("sys.stdin", __import__("io").StringIO("cli password\n"))
    code, out, err = run(monkeypatch, capsys, "grader", "add", "erin", "--password-stdin", "--token")
    assert code == 0 and "grader erin added" in out and "API token (shown once)" in out
    code, out, err = run(monkeypatch, capsys, "grade", str(ids[4]), "A", "--grader", "erin", "--comment", "ring")
    assert code == 0 and "1 grade(s) recorded" in out
    rid = str(uuid.uuid4())
    f = tmp_path / "grades.csv"
    f.write_text(f"source_id,grade,comment,request_id\n{ids[5]},b,,{rid}\n{ids[3]},n,spiral,\n")
    code, out, err = run(monkeypatch, capsys, "grade", "--file", str(f), "--grader", "erin")
    assert code == 0 and "2 grade(s) recorded" in out
    code, out, err = run(monkeypatch, capsys, "grade", "--file", str(f), "--grader", "erin")
    assert code == 0 and "1 grade(s) recorded" in out and "1 already recorded" in out  # only the row with no id
    bad = tmp_path / "bad.csv"
    bad.write_text(f"source_id,grade\n{ids[5]},A\n{ids[3]},perhaps\n")
    code, out, err = run(monkeypatch, capsys, "grade", "--file", str(bad), "--grader", "erin")
    assert code == 2 and f"{bad}: row 2: unknown grade 'perhaps'" in err
    code, out, err = run(monkeypatch, capsys, "grade", str(ids[4]), "A", "--grader", "nobody")
    assert code == 2 and "no grader named 'nobody'" in err
    code, out, err = run(monkeypatch, capsys, "grades", "consensus", "--format", "json")
    rows = {r["source_id"]: r for r in map(json.loads, out.splitlines())}
    assert rows[ids[4]]["consensus_grade"] == "A" and rows[ids[3]]["consensus_grade"] == "N"
    code, out, err = run(monkeypatch, capsys, "grades", "list", "--grader", "erin", "--format", "json")
    assert code == 0 and len(out.splitlines()) == 4
    code, out, err = run(monkeypatch, capsys, "grader", "list", "--format", "json")
    erin = [json.loads(x) for x in out.splitlines() if json.loads(x)["name"] == "erin"][0]
    assert erin["n_grades"] == 4 and erin["has_token"] and "password_hash" not in erin
    code, out, err = run(monkeypatch, capsys, "grades", "conflicts")
    assert code == 0
    code, out, err = run(monkeypatch, capsys, "grader", "disable", "erin")
    assert code == 0
    code, out, err = run(monkeypatch, capsys, "grade", str(ids[4]), "B", "--grader", "erin")
    assert code == 2 and "disabled" in err


def test_views_are_documented_and_readable(session):
    def cols(view):
        return set(
            session.execute(
                text(
                    "SELECT column_name FROM information_schema.columns WHERE table_schema='public' AND table_name=:v"
                ),
                {"v": view},
            ).scalars()
        )

    assert {"source_id", "grader", "grade", "created_at", "comment"} <= cols("grades")
    assert {"source_id", "consensus_grade", "mean_grade", "n_votes", "disagreement"} <= cols("grade_consensus")
    assert {
        "source_id",
        "consensus_grade",
        "best_score",
        "literature_status",
        "n_spectral_hits",
        "best_hit_z_source",
    } <= cols("candidates")
    missing = (
        session.execute(
            text(
                "SELECT c.relname || '.' || a.attname FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid "
                "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'public' AND a.attnum > 0 "
                "AND c.relname IN ('grades', 'grade_consensus', 'grade_conflicts', 'candidates') "
                "AND col_description(c.oid, a.attnum) IS NULL"
            )
        )
        .scalars()
        .all()
    )
    assert missing == []
