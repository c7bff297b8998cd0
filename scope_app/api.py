"""The JSON API (docs/design.md). Handlers only read what the collector and renderer hold."""

from __future__ import annotations

import json
import logging
import socket
from typing import Any

import tornado.web

from scope_app.collector import Collector
from scope_app.ingest import BusReceiver
from scope_app.metrics import CONTENT_TYPE, AppMetrics
from scope_app.render import TOPOLOGIES, Renderer, View, view_options
from scope_app.render.base import metric_json
from scope_app.render.templates import topology_templates
from scope_common import __version__
from scope_common.report import Report
from scope_common.supervise import Supervisor

log = logging.getLogger(__name__)


#: Longer searches are refused: nobody types more, and each distinct one is a view kept in the cache.
MAX_SEARCH = 200


class AppContext:
    """What the handlers read: one per app process."""

    def __init__(
        self,
        app_id: str,
        collector: Collector,
        renderer: Renderer,
        receiver: BusReceiver | None,
        supervisor: Supervisor,
        metrics: AppMetrics,
    ) -> None:
        """`receiver`: None for a tenant of the service, whose bus counts every tenant's messages."""
        self.app_id = app_id
        self.hostname = socket.gethostname()
        self.collector = collector
        self.renderer = renderer
        self.receiver = receiver
        #: What the service refused of this tenant before its collector saw it, by reason (--multitenant).
        self.refused: dict[str, int] = {}
        #: With --read-only, node details list no controls (and the control routes refuse them).
        self.read_only = False
        self.supervisor = supervisor
        self.metrics = metrics


class ApiHandler(tornado.web.RequestHandler):
    """JSON in, JSON out; errors as `{"error": ...}`, never a traceback."""

    ctx: AppContext

    def initialize(self, ctx: AppContext) -> None:
        self.ctx = ctx

    def set_default_headers(self) -> None:
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.set_header("Cache-Control", "no-store")

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        reason = self._reason
        if "exc_info" in kwargs:
            exc = kwargs["exc_info"][1]
            if isinstance(exc, tornado.web.HTTPError) and exc.log_message:
                reason = exc.log_message % exc.args if exc.args else exc.log_message
        self.finish({"error": reason})

    def write_json(self, value: Any) -> None:
        self.finish(json.dumps(value, separators=(",", ":")))


class InfoHandler(ApiHandler):
    def get(self) -> None:
        self.write_json({"id": self.ctx.app_id, "version": __version__, "hostname": self.ctx.hostname})


class TopologyListHandler(ApiHandler):
    def get(self) -> None:
        self.write_json(self.ctx.renderer.topology_list())


class TopologyHandler(ApiHandler):
    def get(self, topology: str) -> None:
        self.finish(self._view(topology).json)

    def _view(self, topology: str) -> View:
        if topology not in TOPOLOGIES:
            raise tornado.web.HTTPError(404, "unknown topology %r", topology[:60])
        arguments = {k: self.get_argument(k) for k in self.request.arguments}
        search = arguments.pop("search", "")
        if len(search) > MAX_SEARCH:
            raise tornado.web.HTTPError(400, "search is longer than %d characters", MAX_SEARCH)
        try:
            options = view_options(arguments)
        except ValueError as exc:
            raise tornado.web.HTTPError(400, "%s", exc) from None
        return self.ctx.renderer.view(topology, options, search=search)


class NodeHandler(TopologyHandler):
    def get(self, topology: str, node_id: str) -> None:  # type: ignore[override]
        details = self._view(topology).details(node_id)
        if details is None:
            raise tornado.web.HTTPError(404, "no node %r in topology %r", node_id[:100], topology[:60])
        if self.ctx.read_only:
            details = {**details, "controls": []}
        self.write_json({"node": details})


class ReportHandler(ApiHandler):
    def get(self) -> None:
        self.write_json(report_json(self.ctx.renderer.graph.report))


def report_json(report: Report) -> dict[str, Any]:
    """The merged report, keyed by topology then node id, for people and tools to read."""
    return {
        name: {
            node.id: {
                "latest": {k: {"timestamp": ts, "value": v} for k, (ts, v) in node.latest.items()},
                "sets": node.sets,
                "adjacency": node.adjacency,
                "edges": {k: {"connection_count": e.connection_count} for k, e in node.edges.items()},
                "metrics": {
                    k: metric_json(k, m, topology_templates(report, name).metrics.get(k))
                    for k, m in node.metrics.items()
                },
                "parents": node.parents,
            }
            for node in topology
        }
        for name, topology in report.topologies.items()
    }


class ProbesHandler(ApiHandler):
    def get(self) -> None:
        self.write_json(
            [
                {"id": p.probe_id, "hostname": p.host_id, "version": p.version, "lastSeen": p.last_seen}
                for p in sorted(self.ctx.collector.probes.values(), key=lambda p: p.host_id)
            ]
        )


class StatsHandler(ApiHandler):
    """Counters an operator (or a test) reads to see what the bus did."""

    def get(self) -> None:
        receiver = self.ctx.receiver
        collector = self.ctx.collector
        # A tenant of the service sees its own figures only: the bus's are every tenant's together.
        bus: dict[str, Any] = {
            "reports_received": receiver.received if receiver else None,
            "bytes_received": receiver.received_bytes if receiver else None,
        }
        self.write_json(
            {
                **bus,
                "reports_applied": collector.applied,
                "reports_dropped": {**(receiver.dropped if receiver else self.ctx.refused), **collector.rejected},
                "nodes_rejected": receiver.nodes_rejected if receiver else {},
                "probes": len(collector.probes),
                "nodes": collector.node_count,
                "merges": collector.version,
            }
        )


#: Tasks without which the app serves a map that is no longer kept up to date.
REQUIRED_TASKS = ("bus", "expiry")


class HealthHandler(ApiHandler):
    """Readiness: 200 while the bus receiver and probe expiry run, 503 while either is down."""

    def get(self) -> None:
        running = self.ctx.supervisor.running
        down = [name for name in REQUIRED_TASKS if not running.get(name)]
        if down:
            self.set_status(503)
        self.write_json({"status": "down" if down else "ok", "down": down, "tasks": running})


class MetricsHandler(ApiHandler):
    """`/metrics`, in Prometheus' text format."""

    def get(self) -> None:
        self.set_header("Content-Type", CONTENT_TYPE)
        self.finish(self.ctx.metrics.exposition())


class NotFoundHandler(ApiHandler):
    def prepare(self) -> None:
        raise tornado.web.HTTPError(404, "no such API route")


def api_routes(ctx: AppContext) -> list[tuple[Any, ...]]:
    args = {"ctx": ctx}
    return [
        (r"/api", InfoHandler, args),
        (r"/api/topology", TopologyListHandler, args),
        (r"/api/topology/([^/]+)", TopologyHandler, args),
        (r"/api/topology/([^/]+)/(?!ws$)(.+)", NodeHandler, args),
        (r"/api/report", ReportHandler, args),
        (r"/api/probes", ProbesHandler, args),
        (r"/api/stats", StatsHandler, args),
        (r"/api/health", HealthHandler, args),
        (r"/metrics", MetricsHandler, args),
    ]


def not_found_route(ctx: AppContext) -> tuple[Any, ...]:
    return (r"/api/.*", NotFoundHandler, {"ctx": ctx})
