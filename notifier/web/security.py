"""What keeps the dashboard safe: it shows report data and can send mail.

* **Token** (any address but loopback, or whenever ``NOTIFIER_WEB_TOKEN`` is set): the first
  visit brings ``?token=...``; it is swapped for an HttpOnly, SameSite=Strict cookie holding
  an HMAC of the token (never the token) and the URL is cleaned by a redirect. Scripts and
  the API may send ``Authorization: Bearer TOKEN`` instead.
* **Host check** on loopback without a token: only ``localhost``/``127.0.0.1``/``[::1]`` Host
  headers are served, so a web page cannot reach the dashboard through DNS rebinding.
* **CSRF**: every state-changing request is a POST carrying the per-browser CSRF value (a
  cookie, echoed in a hidden form field or the ``X-CSRF-Token`` header) and, when the
  browser sends one, an ``Origin`` equal to the dashboard's own; GET never changes anything.
* **CSP**: the dashboard's pages may run only its own script file; notebook output and
  email bodies (arbitrary HTML and script from notebook code) are served by
  :func:`sandboxed` responses with ``sandbox`` and no script at all, and shown in iframes
  with ``sandbox`` without ``allow-same-origin``: they can neither run script in the
  dashboard's origin nor read its cookies.
* **Paths** from the ledger are served only when :func:`inside` the project's runs or
  outbox folder.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from pathlib import Path
from urllib.parse import urlencode

from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from notifier.web.config import WebConfig

PAGE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-src 'self'; form-action 'self'; base-uri 'none'; "
    "frame-ancestors 'none'"
)
# notebook output and email bodies: an opaque origin, no script, no network, images inline
FRAME_SANDBOX = "allow-popups allow-popups-to-escape-sandbox"
FRAME_CSP = (
    f"sandbox {FRAME_SANDBOX}; default-src 'none'; img-src data:; style-src 'unsafe-inline'; "
    "font-src data:; frame-ancestors 'self'; base-uri 'none'; form-action 'none'"
)
LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "[::1]", "::1"})
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def inside(base: Path, candidate: str | Path | None) -> Path | None:
    """``candidate`` resolved (symlinks followed) if it is a file inside ``base``, else None."""
    if not candidate:
        return None
    try:
        root = Path(base).resolve()
        path = Path(candidate)
        path = (path if path.is_absolute() else root / path).resolve()
    except (OSError, RuntimeError, ValueError):
        return None
    if path == root or not path.is_relative_to(root) or not path.is_file():
        return None
    return path


def sandboxed(content: str | bytes, media_type: str = "text/html; charset=utf-8") -> Response:
    """A response for an iframe: untrusted HTML in an opaque origin without script."""
    return Response(
        content,
        media_type=media_type,
        headers={"Content-Security-Policy": FRAME_CSP, "X-Frame-Options": "SAMEORIGIN"},
    )


def download(data: bytes, filename: str, media_type: str) -> Response:
    """A file to save, never rendered in the dashboard's origin."""
    safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in filename)[:150] or "file"
    return Response(
        data,
        media_type=media_type if "/" in media_type else "application/octet-stream",
        headers={
            "Content-Disposition": f'attachment; filename="{safe}"',
            "Content-Security-Policy": FRAME_CSP,
        },
    )


