"""Login cookies, CSRF tokens, error-message paths and the serve host check of the web app (no database)."""

from __future__ import annotations

from lenscat.cli.web import is_loopback
from lenscat.grading.accounts import hash_password, verify_password
from lenscat.grading.auth import (
    csrf_ok,
    csrf_token_for,
    make_session_cookie,
    read_session_cookie,
    session_sha256,
)
from lenscat.grading.grades import parse_grade
from lenscat.web.rendering import public_message


def test_cookie_carries_a_signed_random_secret():
    value, secret = make_session_cookie()
    assert read_session_cookie(value) == secret and len(secret) >= 40
    other, other_secret = make_session_cookie()
    assert other_secret != secret  # a fresh secret per login
    body, sig = value.rsplit(".", 1)
    assert read_session_cookie(other_secret + "." + sig) is None  # someone else's secret, our signature
    assert read_session_cookie(body + "." + "0" * len(sig)) is None
    assert read_session_cookie(None) is None and read_session_cookie("garbage") is None
    assert read_session_cookie("." + sig) is None and read_session_cookie(value + "x" * 600) is None
    # what the database stores and what pages embed are neither the secret nor each other
    assert session_sha256(secret) != secret and csrf_token_for(secret) not in (secret, session_sha256(secret))
    assert csrf_token_for(secret) == csrf_token_for(secret) != csrf_token_for(other_secret)


def test_csrf_and_password_checks():
    assert csrf_ok("abc", "abc") and not csrf_ok("abc", "abd") and not csrf_ok("abc", None) and not csrf_ok("", "")
    h = hash_password("correct horse")
    assert h != hash_password("correct horse")  # salted
    assert verify_password("correct horse", h) and not verify_password("correct horsf", h)
    assert not verify_password("x", None) and not verify_password("x", "md5$abc")
    assert [parse_grade(g) for g in ("a", "B", "1", "0", "not a lens", " s ")] == ["A", "B", "C", "N", "N", "S"]


def test_error_messages_lose_absolute_paths_but_keep_base_names():
    msg = (
        "/home/alice/surveys/south_000.h5: cutout file not found (if the data moved: "
        "`lenscat db relocate OLD_DIR NEW_DIR`)"
    )
    out = public_message(msg)
    assert out.startswith("south_000.h5: cutout file not found") and "/home" not in out and "alice" not in out
    assert public_message("cannot read '/var/lib/lenscat/models/enc.pt' (row 3)") == "cannot read 'enc.pt' (row 3)"
    assert public_message("bad file ~/data/x.fits") == "bad file x.fits"
    assert public_message(r"C:\Users\bob\x.csv: row 2") == "x.csv: row 2"
    for keep in ("see https://example.org/a/b/c", "1/2 of data/x.h5", "grades A/B", "no source with id 7"):
        assert public_message(keep) == keep


def test_loopback_hosts():
    assert all(map(is_loopback, ["127.0.0.1", "127.1.2.3", "::1", "[::1]", "localhost", "LOCALHOST"]))
    assert not any(map(is_loopback, ["0.0.0.0", "::", "192.168.1.5", "example.org", "10.0.0.1"]))
