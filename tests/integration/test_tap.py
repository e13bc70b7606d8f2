"""The TAP service under `lenscat serve`, driven by real clients: pyvo (sync and async), STILTS, httpx.

One fresh database with a small sky (a survey of sources around two centres, a literature lens
list), one API-token grader, and `lenscat serve` on a free local port, shared by this module.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import psycopg
import pytest

from tests.integration.live_server import fresh_database, lenscat_server
from tests.integration.pgrows import one

ROOT = Path(__file__).resolve().parents[2]
CENTRE = (150.0, 2.2)
RADIUS_DEG = 5.0 / 3600.0


def _cli(env: dict[str, str], *args: str, stdin: str | None = None) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "lenscat.cli", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        input=stdin,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@pytest.fixture(scope="module")
def tap(engine, tmp_path_factory):
    """(base URL of /tap, database URL, env, grader name, API token, the cone's ids from `lenscat sql`,
    another grader's API token)."""
    from lenscat.db.server import libpq_url

    tmp = tmp_path_factory.mktemp("tap")
    base_url = libpq_url(engine.url.render_as_string(hide_password=False))
    with fresh_database(base_url, "lenscat_tap") as url:
        env = {**os.environ, "LENSCAT_DATABASE_URL": url, "LENSCAT_HOME": str(tmp / "home"), "LENSCAT_DEVICE": "cpu"}
        env.pop("LENSCAT_BROKER_URL", None)
        token, other = _tap_world(url)
        with lenscat_server(env) as base:
            # the answer of `lenscat sql` to the cone, once for the module
            out = _cli(env, "sql", CONE_SQL, "--format", "json")
            expected = [int(json.loads(line)["source_id"]) for line in out.splitlines() if line.strip()]
            yield base + "/tap", url, env, "robot", token, expected, other


def _tap_world(url: str) -> tuple[str, str]:
    """Schema, two API-token graders (robot, eve), a survey around CENTRE and a literature lens in ``url``."""
    from sqlalchemy import create_engine
    from sqlalchemy.orm import Session

    from lenscat.db import migrate
    from lenscat.db.server import sqlalchemy_url
    from lenscat.grading.accounts import add_grader

    own = create_engine(sqlalchemy_url(url))
    with own.connect() as conn:
        migrate.upgrade("head", connection=conn)
        conn.commit()
    with Session(own) as s:
        _, token = add_grader("robot", token=True, session=s)
        _, other = add_grader("eve", token=True, session=s)
        s.commit()
    own.dispose()
    assert token is not None and other is not None
    rng = np.random.default_rng(34)
    with psycopg.connect(url, autocommit=True) as conn:
        sid = one(
            conn.execute(
                "INSERT INTO lenscat.surveys (name, bands) VALUES ('tapsurvey', ARRAY['g','r']) RETURNING survey_id"
            )
        )[0]
        rows = []
        # a dense knot of 40 sources within 8" of the centre, and 3000 across a 2-degree field
        for i in range(40):
            r, a = rng.uniform(0, 8.0) / 3600.0, rng.uniform(0, 2 * np.pi)
            ra = CENTRE[0] + r * np.cos(a) / np.cos(np.radians(CENTRE[1]))
            rows.append((sid, f"k{i}", ra, CENTRE[1] + r * np.sin(a), [21.0, 20.0 + i / 40]))
        for i in range(3000):
            rows.append((sid, f"f{i}", rng.uniform(149.0, 151.0), rng.uniform(1.2, 3.2), [22.0, rng.uniform(18, 24)]))
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO lenscat.sources (survey_id, objid, ra, dec, mag) VALUES (%s, %s, %s, %s, %s)", rows
            )
            cid = one(
                cur.execute(
                    "INSERT INTO lenscat.literature_catalogs (name, path, sha256, format) "
                    "VALUES ('taplit', 'taplit.csv', '0', 'csv') RETURNING catalog_id"
                )
            )[0]
            cur.execute(
                "INSERT INTO lenscat.literature_lenses (catalog_id, row_number, name, ra, dec, z_lens, raw) "
                "VALUES (%s, 1, 'TAPJ1000+0212', %s, %s, 0.4, '{}')",
                (cid, CENTRE[0], CENTRE[1]),
            )
        conn.execute("ANALYZE lenscat.sources")
    return token, other


