"""The app's end of the control channel, and `POST /api/control/{probeId}/{nodeId}/{control}`.

`ControlRouter` binds a ROUTER beside the bus. Probes connect and say `hello` every second; the router
keeps the ones heard within rpc.PEER_TIMEOUT (those it can reach now), heartbeats back, and matches
each response to the request it answers. A request gets rpc.REQUEST_TIMEOUT to be answered. Whatever
arrives is decoded by rpc.decode and dropped with a counter when it is bad, from a probe that never
said hello, or an answer to nothing asked.

With --multitenant the ROUTER is a CURVE server behind ZAP like the bus, and every probe belongs to
the tenant of the connection its hello came on (the tenant of the message's `User-Id`, the probe's
key, as the bus): a message from another
tenant's connection for that probe id is dropped, and the HTTP side asks for a probe by id *and*
tenant. ROUTER_HANDOVER is then off, so that a connection of another tenant that names itself with a
probe's id is refused by ZeroMQ rather than taking that probe's messages over.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, cast
from urllib.parse import urlparse

import tornado.web
import zmq
import zmq.asyncio

from scope_app.tenancy import SINGLE_TENANT, frame_property
from scope_common import rpc
from scope_common.curve import KeyPair, serve_curve
from scope_common.drops import Drops

log = logging.getLogger(__name__)

#: Probes the router keeps track of; hellos from more are dropped.
MAX_PROBES = 10_000
#: Requests waiting for one probe's answer; more are refused as busy.
MAX_PENDING_PER_PROBE = 16
#: A probe is asked for a full report at most this often: the messages after a lost delta are all
#: refused until the full report comes, and each would ask again.
FULL_REPORT_ASK_EVERY = 5.0


class ProbeNotConnected(Exception):
    pass


class ProbeBusy(Exception):
    pass


@dataclass
class ProbeLink:
    """A probe that said hello within rpc.PEER_TIMEOUT."""

    probe_id: str
    host_id: str
    version: str
    last_seen: float
    #: The tenant of the connection the probe said hello on.
    tenant: str = SINGLE_TENANT


#: Called with (probe id, message) for pipe messages, and (probe id) when a probe goes away.
PipeListener = Callable[[str, rpc.Message], None]
GoneListener = Callable[[str], None]


class RemoteControls(Protocol):
    """Probes whose control channel another replica holds (scope_app.replicas), each asked for as a probe
    of a tenant: a tenant reaches only its own probes on other replicas, as here."""

    def connected(self, tenant: str, probe_id: str) -> bool: ...

    async def request(self, tenant: str, probe_id: str, node_id: str, control: str, args: str) -> rpc.Message: ...

    def send(self, tenant: str, probe_id: str, raw: bytes) -> bool:
        """Carry a pipe message to the probe through the replica holding it."""
        ...

    def from_probe(self, tenant: str, probe_id: str, message: rpc.Message) -> bool:
        """Carry a pipe message of a probe connected here to the replica whose browser has the pipe;
        False when the pipe is not another replica's."""
        ...

    def gone(self, tenant: str, probe_id: str) -> None:
        """A probe connected here went away: the pipes other replicas have through it end."""
        ...


