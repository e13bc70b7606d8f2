"""The grading web app in a real browser: Debian's chromium driven headless by Playwright against
``lenscat serve`` running as a separate process on a fresh database (committed data)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import psycopg
import pytest
from astropy.table import Table

from tests.integration.live_server import fresh_database, lenscat_server
from tests.integration.pgrows import one

if TYPE_CHECKING:
    from playwright.sync_api import Locator

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
PASSWORD = "correct-horse"


def _source_id(cell: Locator) -> int:
    """The ``data-source-id`` of a grid cell (the test fails if the cell has none)."""
    sid = cell.get_attribute("data-source-id")
    assert sid is not None, "a grid cell without data-source-id"
    return int(sid)


@pytest.fixture(scope="module")
def served(engine, tmp_path_factory):
    """A fresh database with a built world (tests/integration/web_world.py) and `lenscat serve` on it,
    shared by the tests of this module."""
    if not Path(CHROMIUM).exists():
        pytest.skip("needs Debian's chromium (/usr/bin/chromium; .ci/run installs it)")
    pytest.importorskip("playwright.sync_api")
    from lenscat.db.server import libpq_url

    tmp_path = tmp_path_factory.mktemp("web")
    base_url = libpq_url(engine.url.render_as_string(hide_password=False))
    with fresh_database(base_url, "lenscat_web") as url:
        env = {
            **os.environ,
            "LENSCAT_DATABASE_URL": url,
            "LENSCAT_HOME": str(tmp_path / "home"),
            "LENSCAT_DEVICE": "cpu",
        }
        env.pop("LENSCAT_BROKER_URL", None)
        build = subprocess.run(
            [sys.executable, "-m", "tests.integration.web_world", str(tmp_path / "world")],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert build.returncode == 0, build.stderr[-3000:]
        world = json.loads(build.stdout.strip().splitlines()[-1])
        with lenscat_server(env) as base:
            yield base, url, world


def _login(page, base, name):
    page.goto(base + "/")
    assert "/login" in page.url
    page.fill("#name", name)
    page.fill("#password", PASSWORD)
    page.click("#login-button")
    page.wait_for_url(base + "/")


def test_grade_a_grid_from_the_keyboard_and_export(served, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    base, url, world = served
    lens_ids = set(world["lens_ids"])
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            alice = browser.new_context(viewport={"width": 1400, "height": 900}, accept_downloads=True)
            page = alice.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            _login(page, base, "alice")
            expect(page.locator("#who")).to_have_text("alice")
            # the top-N grid of the classifier, graded from the keyboard: the arcs rank first
            page.click("#open-top")
            cells = page.locator(".cell")
            expect(cells.first).to_be_visible()
            assert cells.count() == 100
            top = [_source_id(cells.nth(i)) for i in range(12)]
            assert len(lens_ids & set(top)) >= 10
            keys = ["a" if sid in lens_ids else "n" for sid in top]
            for k in keys:
                page.keyboard.press(k)
            for i, k in enumerate(keys):
                expect(cells.nth(i)).to_have_attribute("data-grade", k.upper())
            expect(page.locator("#n-done")).to_have_text(str(len(keys)))
            # the images are real PNGs the browser decoded
            assert page.evaluate("document.querySelector('.cell img').naturalWidth") == 152
            # arrow keys move, space skips
            page.keyboard.press("ArrowRight")
            page.keyboard.press(" ")
            expect(cells.nth(13)).to_have_attribute("data-grade", "S")
            # a reload shows the grades stored
            page.reload()
            expect(page.locator(".cell").nth(0)).to_have_attribute("data-grade", keys[0].upper())

            # bob grades alice's first A as C on the candidate page: the consensus changes to B
            first = top[keys.index("a")]
            bob = browser.new_context().new_page()
            _login(bob, base, "bob")
            bob.goto(f"{base}/source/{first}")
            expect(bob.locator("#consensus")).to_have_text("A")
            bob.click("#grade-C")
            expect(bob.locator("#consensus")).to_have_text("B")
            expect(bob.locator("#my-grade")).to_have_text("C")
            page.goto(f"{base}/conflicts")
            expect(page.locator("#table")).to_contain_text("alice:A bob:C")

            # the candidate page: cutouts per band, literature match, scores, spectrum, neighbours
            page.goto(f"{base}/source/{world['literature_source']}")
            expect(page.locator("#literature")).to_contain_text("SLACS J1000+0230")
            expect(page.locator("#scores")).to_contain_text("webclf@1")
            assert page.locator(".cutouts img").count() == 4  # RGB + g, r, z
            assert page.locator("#neighbours figure").count() == 12
            page.goto(f"{base}/source/{world['spectrum_source']}")
            spec = page.locator(".spectrum img")
            expect(spec).to_have_count(1)
            assert page.evaluate("document.querySelector('.spectrum img').naturalWidth") > 500
            expect(page.locator("#hits")).to_contain_text("webmf@1")
            expect(page.locator("#hits")).to_contain_text("448")  # the injected line at 4480 A

            # the search box: a lens name, then RA Dec
            page.fill("#search-box", "slacs j1000")
            page.press("#search-box", "Enter")
            page.wait_for_url(f"{base}/source/{world['literature_source']}")
            page.fill("#search-box", "'; DROP TABLE lenscat.grades; --")
            page.press("#search-box", "Enter")
            expect(page.locator("#search-note")).to_contain_text("0 match(es)")

            # "more like this" from the candidate page gives a grid of neighbours to grade
            page.goto(f"{base}/source/{first}")
            page.click("#more-like-this")
            expect(page.locator("#grid-title")).to_contain_text(f"More like source {first}")
            sim_cells = page.locator(".cell")
            expect(sim_cells.first).to_be_visible()
            assert sim_cells.count() >= 10
            focused = page.locator(".cell.focus").get_attribute("data-source-id")  # the first ungraded image
            page.keyboard.press("b")
            expect(page.locator(f"#cell-{focused}")).to_have_attribute("data-grade", "B")

            # an SQL-defined sample from the read-only query page
            page.goto(f"{base}/query")
            page.fill("#sql", "SELECT source_id FROM candidates WHERE consensus_grade = 'N' ORDER BY source_id")
            page.click("#run-sql")
            expect(page.locator("#sql-result")).to_be_visible()
            page.click("#grade-sql")  # the signed link opens the rows as a grid
            expect(page.locator("#grid-title")).to_contain_text("SQL sample")
            page.goto(f"{base}/query")
            page.fill("#sql", "DELETE FROM grades")
            page.click("#run-sql")
            expect(page.locator("#sql-error")).to_contain_text("read-only")

            # export the A/B candidates and read the file back with astropy
            page.goto(f"{base}/")
            with page.expect_download() as dl:
                page.click("#export-link")
            path = tmp_path / dl.value.suggested_filename
            dl.value.save_as(path)
            table = Table.read(path)
            with psycopg.connect(url) as conn:
                expected = {
                    r[0]
                    for r in conn.execute(
                        "SELECT source_id FROM public.grade_consensus WHERE consensus_grade IN ('A', 'B')"
                    )
                }
            assert {int(x) for x in table["source_id"]} == expected
            assert expected >= {sid for sid, k in zip(top, keys, strict=True) if k == "a"} - {first}
            assert {str(g).strip() for g in table["consensus_grade"]} <= {"A", "B"}
            assert table["ra"].unit == "deg"
            # an active-learning batch graded from the keyboard; Enter retrains and opens the next
            page.goto(f"{base}/")
            page.click("#campaign-webal")
            expect(page.locator("#grid-title")).to_contain_text("Campaign webal, loop 1")
            batch = page.locator(".cell")
            ungraded = [i for i in range(batch.count()) if not batch.nth(i).get_attribute("data-grade")]
            page.keyboard.press("Enter")  # too early: the batch is not complete
            expect(page.locator("#status")).to_contain_text("remaining image")
            for i in ungraded:
                sid = _source_id(batch.nth(i))
                batch.nth(i).click()
                page.keyboard.press("a" if sid in lens_ids else "n")
                expect(batch.nth(i)).to_have_attribute("data-grade", "A" if sid in lens_ids else "N")
            expect(page.locator("#status")).to_contain_text("batch complete")
            with page.expect_response(lambda r: "/advance" in r.url, timeout=120_000) as adv:
                page.keyboard.press("Enter")
            assert adv.value.status == 200, adv.value.text()
            expect(page.locator("#grid-title")).to_contain_text("Campaign webal, loop 2 (al-webal@1)")
            assert page.locator(".cell").count() == 6
            assert not errors, errors
        finally:
            browser.close()


def test_two_graders_grading_the_same_image_at_once_are_both_recorded(served):
    base, url, world = served
    with psycopg.connect(url) as conn:  # a source nobody has graded yet
        sid = one(
            conn.execute(
                "SELECT max(source_id) FROM lenscat.sources s WHERE NOT EXISTS "
                "(SELECT 1 FROM lenscat.grades g WHERE g.source_id = s.source_id)"
            )
        )[0]
    clients = {}
    for name in ("alice", "bob"):
        c = httpx.Client(base_url=base, follow_redirects=False)
        page = c.get("/login").text
        token = page.split('name="csrf_token" value="')[1].split('"')[0]
        r = c.post("/login", data={"name": name, "password": PASSWORD, "csrf_token": token, "next": "/"})
        assert r.status_code == 303 and "lenscat_session" in c.cookies
        home = c.get("/").text
        clients[name] = (c, home.split('name="csrf_token" value="')[1].split('"')[0])
    barrier = threading.Barrier(2)
    results: dict[str, int] = {}

    def grade(name: str, letter: str) -> None:
        c, csrf = clients[name]
        barrier.wait()
        r = c.post(
            "/api/grades",
            json={"source_id": sid, "grade": letter, "request_id": str(uuid.uuid4())},
            headers={"X-CSRF-Token": csrf},
        )
        results[name] = r.status_code

    threads = [threading.Thread(target=grade, args=a) for a in (("alice", "A"), ("bob", "N"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert results == {"alice": 200, "bob": 200}
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT grader, grade FROM public.grades WHERE source_id = %s ORDER BY grader", (sid,)
        ).fetchall()
        cons = conn.execute(
            "SELECT n_votes, disagreement FROM public.grade_consensus WHERE source_id = %s", (sid,)
        ).fetchone()
    assert rows == [("alice", "A"), ("bob", "N")] and cons == (2, 3)
    for c, _ in clients.values():
        c.close()
