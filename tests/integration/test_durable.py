"""Human work commits durably (issue 29, item 15).

The embedded server runs with ``synchronous_commit = off`` (bulk loads are resumable); a grade,
a grader account, a human label or an active-learning batch cannot be re-run, so the functions that
write them turn ``synchronous_commit`` on for their own transaction. Each check runs the function
in a savepoint of its own and reads the setting in force inside that transaction.
"""

from __future__ import annotations

import pytest
from sqlalchemy import text

from lenscat.settings import get_settings


def _setting(session) -> str:
    return str(session.execute(text("SHOW synchronous_commit")).scalar())


def _inside(db_conn, work) -> str:
    """The synchronous_commit in force in the transaction that ran ``work(session)``."""
    from lenscat.db.session import session_scope

    savepoint = db_conn.begin_nested()
    try:
        with session_scope() as s:
            work(s)
            return _setting(s)
    finally:
        savepoint.rollback()


@pytest.fixture
def bulk_default(db_conn):
    """The server's own setting, which bulk paths keep (off on the embedded server)."""
    value = str(db_conn.exec_driver_sql("SHOW synchronous_commit").scalar())
    if get_settings().embedded:
        assert value == "off"
    return value


def test_grades_and_human_labels_commit_durably(db_conn, session, bulk_default):
    from lenscat.catalogue.surveys import ensure_survey
    from lenscat.grading.accounts import add_grader
    from lenscat.grading.grades import GradeInput, record_grades, refresh_human_labels

    sv = ensure_survey("durable", ["r"], session=session)
    sid = session.execute(
        text("INSERT INTO lenscat.sources (survey_id, objid, ra, dec) VALUES (:s, 'd1', 1, 2) RETURNING source_id"),
        {"s": sv.survey_id},
    ).scalar_one()
    grader, _ = add_grader("durable-grader", password="a-long-password", session=session)
    session.flush()
    session.execute(text("RESET synchronous_commit"))  # the account's own transaction was durable
    assert _setting(session) == bulk_default
    assert _inside(db_conn, lambda s: record_grades(grader, [GradeInput(sid, "A", "arc to the NE")], session=s)) == "on"
    assert _inside(db_conn, lambda s: refresh_human_labels([sid], session=s)) == "on"
    # a bulk path in the same kind of transaction keeps the server's setting
    assert _inside(db_conn, lambda s: s.execute(text("SELECT count(*) FROM lenscat.sources"))) == bulk_default


def test_grader_accounts_commit_durably(db_conn, bulk_default):
    from lenscat.grading.accounts import add_grader, set_active

    assert _inside(db_conn, lambda s: add_grader("durable-acct", password="a-long-password", session=s)) == "on"

    def add_then_disable(s):
        add_grader("durable-acct2", password="a-long-password", session=s)
        s.flush()
        s.execute(text("RESET synchronous_commit"))
        assert _setting(s) == bulk_default
        set_active("durable-acct2", False, session=s)

    assert _inside(db_conn, add_then_disable) == "on"


def test_active_learning_batches_commit_durably(db_conn, session, tmp_path, bulk_default):
    from lenscat.learning.active import propose_next
    from lenscat.learning.campaigns import create_campaign
    from tests.integration.test_active_learning import _world

    enc, _, _, _ = _world(session, tmp_path)
    session.flush()
    assert _inside(db_conn, lambda s: create_campaign("durable-al", enc, batch_size=20, session=s)) == "on"

    def propose(s):
        camp = create_campaign("durable-al2", enc, batch_size=20, session=s)
        s.flush()
        s.execute(text("RESET synchronous_commit"))
        propose_next(camp, session=s)

    assert _inside(db_conn, propose) == "on"


def test_web_logins_logouts_and_revocations_commit_durably(db_conn, session, bulk_default):
    from lenscat.grading.accounts import add_grader, logout_grader
    from lenscat.grading.auth import end_session, start_session

    grader, _ = add_grader("durable-web", password="a-long-password", session=session)
    session.flush()
    session.execute(text("RESET synchronous_commit"))

    def login_logout(s):
        _, ws = start_session(grader, session=s, client="127.0.0.1")
        s.flush()
        assert _setting(s) == "on"
        s.execute(text("RESET synchronous_commit"))
        end_session(ws, session=s)

    assert _inside(db_conn, login_logout) == "on"
    assert _inside(db_conn, lambda s: logout_grader("durable-web", session=s)) == "on"
