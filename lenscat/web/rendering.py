"""Templates, security headers and user-facing messages of the web app."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse
from jinja2 import Environment, FileSystemLoader, select_autoescape

from lenscat.grading.grades import GRADE_NAMES

HERE = Path(__file__).parent
# an absolute path's directories: "/home/me/data/x.h5" -> "x.h5" (not URLs, not "a/b", not "1/2")
_ABS_DIRS = re.compile(r"(?<![\w.~:/\\-])(?:~|[A-Za-z]:)?[/\\](?:[^\s/\\'\"<>|]+[/\\])+")
TEMPLATES = Environment(
    loader=FileSystemLoader(HERE / "templates"),
    autoescape=select_autoescape(["html"]),
    trim_blocks=True,
    lstrip_blocks=True,
)
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; script-src 'self'; style-src 'self'; "
    "frame-ancestors 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
}


def public_message(message: str) -> str:
    """A user-facing error message with the server's absolute paths reduced to base names."""
    return _ABS_DIRS.sub("", message)


def render(name: str, request: Request, status_code: int = 200, **ctx: Any) -> HTMLResponse:
    """A template rendered with the common context."""
    html = TEMPLATES.get_template(name).render(request=request, grade_names=GRADE_NAMES, **ctx)
    return HTMLResponse(html, status_code=status_code)


def is_api(request: Request) -> bool:
    """Whether the request is to the JSON API (answered in JSON, never redirected)."""
    return request.url.path.startswith("/api/")