class Guard:
    """Cookie names, token and CSRF checks of one dashboard (cookies are per port)."""

    def __init__(self, config: WebConfig, port: int) -> None:
        self.config = config
        self.auth_cookie = f"notifier_auth_{port}"
        self.csrf_cookie = f"notifier_csrf_{port}"
        self._proof = (
            hmac.new(config.token.encode(), b"notifier-web-cookie", hashlib.sha256).hexdigest()
            if config.token
            else None
        )

    def token_ok(self, given: str | None) -> bool:
        """Constant-time comparison with the configured token."""
        token = self.config.token
        return bool(token and given) and hmac.compare_digest(given.encode(), token.encode())

    def authenticated(self, request: Request) -> bool:
        """True without a token, else with the cookie or a bearer token."""
        if self._proof is None:
            return True
        cookie = request.cookies.get(self.auth_cookie, "")
        if cookie and hmac.compare_digest(cookie.encode(), self._proof.encode()):
            return True
        header = request.headers.get("authorization", "")
        return header.lower().startswith("bearer ") and self.token_ok(header[7:].strip())

    def host_ok(self, request: Request) -> bool:
        """On loopback without a token: only loopback Host names (DNS rebinding)."""
        if self.config.token:
            return True
        host = request.headers.get("host", "")
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        return name.lower() in LOOPBACK_HOSTS

    def csrf_value(self, request: Request) -> str:
        """This browser's CSRF value (made on its first visit)."""
        value = request.cookies.get(self.csrf_cookie)
        if not value or len(value) < 20:
            value = getattr(request.state, "new_csrf", None) or secrets.token_urlsafe(24)
            request.state.new_csrf = value
        return value

    def check_csrf(self, request: Request, form: FormData | None) -> None:
        """403 unless the request carries this browser's CSRF value from this origin."""
        expected = request.cookies.get(self.csrf_cookie, "")
        given = request.headers.get("x-csrf-token") or (form.get("csrf") if form else None)
        if (
            not expected
            or not isinstance(given, str)
            or not hmac.compare_digest(expected.encode(), given.encode())
        ):
            raise HTTPException(403, "CSRF check failed: reload the page and try again.")
        origin = request.headers.get("origin")
        if origin and origin != "null":
            own = f"{request.url.scheme}://{request.headers.get('host', '')}"
            if origin != own:
                raise HTTPException(403, "Cross-origin request refused.")
        elif origin == "null":
            raise HTTPException(403, "Cross-origin request refused.")


async def checked_form(request: Request) -> FormData:
    """The POSTed form after the CSRF check (raises 403)."""
    form = await request.form()
    request.app.state.guard.check_csrf(request, form)
    return form


_LOGIN_PAGE = """<!DOCTYPE html><html><head><meta charset="utf-8"><title>notifier: token needed</title>
<link rel="stylesheet" href="/static/dashboard.css"></head><body><main class="narrow">
<h1>This dashboard needs its token</h1>
<p>Open the URL that <code>notifier web</code> or <code>notifier schedule</code> printed when it
started (it ends in <code>?token=...</code>), or the token set in <code>NOTIFIER_WEB_TOKEN</code>.</p>
<form method="get" action="/"><label>Token <input type="password" name="token" autocomplete="off"></label>
<button type="submit">Open</button></form></main></body></html>"""


class SecurityMiddleware(BaseHTTPMiddleware):
    """Host check, token, security headers and the CSRF cookie on every response."""

    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        """Refuse, redirect (token in the URL) or serve, then add the security headers."""
        guard: Guard = request.app.state.guard
        if not guard.host_ok(request):
            response: Response = HTMLResponse(
                "<h1>403</h1><p>This dashboard answers only to localhost and 127.0.0.1.</p>",
                status_code=403,
            )
        elif (
            guard.config.token
            and "token" in request.query_params
            and request.method
            in (
                "GET",
                "HEAD",
            )
        ):
            response = self._login(request, guard)
        elif not guard.authenticated(request):
            response = (
                HTMLResponse(_LOGIN_PAGE, status_code=401)
                if not request.url.path.startswith(("/api/", "/static/"))
                else Response('{"error": "token required"}', 401, media_type="application/json")
            )
        else:
            guard.csrf_value(request)
            response = await call_next(request)
        new_csrf = getattr(request.state, "new_csrf", None)
        if new_csrf:
            response.set_cookie(
                guard.csrf_cookie, new_csrf, httponly=True, samesite="strict", path="/"
            )
        headers = response.headers
        headers.setdefault("Content-Security-Policy", PAGE_CSP)
        headers.setdefault("X-Content-Type-Options", "nosniff")
        headers.setdefault("X-Frame-Options", "DENY")
        # the token never leaks to another site (and same-origin POSTs keep their Origin)
        headers.setdefault("Referrer-Policy", "same-origin")
        headers.setdefault("Cache-Control", "no-store")
        return response

    @staticmethod
    def _login(request: Request, guard: Guard) -> Response:
        if not guard.token_ok(request.query_params.get("token")):
            return HTMLResponse(_LOGIN_PAGE.replace("<h1>", "<h1>Wrong token. "), 401)
        rest = [(k, v) for k, v in request.query_params.multi_items() if k != "token"]
        target = request.url.path + (f"?{urlencode(rest)}" if rest else "")
        response = RedirectResponse(target, status_code=303)
        assert guard._proof is not None
        response.set_cookie(
            guard.auth_cookie, guard._proof, httponly=True, samesite="strict", path="/"
        )
        return response
