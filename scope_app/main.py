"""The app process: the bus receiver, the collector, the renderer and the web server in one loop."""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import logging
import secrets
import signal
import socket
import sqlite3
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import tornado.httpserver
import tornado.log
import tornado.web
import zmq.asyncio

from scope_app import collector as collector_defaults
from scope_app.allowed_hosts import AllowedHosts, host_checked
from scope_app.api import AppContext, api_routes, not_found_route
from scope_app.auth import Auth, Gate, auth_rules, choose_token, is_loopback
from scope_app.collector import Collector, Limits, collect_fully_less_often
from scope_app.control_api import control_routes
from scope_app.controls import ControlRouter
from scope_app.ingest import BusReceiver
from scope_app.metrics import AppMetrics, Forgotten, ServiceMetrics, StateMetrics
from scope_app.pipes import PipeHub
from scope_app.render import MAX_VIEW_NODES, Renderer
from scope_app.replicas import ReplicaLink, ReplicaMetrics
from scope_app.replicas.link import tenant_channel
from scope_app.replicas.store import redacted, store_arg
from scope_app.tenancy import SINGLE_TENANT
from scope_app.tenancy.directory import REFRESH_INTERVAL, TenantDirectory
from scope_app.tenancy.http import RevocableWebSocket, TenantAuth, operator_rules, tenant_rules
from scope_app.tenancy.limits import TenantGate, TenantLimits
from scope_app.tenancy.registry import RegistryError, RegistryUnavailable
from scope_app.tenancy.service import Service, add_state_dir_flag, open_service
from scope_app.tenancy.shared import FleetBytes
from scope_app.tenancy.store import InProcessReports
from scope_app.tenancy.zap import ZapHandler
from scope_app.websocket import FeedHub, TopologyWebSocket
from scope_common import __version__, rpc
from scope_common.bus import DEFAULT_BUS_PORT, DEFAULT_HTTP_PORT
from scope_common.config import env_flag, on_off, parse_duration, split_host_port, switch_flag
from scope_common.delta import NodeKey
from scope_common.report import Report
from scope_common.supervise import Supervisor

log = logging.getLogger("scope.app")

#: Browsers send nothing big; the limit stops a client from making the app buffer a huge frame.
WEBSOCKET_MAX_MESSAGE = 64 * 1024
#: A websocket is pinged this often and closed when the pong is this late, so a browser that vanished
#: without closing is noticed. Tornado wants the timeout no longer than the interval.
WEBSOCKET_PING_INTERVAL = 10.0
WEBSOCKET_PING_TIMEOUT = WEBSOCKET_PING_INTERVAL
#: --multitenant --store: a replica stops following a tenant (decoding, merging, rendering its reports)
#: when none of its users has had a websocket open or made a request there for this long. Long enough
#: that a user reading the map between clicks finds it ready; the picture is loaded again on the next.
WATCH_IDLE = 60.0
#: The longest a tenant's first request on a replica waits for its picture to be loaded from the store.
JOIN_WAIT = 5.0


def request_logger(log_http: bool) -> Callable[[tornado.web.RequestHandler], None]:
    """Tornado's access log at DEBUG (INFO with `--log-http`): a UI polling the API makes a line a second,
    which buries everything else. Server errors are logged whatever the setting."""
    quiet = logging.INFO if log_http else logging.DEBUG

    def log_request(handler: tornado.web.RequestHandler) -> None:
        status = handler.get_status()
        level = logging.ERROR if status >= 500 else quiet
        if tornado.log.access_log.isEnabledFor(level):
            request = handler.request
            tornado.log.access_log.log(
                level,
                "%d %s %.2fms",
                status,
                handler._request_summary(),
                1000.0 * request.request_time(),
            )

    return log_request


def static_dir() -> str:
    """Where the UI's files are: static/ beside this package in a checkout (so that a second checkout's
    UI is its own, not the one an editable install points at), else the installed `scope_static`."""
    checkout = Path(__file__).resolve().parent.parent / "static"
    if (checkout / "index.html").is_file():
        return str(checkout)
    spec = importlib.util.find_spec("scope_static")
    if spec is not None and spec.submodule_search_locations:
        return str(next(iter(spec.submodule_search_locations)))
    return str(checkout)