def _service(tap):
    import pyvo
    import requests

    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {tap[4]}"
    return pyvo.dal.TAPService(tap[0], session=session)


RA0, DEC0 = CENTRE
CONE_ADQL = (
    f"SELECT source_id, ra, dec, mag_r, DISTANCE(POINT('ICRS', ra, dec), POINT('ICRS', {RA0}, {DEC0})) AS dist "
    f"FROM sources WHERE 1 = CONTAINS(POINT('ICRS', ra, dec), CIRCLE('ICRS', {RA0}, {DEC0}, {RADIUS_DEG})) "
    "ORDER BY source_id"
)
CONE_SQL = (
    f"SELECT source_id FROM sources WHERE lenscat_angsep({RA0}, {DEC0}, ra, dec) <= {RADIUS_DEG} ORDER BY source_id"
)


def _sql_ids(tap) -> list[int]:
    """Source ids of the cone as `lenscat sql` answered them."""
    return list(tap[5])


def test_pyvo_sync_and_async_cone_equal_lenscat_sql(tap):
    service = _service(tap)
    expected = _sql_ids(tap)
    assert 10 < len(expected) < 40  # the 5" cone keeps part of the 8" knot
    sync = service.run_sync(CONE_ADQL).to_table()
    assert [int(x) for x in sync["source_id"]] == expected
    assert sync["ra"].unit == "deg" and sync["dist"].max() <= RADIUS_DEG
    assert sync["mag_r"].unit == "mag"
    assert sync["ra"].meta["ucd"] == "pos.eq.ra;meta.main" and sync["mag_r"].meta["ucd"] == "phot.mag;em.opt.R"
    done = service.run_async(CONE_ADQL).to_table()
    assert [int(x) for x in done["source_id"]] == expected
    # the literature lens of the centre, by a join on the lens's own cone
    lens = service.run_sync(
        "SELECT l.name, l.z_lens FROM literature_lenses AS l "
        f"WHERE CONTAINS(POINT('ICRS', l.ra, l.dec), CIRCLE('ICRS', {CENTRE[0]}, {CENTRE[1]}, 0.001)) = 1"
    ).to_table()
    assert list(lens["name"]) == ["TAPJ1000+0212"]


def test_cone_query_uses_the_sky_index(tap):
    from lenscat.tap.adql import translate

    tr = translate(CONE_ADQL)
    assert tr.indexed_cones == 1
    with psycopg.connect(tap[1]) as conn:
        conn.execute("SET enable_seqscan = on")
        plan = "\n".join(r[0] for r in conn.execute("EXPLAIN " + tr.sql))
        assert "tap_cone_source_ids" in plan and "Seq Scan on sources" not in plan, plan
        # the cone function itself probes ix_sources_zone_ra once per (zone, ra) range
        body = one(conn.execute("SELECT prosrc FROM pg_proc WHERE proname = 'tap_cone_source_ids'"))[0]
        inner = body.replace("ra_deg", str(CENTRE[0])).replace("dec_deg", str(CENTRE[1]))
        inner = inner.replace("radius_deg", str(RADIUS_DEG))
        plan = "\n".join(r[0] for r in conn.execute("EXPLAIN " + inner))
        assert "ix_sources_zone_ra" in plan, plan


