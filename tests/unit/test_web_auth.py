"""Login cookies and CSRF tokens of the web app (no database)."""

from __future__ import annotations

import base64
import json
import time

from lenscat.grading import hash_password, parse_grade, verify_password
from lenscat.web.auth import csrf_ok, make_session_cookie, read_session_cookie


def test_cookie_round_trip_and_tampering():
    value, ws = make_session_cookie(7, "alice")
    assert read_session_cookie(value) == ws and ws.csrf and ws.expires > time.time()
    body, sig = value.rsplit(".", 1)
    forged = json.loads(base64.urlsafe_b64decode(body))
    forged["g"] = 1  # someone else's account, same signature
    assert read_session_cookie(base64.urlsafe_b64encode(json.dumps(forged).encode()).decode() + "." + sig) is None
    assert read_session_cookie(body + "." + "0" * len(sig)) is None
    assert read_session_cookie(None) is None and read_session_cookie("garbage") is None
    assert read_session_cookie("!!!." + sig) is None
    assert make_session_cookie(7, "alice")[1].csrf != ws.csrf  # a fresh CSRF token per login


def test_expired_cookie_is_refused(monkeypatch):
    value, _ = make_session_cookie(7, "alice")
    monkeypatch.setattr(time, "time", lambda: 10**12)
    assert read_session_cookie(value) is None


def test_csrf_and_password_checks():
    assert csrf_ok("abc", "abc") and not csrf_ok("abc", "abd") and not csrf_ok("abc", None) and not csrf_ok("", "")
    h = hash_password("correct horse")
    assert h != hash_password("correct horse")  # salted
    assert verify_password("correct horse", h) and not verify_password("correct horsf", h)
    assert not verify_password("x", None) and not verify_password("x", "md5$abc")
    assert [parse_grade(g) for g in ("a", "B", "1", "0", "not a lens", " s ")] == ["A", "B", "C", "N", "N", "S"]
