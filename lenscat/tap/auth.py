"""Who is asking the TAP service: the web app's logins, plus HTTP Basic with an API token.

TAP clients authenticate as scripts do on the JSON API, with ``Authorization: Bearer TOKEN`` (an
API token from ``lenscat grader add --token``; pyvo and astroquery send it from a
``requests.Session``), or with the web app's session cookie. STILTS and TOPCAT of Debian 12 (STILTS
3.4) can only answer an HTTP Basic challenge (``-Dstar.basicauth.user=NAME
-Dstar.basicauth.password=TOKEN``), so the TAP routes, and only they, also take Basic credentials
whose user is a grader's name and whose password is that grader's API token (never the login
password: a token is revocable and grants no web login).
"""

from __future__ import annotations

import base64
import binascii
import logging
import math

from sqlalchemy.orm import Session

from lenscat.grading.accounts import authenticate_token
from lenscat.grading.auth import WebSession, bearer_login, load_session
from lenscat.grading.grades import Grader

log = logging.getLogger("lenscat.tap")

#: The challenge a refused request carries (Basic first: Java's HTTP client answers it).
CHALLENGE = 'Basic realm="lenscat TAP", charset="UTF-8"'


def basic_login(header: str | None, *, session: Session) -> tuple[Grader, WebSession] | None:
    """The grader of ``Authorization: Basic base64(name:token)``, else None."""
    if not header:
        return None
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "basic" or not value.strip() or len(value) > 1024:
        return None
    try:
        name, sep, token = base64.b64decode(value.strip(), validate=True).decode("utf-8").partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    if not sep or not token or len(token) > 256:
        return None
    grader = authenticate_token(token, session=session)
    if grader is None or grader.name.strip().lower() != name.strip().lower():
        log.warning("TAP request with a wrong Basic name or API token")
        return None
    return grader, WebSession(grader.grader_id, grader.name, "", math.inf, None, True)


def tap_login(authorization: str | None, cookie: str | None, *, session: Session) -> tuple[Grader, WebSession] | None:
    """The grader asking: Basic (name + API token), Bearer token, or session cookie; None if nobody.

    A wrong Bearer or Basic credential is refused whatever cookie comes with it.
    """
    if authorization and authorization.strip().lower().startswith("basic "):
        return basic_login(authorization, session=session)
    state = bearer_login(authorization, session=session)
    if state is False:
        return None
    if state is not None:
        return state
    return load_session(cookie, session=session)