def test_maxrec_overflow_and_top(tap):
    auth = {"Authorization": f"Bearer {tap[4]}"}
    r = httpx.post(
        tap[0] + "/sync",
        data={"LANG": "ADQL", "QUERY": "SELECT source_id FROM sources", "MAXREC": "7"},
        headers=auth,
        timeout=30,
    )
    assert r.status_code == 200, r.text
    body = r.text
    assert body.index("</TABLE>") < body.index('<INFO name="QUERY_STATUS" value="OVERFLOW"/>')
    assert body.count("<TR>") == 7
    service = _service(tap)
    res = service.run_sync("SELECT source_id FROM sources", maxrec=5)
    assert len(res) == 5 and res.query_status == "OVERFLOW"
    top = service.run_sync("SELECT TOP 3 source_id FROM sources", maxrec=5)
    assert len(top) == 3 and top.query_status == "OK"
    js = httpx.get(
        tap[0] + "/sync",
        params={"QUERY": "SELECT TOP 2 source_id, ra FROM sources", "FORMAT": "json"},
        headers=auth,
        timeout=30,
    ).json()
    assert len(js["rows"]) == 2 and js["columns"][1]["unit"] == "deg" and js["query_status"] == "OK"
    up = httpx.post(
        tap[0] + "/sync", data={"QUERY": "SELECT * FROM TAP_UPLOAD.t", "UPLOAD": "t,http://x/t.xml"}, headers=auth
    )
    assert up.status_code == 400 and "upload is not supported" in up.text
    csv = httpx.get(
        tap[0] + "/sync",
        params={"QUERY": "SELECT TOP 2 source_id FROM sources", "FORMAT": "csv"},
        headers=auth,
        timeout=30,
    )
    assert csv.headers["content-type"].startswith("text/csv") and len(csv.text.splitlines()) == 3


def test_refused_without_credentials_and_writes_refused(tap):
    r = httpx.get(tap[0] + "/sync", params={"QUERY": "SELECT TOP 1 source_id FROM sources"}, timeout=30)
    assert r.status_code == 401 and "Basic" in r.headers["www-authenticate"] and "QUERY_STATUS" in r.text
    r = httpx.get(
        tap[0] + "/sync",
        params={"QUERY": "SELECT TOP 1 source_id FROM sources"},
        headers={"Authorization": "Bearer wrong"},
        timeout=30,
    )
    assert r.status_code == 401
    assert httpx.get(tap[0] + "/tables", timeout=30).status_code == 401
    assert httpx.get(tap[0] + "/async", timeout=30).status_code == 401
    # VOSI capabilities and availability are public
    assert "ivo://ivoa.net/std/TAP" in httpx.get(tap[0] + "/capabilities", timeout=30).text
    assert "<avail:available>true" in httpx.get(tap[0] + "/availability", timeout=30).text
    # Basic with the grader's name and API token (what STILTS sends)
    basic = base64.b64encode(f"{tap[3]}:{tap[4]}".encode()).decode()
    r = httpx.get(
        tap[0] + "/sync",
        params={"QUERY": "SELECT TOP 1 source_id FROM sources"},
        headers={"Authorization": f"Basic {basic}"},
        timeout=30,
    )
    assert r.status_code == 200 and 'value="OK"' in r.text
    wrong = base64.b64encode(f"someone:{tap[4]}".encode()).decode()
    assert (
        httpx.get(
            tap[0] + "/sync", params={"QUERY": "SELECT 1"}, headers={"Authorization": f"Basic {wrong}"}, timeout=30
        ).status_code
        == 401
    )

    from pyvo.dal import DALQueryError, DALServiceError

    service = _service(tap)
    with psycopg.connect(tap[1]) as conn:
        before = one(conn.execute("SELECT count(*) FROM lenscat.sources"))[0]
    for adql in (
        "DELETE FROM sources",
        "SELECT lo_create(0) FROM sources",
        "SELECT pg_reload_conf() FROM sources",
        "SELECT TOP 1 nosuchcolumn FROM sources",
        "SELECT TOP 1 * FROM lenscat.sources",
        "SELECT x FROM nosuchtable",
    ):
        with pytest.raises((DALQueryError, DALServiceError)) as err:
            service.run_sync(adql)
        assert str(err.value).strip() and "\n" not in str(err.value).strip(), adql
    with psycopg.connect(tap[1]) as conn:
        assert one(conn.execute("SELECT count(*) FROM lenscat.sources"))[0] == before
        assert one(conn.execute("SELECT count(*) FROM pg_largeobject_metadata"))[0] == 0


