"""Who is logged in to the web app, through the real app (FastAPI TestClient) on the test database:
revocable sessions, login throttling, API tokens, the serve host check, error pages without paths."""

from __future__ import annotations

import io
import logging
import re
import shutil
import uuid

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from lenscat.grading.accounts import add_grader, set_active
from lenscat.settings import get_settings
from tests.integration.test_cli import run
from tests.integration.test_web import PASSWORD, csrf_of, login

NEW_PASSWORD = "battery-staple"


@pytest.fixture
def world(session):
    from lenscat.catalogue.surveys import ensure_survey

    sv = ensure_survey("webauth", ["g", "r", "z"], session=session)
    ids = (
        session.execute(
            text(
                "INSERT INTO lenscat.sources (survey_id, objid, ra, dec) SELECT :sv, 'a' || i, 20 + i * 0.01, 1 "
                "FROM generate_series(1, 5) i ORDER BY i RETURNING source_id"
            ),
            {"sv": sv.survey_id},
        )
        .scalars()
        .all()
    )
    for name in ("alice", "bob"):
        add_grader(name, password=PASSWORD, session=session)
    session.flush()
    return ids


@pytest.fixture
def app(world):
    from lenscat.web.app import create_app

    return create_app()


@pytest.fixture
def client(app):
    with TestClient(app, base_url="http://testserver") as c:
        yield c


def _cookie_of(client, name="alice", password=PASSWORD):
    client.cookies.clear()
    r = login(client, name, password)
    assert r.status_code == 303 and r.headers["location"] == "/", r.headers.get("location")
    return client.cookies["lenscat_session"]


def _with_cookie(client, cookie):
    """GET / and POST /api/grades carrying only ``cookie``: (status of /, where it redirects, status of the API)."""
    client.cookies.clear()
    client.cookies.set("lenscat_session", cookie)
    page = client.get("/", follow_redirects=False)
    api = client.post("/api/grades", json={"source_id": 1, "grade": "A"}, headers={"X-CSRF-Token": "x"})
    client.cookies.clear()
    return page.status_code, page.headers.get("location", ""), api.status_code


def _is_out(client, cookie):
    code, where, api = _with_cookie(client, cookie)
    return code == 303 and where.startswith("/login") and api == 401


def _sessions(session, name):
    return session.execute(
        text(
            "SELECT count(*) FROM lenscat.web_sessions w JOIN lenscat.graders g USING (grader_id) "
            "WHERE g.name = :n AND w.revoked_at IS NULL"
        ),
        {"n": name},
    ).scalar()


