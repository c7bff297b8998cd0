"""Access control on the app's HTTP side: one token for every API route, websocket and pipe.

With controls, whoever reaches the app can stop containers and open shells, so an app that listens
beyond loopback wants a token. A client shows it as `Authorization: Bearer TOKEN`; a browser opens
`/?token=TOKEN` once, gets a session cookie (HttpOnly, SameSite=Strict, derived from the token rather
than the token itself) and is sent on to the same page without the token in its address. Anything else
gets a 401: JSON for the API, a page saying what to do for the UI.

Enforced by the first rules of the application's router (`auth_rules`), so no handler can forget it.
The rules take any `Gate`: this module's `Auth` (one token), or the service's per-tenant tokens
(scope_app.tenancy.http), whose login page and refusals are these.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import logging
import secrets
import urllib.parse
from dataclasses import dataclass
from typing import Any, Protocol

import tornado.escape
import tornado.httputil
import tornado.routing
import tornado.web

log = logging.getLogger(__name__)

SESSION_COOKIE = "scope_session"
#: A session lasts this many days, or until the token changes.
SESSION_DAYS = 30


@dataclass(frozen=True)
class LoginText:
    """What the login page says: its heading, where the token comes from (HTML, trusted: a constant),
    and what it says of a token that does not log in."""

    heading: str
    help_html: str
    wrong_token: str


APP_LOGIN = LoginText(
    "This Scope app needs a token",
    """<p>Its controls can stop containers and open shells, so it asks who you are. Open the login address
the app printed when it started (<code>http://&lt;host&gt;:4040/?token=&hellip;</code>: in its log,
in <code>docker logs weavescope</code>, or in what <code>scope launch</code> said), or paste the token:</p>""",
    "That token is not this app's.",
)


class Gate(Protocol):
    """Who may use the app over HTTP."""

    @property
    def enforced(self) -> bool:
        """False when the app is open to all."""
        ...

    @property
    def login_text(self) -> LoginText: ...

    def allows(self, request: tornado.httputil.HTTPServerRequest) -> bool: ...

    def login(self, token: str) -> str | None:
        """The session cookie's value for `token`, or None when the token is not a valid one."""
        ...


@dataclass(frozen=True)
class Auth:
    """The token in force, or None when the app is open."""

    token: str | None

    @property
    def enforced(self) -> bool:
        return self.token is not None

    @property
    def login_text(self) -> LoginText:
        return APP_LOGIN

    def login(self, token: str) -> str | None:
        if self.token is None or not hmac.compare_digest(token.encode(), self.token.encode()):
            return None
        return self.session

    @property
    def session(self) -> str:
        """The cookie's value: a MAC of the token, so a cookie that leaks does not give the token away."""
        assert self.token is not None
        return hmac.new(self.token.encode(), b"scope session", hashlib.sha256).hexdigest()

    def allows(self, request: tornado.httputil.HTTPServerRequest) -> bool:
        if self.token is None:
            return True
        given = bearer_token(request)
        if given is not None and hmac.compare_digest(given.encode(), self.token.encode()):
            return True
        cookie = session_cookie(request)
        return cookie is not None and hmac.compare_digest(cookie.encode(), self.session.encode())


def bearer_token(request: tornado.httputil.HTTPServerRequest) -> str | None:
    """The token of an `Authorization: Bearer TOKEN` header, if there is one."""
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    return value.strip() if scheme.lower() == "bearer" else None


def session_cookie(request: tornado.httputil.HTTPServerRequest) -> str | None:
    try:
        cookie = request.cookies.get(SESSION_COOKIE)
    except Exception:  # a malformed Cookie header is no cookie
        return None
    return cookie.value if cookie is not None else None


def choose_token(listen_host: str, token: str, no_auth: bool) -> tuple[str | None, bool]:
    """(token in force, whether it was generated here) for the flags given.

    `--no-auth` turns access control off; `--auth-token` sets the token; without either, an app that
    listens beyond loopback makes a token up (and logs the URL to log in with), while one on loopback
    alone stays open, as it always was.
    """
    if no_auth:
        return None, False
    if token:
        return token, False
    if is_loopback(listen_host):
        return None, False
    return secrets.token_urlsafe(24), True


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name other than localhost, or 0.0.0.0's like: assume it reaches beyond