class TenantView:
    """One tenant's side of the app: its collector, renderer, feeds and web routes. Without
    --multitenant there is one, of the implicit tenant; with it, one a tenant, made on first use."""

    def __init__(self, app: ScopeApp, tenant: str, limits: Limits | None) -> None:
        self.tenant = tenant
        self._app = app
        self.renderer = Renderer(app.max_view_nodes, on_render=app.metrics.observe_render)
        self.hub = FeedHub(self.renderer, supervisor=app.supervisor)
        self.collector = Collector(self._merged, window=app.window, limits=limits)
        # A lost delta: ask the probe for a full report rather than wait for its periodic one.
        self.collector.on_missed_delta = lambda probe_id: app.router.ask_full_report(probe_id, tenant)
        # A tenant of the service reads its own counters, not the bus's, which are every tenant's together.
        receiver = app.receiver if app.gate is None else None
        self.context = AppContext(app.app_id, self.collector, self.renderer, receiver, app.supervisor, app.metrics)
        if app.gate is not None:
            self.context.refused = app.gate.refused.setdefault(tenant, {})
        self.context.read_only = app.read_only
        #: The view's open websockets, closed when its tenant is revoked.
        self.websockets: set[TopologyWebSocket] = set()
        self.routes = [
            *api_routes(self.context),
            (
                r"/api/topology/([^/]+)/ws",
                RevocableWebSocket,
                {"hub": self.hub, "allowed_origins": app.allowed_origins, "open_sockets": self.websockets},
            ),
            *control_routes(app.router, app.pipes, self._report, app.read_only, app.allowed_origins, tenant),
            not_found_route(self.context),
            (
                r"/(.*)",
                tornado.web.StaticFileHandler,
                {"path": static_dir(), "default_filename": "index.html"},
            ),
        ]
        self._web: tornado.web.Application | None = None

    @property
    def web(self) -> tornado.web.Application:
        """The tenant's own application, which the service hands its requests to (--multitenant)."""
        if self._web is None:
            self._web = tornado.web.Application(self.routes, **self._app.web_settings)
        return self._web

    def _report(self) -> Report:
        return self.renderer.graph.report

    def close_websockets(self, reason: str) -> None:
        """Close the view's open websockets (1008: policy violation, as for a token no longer valid)."""
        for websocket in list(self.websockets):
            websocket.close(1008, reason)

    def _merged(self, report: Report, version: int, changed: set[NodeKey]) -> None:
        started = time.perf_counter()
        try:
            self.renderer.update(report, version, changed)
            self.hub.changed()
        except Exception:
            # Called from the bus receiver's or the expiry's merge: a failure here is theirs to count,
            # but must not stop them applying what comes next.
            self._app.supervisor.failed("merge")
        self._app.metrics.merge_seconds.observe(time.perf_counter() - started)


