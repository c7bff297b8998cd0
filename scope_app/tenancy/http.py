"""HTTP for the service: each request is its tenant's, by the user token it shows.

A request shows `Authorization: Bearer USER_TOKEN`, or the session cookie the login page
(scope_app.auth) set for that token. The cookie is `TENANT.MAC`, the MAC keyed by the service's
secret over the tenant and its user token's hash: it names the tenant without a lookup, gives the
token away to nobody, and stops working when the tenant is revoked. A probe token is no user token:
it is not even stored, only the public key derived from it.

Routing: the application's first rules are the login page and the 401 of scope_app.auth; whatever
passes them is handed to `TenantDispatch`, which hands the request to its tenant's own application
(routes made for that tenant's collector, renderer, feeds, controls and pipes). No handler sees
another tenant's state, so another tenant's ids answer exactly as ids that do not exist.

On a replica (--store), a tenant's picture is loaded from the store when one of its users first asks
(scope_app.main); `ready_of(tenant)` is then what to wait for before the request is handled, so that
the first answer, or a websocket's first message, is the complete picture rather than an empty one.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Awaitable, Callable
from typing import Any

import tornado.httputil
import tornado.routing
import tornado.web

from scope_app.auth import LoginText, bearer_token, session_cookie
from scope_app.metrics import CONTENT_TYPE, AppMetrics
from scope_app.tenancy.directory import TenantDirectory
from scope_app.tenancy.registry import token_hash
from scope_app.websocket import FeedHub, TopologyWebSocket

#: The service's login page: a user of a tenant logs in with the user token its operator was given.
SERVICE_LOGIN = LoginText(
    "Log in to your Scope tenant",
    """<p>This Scope service shows each tenant its own hosts, containers and processes. Paste your tenant's
<b>user token</b>: the <code>user_token</code> that <code>scope tenants add</code> printed when your tenant
was added (ask whoever runs the service). A probe token does not open the map.</p>""",
    "That is no user token of this service: check that it is the user token, not the probe token, "
    "and that your tenant has not been revoked.",
)


class TenantAuth:
    """The `Gate` (scope_app.auth) of the service."""

    enforced = True
    login_text = SERVICE_LOGIN

    def __init__(self, directory: TenantDirectory, secret: str) -> None:
        self._directory = directory
        self._key = hmac.new(secret.encode(), b"scope tenant sessions", hashlib.sha256).digest()

    def tenant_of(self, request: tornado.httputil.HTTPServerRequest) -> str | None:
        """The tenant whose user token or session the request shows; None for none."""
        given = bearer_token(request)
        if given is not None:
            found = self._directory.by_user_token_hash(token_hash(given))
            return found.name if found is not None else None
        cookie = session_cookie(request)
        if cookie is None:
            return None
        name, _, mac = cookie.rpartition(".")
        tenant = self._directory.by_name(name)
        if tenant is None or not hmac.compare_digest(mac.encode(), self._mac(name, tenant.user_token_hash).encode()):
            return None
        return name

    def allows(self, request: tornado.httputil.HTTPServerRequest) -> bool:
        return self.tenant_of(request) is not None

    def login(self, token: str) -> str | None:
        tenant = self._directory.by_user_token_hash(token_hash(token))
        return f"{tenant.name}.{self._mac(tenant.name, tenant.user_token_hash)}" if tenant is not None else None

    def _mac(self, name: str, user_token_hash: str) -> str:
        return hmac.new(self._key, f"{name}\0{user_token_hash}".encode(), hashlib.sha256).hexdigest()


class AnyRequest(tornado.routing.Matcher):
    def match(self, request: tornado.httputil.HTTPServerRequest) -> dict[str, Any] | None:
        return {}


#: What a request waits for before its tenant's application handles it (None: nothing).
ReadyOf = Callable[[str], Awaitable[object] | None]


class TenantDispatch(tornado.routing.Router):
    """Hands each request (already allowed by the auth rules) to its tenant's application, once
    `ready_of(tenant)` (if anything) is done."""

    def __init__(
        self,
        auth: TenantAuth,
        application_of: Callable[[str], tornado.web.Application],
        ready_of: ReadyOf | None = None,
    ) -> None:
        self._auth = auth
        self._application_of = application_of
        self._ready_of = ready_of

    def find_handler(
        self, request: tornado.httputil.HTTPServerRequest, **kwargs: Any
    ) -> tornado.httputil.HTTPMessageDelegate | None:
        tenant = self._auth.tenant_of(request)
        if tenant is None:  # revoked between the auth rule and here: refused on the next request
            return None
        delegate = self._application_of(tenant).find_handler(request, **kwargs)
        ready = self._ready_of(tenant) if self._ready_of is not None else None
        return delegate if ready is None else AfterReady(ready, delegate)


class AfterReady(tornado.httputil.HTTPMessageDelegate):
    """Hands a request to `delegate` once `ready` is done: the connection reads nothing more of the
    request, and no handler is made, until then (tornado waits for what `headers_received` returns)."""

    def __init__(self, ready: Awaitable[object], delegate: tornado.httputil.HTTPMessageDelegate) -> None:
        self._ready = ready
        self._delegate = delegate

    async def headers_received(
        self,
        start_line: tornado.httputil.RequestStartLine | tornado.httputil.ResponseStartLine,
        headers: tornado.httputil.HTTPHeaders,
    ) -> None:
        await self._ready
        received = self._delegate.headers_received(start_line, headers)
        if received is not None:
            await received

    def data_received(self, chunk: bytes) -> Awaitable[None] | None:
        return self._delegate.data_received(chunk)

    def finish(self) -> None:
        self._delegate.finish()

    def on_connection_close(self) -> None:
        self._delegate.on_connection_close()


def tenant_rules(
    auth: TenantAuth, application_of: Callable[[str], tornado.web.Application], ready_of: ReadyOf | None = None
) -> list[Any]:
    """What follows the auth rules in the service's application."""
    return [tornado.routing.Rule(AnyRequest(), TenantDispatch(auth, application_of, ready_of))]


