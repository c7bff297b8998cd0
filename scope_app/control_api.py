"""`POST /api/control/{probeId}/{nodeId}/{control}` and the routes of controls and pipes.

The app checks what it can before it asks the probe: that controls are on (not `--read-only`), that
the request comes from this app's own pages (a browser names the page's origin; JSON-only bodies need
a preflight another site cannot pass), that the probe is connected now, that the merged report has
that probe offering controls on that node, and that the control is one there is (its node's topology
has a template for it). Whether it applies
to the node as it is now (start a running container) is the probe's and its engine's to say: the map
may be a second behind. One log line per control says who asked what.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

import tornado.web

from scope_app.controls import ControlRouter, ProbeBusy, ProbeNotConnected, same_origin
from scope_app.pipes import PipeHub, PipeWebSocket
from scope_app.render.templates import offered
from scope_app.tenancy import SINGLE_TENANT
from scope_common import rpc
from scope_common.report import Report

log = logging.getLogger("scope.app.controls")

#: Largest JSON body of a control POST (it travels as one text field of the request).
MAX_BODY_BYTES = rpc.MAX_TEXT
_HTTP_STATUS = {
    rpc.OK: 200,
    rpc.UNKNOWN_NODE: 400,
    rpc.UNKNOWN_CONTROL: 400,
    rpc.REFUSED: 409,
    rpc.BUSY: 503,
    rpc.FAILED: 502,
}


class ControlHandler(tornado.web.RequestHandler):
    """`POST /api/control/{probeId}/{nodeId}/{control}` -> `{value, error, pipe, removedNode}`."""

    def initialize(
        self,
        router: ControlRouter,
        report: Callable[[], Report],
        pipes: PipeHub,
        read_only: bool,
        allowed_origins: frozenset[str],
        tenant: str,
    ) -> None:
        self.router = router
        self.report = report
        self.pipes = pipes
        self.read_only = read_only
        self.allowed_origins = allowed_origins
        self.tenant = tenant

    def set_default_headers(self) -> None:
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.set_header("Cache-Control", "no-store")

    def check_xsrf_cookie(self) -> None:
        """The Origin check and JSON-only bodies stand for a token: see `same_origin`."""

    async def post(self, probe_id: str, node_id: str, control: str) -> None:
        status, body = await self._control(probe_id, node_id, control)
        log.info(
            "control %s on %s by %s via probe %s: %s",
            control[:60],
            node_id[:100],
            self.request.remote_ip,
            probe_id[:40],
            f"{status} {body.get('error') or 'ok'}",
        )
        self.set_status(status)
        self.finish(json.dumps(body))

    async def _control(self, probe_id: str, node_id: str, control: str) -> tuple[int, dict[str, Any]]:
        def refuse(status: int, error: str) -> tuple[int, dict[str, Any]]:
            return status, {"value": None, "error": error, "pipe": None, "removedNode": None}

        if self.read_only:
            return refuse(403, "this app is read-only: controls are off")
        if not same_origin(self.request, self.allowed_origins):
            return refuse(403, "cross-site control requests are refused")
        args = self._args()
        if args is None:
            return refuse(415, "the body must be a JSON object (Content-Type: application/json)")
        # Another tenant's probe answers exactly as one that is not there.
        if not self.router.connected(probe_id, self.tenant):
            return refuse(404, f"probe {probe_id[:40]!r} is not connected")
        found = offered(self.report(), node_id)
        if found is None or found.probe_id != probe_id:
            return refuse(400, f"probe {probe_id[:40]!r} reports no node {node_id[:100]!r} with controls")
        if control not in found.templates:
            return refuse(400, f"there is no control {control[:60]!r}")
        try:
            response = await self.router.request(probe_id, node_id, control, args, self.tenant)
        except ProbeNotConnected:
            return refuse(404, f"probe {probe_id[:40]!r} is not connected")
        except ProbeBusy:
            return refuse(503, f"probe {probe_id[:40]!r} has too many controls in progress")
        except TimeoutError as exc:
            return refuse(504, f"the probe did not answer: {exc or 'timed out'}")
        status = _HTTP_STATUS[response.text("status")]
        pipe = response.text("pipe") or None
        if pipe is not None and not self.pipes.add(probe_id, pipe, self.request.remote_ip or "", self.tenant):
            return refuse(503, "too many pipes are open")
        return status, {
            "value": response.text("value") or None,
            "error": response.text("error") or None,
            "pipe": pipe,
            "removedNode": response.text("removed_node") or None,
        }

    def _args(self) -> str | None:
        """The body as compact JSON text ("" when empty); None when it is not a JSON object."""
        body = self.request.body
        if not body:
            return ""
        content_type = self.request.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if content_type != "application/json" or len(body) > MAX_BODY_BYTES:
            return None
        try:
            value = json.loads(body)
        except ValueError:
            return None
        if not isinstance(value, dict):
            return None
        text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
        return text if len(text.encode()) <= rpc.MAX_TEXT else None


class ChannelHandler(tornado.web.RequestHandler):
    """`GET /api/control/{probeId}` -> `{probeId, connected, hostId, reason}`: whether the app can reach
    the probe's control channel right now (it heard the probe within rpc.PEER_TIMEOUT).

    The map outlives a probe by the app's window: a node whose probe is gone, stopped or cut off still
    shows with its buttons for a while. The details panel asks this to disable them and say why, rather
    than let a click end in a 404 or a 10 s wait.
    """

    def initialize(self, router: ControlRouter, read_only: bool) -> None:
        self.router = router
        self.read_only = read_only

    def set_default_headers(self) -> None:
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.set_header("Cache-Control", "no-store")

    def get(self, probe_id: str) -> None:
        link = self.router.probes.get(probe_id)
        reason = None
        if self.read_only:
            reason = "This app is read-only: controls are off."
        elif link is None:
            reason = (
                "The probe that offers these controls cannot be reached right now: "
                f"it has not been heard on its control channel for {rpc.PEER_TIMEOUT:g} s."
            )
        body = {
            "probeId": probe_id,
            "connected": link is not None and not self.read_only,
            "hostId": link.host_id if link is not None else None,
            "reason": reason,
        }
        self.finish(json.dumps(body))


def control_routes(
    router: ControlRouter,
    pipes: PipeHub,
    report: Callable[[], Report],
    read_only: bool,
    allowed_origins: frozenset[str],
    tenant: str = SINGLE_TENANT,
) -> list[tuple[Any, ...]]:
    """The routes of one tenant's controls and pipes (the app's only tenant without --multitenant)."""
    checks = {"read_only": read_only, "allowed_origins": allowed_origins, "tenant": tenant}
    return [
        (
            r"/api/control/([^/]+)/(.+)/([^/]+)",
            ControlHandler,
            {"router": router, "report": report, "pipes": pipes, **checks},
        ),
        (r"/api/control/([^/]+)", ChannelHandler, {"router": router, "read_only": read_only}),
        (r"/api/pipe/([0-9a-f]{32})", PipeWebSocket, {"hub": pipes, **checks}),
    ]