# ------------------------------------------------------------------------------------ 1. sessions
def test_logout_ends_the_session_server_side(client, session):
    cookie = _cookie_of(client)
    assert _with_cookie(client, cookie)[0] == 200
    client.cookies.set("lenscat_session", cookie)
    csrf = csrf_of(client)
    r = client.post("/logout", data={"csrf_token": csrf}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/login"
    assert _is_out(client, cookie)  # a copy of the old cookie no longer works
    row = session.execute(
        text("SELECT revoked_reason FROM lenscat.web_sessions ORDER BY session_id DESC LIMIT 1")
    ).one()
    assert row.revoked_reason == "logout"
    # only the hash of the secret is stored
    secret = cookie.rsplit(".", 1)[0]
    stored = session.execute(text("SELECT token_sha256 FROM lenscat.web_sessions")).scalars().all()
    assert secret not in stored and all(len(h) == 64 for h in stored)


def test_grader_logout_reset_and_disable_each_end_every_session(client, session, monkeypatch, capsys):
    # grader logout NAME: every session of alice, not bob's
    a1, a2, b1 = _cookie_of(client), _cookie_of(client), _cookie_of(client, "bob")
    code, out, err = run(monkeypatch, capsys, "grader", "list", "--format", "json")
    assert code == 0 and '"n_sessions": 2' in [x for x in out.splitlines() if '"alice"' in x][0]
    code, out, err = run(monkeypatch, capsys, "grader", "logout", "alice")
    assert code == 0 and "2 web session(s) ended" in out, err
    assert _is_out(client, a1) and _is_out(client, a2) and not _is_out(client, b1)
    assert _sessions(session, "alice") == 0
    code, out, err = run(monkeypatch, capsys, "grader", "logout", "nobody")
    assert code == 2 and "no grader named 'nobody'" in err

    # a password reset ends every session; the old password no longer logs in, the new one does
    a1, a2 = _cookie_of(client), _cookie_of(client)
    monkeypatch.setattr("sys.stdin", io.StringIO(NEW_PASSWORD + "\n"))
    code, out, err = run(monkeypatch, capsys, "grader", "add", "alice", "--reset", "--password-stdin")
    assert code == 0 and "web sessions were ended" in out, err
    assert _is_out(client, a1) and _is_out(client, a2) and not _is_out(client, b1)
    client.cookies.clear()
    assert "failed=1" in login(client, "alice", PASSWORD).headers["location"]
    a3 = _cookie_of(client, "alice", NEW_PASSWORD)

    # disable ends every session; a reset of a disabled account keeps it disabled
    code, out, err = run(monkeypatch, capsys, "grader", "disable", "alice")
    assert code == 0
    assert _is_out(client, a3)
    monkeypatch.setattr("sys.stdin", io.StringIO(PASSWORD + "\n"))
    code, out, err = run(monkeypatch, capsys, "grader", "add", "alice", "--reset", "--password-stdin")
    assert code == 0 and "stays disabled" in out and "lenscat grader enable alice" in out
    assert session.execute(text("SELECT is_active FROM lenscat.graders WHERE name = 'alice'")).scalar() is False
    client.cookies.clear()
    assert "failed=1" in login(client).headers["location"] and "lenscat_session" not in client.cookies
    assert _is_out(client, a3)
    # grader enable: a fresh login works, the ended sessions stay ended
    code, out, err = run(monkeypatch, capsys, "grader", "enable", "alice")
    assert code == 0 and "grader alice enabled" in out
    assert _is_out(client, a1) and _is_out(client, a3)
    a4 = _cookie_of(client)
    assert _with_cookie(client, a4)[0] == 200


def test_library_reset_and_disable_revoke_sessions(client, session):
    cookie = _cookie_of(client)
    set_active("alice", False, session=session)
    g, _ = add_grader("alice", password=NEW_PASSWORD, reset=True, session=session)
    assert not g.is_active and _is_out(client, cookie)
    set_active("alice", True, session=session)
    assert _is_out(client, cookie)


def test_expired_session_is_refused(client, session):
    cookie = _cookie_of(client)
    session.execute(text("UPDATE lenscat.web_sessions SET expires_at = clock_timestamp() - interval '1 second'"))
    assert _is_out(client, cookie)


# ------------------------------------------------------------------------------------ 2. throttling
def _try(client, name, password):
    client.cookies.clear()
    r = login(client, name, password)
    return r.headers["location"], "lenscat_session" in client.cookies


def test_thirty_wrong_passwords_then_the_right_one_is_refused_with_the_defaults(client):
    for i in range(30):
        _try(client, "alice", f"wrong-password-{i}")
    where, logged_in = _try(client, "alice", PASSWORD)
    assert not logged_in and "locked=" in where


def test_lockout_after_repeated_failures_even_for_the_right_password(client, session, monkeypatch, caplog):
    monkeypatch.setattr(get_settings(), "web_login_max_failures", 3)
    monkeypatch.setattr(get_settings(), "web_login_lockout_s", 600.0)
    caplog.set_level(logging.WARNING, logger="lenscat.grading.auth")
    known = [_try(client, "alice", f"wrong-password-{i}") for i in range(3)]
    unknown = [_try(client, "mallory", f"wrong-password-{i}") for i in range(3)]
    # the same answers whether the account exists or not: failed, failed, then locked for 10 minutes
    assert known == unknown == [("/login?next=%2F&failed=1", False)] * 2 + [("/login?next=%2F&locked=10", False)]
    assert _try(client, "alice", PASSWORD) == _try(client, "mallory", PASSWORD) == ("/login?next=%2F&locked=10", False)
    page = client.get("/login?next=%2F&locked=10")
    assert "Too many failed attempts: try again in 10 minutes." in page.text
    assert "failed web login for 'alice'" in caplog.text and "failed web login for 'mallory'" in caplog.text
    assert "locked out" in caplog.text
    # persisted: the attempts are in the database (several server processes share them)
    counts = dict(
        session.execute(
            text("SELECT outcome, count(*) FROM lenscat.login_attempts WHERE name = 'alice' GROUP BY 1")
        ).all()
    )
    assert counts == {"failed": 3, "locked": 1}
    # attempts during the lockout do not extend it: once the failures are older than the window, it works
    session.execute(
        text(
            "UPDATE lenscat.login_attempts SET attempted_at = attempted_at - interval '601 seconds' "
            "WHERE outcome = 'failed'"
        )
    )
    assert _try(client, "alice", PASSWORD) == ("/", True)


def test_a_success_clears_the_name_count_and_the_window_is_configurable(client, session, monkeypatch):
    monkeypatch.setattr(get_settings(), "web_login_max_failures", 3)
    monkeypatch.setattr(get_settings(), "web_login_lockout_s", 60.0)
    for _ in range(2):
        assert _try(client, "alice", "wrong-password")[0].endswith("failed=1")
        assert _try(client, "alice", PASSWORD) == ("/", True)
    for _ in range(2):
        _try(client, "alice", "wrong-password")
    assert _try(client, "alice", "wrong-password") == ("/login?next=%2F&locked=1", False)
    assert "try again in 1 minute." in client.get("/login?locked=1").text


def test_lockout_per_client_address_whatever_the_names(app, session, monkeypatch):
    monkeypatch.setattr(get_settings(), "web_login_max_failures_per_client", 4)
    with (
        TestClient(app, client=("198.51.100.7", 5000)) as attacker,
        TestClient(app, client=("192.0.2.10", 5000)) as grader,
    ):
        for i in range(4):
            _try(attacker, f"name{i}", "wrong-password")
        assert _try(attacker, "alice", PASSWORD)[1] is False  # this address is locked out
        assert _try(grader, "alice", PASSWORD) == ("/", True)  # another address is not
    clients = session.execute(text("SELECT DISTINCT client FROM lenscat.login_attempts")).scalars().all()
    assert sorted(clients) == ["192.0.2.10", "198.51.100.7"]


# ------------------------------------------------------------------------------------ 3. API tokens
def test_api_tokens_grade_and_export_from_a_script(client, world, session):
    g, token = add_grader("robot", token=True, session=session)
    assert token is not None
    sid = int(world[0])
    auth = {"Authorization": f"Bearer {token}"}
    client.cookies.clear()
    r = client.post(
        "/api/grades", json={"source_id": sid, "grade": "A", "request_id": str(uuid.uuid4())}, headers=auth
    )  # no CSRF token: no cookie is involved
    assert r.status_code == 200 and r.json()["recorded"], r.text
    assert (
        session.execute(
            text("SELECT r.name FROM lenscat.grades g JOIN lenscat.graders r USING (grader_id) WHERE g.source_id = :s"),
            {"s": sid},
        ).scalar()
        == "robot"
    )
    exp = client.get("/export", params={"grades": "A", "format": "ecsv"}, headers=auth)
    assert exp.status_code == 200 and str(sid) in exp.text
    adv = client.post("/api/learn/no-such-campaign/advance", headers=auth)
    assert adv.status_code == 404  # authenticated: the campaign is what is missing
    # wrong tokens: 401, never a fallback to a cookie
    for bad in (
        {"Authorization": "Bearer " + "x" * 32},
        {"Authorization": "Bearer "},
        {"Authorization": "bearer " + token[:-1]},
    ):
        r = client.post("/api/grades", json={"source_id": sid, "grade": "B"}, headers=bad)
        assert r.status_code == 401 and "bearer" in r.headers["www-authenticate"].lower()
        assert client.get("/export", headers=bad, follow_redirects=False).status_code == 401
    _cookie_of(client)
    r = client.post(
        "/api/grades",
        json={"source_id": sid, "grade": "B"},
        headers={"Authorization": "Bearer wrong", "X-CSRF-Token": csrf_of(client)},
    )
    assert r.status_code == 401
    client.cookies.clear()
    # a token is only taken from the Authorization header: not from a cookie, not from the query string
    for params in ({"access_token": token}, {"token": token}):
        assert client.post("/api/grades", params=params, json={"source_id": sid, "grade": "B"}).status_code == 401
        r = client.get("/export", params={**params, "grades": "A", "format": "ecsv"}, follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"].startswith("/login")
    client.cookies.set("lenscat_session", token)
    assert client.post("/api/grades", json={"source_id": sid, "grade": "B"}).status_code == 401
    client.cookies.clear()
    # a disabled grader's token stops working; enabling the account again brings it back
    set_active("robot", False, session=session)
    assert client.post("/api/grades", json={"source_id": sid, "grade": "B"}, headers=auth).status_code == 401
    assert client.get("/export", headers=auth, params={"grades": "A", "format": "ecsv"}).status_code == 401
    # a new token (grader add --reset --token) replaces the old one
    set_active("robot", True, session=session)
    _, new = add_grader("robot", token=True, reset=True, session=session)
    assert client.post("/api/grades", json={"source_id": sid, "grade": "B"}, headers=auth).status_code == 401
    ok = client.post("/api/grades", json={"source_id": sid, "grade": "B"}, headers={"Authorization": f"Bearer {new}"})
    assert ok.status_code == 200


# ------------------------------------------------------------------------------------ 4. serving and errors
def test_serve_refuses_a_non_loopback_host_without_secure_cookies(session, monkeypatch, capsys):
    import uvicorn

    started = []
    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: started.append(k["host"]))
    monkeypatch.setattr(get_settings(), "web_secure_cookies", False)
    for host in ("0.0.0.0", "::", "192.0.2.10"):
        code, out, err = run(monkeypatch, capsys, "serve", "--host", host)
        assert code == 2 and started == [], (host, err)
        assert len(err.strip().splitlines()) == 1 and err.startswith("lenscat: error: refusing to serve on")
        assert "LENSCAT_WEB_SECURE_COOKIES=true" in err and "--insecure" in err
    code, out, err = run(monkeypatch, capsys, "serve", "--host", "0.0.0.0", "--insecure")
    assert code == 0 and started == ["0.0.0.0"] and "WARNING" in err and "clear text" in err
    code, out, err = run(monkeypatch, capsys, "serve")  # loopback: no warning
    assert code == 0 and started[-1] == "127.0.0.1" and "WARNING" not in err
    monkeypatch.setattr(get_settings(), "web_secure_cookies", True)
    code, out, err = run(monkeypatch, capsys, "serve", "--host", "0.0.0.0")
    assert code == 0 and started[-1] == "0.0.0.0" and "WARNING" not in err


def test_error_pages_show_no_absolute_paths(client, session, data_dir, tmp_path):
    from lenscat.catalogue.ingest_fits import ingest_fits_cutouts

    deep = tmp_path / "private" / "cutouts"
    deep.mkdir(parents=True)
    files = []
    for f in sorted((data_dir / "images" / "ps1_sled_lenses").glob("SDSSJ1430_6104_PS1_[grz].fits")):
        files.append(deep / f.name)
        shutil.copy(f, files[-1])
    (src,) = ingest_fits_cutouts(files, "web-paths", session=session)
    for f in files:
        f.unlink()
    _cookie_of(client)
    r = client.get(f"/cutout/{src.source_id}.png")
    assert r.status_code == 400 and str(tmp_path) not in r.text and "/private/" not in r.text, r.text
    assert re.search(r'id="error-message">SDSSJ1430_6104_PS1_[grz]\.fits: file not found<', r.text), r.text
    assert str(tmp_path) not in client.get(f"/source/{src.source_id}").text


def test_unexpected_errors_are_logged_and_answered_without_details(app, caplog):
    @app.get("/boom")
    def boom() -> None:
        raise RuntimeError("cannot open /srv/lenscat/secret/config.toml")

    @app.get("/api/boom")
    def api_boom() -> None:
        raise RuntimeError("cannot open /srv/lenscat/secret/config.toml")

    caplog.set_level(logging.ERROR, logger="lenscat.web")
    with TestClient(app, raise_server_exceptions=False) as c:
        page = c.get("/boom")
        api = c.get("/api/boom")
    assert page.status_code == 500 and "internal error" in page.text and "/srv/" not in page.text
    assert "Traceback" not in page.text and page.headers["x-frame-options"] == "DENY"
    assert api.status_code == 500 and api.json() == {"error": "internal error: the server log has the details"}
    assert "config.toml" in caplog.text and "RuntimeError" in caplog.text  # the traceback is in the server log