class ControlRouter:
    def __init__(
        self,
        context: zmq.asyncio.Context,
        bind: str,
        *,
        keys: KeyPair | None = None,
        tenant_of_key: Callable[[str], str | None] | None = None,
    ) -> None:
        """`keys` and `tenant_of_key` (--multitenant): the service's key pair, and the tenant of a
        connection's User-Id now (a revoked tenant's connections stay open, what they carry is dropped)."""
        self._tenant_of_key = tenant_of_key
        self._socket = context.socket(zmq.ROUTER)
        rpc.configure_router(self._socket)
        if keys is not None:
            serve_curve(self._socket, keys)
            self._socket.setsockopt(zmq.ROUTER_HANDOVER, 0)
        self._socket.bind(bind)
        self.address: str = self._socket.getsockopt_string(zmq.LAST_ENDPOINT)
        self.probes: dict[str, ProbeLink] = {}
        self._pending: dict[int, tuple[str, asyncio.Future[rpc.Message]]] = {}
        self._ids = itertools.count(1)
        self._drops = Drops(log, "control channel dropped a message")
        #: Dropped messages by reason.
        self.dropped = self._drops.counts
        self.on_pipe: PipeListener | None = None
        self.on_gone: GoneListener | None = None
        #: Where requests for probes not connected here go; None: this app only.
        self.remote: RemoteControls | None = None
        #: When each probe was last asked for a full report (`ask_full_report`), and how many asks were sent.
        self._asked_full: dict[str, float] = {}
        self.full_reports_asked = 0

    def connected(self, probe_id: str, tenant: str = SINGLE_TENANT) -> bool:
        """Whether `probe_id` is connected now, as a probe of `tenant`: here, or to another replica."""
        link = self.probes.get(probe_id)
        if link is not None:
            return link.tenant == tenant
        return self.remote is not None and self.remote.connected(tenant, probe_id)

    def holds(self, probe_id: str, tenant: str) -> bool:
        """Whether `probe_id` is connected to this app, as a probe of `tenant`."""
        link = self.probes.get(probe_id)
        return link is not None and link.tenant == tenant

    async def run(self) -> None:
        while True:
            identity, *rest = await self._socket.recv_multipart(copy=False)
            if len(rest) != 1:
                self._drops.add("malformed", "not one frame")
                continue
            tenant: str | None = SINGLE_TENANT
            if self._tenant_of_key is not None:
                tenant = self._tenant_of_key(frame_property(rest[0], "User-Id"))
            if tenant is None:
                self._drops.add("no_tenant", f"from {identity.bytes[:40]!r}, whose key is no tenant's (revoked?)")
                continue
            self.handle(identity.bytes.decode(errors="replace"), rest[0].bytes, tenant)

    async def heartbeat_forever(self) -> None:
        beat = rpc.encode(rpc.Message.make(rpc.HEARTBEAT))
        while True:
            now = time.monotonic()
            for probe_id, link in list(self.probes.items()):
                if now - link.last_seen > rpc.PEER_TIMEOUT:
                    self._forget(probe_id, "stopped answering")
                else:
                    self.send_raw(probe_id, beat)
            await asyncio.sleep(rpc.HEARTBEAT_INTERVAL)

    def handle(self, identity: str, raw: bytes, tenant: str = SINGLE_TENANT) -> None:
        try:
            message = rpc.decode(raw, rpc.APP_RECEIVES)
        except rpc.RpcError as exc:
            self._drops.add(exc.reason, f"from {identity[:40]!r}: {exc}")
            return
        link = self.probes.get(identity)
        if link is not None and link.tenant != tenant:
            self._drops.add(
                "foreign_tenant", f"a {message.kind} for {identity[:40]!r} on a connection of another tenant"
            )
            return
        if message.kind == rpc.HELLO:
            self._hello(identity, message, tenant)
            return
        if link is None:
            self._drops.add("unknown_probe", f"a {message.kind} from {identity[:40]!r}, which has not said hello")
            return
        link.last_seen = time.monotonic()
        if message.kind == rpc.RESPONSE:
            pending = self._pending.get(message.number("id"))
            if pending is None or pending[0] != identity:
                self._drops.add("unexpected_response", f"from {identity[:40]!r}, to no request of its")
                return
            del self._pending[message.number("id")]
            if not pending[1].done():
                pending[1].set_result(message)
        elif self.remote is not None and self.remote.from_probe(tenant, identity, message):
            pass  # a pipe of another replica's browser
        elif self.on_pipe is not None:
            self.on_pipe(identity, message)

    def _hello(self, identity: str, message: rpc.Message, tenant: str) -> None:
        if message.text("probe_id") != identity:
            self._drops.add("identity_mismatch", f"{identity[:40]!r} says it is {message.text('probe_id')[:40]!r}")
            return
        link = self.probes.get(identity)
        if link is None:
            if len(self.probes) >= MAX_PROBES:
                self._drops.add("too_many_probes", f"{identity[:40]!r}")
                return
            link = self.probes[identity] = ProbeLink(identity, "", "", 0.0, tenant)
            log.info(
                "probe %s (%s%s) connected its control channel",
                identity,
                message.text("host_id"),
                f", tenant {tenant}" if tenant else "",
            )
        link.host_id, link.version = message.text("host_id"), message.text("version")
        link.last_seen = time.monotonic()

    def forget_tenant(self, tenant: str) -> None:
        """Drop every probe of `tenant` (revoked): controls and pipes to them end now."""
        for link in [link for link in self.probes.values() if link.tenant == tenant]:
            self._forget(link.probe_id, "its tenant was revoked")

    def ask_full_report(self, probe_id: str, tenant: str = SINGLE_TENANT) -> bool:
        """Ask `probe_id` (of `tenant`, connected here or to another replica) to make its next report a full
        one, because a delta was lost: the probe's picture here is incomplete until then, and without asking
        it waits for the probe's periodic full report. At most once per FULL_REPORT_ASK_EVERY; whether it
        was asked now."""
        now = time.monotonic()
        if not self.connected(probe_id, tenant) or now - self._asked_full.get(probe_id, -1e9) < FULL_REPORT_ASK_EVERY:
            return False
        if len(self._asked_full) >= MAX_PROBES:  # probes of other replicas are never forgotten here
            self._asked_full = {p: at for p, at in self._asked_full.items() if now - at < FULL_REPORT_ASK_EVERY}
        self._asked_full[probe_id] = now
        if not self.send(probe_id, rpc.Message.make(rpc.FULL_REPORT), tenant):
            return False
        self.full_reports_asked += 1
        return True

    def _forget(self, probe_id: str, why: str) -> None:
        link = self.probes.pop(probe_id, None)
        self._asked_full.pop(probe_id, None)
        log.info("probe %s control channel: %s", probe_id, why)
        for request_id, (owner, future) in list(self._pending.items()):
            if owner == probe_id:
                del self._pending[request_id]
                if not future.done():
                    future.set_exception(TimeoutError(f"probe {probe_id} {why}"))
        if self.remote is not None and link is not None:
            self.remote.gone(link.tenant, probe_id)
        if self.on_gone is not None:
            self.on_gone(probe_id)

    def send(self, probe_id: str, message: rpc.Message, tenant: str = SINGLE_TENANT) -> bool:
        return self.send_raw(probe_id, rpc.encode(message), tenant)

    def send_raw(self, probe_id: str, raw: bytes, tenant: str = SINGLE_TENANT) -> bool:
        """Queue `raw` for the probe; False if it is not connected (or its queue is full). A probe of
        `tenant` another replica holds gets it through that replica (pipes opened by a browser here)."""
        if probe_id not in self.probes and self.remote is not None and self.remote.connected(tenant, probe_id):
            return self.remote.send(tenant, probe_id, raw)
        # The asyncio socket reports a failed send in the future it returns, not by raising: with NOBLOCK
        # that future is done at once (unread, its exception would be logged as never retrieved).
        try:
            sent = cast("asyncio.Future[object]", self._socket.send_multipart([probe_id.encode(), raw], zmq.NOBLOCK))
            error = sent.exception() if sent.done() else None
        except zmq.ZMQError as exc:
            error = exc
        if isinstance(error, zmq.ZMQError) and error.errno == zmq.EHOSTUNREACH:
            # ROUTER_MANDATORY: the probe's connection is gone (it stopped, or its host is cut off) and the
            # window has not yet expired it. That is the normal course of a probe leaving: no warning.
            self._drops.add("unreachable", f"to {probe_id[:40]!r}: {error}", logging.INFO)
            return False
        if error is not None:  # EAGAIN: its queue is full
            self._drops.add("unsent", f"to {probe_id[:40]!r}: {error}")
            return False
        return True

    async def request(
        self, probe_id: str, node_id: str, control: str, args: str = "", tenant: str = SINGLE_TENANT
    ) -> rpc.Message:
        """Ask `probe_id` to perform `control` on `node_id`; its response. Raises ProbeNotConnected,
        ProbeBusy, or TimeoutError when no answer comes within rpc.REQUEST_TIMEOUT. A probe not connected
        here is asked through the replica holding it, if that is a probe of `tenant`."""
        if probe_id not in self.probes and self.remote is not None and self.remote.connected(tenant, probe_id):
            return await self.remote.request(tenant, probe_id, node_id, control, args)
        if probe_id not in self.probes:
            raise ProbeNotConnected(probe_id)
        if sum(1 for owner, _ in self._pending.values() if owner == probe_id) >= MAX_PENDING_PER_PROBE:
            raise ProbeBusy(probe_id)
        request_id = next(self._ids)
        future: asyncio.Future[rpc.Message] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = (probe_id, future)
        message = rpc.Message.make(rpc.REQUEST, id=request_id, node=node_id, control=control, args=args)
        try:
            if not self.send(probe_id, message):
                raise ProbeNotConnected(probe_id)
            return await asyncio.wait_for(future, rpc.REQUEST_TIMEOUT)
        finally:
            self._pending.pop(request_id, None)

    def close(self) -> None:
        self._socket.close(linger=0)


def same_origin(request: tornado.httputil.HTTPServerRequest, allowed: frozenset[str]) -> bool:
    """Whether a browser sent this request from a page of this app (or of an allowed origin).

    Browsers name the page's origin on every cross-origin POST and websocket; requests without one
    (curl, tests, other programs) are not a browser acting for another site.
    """
    if request.headers.get("Sec-Fetch-Site", "") == "cross-site":
        return False
    origin = request.headers.get("Origin")
    if origin is None:
        return True
    if origin in allowed or "*" in allowed:
        return True
    return urlparse(origin).netloc.lower() == request.host.lower()