class ScopeApp:
    """Wires the parts together; `start()` binds the sockets, `stop()` closes them.

    `service`: run as the multi-tenant service (--multitenant): CURVE and ZAP on the bus and the
    control channel, tenants' tokens on HTTP, a `TenantView` a tenant; `/metrics` for the holder of
    `metrics_token` alone."""

    def __init__(
        self,
        bus: str,
        window: float,
        allowed_origins: frozenset[str] = frozenset(),
        *,
        allowed_hosts: AllowedHosts | None = None,
        limits: Limits | None = None,
        log_http: bool = False,
        max_view_nodes: int = MAX_VIEW_NODES,
        read_only: bool = False,
        auth_token: str | None = None,
        store: str | None = None,
        service: Service | None = None,
        metrics_token: str | None = None,
        watch_idle: float = WATCH_IDLE,
    ) -> None:
        self.app_id = secrets.token_hex(8)
        self.window = window
        self.max_view_nodes = max_view_nodes
        self.read_only = read_only
        self.allowed_origins = allowed_origins
        self.service = service
        self.metrics = AppMetrics()
        self.supervisor = Supervisor(log)
        # Failures of callbacks rather than tasks, counted from the start so that /metrics shows them.
        for name in ("merge", "feeds", "websocket_open"):
            self.supervisor.restarts[name] = 0
        self.views: dict[str, TenantView] = {}
        #: What the views dropped (tenants revoked, or no longer watched here) had counted.
        self.forgotten = Forgotten()
        #: --multitenant --store: the tenants followed here because their users watch them here, with
        #: when they last did (a websocket open counts as now); None: every tenant is followed.
        self._watched: dict[str, float] | None = {} if service is not None and store else None
        self.watch_idle = watch_idle
        tenant_limits = service.limits.collector_limits() if service is not None else limits
        self.store = InProcessReports(
            lambda tenant: self._new_view(tenant, tenant_limits).collector, made_by_reports=self._watched is None
        )
        self._zmq = zmq.asyncio.Context()
        keys = service.keys if service is not None else None
        self.directory: TenantDirectory | None = None
        self.gate: TenantGate | None = None
        self.zap: ZapHandler | None = None
        # The service's replicas (--multitenant --store) count each tenant's bytes together.
        self.fleet_bytes = (
            FleetBytes(store, self.app_id, service.limits.max_bytes_per_second) if service and store else None
        )
        try:
            if service is not None:
                self.directory = TenantDirectory(service.registry, self._revoked)
                self.gate = TenantGate(self.directory.tenant_of_key, service.limits, budget=self.fleet_bytes)
                # Bound before the sockets it guards; they would refuse every probe without it anyway.
                self.zap = ZapHandler(self._zmq, self.directory.admits_key)
            self.receiver = BusReceiver(self.store, self._zmq, bus, self.metrics, keys=keys, gate=self.gate)
            self.router = ControlRouter(
                self._zmq,
                rpc.control_address(self.receiver.address),
                keys=keys,
                tenant_of_key=self.directory.tenant_of_key if self.directory is not None else None,
            )
        except BaseException:
            # A port taken (the bus's, or the control channel's after it): close what was bound, or
            # the context waits on those sockets for ever when it is collected.
            self._zmq.destroy(linger=0)
            raise
        self.pipes = PipeHub(self.router)
        self.allowed_hosts = allowed_hosts or AllowedHosts()
        # Replicas (--store): this app's bus shared with the others' through Redis (scope_app.replicas).
        # Controls and pipes cross replicas too, each tenant's to its own probes only.
        self.replicas = ReplicaLink(store, self.app_id, window) if store else None
        if self.replicas is not None:
            if self.directory is None:
                self.replicas.attach(SINGLE_TENANT, self.receiver, self.router)
            else:
                self.replicas.attach_service(self.receiver, self._channel_of, self.router)
                self._attach_tenants()
            self.metrics.registry.register(ReplicaMetrics(self.replicas))
        self.web_settings: dict[str, Any] = {
            "websocket_ping_interval": WEBSOCKET_PING_INTERVAL,
            "websocket_ping_timeout": WEBSOCKET_PING_TIMEOUT,
            "log_function": request_logger(log_http),
            "websocket_max_message_size": WEBSOCKET_MAX_MESSAGE,
            "compress_response": True,
        }
        if service is None or self.directory is None:
            view = self.view(SINGLE_TENANT)
            self.collector, self.renderer, self.hub, self.context = (
                view.collector,
                view.renderer,
                view.hub,
                view.context,
            )
            self.metrics.registry.register(
                StateMetrics(
                    self.receiver, self.collector, self.renderer, self.hub, self.supervisor, self.allowed_hosts
                )
            )
            gate: Gate = Auth(auth_token)
            routes = [*auth_rules(gate), *view.routes]
        else:
            assert self.gate is not None and self.zap is not None
            zap, directory = self.zap, self.directory
            self.metrics.registry.register(
                ServiceMetrics(
                    self.receiver,
                    lambda: directory.tenants.keys(),
                    self.views,
                    self.gate.refused,
                    zap.refused,
                    lambda: zap.admitted,
                    self.supervisor,
                    self.forgotten,
                )
            )
            tenant_auth = TenantAuth(self.directory, service.keys.secret)
            routes = [
                *operator_rules(self.metrics, metrics_token),
                *auth_rules(tenant_auth),
                *tenant_rules(tenant_auth, lambda tenant: self._watch(tenant).web, self._loading),
            ]
        self.web = tornado.web.Application(host_checked(self.allowed_hosts, routes), **self.web_settings)
        self._server: tornado.httpserver.HTTPServer | None = None

    def view(self, tenant: str) -> TenantView:
        """The tenant's view, made (with its collector) on first use."""
        self.store.collector(tenant)
        return self.views[tenant]

    def _new_view(self, tenant: str, limits: Limits | None) -> TenantView:
        view = self.views[tenant] = TenantView(self, tenant, limits)
        return view

    def _channel_of(self, name: str) -> str | None:
        """Where the tenant of that name now shares its messages across replicas; None: no such tenant."""
        tenant = self.directory.tenants.get(name) if self.directory is not None else None
        return tenant_channel(name, tenant.probe_key) if tenant is not None else None

    def _watch(self, tenant: str) -> TenantView:
        """The tenant's view, for a request of one of its users: on a replica of the service, the tenant
        is followed here (its reports decoded, merged, rendered) from now until `watch_idle` passes with
        no request and no websocket open."""
        if self._watched is not None:
            self._watched[tenant] = time.monotonic()
            self._follow(tenant)
        return self.view(tenant)

    def _follow(self, tenant: str) -> None:
        """Follow `tenant` across replicas if it is in the registry (looked up there if the copy lacks it:
        a tenant just added, whose user's token was looked up there too)."""
        assert self.replicas is not None and self.directory is not None
        found = self.directory.by_name(tenant)
        if found is not None:
            self.replicas.attach_tenant(tenant, tenant_channel(tenant, found.probe_key))
            self.replicas.follow_tenant(tenant)

    def _loading(self, tenant: str) -> Awaitable[None] | None:
        """What a request of `tenant` waits for: its picture being loaded from the store, the first time
        a user watches it on this replica (bounded by JOIN_WAIT); None: nothing to wait for."""
        replicas = self.replicas
        if self._watched is None or replicas is None or replicas.joined(tenant):
            return None

        async def loaded() -> None:
            assert replicas is not None and self._watched is not None
            joined = await replicas.wait_joined(tenant, JOIN_WAIT)
            if tenant in self._watched:  # watched from when the request is served, not from when it came
                self._watched[tenant] = time.monotonic()
            if not joined:
                log.warning(
                    "tenant %s: not loaded from the store within %g s; answering with what is here", tenant, JOIN_WAIT
                )

        return loaded()

    def _unwatch(self, tenant: str) -> None:
        """Nobody watched `tenant` here for `watch_idle`: stop following it, and give its memory back (as
        `_revoked` does, with nothing to close). Its probes connected here are still shared."""
        assert self._watched is not None and self.replicas is not None
        del self._watched[tenant]
        self.replicas.unfollow_tenant(tenant)  # first: nothing of it is applied again
        if self.directory is not None and tenant not in self.directory.tenants:
            self.replicas.detach_tenant(tenant)  # revoked before the registry's copy ever had it
        view = self.views.pop(tenant, None)
        if view is not None:
            self.forgotten.add(view.collector)
        self.store.forget(tenant)
        log.info("tenant %s: not watched here for %g s, no longer followed here", tenant, self.watch_idle)

    def _attach_tenants(self) -> None:
        """Every tenant of the registry, and no other, is attached across replicas (its controls and
        pipes cross them); the tenants watched here are followed, those watched no more let go
        (--multitenant --store)."""
        assert self.replicas is not None and self.directory is not None
        known = self.directory.tenants
        for name in known:
            channel = self._channel_of(name)
            if channel is not None:
                self.replicas.attach_tenant(name, channel)
        # A tenant watched here may be missing from the copy for a moment (just added: its user's token was
        # looked up in the registry itself); one revoked is detached by `_revoked`, or when let go.
        for name in self.replicas.tenants.keys() - known.keys() - (self._watched or {}).keys():
            self.replicas.detach_tenant(name)
        if self._watched is None:
            return
        now = time.monotonic()
        for name, watched_at in list(self._watched.items()):
            view = self.views.get(name)
            if view is not None and view.websockets:
                self._watched[name] = watched_at = now
            if now - watched_at > self.watch_idle:
                self._unwatch(name)
            elif name in known:
                self.replicas.follow_tenant(name)

    async def _attach_tenants_forever(self) -> None:
        while True:
            await asyncio.sleep(REFRESH_INTERVAL)
            self._attach_tenants()

    def _revoked(self, tenant: str) -> None:
        """A tenant was revoked: its open pipes and websockets close, its probes vanish, its controls end,
        its views go. At once: a token is checked when a websocket or pipe opens, not afterwards."""
        if self.replicas is not None:
            self.replicas.detach_tenant(tenant)  # first: nothing of it is applied again
        if self._watched is not None:
            self._watched.pop(tenant, None)
        why = "its tenant was revoked"
        for pipe in [pipe for pipe in self.pipes.pipes.values() if pipe.tenant == tenant]:
            self.pipes.close(pipe, why)
        view = self.views.pop(tenant, None)
        if view is not None:
            self.forgotten.add(view.collector)
            view.close_websockets(why)
        self.store.forget(tenant)
        self.router.forget_tenant(tenant)
        if self.gate is not None:
            self.gate.forget(tenant)

    async def _expire_forever(self, interval: float = 1.0) -> None:
        while True:
            await asyncio.sleep(interval)
            self.store.expire()
            self.store.flush()

    def start(self, listen_host: str, listen_port: int) -> None:
        self._server = self.web.listen(listen_port, listen_host, xheaders=False)
        if self.zap is not None and self.directory is not None:
            self.supervisor.start("zap", self.zap.run)
            self.supervisor.start("tenants", self.directory.refresh_forever)
        self.supervisor.start("bus", self.receiver.run)
        self.supervisor.start("expiry", self._expire_forever)
        self.supervisor.start("controls", self.router.run)
        self.supervisor.start("control-heartbeats", self.router.heartbeat_forever)
        self.supervisor.start("pipe-collector", self.pipes.collect_forever)
        if self.replicas is not None:
            self.replicas.start(self.supervisor)
            if self.directory is not None:
                self.supervisor.start("replica-tenants", self._attach_tenants_forever)
        if self.fleet_bytes is not None:
            self.supervisor.start("tenant-byte-rates", self.fleet_bytes.sync_forever)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
        await self.supervisor.stop()
        if self.replicas is not None:
            await self.replicas.close()
        if self.fleet_bytes is not None:
            await self.fleet_bytes.close()
        self.pipes.close_all()
        self.router.close()
        self.receiver.close()
        if self.zap is not None:
            self.zap.close()
        self._zmq.term()


