"""The grading web app in-process (FastAPI TestClient) on the test database, rolled back afterwards:
logins, CSRF, grading, candidate page, search, read-only query page and injection attempts."""

from __future__ import annotations

import re
import uuid

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from lenscat.catalogue.surveys import ensure_survey
from lenscat.embeddings.vectors import upsert_embeddings
from lenscat.grading.accounts import add_grader
from lenscat.registry.versions import register_model

PASSWORD = "correct-horse"
INJECTIONS = [
    "'; DROP TABLE lenscat.grades; --",
    "1 OR 1=1",
    '" OR ""="',
    "%' OR '1'='1",
    "1; DELETE FROM lenscat.sources",
    "<script>alert(1)</script>",
    "J1000+0230' --",
    "\\x00\\",
]


@pytest.fixture
def world(session):
    sv = ensure_survey("webunit", ["g", "r", "z"], session=session)
    rng = np.random.default_rng(3)
    n = 40
    ids = np.array(
        session.execute(
            text(
                "INSERT INTO lenscat.sources (survey_id, objid, ra, dec, mag) "
                "SELECT :sv, 'w' || i, 210 + i * 0.01, -1 + i * 0.01, ARRAY[20, 19.5, 19]::real[] "
                "FROM generate_series(1, :n) i ORDER BY i RETURNING source_id"
            ),
            {"sv": sv.survey_id, "n": n},
        )
        .scalars()
        .all()
    )
    enc, _ = register_model(
        "encoder",
        "webunit-enc",
        architecture="external",
        output_dim=8,
        checkpoint_path=None,
        checkpoint_sha256="d" * 64,
        origin="external",
        session=session,
    )
    upsert_embeddings(enc, ids, rng.normal(size=(n, 8)), session=session)
    for name in ("alice", "bob"):
        add_grader(name, password=PASSWORD, session=session)
    session.flush()
    return ids


@pytest.fixture
def client(world):
    from lenscat.web.app import create_app

    with TestClient(create_app(), base_url="http://testserver") as c:
        yield c


def match_in(pattern: str, page: str) -> re.Match[str]:
    """The first match of ``pattern`` in ``page`` (the test fails if there is none)."""
    m = re.search(pattern, page)
    assert m is not None, f"{pattern!r} not in the page"
    return m