class OperatorMetricsHandler(tornado.web.RequestHandler):
    """`/metrics` of the service, for its operator alone: the figures are labelled with every tenant's
    name, which no tenant may read. It asks for the operator's metrics token (`--metrics-token`,
    SCOPE_METRICS_TOKEN), not a user token; without one configured, the service has no /metrics."""

    def initialize(self, metrics: AppMetrics, token: str | None) -> None:
        self._metrics = metrics
        self._token = token

    def get(self) -> None:
        self.set_header("Cache-Control", "no-store")
        if self._token is None:
            self._refuse(404, "no /metrics: the service was started without --metrics-token")
            return
        given = bearer_token(self.request)
        if given is None or not hmac.compare_digest(given.encode(), self._token.encode()):
            self.set_header("WWW-Authenticate", 'Bearer realm="scope metrics"')
            self._refuse(401, "the operator's metrics token is required: send Authorization: Bearer METRICS_TOKEN")
            return
        self.set_header("Content-Type", CONTENT_TYPE)
        self.finish(self._metrics.exposition())

    def _refuse(self, status: int, error: str) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.finish(json.dumps({"error": error}))


def operator_rules(metrics: AppMetrics, metrics_token: str | None) -> list[Any]:
    """What precedes the auth rules in the service's application: the operator's routes, which no
    tenant's token or session opens (and no tenant's application is asked about)."""
    return [
        tornado.routing.Rule(
            tornado.routing.PathMatches(r"/metrics"),
            OperatorMetricsHandler,
            {"metrics": metrics, "token": metrics_token},
        )
    ]


class RevocableWebSocket(TopologyWebSocket):
    """A view's websocket that is in `open_sockets` while it is open. A token is checked when a
    websocket opens, never again: when its tenant is revoked, the tenant's view closes what is in
    that set, so that an open map stops at once rather than being fed until its user leaves."""

    # A keyword the base's initialize lacks: tornado passes the route's arguments by name, so it is safe.
    def initialize(  # type: ignore[override]
        self,
        hub: FeedHub,
        allowed_origins: frozenset[str] = frozenset(),
        *,
        open_sockets: set[TopologyWebSocket],
    ) -> None:
        super().initialize(hub, allowed_origins)
        self._open_sockets = open_sockets

    def open(self, *args: str, **kwargs: str) -> None:
        self._open_sockets.add(self)
        super().open(*args, **kwargs)

    def on_close(self) -> None:
        self._open_sockets.discard(self)
        super().on_close()