def split_address(text: str, default_port: int) -> tuple[str, int]:
    """A listening address: `host:port`, `:port` or `host` (port defaulted); IPv6 in brackets."""
    try:
        host, port = split_host_port(text, default_port)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"invalid address {text!r}: {exc}") from None
    return host or "0.0.0.0", port


def bus_endpoint(text: str) -> str:
    host, port = split_address(text.removeprefix("tcp://"), DEFAULT_BUS_PORT)
    return f"tcp://[{host}]:{port}" if ":" in host else f"tcp://{host}:{port}"


def add_app_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("app")
    env_flag(group, "--listen", default=f"0.0.0.0:{DEFAULT_HTTP_PORT}", help="HTTP address for the UI and API")
    env_flag(group, "--bus", default=f"0.0.0.0:{DEFAULT_BUS_PORT}", help="address the report bus binds")
    env_flag(group, "--window", default="15s", type=parse_duration, help="forget probes silent this long")
    env_flag(
        group,
        "--store",
        default="",
        type=store_arg,
        help="Redis URL (redis://HOST:PORT/DB, rediss://..., redis+sentinel://HOST:PORT/SERVICE/DB) shared with "
        "other replicas; empty: this process only. "
        "With --multitenant the tenant registry is there too (`scope tenants --store`)",
    )
    env_flag(
        group,
        "--max-view-nodes",
        default=str(MAX_VIEW_NODES),
        type=_positive_int,
        help="most nodes a view sends; past it, the most connected (the UI says how many there are)",
    )
    env_flag(group, "--allowed-origins", default="", help="extra websocket origins, comma-separated")
    switch_flag(group, "--read-only", help="refuse every control and pipe, and list none")
    env_flag(
        group,
        "--auth-token",
        default="",
        help="token every API route, websocket and pipe requires; empty: one is made up when listening beyond loopback",
    )
    switch_flag(group, "--no-auth", help="no token at all, even when listening beyond loopback")
    env_flag(group, "--log-http", default="off", type=on_off, help="log every HTTP request at INFO, not DEBUG")
    env_flag(
        group,
        "--allowed-hosts",
        default="",
        help="host names the UI and API answer to besides IP addresses, localhost and this machine's names, "
        "comma-separated; * for any (DNS rebinding protection off)",
    )
    env_flag(
        group,
        "--max-nodes",
        default=str(collector_defaults.MAX_NODES),
        type=_positive_int,
        help="nodes all probes' reports together may hold (bounds the app's memory)",
    )
    env_flag(
        group,
        "--max-nodes-per-source",
        default=str(collector_defaults.MAX_NODES_PER_SOURCE),
        type=_positive_int,
        help="nodes the probes of one source address may hold",
    )
    env_flag(
        group,
        "--max-probes-per-source",
        default=str(collector_defaults.MAX_PROBES_PER_SOURCE),
        type=_positive_int,
        help="probes one source address may report as (more from behind one NAT address)",
    )


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"invalid count {text!r} (a whole number above 0)")
    return value


