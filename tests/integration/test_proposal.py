"""``lenscat proposal`` end to end through the CLI on the evidence world, and the web download: every file
read back (astropy tables, the Keck starlist parsed, PNG sizes, PDF headers and page counts)."""

from __future__ import annotations

import io
import re
import zipfile

import astropy.units as u
import numpy as np
import pytest
from astropy.coordinates import SkyCoord
from astropy.table import Table
from fastapi.testclient import TestClient
from PIL import Image

from lenscat.proposal.starlists import parse_keck_starlist
from tests.integration.test_cli import run
from tests.integration.test_evidence import build_world

ARGS = ["--site", "keck", "--from", "2026-12-10", "--to", "2026-12-12"]


def _pdf_pages(data: bytes) -> int:
    return len(re.findall(rb"/Type\s*/Page[^s]", data))


def test_proposal_pack_from_the_cli(session, tmp_path, monkeypatch, capsys):
    ids = build_world(session, tmp_path)
    out = tmp_path / "pack"
    code, stdout, err = run(monkeypatch, capsys, "proposal", "--grades", "A,B", *ARGS, "--out", str(out), "--quiet")
    assert code == 0, err
    assert "wrote 4 targets (2 at priority 1) for W. M. Keck Observatory" in stdout
    t = Table.read(out / "targets.ecsv")
    # priority, then evidence: s0 (spectroscopic, 5.0), s3 (known, 4.26), s2 (1.85), s1 (vetoed by its model)
    assert [int(i) for i in t["source_id"]] == [ids[k] for k in ("s0", "s3", "s2", "s1")]
    assert list(t["priority"]) == [1, 1, 3, 3]
    assert t["ra"].unit == u.deg and t["exptime_snr10"].unit == u.s and t["obs_hours_total"].unit == u.hour
    # RA 150 deg in December from Maunakea: up in the second half of the night, well above 30 deg
    assert (np.asarray(t["obs_hours_total"]) > 3).all() and (np.asarray(t["obs_best_airmass"]) < 1.3).all()
    assert list(t["arc_mag_from"]) == ["model", "lens+2.0", "default", "model"]
    assert (np.asarray(t["exptime_snr10"]) > 0).all()
    assert t["spec_exptime_snr5"].unit == u.s and (np.asarray(t["spec_exptime_snr5"]) > 0).all()
    csv = Table.read(out / "targets.csv", format="ascii.csv")
    assert "ra_deg" in csv.colnames and "exptime_snr10_s" in csv.colnames and len(csv) == 4
    nights = Table.read(out / "nights.ecsv")
    assert len(nights) == 4 * 3 and set(nights["night"]) == {"2026-12-10", "2026-12-11", "2026-12-12"}
    parsed = parse_keck_starlist((out / "starlist.txt").read_text())
    assert [p[0] for p in parsed] == list(t["name"])[:4] or [p[0] for p in parsed] == [n[:15] for n in t["name"]]
    back = SkyCoord([p[1] for p in parsed])
    sep = back.separation(SkyCoord(np.asarray(t["ra"]) * u.deg, np.asarray(t["dec"]) * u.deg)).arcsec
    assert sep.max() < 0.1 and parsed[0][2]["priority"] == "1" and parsed[0][2]["theta_e"] == "1.20"
    assert (out / "targets.reg").read_text().count("circle(") == 4
    for name in t["name"]:
        png = out / "charts" / f"{name}.png"
        assert Image.open(png).size == (600, 660)
        pdf = (out / "charts" / f"{name}.pdf").read_bytes()
        assert pdf.startswith(b"%PDF-") and _pdf_pages(pdf) == 1
    readme = (out / "README.txt").read_text()
    assert "W. M. Keck Observatory" in readme and "starlist.txt" in readme and "2 at priority 1" in readme
    for args, msg in (
        (["--site", "nowhere", "--from", "2026-12-10", "--to", "2026-12-12"], "unknown --site 'nowhere'"),
        (["--site", "keck", "--from", "2026-12-10", "--to", "2026-12-01"], "--to 2026-12-01 is before --from"),
        (["--site", "keck", "--from", "2026-12-10", "--to", "2026-12-11", "--grades", "C"], "no candidates to observe"),
        (["--site", "100,0,0", "--from", "2026-12-10", "--to", "2026-12-11"], "latitude must be in [-90, 90]"),
    ):
        code, stdout, err = run(monkeypatch, capsys, "proposal", *args, "--out", str(tmp_path / "x"), "--quiet")
        assert code == 2 and msg in err and err.startswith("lenscat: error:"), (args, err)
    code, stdout, err = run(monkeypatch, capsys, "evidence", "--grades", "A,B", "--format", "csv")
    assert code == 0 and stdout.splitlines()[1].startswith(str(ids["s0"]))