def login(client, name="alice", password=PASSWORD):
    page = client.get("/login")
    token = match_in(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
    r = client.post(
        "/login", data={"name": name, "password": password, "csrf_token": token, "next": "/"}, follow_redirects=False
    )
    return r


def csrf_of(client):
    return match_in(r'data-csrf="([^"]+)"|name="csrf_token" value="([^"]+)"', client.get("/").text).group(2)


def test_pages_need_a_login_and_bad_passwords_are_refused(client):
    r = client.get("/grid?kind=sources&ids=1", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].startswith("/login?next=")
    assert client.post("/api/grades", json={"source_id": 1, "grade": "A"}).status_code == 401
    bad = login(client, password="wrong-password")
    assert bad.status_code == 303 and "failed=1" in bad.headers["location"]
    assert "lenscat_session" not in client.cookies
    ok = login(client)
    assert ok.status_code == 303 and ok.headers["location"] == "/" and "lenscat_session" in client.cookies
    home = client.get("/")
    assert home.status_code == 200 and "alice" in home.text
    assert "default-src 'self'" in home.headers["content-security-policy"]


def test_login_form_without_its_csrf_cookie_is_refused(client):
    client.get("/login")
    r = client.post("/login", data={"name": "alice", "password": PASSWORD, "csrf_token": "forged"})
    assert r.status_code == 403
    nxt = login(client)
    assert nxt.status_code == 303
    # an open redirect through ?next= is not followed
    page = client.get("/login?next=//evil.example/x")
    assert 'value="/"' in page.text


def test_grading_from_the_api_needs_the_session_csrf_token_and_is_idempotent(client, world, session):
    login(client)
    csrf = csrf_of(client)
    sid = int(world[0])
    body = {"source_id": sid, "grade": "A", "request_id": str(uuid.uuid4()), "sample": "test"}
    assert client.post("/api/grades", json=body).status_code == 403  # no token
    assert client.post("/api/grades", json=body, headers={"X-CSRF-Token": "nope"}).status_code == 403
    r = client.post("/api/grades", json=body, headers={"X-CSRF-Token": csrf})
    assert r.status_code == 200 and r.json()["recorded"] and r.json()["consensus"]["consensus_grade"] == "A"
    again = client.post("/api/grades", json=body, headers={"X-CSRF-Token": csrf})  # a retried request
    assert again.status_code == 200 and not again.json()["recorded"]
    assert session.execute(text("SELECT count(*) FROM lenscat.grades WHERE source_id = :s"), {"s": sid}).scalar() == 1
    bad = client.post("/api/grades", json={"source_id": sid, "grade": "Q"}, headers={"X-CSRF-Token": csrf})
    assert bad.status_code == 400 and "unknown grade" in bad.json()["error"]
    missing = client.post("/api/grades", json={"source_id": 10**12, "grade": "A"}, headers={"X-CSRF-Token": csrf})
    assert missing.status_code == 404
    # bob grades the same source C: the consensus moves to B and shows as a conflict
    client.cookies.clear()
    login(client, "bob")
    r = client.post("/api/grades", json={"source_id": sid, "grade": "C"}, headers={"X-CSRF-Token": csrf_of(client)})
    assert r.json()["consensus"] == {"consensus_grade": "B", "mean_grade": 2.0, "n_votes": 2}
    assert str(sid) in client.get("/conflicts").text
    labels = (
        session.execute(text("SELECT label FROM lenscat.labels WHERE source_id = :s AND origin = 'human'"), {"s": sid})
        .scalars()
        .all()
    )
    assert labels == [1]  # consensus B counts as a lens for training


def test_candidate_page_form_grade_and_grid(client, world, session):
    login(client)
    sid = int(world[5])
    page = client.get(f"/source/{sid}")
    assert page.status_code == 200 and f"Source {sid}" in page.text and "Nearest neighbours" in page.text
    assert "No cutout" in page.text
    token = match_in(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
    rid = match_in(r'name="request_id" value="([^"]+)"', page.text).group(1)
    r = client.post(
        f"/source/{sid}/grade",
        data={"grade": "N", "csrf_token": token, "request_id": rid, "comment": "spiral arm"},
        follow_redirects=False,
    )
    assert r.status_code == 303
    assert client.post(f"/source/{sid}/grade", data={"grade": "N", "request_id": rid}).status_code == 403
    after = client.get(f"/source/{sid}").text
    assert 'id="my-grade">N<' in after and "spiral arm" in after
    grid = client.get(f"/grid?kind=sources&ids={world[5]},{world[6]}")
    assert grid.status_code == 200 and grid.text.count('class="cell') == 2 and 'data-grade="N"' in grid.text
    sim = client.get(f"/grid?kind=similar&source_id={world[0]}&n=10")
    assert sim.status_code == 200 and sim.text.count('class="cell') == 10 and "sim " in sim.text
    assert client.get("/source/999999999").status_code == 404


def test_search_box_finds_ids_positions_and_object_ids(client, world):
    login(client)
    r = client.get(f"/search?q={world[2]}", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == f"/source/{world[2]}"
    near = client.get("/search", params={"q": "210.03 -0.97"}, follow_redirects=False)
    assert near.status_code == 303 and near.headers["location"] == f"/source/{world[2]}"
    sexa = client.get("/search", params={"q": "14:00:07.2 -00:58:12"}, follow_redirects=False)
    assert sexa.status_code == 303 and sexa.headers["location"] == f"/source/{world[2]}"
    objid = client.get("/search", params={"q": "w3"}, follow_redirects=False)
    assert objid.status_code == 303 and objid.headers["location"] == f"/source/{world[2]}"
    none = client.get("/search", params={"q": "no such thing"})
    assert none.status_code == 200 and "0 match(es)" in none.text


def test_injection_strings_in_every_field_change_nothing(client, world, session):
    login(client)
    csrf = csrf_of(client)
    before = session.execute(
        text("SELECT (SELECT count(*) FROM lenscat.sources), (SELECT count(*) FROM lenscat.grades)")
    ).one()
    for s in INJECTIONS:
        r = run_query(client, s)
        assert r.status_code == 200 and "<script>alert(1)</script>" not in r.text
        for path, params in [
            ("/search", {"q": s}),
            ("/query", {"sql": s}),
            ("/grid", {"kind": "top", "classifier": s}),
            ("/grid", {"kind": "similar", "source_id": s}),
            ("/grid", {"kind": "sql", "sql": s}),
            ("/grid", {"kind": s}),
            ("/grid", {"kind": "loop", "campaign": s}),
            ("/grid", {"kind": "sources", "ids": s}),
            ("/export", {"grades": s}),
            ("/export", {"format": s}),
            ("/login", {"next": s}),
        ]:
            r = client.get(path, params=params)
            assert r.status_code in (200, 303, 400, 403, 404), (path, params, r.status_code)
            assert "<script>alert(1)</script>" not in r.text  # escaped when echoed
        r = client.post(
            "/api/grades",
            json={"source_id": int(world[0]), "grade": s, "comment": s, "sample": s},
            headers={"X-CSRF-Token": csrf},
        )
        assert r.status_code in (400, 422)
        r = client.post("/api/grades", json={"source_id": s, "grade": "A"}, headers={"X-CSRF-Token": csrf})
        assert r.status_code == 422
    # a comment with injection text is stored verbatim, as data
    r = client.post(
        "/api/grades",
        json={"source_id": int(world[1]), "grade": "S", "comment": INJECTIONS[0]},
        headers={"X-CSRF-Token": csrf},
    )
    assert r.status_code == 200
    assert (
        session.execute(text("SELECT comment FROM lenscat.grades WHERE source_id = :s"), {"s": int(world[1])}).scalar()
        == INJECTIONS[0]
    )
    after = session.execute(
        text("SELECT (SELECT count(*) FROM lenscat.sources), (SELECT count(*) FROM lenscat.grades)")
    ).one()
    assert after[0] == before[0] and after[1] == before[1] + 1


def test_export_download_reads_back_with_astropy(client, world, tmp_path):
    from astropy.table import Table

    login(client)
    empty = client.get("/export", params={"grades": "A,B", "format": "ecsv"})
    assert empty.status_code == 404 and "no source has a consensus grade" in empty.text
    csrf = csrf_of(client)
    for sid, g in ((world[7], "A"), (world[8], "B"), (world[9], "N")):
        client.post("/api/grades", json={"source_id": int(sid), "grade": g}, headers={"X-CSRF-Token": csrf})
    for fmt, suffix in (("ecsv", ".ecsv"), ("votable", ".vot"), ("fits", ".fits")):
        r = client.get("/export", params={"grades": "A,B", "format": fmt})
        assert r.status_code == 200 and suffix in r.headers["content-disposition"]
        path = tmp_path / f"c{suffix}"
        path.write_bytes(r.content)
        t = Table.read(path)
        assert sorted(int(x) for x in t["source_id"]) == sorted([int(world[7]), int(world[8])])
        assert str(t["ra"].unit) == "deg"


def run_query(client, sql):
    return client.post("/query", data={"sql": sql, "csrf_token": csrf_of(client)})


def test_query_page_is_read_only(client):
    login(client)
    ok = run_query(client, "SELECT 1 AS source_id, 'x' AS y")
    assert ok.status_code == 200 and 'id="sql-result"' in ok.text and 'id="grade-sql"' in ok.text
    for sql in (
        "DELETE FROM grades",
        "INSERT INTO lenscat.grades DEFAULT VALUES",
        "SELECT * FROM lenscat.graders",
        "SELECT 1; SELECT 2",
        "CREATE TABLE x (a int)",
        "WITH d AS (DELETE FROM lenscat.grades RETURNING 1) SELECT * FROM d",
    ):
        r = run_query(client, sql)
        assert r.status_code == 200 and 'id="sql-error"' in r.text, sql
    assert "password_hash" not in run_query(client, "SELECT * FROM grades").text


def test_query_runs_only_from_a_post_with_the_csrf_token(client):
    login(client)
    sql = "SELECT 7 AS source_id, 'from-a-link' AS y"
    page = client.get("/query", params={"sql": sql})  # a link fills the form, runs nothing
    assert page.status_code == 200 and "from-a-link" in page.text and 'id="sql-result"' not in page.text
    r = client.post("/query", data={"sql": sql})
    assert r.status_code == 403 and 'id="sql-result"' not in r.text
    r = client.post("/query", data={"sql": sql, "csrf_token": "forged"})
    assert r.status_code == 403
    ok = run_query(client, sql)
    assert ok.status_code == 200 and 'id="sql-result"' in ok.text
    # the grid link the page shows is signed for this login; the same SQL unsigned or re-signed is refused
    link = match_in(r'href="(/grid\?[^"]+)" id="grade-sql"', ok.text).group(1).replace("&amp;", "&")
    assert client.get(link).status_code == 200
    assert client.get("/grid", params={"kind": "sql", "sql": sql, "n": 100}).status_code == 403
    assert client.get("/grid", params={"kind": "sql", "sql": sql, "n": 100, "sig": "0" * 64}).status_code == 403


def test_query_page_fetches_at_most_its_cap(client, monkeypatch):
    from lenscat.settings import get_settings

    monkeypatch.setattr(get_settings(), "web_query_max_rows", 25)
    login(client)
    r = run_query(client, "SELECT g FROM generate_series(1, 5000000) g")
    assert r.status_code == 200 and "first 25 rows" in r.text
    assert r.text.count("<tr>") == 26  # header and 25 rows
    small = run_query(client, "SELECT g FROM generate_series(1, 3) g")
    assert "3 row(s)" in small.text and "first" not in small.text


def test_query_page_statement_timeout_is_short_and_configurable(client, monkeypatch):
    from lenscat.settings import get_settings

    assert get_settings().web_statement_timeout_s <= 30
    monkeypatch.setattr(get_settings(), "web_statement_timeout_s", 0.5)
    login(client)
    r = run_query(client, "SELECT pg_sleep(5)")
    assert r.status_code == 200 and "statement timeout" in r.text


def test_fits_cutouts_render_per_band_and_in_rgb(client, session, data_dir, tmp_path, monkeypatch, capsys):
    from PIL import Image

    from lenscat.catalogue.ingest_fits import ingest_fits_cutouts
    from lenscat.images.store import source_cutout
    from tests.integration.test_cli import run

    files = sorted((data_dir / "images" / "ps1_sled_lenses").glob("SDSSJ1430_6104_PS1_[grz].fits"))
    (src,) = ingest_fits_cutouts(files, "web-ps1", session=session)
    img, bands = source_cutout(src.source_id, session=session)
    assert bands == ["g", "r", "z"] and img.shape[0] == 3
    login(client)
    for band in ("rgb", "g", "z"):
        r = client.get(f"/cutout/{src.source_id}.png", params={"band": band})
        assert r.status_code == 200 and r.headers["content-type"] == "image/png"
        path = tmp_path / f"{band}.png"
        path.write_bytes(r.content)
        assert Image.open(path).size[0] == min(img.shape[-1], 152)
    assert client.get(f"/cutout/{src.source_id}.png", params={"band": "u"}).status_code == 400
    page = client.get(f"/source/{src.source_id}").text
    assert page.count('<img src="/cutout/') == 4  # RGB + g, r, z
    code, out, err = run(monkeypatch, capsys, "cutout", str(src.source_id), "--out", str(tmp_path / "c.png"))
    assert code == 0 and (tmp_path / "c.png").stat().st_size > 1000