def add_service_flags(parser: argparse.ArgumentParser) -> None:
    """Flags of the app run alone as the multi-tenant service (not of `scope`, which runs a local probe too)."""
    group = parser.add_argument_group("service (--multitenant)")
    switch_flag(
        group,
        "--multitenant",
        help="serve many tenants (`scope tenants` adds them): CURVE-encrypted bus, probes admitted by their "
        "service token, each user token sees its tenant alone; --auth-token and --no-auth do not apply",
    )
    add_state_dir_flag(group)
    defaults = TenantLimits()
    env_flag(
        group,
        "--tenant-max-probes",
        default=str(defaults.max_probes),
        type=_positive_int,
        help="probes one tenant may have reporting",
    )
    env_flag(
        group,
        "--tenant-max-nodes",
        default=str(defaults.max_nodes),
        type=_positive_int,
        help="nodes one tenant's probes may hold together",
    )
    env_flag(
        group,
        "--tenant-max-bytes-per-second",
        default=str(defaults.max_bytes_per_second),
        type=_positive_int,
        help="report bytes one tenant's probes may send a second, on average",
    )
    env_flag(
        group,
        "--tenant-idle",
        default=f"{WATCH_IDLE:g}s",
        type=parse_duration,
        help="with --store: a replica decodes and merges only the tenants its users watch (a map open, or a "
        "request within this long); past it, it stops and frees the tenant's memory (the next request loads "
        "the tenant's picture from the store again)",
    )
    env_flag(
        group,
        "--metrics-token",
        default="",
        help="token the operator shows for /metrics, which names every tenant (no user token opens it); "
        "give it by the environment, which ps does not show; empty: no /metrics",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="scope app", description="Merge probes' reports and serve the map.")
    add_app_flags(parser)
    add_service_flags(parser)
    env_flag(parser, "--log-level", default="info", help="debug, info, warning or error")
    return parser


