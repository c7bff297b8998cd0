"""The report bus: a SUB socket bound on the bus address, feeding the collector.

Every message is decoded here; one that cannot be is dropped, logged (rate-limited) and counted by
reason. Nothing a sender does reaches the rest of the app as an exception.

Decoding runs on a thread, not on the event loop. A large report takes a second or more to decode,
and the API must keep answering meanwhile. Measured with a 24,000-node report (0.5 MB on the wire,
0.45 s to decode): decoded on the loop, the loop stood still for 0.45 s; on a thread it never stood
still for more than 60 ms (the GIL changes hands every 5 ms), for 10 % more decoding time. A process
pool does not help: unpickling the decoded report on the loop costs 0.8 to 0.95 times what decoding it
does. Every message goes to the thread, whatever its size: a few KB of zlib can hold 100,000 nodes.

Each message is applied with the address of the connection it arrived on (ZeroMQ's `Peer-Address`),
which the collector binds probe ids to, and filed under the tenant of that connection: its `User-Id`
is the probe's CURVE key, which the ZAP authenticator admitted (scope_app.tenancy.zap), and which the
registry maps to a tenant now (a revoked tenant's connections stay open, their messages are dropped).
Without --multitenant there is no ZAP, and every message is the one implicit tenant's.

With replicas (scope_app.replicas), each message the store accepts from this bus (or takes into its
probe's sequence while refusing it, as a delta after a lost one) goes to `relay` with its tenant, as it
arrived, and what other replicas accepted comes back through `handle(..., relay=False)`
with the tenant it was filed under there.

A replica of the service decodes only the tenants its users watch (`decodes`): a message of any other
tenant is admitted by the gate as any other (byte rates count across replicas), its envelope's head
checked (`wire.decode_head`: no decompressing, no body) and relayed as it arrived; the replicas where
the tenant is watched decode it. So `received = applied + dropped + relayed_unapplied`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import zmq
import zmq.asyncio

from scope_app.metrics import AppMetrics
from scope_app.tenancy import SINGLE_TENANT, frame_property
from scope_app.tenancy.limits import TenantGate
from scope_app.tenancy.store import LatestReports
from scope_common import wire
from scope_common.bus import configure_subscriber
from scope_common.curve import KeyPair, serve_curve
from scope_common.drops import Drops
from scope_common.supervise import RateLimitedLog

log = logging.getLogger(__name__)

#: Messages taken in one go before the merge they share.
MAX_BATCH = 500
#: Bytes taken in one go: bounds what a batch holds beyond what ZeroMQ already queued.
MAX_BATCH_BYTES = 16 * 1024 * 1024
#: Nodes decoded in one go before they are applied: bounds the decoded objects alive at once.
MAX_BATCH_NODES = wire.MAX_NODES
#: Decoding time in one go before what is decoded is applied: a burst of hundreds of messages (the queue
#: after the app was busy) is applied a slice at a time, so the first of them is in the views without
#: waiting for the last to be decoded. Merging follows what changed, so more, smaller merges cost little.
MAX_BATCH_DECODE_SECONDS = 0.05

Decoded = wire.Envelope | wire.DecodeError
#: Told of each message the store accepted from the bus (or, for a tenant not decoded here, whose head is
#: sound): its tenant, source, envelope (or head) and bytes.
Relay = Callable[[str, str, wire.Envelope | wire.Head, bytes], None]


class Arrival(NamedTuple):
    """One message as it arrived: the User-Id and address of its connection, and its bytes."""

    user_id: str
    source: str
    data: bytes


class BusReceiver:
    """`keys`: the service's CURVE key pair (--multitenant), which makes the bus a CURVE server
    that admits only connections ZAP admits. `gate`: what each tenant may still send (--multitenant)."""

    def __init__(
        self,
        store: LatestReports,
        context: zmq.asyncio.Context,
        bind: str,
        metrics: AppMetrics,
        *,
        keys: KeyPair | None = None,
        gate: TenantGate | None = None,
    ) -> None:
        self._store = store
        self._metrics = metrics
        self._context = context
        self._keys = keys
        self._gate = gate
        self._socket = self._open(bind)
        self.address: str = self._socket.getsockopt_string(zmq.LAST_ENDPOINT)
        self._decoder: ThreadPoolExecutor | None = None
        self.received = 0
        self.received_bytes = 0
        self._drops = Drops(log, "dropped a report")
        #: Dropped messages by reason.
        self.dropped = self._drops.counts
        #: Nodes left out of messages that were used, by reason (`Envelope.rejected`).
        self.nodes_rejected: dict[str, int] = {}
        self._log = RateLimitedLog(log)
        self.relay: Relay | None = None
        #: Whether a tenant's messages from the bus are decoded here (None: every tenant's); those of the
        #: others go to `relay` undecoded (set with `relay`, by scope_app.replicas).
        self.decodes: Callable[[str], bool] | None = None
        #: Messages of tenants not followed here, relayed unapplied: with only their head checked, but for
        #: those taken to be decoded just before their tenant stopped being followed.
        self.relayed_unapplied = 0

    def _open(self, bind: str) -> zmq.asyncio.Socket:
        socket = self._context.socket(zmq.SUB)
        configure_subscriber(socket)
        if self._keys is not None:
            serve_curve(socket, self._keys)
        try:
            socket.bind(bind)
        except zmq.ZMQError:
            socket.close(linger=0)
            raise
        return socket

    async def run(self) -> None:
        """Receive until cancelled. Run again after a failure, it binds a new socket if the old one
        was closed, on the address the first one had."""
        if self._socket.closed:
            self._socket = self._open(self.address)
        self._decoder = ThreadPoolExecutor(1, thread_name_prefix="decode")
        try:
            while True:
                frames = [await self._socket.recv(copy=False)]
                size = len(frames[0])
                # Take what has already arrived before the loop runs the merge: a burst of reports from
                # many probes then costs one merge, not one each. Bounded, so requests are still served
                # while a flood comes in.
                while len(frames) < MAX_BATCH and size < MAX_BATCH_BYTES and self._readable():
                    frames.append(await self._socket.recv(copy=False))
                    size += len(frames[-1])
                await self.handle(
                    [
                        Arrival(frame_property(frame, "User-Id"), frame_property(frame, "Peer-Address"), frame.bytes)
                        for frame in frames
                    ]
                )
        finally:
            self._decoder.shutdown(wait=False, cancel_futures=True)

    def _readable(self) -> bool:
        return bool(int(self._socket.get(zmq.EVENTS)) & zmq.POLLIN)

    async def handle(self, messages: list[Arrival], *, relay: bool = True, tenant: str | None = None) -> None:
        """Decode (off the loop) and apply `messages`, each with the tenant and address it came from, in order;
        those accepted go on to `self.relay` unless `relay` is false (they came from another replica, which
        filed them under `tenant`).

        A message counts as received when it is applied or dropped, in the same step: the counts
        always add up (`received = applied + dropped`), whenever they are read."""
        if self._gate is not None and tenant is None:
            # Another replica's messages were admitted by the replica that took them off its bus, and
            # counted in their tenant's byte rate there (across replicas): not a second time here.
            admitted = [m for m in messages if self._admit(m)]
            self.received += len(messages) - len(admitted)
            messages = admitted
            if self.decodes is not None:
                messages = [m for m in messages if not self._relay_undecoded(m)]
        loop = asyncio.get_running_loop()
        done = 0
        while done < len(messages):
            decoded = await loop.run_in_executor(self._decoder, self._decode, [m.data for m in messages[done:]])
            for arrival, result in zip(messages[done:], decoded, strict=False):
                self.received += 1
                self.received_bytes += len(arrival.data)
                self._metrics.report_bytes.observe(len(arrival.data))
                accepted = self._apply(arrival, result, tenant)
                if accepted is not None and relay and self.relay is not None:
                    self.relay(accepted[0], arrival.source, accepted[1], arrival.data)
            done += len(decoded)
            # Merge before the loop runs anything else: see Collector.flush.
            self._store.flush()

    def _admit(self, arrival: Arrival) -> bool:
        """Whether the tenant of `arrival`'s connection may send it now (--multitenant); the gate
        counts and logs what it refuses, per tenant."""
        assert self._gate is not None
        refused = self._gate.admit(arrival.user_id, len(arrival.data), arrival.source)
        if refused is not None:
            self.received_bytes += len(arrival.data)
            self.dropped[refused] = self.dropped.get(refused, 0) + 1
        return refused is None

    def _relay_undecoded(self, arrival: Arrival) -> bool:
        """Relay `arrival` with only its head checked if its tenant is not decoded here; whether it was
        (or was dropped: its tenant revoked, its head unsound). On the loop: the head is a few fields."""
        assert self._gate is not None and self.decodes is not None and self.relay is not None
        tenant = self._gate.tenant_of(arrival.user_id)
        if tenant is not None and self.decodes(tenant):
            return False
        self.received += 1
        self.received_bytes += len(arrival.data)
        self._metrics.report_bytes.observe(len(arrival.data))
        if tenant is None:
            self.dropped["revoked_tenant"] = self.dropped.get("revoked_tenant", 0) + 1
            return True
        try:
            head = wire.decode_head(arrival.data)
        except wire.DecodeError as exc:
            self._drops.add(exc.reason, str(exc))
            return True
        self.relayed_unapplied += 1
        self.relay(tenant, arrival.source, head, arrival.data)
        return True

    def _decode(self, messages: list[bytes]) -> list[Decoded]:
        """Decode messages from the first until MAX_BATCH_NODES nodes are decoded or MAX_BATCH_DECODE_SECONDS
        have passed (on the decoding thread)."""
        decoded: list[Decoded] = []
        nodes = 0
        deadline = time.perf_counter() + MAX_BATCH_DECODE_SECONDS
        for message in messages:
            started = time.perf_counter()
            try:
                envelope = wire.decode(message)
            except wire.DecodeError as exc:
                decoded.append(exc)
            else:
                decoded.append(envelope)
                nodes += envelope.report.node_count()
            self._metrics.decode_seconds.observe(time.perf_counter() - started)
            if nodes >= MAX_BATCH_NODES or time.perf_counter() >= deadline:
                break
        return decoded

    def _apply(self, arrival: Arrival, result: Decoded, tenant: str | None) -> tuple[str, wire.Envelope] | None:
        """Apply a decoded message under `tenant` (None: the tenant of its connection); the tenant and
        envelope if the store accepted it."""
        if isinstance(result, wire.DecodeError):
            self._drops.add(result.reason, str(result))
            return None
        from_bus = tenant is None
        if tenant is None:
            tenant = self._gate.tenant_of(arrival.user_id) if self._gate is not None else SINGLE_TENANT
        if tenant is None:
            # Revoked while the message was being decoded: it must not bring the tenant's probe back.
            self.dropped["revoked_tenant"] = self.dropped.get("revoked_tenant", 0) + 1
            return None
        if not self._store.holds(tenant):
            # Nobody watches it here any more (or it was revoked) since the message was taken to be decoded:
            # from this bus, it is still the other replicas'.
            if from_bus and self.relay is not None:
                self.relayed_unapplied += 1
                return tenant, result
            self.dropped["unfollowed_tenant"] = self.dropped.get("unfollowed_tenant", 0) + 1
            return None
        for reason, count in result.rejected.items():
            self.nodes_rejected[reason] = self.nodes_rejected.get(reason, 0) + count
            self._log.log(f"node:{reason}", logging.WARNING, "left out nodes of probe %s (%s)", result.probe_id, reason)
        before = self._sequence(tenant, result.probe_id, arrival.source)
        started = time.perf_counter()
        accepted = self._store.add(tenant, result, arrival.source)
        self._metrics.apply_seconds.observe(time.perf_counter() - started)
        if not accepted and self.relay is not None:
            # Refused, but taken into the probe's sequence (a delta after a lost message, a report over
            # the node limit): the other replicas must take it too, or they would hear nothing of the
            # probe until its next full report and let it expire while this replica keeps it.
            accepted = before != result.seq == self._sequence(tenant, result.probe_id, arrival.source)
        return (tenant, result) if accepted else None

    def _sequence(self, tenant: str, probe_id: str, source: str) -> int | None:
        """The last message of `probe_id` from `source` its report has taken in; None: no such probe."""
        record = self._store.probes(tenant).get(probe_id) if self.relay is not None else None
        return record.nodes.seq if record is not None and record.source == source else None

    def close(self) -> None:
        self._socket.close(linger=0)