def _login(client, name: str, password: str) -> None:
    page = client.get("/login")
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]
    r = client.post("/login", data={"name": name, "password": password, "csrf_token": token, "next": "/"})
    assert r.status_code in (200, 303)


def test_proposal_download_from_the_web(session, tmp_path):
    from lenscat.web.app import create_app

    ids = build_world(session, tmp_path)
    form = {"grades": "A,B", "site": "paranal", "start": "2027-01-05", "end": "2027-01-06", "min_altitude": "30"}
    with TestClient(create_app(), base_url="http://testserver") as client:
        r = client.get("/proposal", follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"].startswith("/login")
        assert client.post("/proposal", data=form, follow_redirects=False).status_code == 303
        _login(client, "ev-alice", "alice-pass")
        page = client.get("/proposal")
        assert page.status_code == 200 and "spectroscopically supported" in page.text
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]
        assert client.post("/proposal", data=form).status_code == 403  # no CSRF token
        r = client.post("/proposal", data={**form, "csrf_token": csrf, "ids": f"{ids['s0']},{ids['s2']}"})
        assert r.status_code == 200 and r.headers["content-type"] == "application/zip"
        zf = zipfile.ZipFile(io.BytesIO(r.content))
        names = set(zf.namelist())
        assert {"lenscat_proposal/targets.csv", "lenscat_proposal/starlist.txt", "lenscat_proposal/README.txt"} <= names
        t = Table.read(io.BytesIO(zf.read("lenscat_proposal/targets.ecsv")), format="ascii.ecsv")
        assert sorted(int(i) for i in t["source_id"]) == sorted([ids["s0"], ids["s2"]])
        assert len(parse_keck_starlist(zf.read("lenscat_proposal/starlist.txt").decode())) == 2
        pngs = [n for n in names if n.endswith(".png")]
        assert len(pngs) == 2 and Image.open(io.BytesIO(zf.read(pngs[0]))).size == (600, 660)
        ticked = client.post("/proposal", data={**form, "csrf_token": csrf, "pick": [str(ids["s3"])]})
        one = zipfile.ZipFile(io.BytesIO(ticked.content)).read("lenscat_proposal/targets.ecsv")
        assert [int(i) for i in Table.read(io.BytesIO(one), format="ascii.ecsv")["source_id"]] == [ids["s3"]]
        bad = client.post("/proposal", data={**form, "csrf_token": csrf, "site": "atlantis"})
        assert bad.status_code == 400 and "unknown site" in bad.text
        src = client.get(f"/source/{ids['s0']}")
        assert src.status_code == 200 and 'id="evidence-category">spectroscopically supported' in src.text
        chart = client.get(f"/chart/{ids['s0']}.png")
        assert chart.status_code == 200 and Image.open(io.BytesIO(chart.content)).size == (600, 660)
        assert client.get("/chart/999999999.png").status_code == 404


def test_export_carries_lens_models_evidence_and_observability(session, tmp_path, monkeypatch, capsys):
    ids = build_world(session, tmp_path)
    dest = tmp_path / "cands.ecsv"
    code, stdout, err = run(monkeypatch, capsys, "export", "--grades", "A,B", "--out", str(dest), *ARGS)
    assert code == 0, err
    t = Table.read(dest)
    row = {int(s): k for k, s in enumerate(t["source_id"])}
    s0, s3 = row[ids["s0"]], row[ids["s3"]]
    assert t["lm_theta_e"].unit == u.arcsec and float(t["lm_theta_e"][s0]) == pytest.approx(1.2, abs=1e-5)
    assert float(t["lm_theta_e_err"][s0]) == pytest.approx(0.05, abs=1e-6) and t["lm_theta_e"].mask[s3]
    assert t["lens_model"][s0].startswith("ev-lm@") and t["lm_vet_flags"][row[ids["s1"]]] == "arcs_disagree"
    assert t["evidence_category"][s0] == "spectroscopically supported"
    assert float(t["evidence_score"][s0]) > float(t["evidence_score"][s3])
    assert t["obs_hours_total"].unit == u.hour and (np.asarray(t["obs_hours_total"]) > 3).all()
    assert "Keck" in t.meta["OBSSITE"]
    code, stdout, err = run(monkeypatch, capsys, "export", "--out", str(tmp_path / "y.csv"), "--site", "keck")
    assert code == 2 and "needs --site, --from and --to together" in err