async def serve(args: argparse.Namespace) -> None:
    listen_host, listen_port = split_address(args.listen, DEFAULT_HTTP_PORT)
    origins = frozenset(o.strip() for o in args.allowed_origins.split(",") if o.strip())
    limits = Limits(
        max_nodes=args.max_nodes,
        max_nodes_per_source=args.max_nodes_per_source,
        max_probes_per_source=args.max_probes_per_source,
    )
    service = None
    if args.multitenant:
        service = open_service(
            args.state_dir,
            TenantLimits(args.tenant_max_probes, args.tenant_max_nodes, args.tenant_max_bytes_per_second),
            store=args.store or None,
        )
        token, generated = None, False
    else:
        token, generated = choose_token(listen_host, args.auth_token, args.no_auth)
    app = ScopeApp(
        bus_endpoint(args.bus),
        args.window,
        origins,
        allowed_hosts=AllowedHosts(args.allowed_hosts.split(",")),
        limits=limits,
        log_http=args.log_http,
        read_only=args.read_only,
        auth_token=token,
        max_view_nodes=args.max_view_nodes,
        store=args.store or None,
        service=service,
        metrics_token=(args.metrics_token or None) if service is not None else None,
        watch_idle=args.tenant_idle,
    )
    log.info("app starting, version %s, ID %s", __version__, app.app_id)
    app.start(listen_host, listen_port)
    log.info(
        "listening on http://%s:%d, bus %s, controls %s%s",
        listen_host,
        listen_port,
        app.receiver.address,
        app.router.address,
        " (read-only: refused)" if args.read_only else "",
    )
    page = f"http://{socket.gethostname() if listen_host in ('0.0.0.0', '::') else listen_host}:{listen_port}/"
    if service is not None and app.directory is not None:
        log.info(
            "multi-tenant service: state in %s%s, %d tenants, service key %s (probes pin it: --service-key); "
            "/metrics %s",
            args.state_dir,
            f", tenants and replicas in {redacted(args.store)}" if args.store else "",
            len(app.directory.tenants),
            service.keys.public,
            "for the metrics token alone" if args.metrics_token else "off (no --metrics-token)",
        )
    elif args.no_auth and not is_loopback(listen_host):
        log.warning("access control is off (--no-auth): whoever reaches %s can use every control", page)
    elif generated:
        log.info("access needs a token; log in at %s?token=%s", page, token)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    await stopping.wait()
    await app.stop()
    log.info("app exiting")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    collect_fully_less_often()
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        asyncio.run(serve(args))
    except (OSError, zmq.ZMQError, sqlite3.Error, RegistryError, RegistryUnavailable) as exc:
        log.error("cannot start: %s", exc)
        return 1
    return 0