def test_tables_and_tap_schema_carry_units_and_ucds(tap):
    service = _service(tap)
    tables = service.tables
    names = {t.name for t in tables}
    for view in ("sources", "literature_lenses", "crossmatches", "scores", "candidates", "spectral_hits"):
        assert view in names
    ra = next(c for c in tables["sources"].columns if c.name == "ra")
    assert ra.unit == "deg" and ra.ucd == "pos.eq.ra;meta.main" and "Right ascension" in (ra.description or "")
    cols = service.run_sync(
        "SELECT column_name, unit, ucd FROM TAP_SCHEMA.columns WHERE table_name = 'sources' ORDER BY column_index"
    ).to_table()
    by_name = {str(r["column_name"]): r for r in cols}
    assert by_name["dec"]["ucd"] == "pos.eq.dec;meta.main"
    assert by_name["mag_r"]["ucd"] == "phot.mag;em.opt.R" and by_name["mag_r"]["unit"] == "mag"
    assert by_name["z_spec"]["ucd"] == "src.redshift"
    assert "tap_schema.columns" in {
        str(x) for x in service.run_sync("SELECT table_name FROM TAP_SCHEMA.tables").to_table()["table_name"]
    }


def test_async_job_lifecycle(tap):
    auth = {"Authorization": f"Bearer {tap[4]}"}
    with httpx.Client(headers=auth, timeout=30) as client:
        r = client.post(tap[0] + "/async", data={"LANG": "ADQL", "QUERY": "SELECT TOP 4 source_id FROM sources"})
        assert r.status_code == 303
        job = r.headers["location"]
        assert client.get(job + "/phase").text == "PENDING"
        assert client.post(job + "/phase", data={"PHASE": "RUN"}).status_code == 303
        deadline = time.monotonic() + 30
        while client.get(job + "/phase").text not in ("COMPLETED", "ERROR"):
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert client.get(job + "/phase").text == "COMPLETED"
        assert client.get(job + "/results/result").text.count("<TR>") == 4
        assert job.rsplit("/", 1)[-1] in client.get(tap[0] + "/async").text
        # a bad query ends in ERROR with the message in the error document
        bad = client.post(tap[0] + "/async", data={"QUERY": "SELECT nosuch FROM sources", "PHASE": "RUN"})
        bad_job = bad.headers["location"]
        deadline = time.monotonic() + 30
        while client.get(bad_job + "/phase").text not in ("COMPLETED", "ERROR"):
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert 'value="ERROR"' in client.get(bad_job + "/error").text
        assert client.delete(job).status_code == 303
        assert client.get(job).status_code == 404
    # nobody else sees the job: no credentials 401, another grader 404
    assert httpx.get(bad_job, timeout=30).status_code == 401
    other = {"Authorization": f"Bearer {tap[6]}"}
    assert httpx.get(bad_job, headers=other, timeout=30).status_code == 404
    assert bad_job.rsplit("/", 1)[-1] not in httpx.get(tap[0] + "/async", headers=other, timeout=30).text


def test_stilts_tapquery(tap, tmp_path):
    stilts = shutil.which("stilts")
    if stilts is None:
        if os.environ.get("CI"):
            pytest.fail("stilts is missing in CI (.ci/run installs Debian's stilts)")
        pytest.skip("needs STILTS (Debian package stilts; .ci/run installs it)")
    out = tmp_path / "cone.csv"
    done = subprocess.run(
        [
            stilts,
            f"-Dstar.basicauth.user={tap[3]}",
            f"-Dstar.basicauth.password={tap[4]}",
            "tapquery",
            f"tapurl={tap[0]}",
            f"adql={CONE_ADQL}",
            "sync=true",
            f"out={out}",
            "ofmt=csv",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = out.read_text().splitlines()
    assert lines[0].split(",")[0] == "source_id"
    assert [int(line.split(",")[0]) for line in lines[1:]] == _sql_ids(tap)