class _Login(tornado.routing.Matcher):
    """A page request carrying `?token=`."""

    def match(self, request: tornado.httputil.HTTPServerRequest) -> dict[str, Any] | None:
        path = request.path or ""
        if path.startswith("/api") or "token" not in urllib.parse.parse_qs(request.query or ""):
            return None
        return {}


class _Refused(tornado.routing.Matcher):
    """Any request without a valid token or session."""

    def __init__(self, auth: Gate) -> None:
        self.auth = auth

    def match(self, request: tornado.httputil.HTTPServerRequest) -> dict[str, Any] | None:
        return None if self.auth.allows(request) else {}


class LoginHandler(tornado.web.RequestHandler):
    """`/?token=TOKEN`: a session cookie, then the same page without the token in its address."""

    def initialize(self, auth: Gate) -> None:
        self.auth = auth

    def get(self) -> None:
        query = urllib.parse.parse_qs(self.request.query or "", keep_blank_values=True)
        given = (query.pop("token", [""]) or [""])[0]
        session = self.auth.login(given)
        if session is None:
            log.warning("a wrong token from %s", self.request.remote_ip)
            self.set_status(401)
            self.finish(login_page(self.auth.login_text, self.auth.login_text.wrong_token))
            return
        self.set_cookie(
            SESSION_COOKIE,
            session,
            path="/",
            expires_days=SESSION_DAYS,
            httponly=True,
            samesite="Strict",
            secure=self.request.protocol == "https",
        )
        rest = urllib.parse.urlencode(query, doseq=True)
        self.redirect(self.request.path + (f"?{rest}" if rest else ""))


class RefusedHandler(tornado.web.RequestHandler):
    """401: JSON for the API (and its websockets and pipes), the login page for the rest."""

    def initialize(self, auth: Gate) -> None:
        self.auth = auth

    def prepare(self) -> None:
        self.set_status(401)
        self.set_header("Cache-Control", "no-store")
        if (self.request.path or "").startswith("/api"):
            self.set_header("WWW-Authenticate", 'Bearer realm="scope"')
            self.set_header("Content-Type", "application/json; charset=utf-8")
            self.finish(json.dumps({"error": "a token is required: send Authorization: Bearer TOKEN"}))
        else:
            self.finish(login_page(self.auth.login_text, ""))


def login_page(text: LoginText, problem: str) -> str:
    notice = f'<p class="problem">{tornado.escape.xhtml_escape(problem)}</p>' if problem else ""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Scope: log in</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body {{ margin: 0; min-height: 100vh; display: grid; place-items: center; background: #111821; color: #d5dde7;
  font: 14px/1.5 system-ui, sans-serif; }}
main {{ max-width: 460px; padding: 28px; border: 1px solid #2a3749; border-radius: 10px; background: #1b2533; }}
h1 {{ margin: 0 0 8px; font-size: 18px; color: #fff; }}
code {{ font-family: monospace; color: #fff; }}
.problem {{ color: #ef6b6b; }}
input {{ width: 100%; box-sizing: border-box; margin: 8px 0; padding: 7px 9px; border: 1px solid #2a3749;
  border-radius: 6px; background: #111821; color: #d5dde7; font: 13px monospace; }}
button {{ padding: 6px 14px; border: 0; border-radius: 6px; background: #4ea1f3; color: #fff; font-weight: 600; }}
</style></head>
<body><main data-testid="login">
<h1>{tornado.escape.xhtml_escape(text.heading)}</h1>
{notice}
{text.help_html}
<form method="get"><input name="token" type="password" autocomplete="off" autofocus
 aria-label="Token" placeholder="token"><button type="submit">Log in</button></form>
<p>Programs send it as <code>Authorization: Bearer TOKEN</code>.</p>
</main></body></html>
"""


def auth_rules(auth: Gate) -> list[tornado.routing.Rule]:
    """The rules to put first in the application: none when the app is open."""
    if not auth.enforced:
        return []
    return [
        tornado.routing.Rule(_Login(), LoginHandler, {"auth": auth}),
        tornado.routing.Rule(_Refused(auth), RefusedHandler, {"auth": auth}),
    ]
