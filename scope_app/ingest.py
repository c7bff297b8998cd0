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
which the collector binds probe ids to.

With replicas (scope_app.replicas), each message the collector accepts from this bus goes to `relay`
as it arrived, and what other replicas accepted comes back through `handle(..., relay=False)`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import zmq
import zmq.asyncio

from scope_app.collector import Collector
from scope_app.metrics import AppMetrics
from scope_common import wire
from scope_common.bus import configure_subscriber
from scope_common.drops import Drops
from scope_common.supervise import RateLimitedLog

log = logging.getLogger(__name__)

#: Messages taken in one go before the merge they share.
MAX_BATCH = 500
#: Bytes taken in one go: bounds what a batch holds beyond what ZeroMQ already queued.
MAX_BATCH_BYTES = 16 * 1024 * 1024
#: Nodes decoded in one go before they are applied: bounds the decoded objects alive at once.
MAX_BATCH_NODES = wire.MAX_NODES

Decoded = wire.Envelope | wire.DecodeError
#: Told of each message the collector accepted from the bus: its source, its envelope and its bytes.
Relay = Callable[[str, wire.Envelope, bytes], None]


class BusReceiver:
    def __init__(self, collector: Collector, context: zmq.asyncio.Context, bind: str, metrics: AppMetrics) -> None:
        self._collector = collector
        self._metrics = metrics
        self._context = context
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

    def _open(self, bind: str) -> zmq.asyncio.Socket:
        socket = self._context.socket(zmq.SUB)
        configure_subscriber(socket)
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
                await self.handle([(_peer_address(frame), frame.bytes) for frame in frames])
        finally:
            self._decoder.shutdown(wait=False, cancel_futures=True)

    def _readable(self) -> bool:
        return bool(int(self._socket.get(zmq.EVENTS)) & zmq.POLLIN)

    async def handle(self, messages: list[tuple[str, bytes]], *, relay: bool = True) -> None:
        """Decode (off the loop) and apply `messages`, each with the address it came from, in order;
        those accepted go on to `self.relay` unless `relay` is false (they came from another replica).

        A message counts as received when it is applied or dropped, in the same step: the counts
        always add up (`received = applied + dropped`), whenever they are read."""
        loop = asyncio.get_running_loop()
        done = 0
        while done < len(messages):
            decoded = await loop.run_in_executor(self._decoder, self._decode, [m for _, m in messages[done:]])
            for (source, message), result in zip(messages[done:], decoded, strict=False):
                self.received += 1
                self.received_bytes += len(message)
                self._metrics.report_bytes.observe(len(message))
                accepted = self._apply(source, result)
                if accepted is not None and relay and self.relay is not None:
                    self.relay(source, accepted, message)
            done += len(decoded)
            # Merge before the loop runs anything else: see Collector.flush.
            self._collector.flush()

    def _decode(self, messages: list[bytes]) -> list[Decoded]:
        """Decode messages from the first until MAX_BATCH_NODES nodes are decoded (on the decoding thread)."""
        decoded: list[Decoded] = []
        nodes = 0
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
            if nodes >= MAX_BATCH_NODES:
                break
        return decoded

    def _apply(self, source: str, result: Decoded) -> wire.Envelope | None:
        """Apply a decoded message; the envelope if the collector accepted it."""
        if isinstance(result, wire.DecodeError):
            self._drops.add(result.reason, str(result))
            return None
        for reason, count in result.rejected.items():
            self.nodes_rejected[reason] = self.nodes_rejected.get(reason, 0) + count
            self._log.log(f"node:{reason}", logging.WARNING, "left out nodes of probe %s (%s)", result.probe_id, reason)
        started = time.perf_counter()
        accepted = self._collector.add(result, source)
        self._metrics.apply_seconds.observe(time.perf_counter() - started)
        return result if accepted else None

    def close(self) -> None:
        self._socket.close(linger=0)


def _peer_address(frame: zmq.Frame) -> str:
    """The address of the connection a message arrived on; "" where the transport has none (ipc)."""
    try:
        return str(frame.get("Peer-Address"))
    except zmq.ZMQError:
        return ""
