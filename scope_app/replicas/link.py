"""One replica's link to the others through Redis: what it ingests goes out, what they ingest comes in.

Two supervised tasks, each on its own connection from the client's pool:
- the writer drains the messages this replica's bus accepted into the tenants' streams (one pipelined
  round trip for all that waited), and keeps each probe's latest full report under its own key;
- the reader follows the tenants' streams with a blocking XREAD and hands what other replicas wrote to
  the tenant's apply function (the bus receiver's decoding and applying);
- the joiner loads each tenant followed afresh, and each again on every (re)connection: each probe's
  latest full report, then the stream from its start (the window), so whatever this replica missed is
  applied in order, copies refused as `stale`; the reader takes the tenant on from where the join ended.

With --multitenant a replica follows only the tenants its users watch (scope_app.main): the messages its
bus takes for any other tenant are shared undecoded (`Head`), and decoded only by the replicas where
that tenant is watched. When a tenant becomes watched here, its first join applies this replica's own
entries too (the steady read skips them: they were applied as they came off the bus), after waiting
until the writer has written what the bus took before; what the bus takes for the tenant while the join
runs is held and applied after it, before the bus decodes the tenant's messages itself. So a probe
connected here loses nothing in the switch.

Redis going away costs no more than a lost message does on the bus: the reader retries with a
back-off and the replica keeps serving what its collector holds; the writer drops what it cannot write
(counted), and the next full report of each probe repairs the other replicas' pictures. Probes a
replica does not hear of expire after the window, as they would on the bus.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import re
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar, cast

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector as PrometheusCollector
from redis.exceptions import RedisError

from scope_app.controls import ControlRouter
from scope_app.ingest import Arrival, BusReceiver
from scope_app.replicas.controls import MAX_BACKOFF, MIN_BACKOFF, ReplicaControls
from scope_app.replicas.store import async_client, redacted
from scope_common import wire
from scope_common.drops import Drops
from scope_common.supervise import RateLimitedLog, Supervisor
from scope_common.wire import Envelope, Head

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Messages from the bus, each with the address of the connection it arrived on.
Messages = list[tuple[str, bytes]]
#: Decodes and applies messages other replicas ingested, as the bus receiver does its own.
Apply = Callable[[Messages], Awaitable[None]]

#: A stream entry as the client returns it (no decoding of responses): its id and its fields. The
#: client's own annotations are looser than what it returns for these commands.
Entry = tuple[bytes, dict[bytes, bytes]]

#: Messages waiting for the writer while Redis is slow or away; past it the oldest are dropped: a newer
#: message of the same probe is on its way, and its next full report repairs what a lost one carried.
MAX_PENDING = 10_000
#: Bytes of those messages, and of what is held for one stream while it is joined: a message may be up to
#: wire.MAX_MESSAGE_BYTES, so a count alone would not bound the memory a long Redis outage takes.
MAX_PENDING_BYTES = 256 * 1024 * 1024
#: Messages written in one pipelined round trip.
WRITE_BATCH = 500
#: Stream entries read in one go: bounds one step's decoding before the loop serves anyone else.
READ_COUNT = 500
#: Longest source address an entry may carry (an IPv6 address with a port is under 60 characters).
MAX_SOURCE_BYTES = 256
#: How long one blocking read waits for entries: bounds how late a newly followed tenant is joined.
READ_BLOCK_SECONDS = 1.0
#: Entries scanned or fetched per round trip while joining.
JOIN_CHUNK = 1_000
#: How often a join checks whether the writer has written what the bus took before it.
WRITER_POLL_SECONDS = 0.01
#: How long the reader waits before looking again when no tenant is joined yet.
IDLE_READ_SECONDS = 0.1


def stream_key(tenant: str) -> str:
    """The tenant's stream of accepted messages (the braces are a Redis Cluster hash tag)."""
    return f"scope:{{{tenant}}}:reports"


def full_key(tenant: str, probe_id: str) -> str:
    """Where the probe's latest full report is kept."""
    return f"scope:{{{tenant}}}:full:{probe_id}"


def tenant_channel(tenant: str, probe_key: str) -> str:
    """Where a tenant of the service shares its messages: its name and a fingerprint of its probe key,
    so that a tenant revoked and added again under the same name (another customer, perhaps) never
    joins what the old one left in the store (which expires within the window)."""
    return f"{tenant}.{probe_key[:16]}"


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A message this replica's bus accepted, on its way to Redis."""

    tenant: str
    source: str
    probe_id: str
    full: bool
    message: bytes
    #: Counts the messages queued: a join waits until those queued before it are written.
    number: int


class Backlog(Generic[T]):
    """A queue bounded by count and by bytes: past either, the oldest items go, counted by `append`."""

    def __init__(self, max_items: int = MAX_PENDING, max_bytes: int = MAX_PENDING_BYTES) -> None:
        self.max_items = max_items
        self.max_bytes = max_bytes
        self._items: collections.deque[tuple[T, int]] = collections.deque()
        self.bytes = 0

    def append(self, item: T, size: int) -> int:
        """Queue `item` of `size` bytes; how many older items were dropped to make room."""
        dropped = 0
        while self._items and (len(self._items) >= self.max_items or self.bytes + size > self.max_bytes):
            self.popleft()
            dropped += 1
        self._items.append((item, size))
        self.bytes += size
        return dropped

    def popleft(self) -> T:
        item, size = self._items.popleft()
        self.bytes -= size
        return item

    def take(self, count: int) -> list[T]:
        """The first `count` items (or all there are), taken out."""
        return [self.popleft() for _ in range(min(count, len(self._items)))]

    def first(self) -> T:
        return self._items[0][0]

    def __len__(self) -> int:
        return len(self._items)


class ReplicaLink:
    """Shares the messages of the tenants it follows with every other replica on the same Redis."""

    def __init__(self, url: str, replica_id: str, window: float) -> None:
        self.url = url
        self.replica_id = replica_id
        self.window = window
        # Every command bounded in time (a Redis that stopped answering is one that went away); the
        # blocking read gets its own wait on top.
        self._redis = async_client(
            url, socket_connect_timeout=2.0, socket_timeout=READ_BLOCK_SECONDS + 5.0, retry_on_timeout=False
        )
        #: By stream (a tenant's channel, or its name without --multitenant): where its messages go.
        self._followed: dict[str, Apply] = {}
        #: Set once a stream followed has been joined: until then, the bus's messages for it are held.
        self._joined: dict[str, asyncio.Event] = {}
        #: What this replica's bus took for a stream followed but not yet joined (source, message).
        self._held: dict[str, Backlog[tuple[str, bytes]]] = {}
        #: --multitenant: the bus receiver, and the channel each tenant's messages are shared in.
        self._receiver: BusReceiver | None = None
        self._router: ControlRouter | None = None
        self._channels: dict[str, str] = {}
        #: The stream id each followed tenant has been read up to; absent: not joined yet.
        self._positions: dict[str, bytes] = {}
        self._outgoing: Backlog[Outgoing] = Backlog()
        self._queued = 0
        #: The number of the first message of the batch being written; None: none is.
        self._writing: int | None = None
        self._wake = asyncio.Event()
        self._join_wake = asyncio.Event()
        self._log = RateLimitedLog(log)
        self.connected = False
        #: Messages written to Redis, dropped before they could be, and read from other replicas.
        self.published = 0
        self.publish_dropped = 0
        #: Messages of this replica's bus held for a tenant being joined, dropped past the bound.
        self.held_dropped = 0
        #: Stream entries of other replicas left out before decoding, by reason (the store is shared, so
        #: what it holds is checked like anything else from the network).
        self._entry_drops = Drops(log, "left out a stream entry")
        self.entries_dropped = self._entry_drops.counts
        self.received = 0
        #: Commands that failed (Redis away, refused, too slow), and joins (a tenant loaded afresh).
        self.errors = 0
        self.joins = 0
        self.controls = ReplicaControls(self._redis, replica_id, self._trouble)

    def attach(self, tenant: str, receiver: BusReceiver, router: ControlRouter | None = None) -> None:
        """Share the messages `receiver` accepts (under their own tenants), and feed it `tenant`'s messages
        from other replicas;
        with `router`, reach the tenant's probes whose control channels other replicas hold, and let them
        reach those of `router`."""
        receiver.relay = self.publish

        async def apply(messages: Messages) -> None:
            await receiver.handle([Arrival("", source, data) for source, data in messages], relay=False, tenant=tenant)

        self.follow(tenant, apply)
        if router is not None:
            self.controls.attach(tenant, router)

    def attach_service(
        self, receiver: BusReceiver, channel_of: Callable[[str], str | None], router: ControlRouter | None = None
    ) -> None:
        """--multitenant: share what `receiver` accepts in the channel of its tenant now (`channel_of`,
        None for a tenant revoked meanwhile: not shared), following that tenant from then on if it was
        not yet; feed `receiver` what the other replicas accepted for each tenant followed. With `router`
        (every tenant's), each tenant followed reaches its own probes whose control channels other replicas
        hold, under its channel as its stream is, and they reach its probes connected to `router`."""
        self._receiver = receiver
        self._router = router

        def relay(tenant: str, source: str, head: Head | Envelope, message: bytes) -> None:
            channel = channel_of(tenant)
            if channel is None:
                self.publish_dropped += 1
                return
            held = self._held.get(channel)
            if held is not None and held.append((source, message), len(message)):
                # Followed, not joined yet: applied when the join ends. What the bound dropped is a lost
                # message to this replica: a missed delta, repaired by the probe's next full report.
                self.held_dropped += 1
            self.publish(channel, source, head, message)

        receiver.relay = relay
        receiver.decodes = self.joined

    def attach_tenant(self, tenant: str, channel: str) -> None:
        """A tenant of the registry, sharing its messages in `channel` (`tenant_channel`), in place of any
        channel before: its probes' controls cross replicas, whether or not it is followed here."""
        if self._channels.get(tenant) == channel:
            return
        followed = self._channels.get(tenant) in self._followed
        self.detach_tenant(tenant)
        self._channels[tenant] = channel
        if self._router is not None:
            self.controls.attach(tenant, self._router, channel)
        if followed:
            self.follow_tenant(tenant)

    def detach_tenant(self, tenant: str) -> None:
        """Forget `tenant` (revoked): nothing more of it is applied or shared, its routes end."""
        self.unfollow_tenant(tenant)
        if self._channels.pop(tenant, None) is not None:
            self.controls.detach(tenant)

    def follow_tenant(self, tenant: str) -> None:
        """Decode and apply what every replica ingests for `tenant` (attached), starting with all the
        store holds now (a user watches it here)."""
        channel = self._channels[tenant]
        if channel in self._followed:
            return
        receiver = self._receiver
        assert receiver is not None, "attach_service first"

        async def apply(messages: Messages) -> None:
            await receiver.handle([Arrival("", source, data) for source, data in messages], relay=False, tenant=tenant)

        self.follow(channel, apply)

    def unfollow_tenant(self, tenant: str) -> None:
        """Stop decoding what replicas ingest for `tenant` (nobody watches it here); still shared."""
        channel = self._channels.get(tenant)
        if channel is not None:
            self.unfollow(channel)

    @property
    def tenants(self) -> dict[str, str]:
        """The tenants attached (--multitenant), and their channels."""
        return dict(self._channels)

    @property
    def followed_tenants(self) -> set[str]:
        """The tenants followed here (--multitenant)."""
        return {tenant for tenant, channel in self._channels.items() if channel in self._followed}

    @property
    def streams_followed(self) -> int:
        """How many tenants' streams this replica decodes (the implicit tenant's alone without --multitenant)."""
        return len(self._followed)

    def joined(self, tenant: str) -> bool:
        """Whether `tenant` is followed and its first join is done: its picture here is complete, and the
        bus decodes its messages here (rather than only sharing them)."""
        event = self._joined.get(self._channels.get(tenant, ""))
        return event is not None and event.is_set()

    async def wait_joined(self, tenant: str, timeout: float) -> bool:
        """Wait at most `timeout` for `tenant`'s first join to end; whether it did (or it is not followed)."""
        event = self._joined.get(self._channels.get(tenant, ""))
        if event is None:
            return True
        try:
            await asyncio.wait_for(event.wait(), timeout)
        except TimeoutError:
            return False
        return True

    def follow(self, stream: str, apply: Apply) -> None:
        """Hand what replicas ingest for `stream` to `apply`, starting with all they hold now."""
        self.unfollow(stream)
        self._followed[stream] = apply
        self._joined[stream] = asyncio.Event()
        self._held[stream] = Backlog()
        self._join_wake.set()

    def unfollow(self, stream: str) -> None:
        self._followed.pop(stream, None)
        self._positions.pop(stream, None)
        self._held.pop(stream, None)
        joined = self._joined.pop(stream, None)
        if joined is not None:
            joined.set()  # whoever waits for the join waits no more

    def publish(self, stream: str, source: str, head: Head | Envelope, message: bytes) -> None:
        """Queue `message`, accepted from `source`, for the other replicas (never blocks)."""
        self._queued += 1
        outgoing = Outgoing(stream, source, head.probe_id, head.full, message, self._queued)
        self.publish_dropped += self._outgoing.append(outgoing, len(message))
        self._wake.set()

    @property
    def pending_bytes(self) -> int:
        """Bytes of this replica's bus waiting to be written to the store."""
        return self._outgoing.bytes

    def _written_through(self, number: int) -> bool:
        """Whether every message queued up to `number` has been written (or dropped)."""
        if self._writing is not None and self._writing <= number:
            return False
        return not self._outgoing or self._outgoing.first().number > number

    def start(self, supervisor: Supervisor) -> None:
        supervisor.start("replica-writer", self.write_forever)
        supervisor.start("replica-reader", self.read_forever)
        supervisor.start("replica-joiner", self.join_forever)
        supervisor.start("replica-controls", self.controls.listen_forever)
        supervisor.start("replica-holders", self.controls.refresh_forever)
        supervisor.start("replica-pipes", self.controls.send_forever)

    async def close(self) -> None:
        await self._redis.aclose()

    async def write_forever(self) -> None:
        backoff = MIN_BACKOFF
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._outgoing:
                batch = self._outgoing.take(WRITE_BATCH)
                self._writing = batch[0].number
                try:
                    await self._write(batch)
                except (RedisError, OSError) as exc:
                    self.publish_dropped += len(batch)
                    self._trouble("write", exc)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, MAX_BACKOFF)
                    continue
                finally:
                    self._writing = None
                backoff = MIN_BACKOFF
                self.published += len(batch)

    async def _write(self, batch: list[Outgoing]) -> None:
        window_ms = max(1, int(self.window * 1000))
        # Entries older than the window are worth nothing to anyone: their probes' reports have been
        # replaced by newer ones or expired.
        oldest = f"{int(time.time() * 1000) - window_ms}-0"
        async with self._redis.pipeline(transaction=False) as pipe:
            streams = set()
            for item in batch:
                streams.add(stream_key(item.tenant))
                fields: dict[Any, Any] = {
                    "r": self.replica_id,
                    "s": item.source,
                    "p": item.probe_id,
                    "f": b"1" if item.full else b"0",
                    "m": item.message,
                }
                pipe.xadd(stream_key(item.tenant), fields, minid=oldest, approximate=True)
                if item.full:
                    key = full_key(item.tenant, item.probe_id)
                    pipe.hset(key, mapping={"s": item.source, "m": item.message})
                    pipe.pexpire(key, window_ms)
            for key in streams:
                # A tenant nobody reports for any more leaves nothing behind.
                pipe.pexpire(key, 2 * window_ms)
            await pipe.execute()

    async def read_forever(self) -> None:
        backoff = MIN_BACKOFF
        while True:
            try:
                await self._redis.ping()
                if not self.connected:
                    log.info("connected to the replicas' store %s", self._redacted_url())
                self.connected = True
                # Whatever was written while this replica was away is in the stream: join afresh.
                self._positions.clear()
                self._join_wake.set()
                while True:
                    await self._read()
                    backoff = MIN_BACKOFF
            except (RedisError, OSError) as exc:
                self.connected = False
                self._trouble("read", exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF)

    async def join_forever(self) -> None:
        """Join each stream followed and not read yet: on its own connection, so that a tenant a user
        starts watching is joined at once, not after the reader's blocking read."""
        backoff = MIN_BACKOFF
        while True:
            await self._join_wake.wait()
            self._join_wake.clear()
            try:
                while waiting := [stream for stream in self._followed if stream not in self._positions]:
                    for stream in waiting:
                        await self._join(stream)
                backoff = MIN_BACKOFF
            except (RedisError, OSError) as exc:
                self._trouble("join", exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF)
                self._join_wake.set()

    async def _join(self, tenant: str) -> None:
        """Apply each of the tenant's probes' latest full report, then its stream from the start. The
        first join of a stream followed applies this replica's own entries too (its bus only shared
        them) once the writer has written what was queued before, then what the bus took meanwhile."""
        apply = self._followed.get(tenant)
        joined = self._joined.get(tenant)
        if apply is None or joined is None:
            return
        first = not joined.is_set()
        if first:
            queued = self._queued
            while not self._written_through(queued):
                await asyncio.sleep(WRITER_POLL_SECONDS)
        keys = [key async for key in self._redis.scan_iter(match=full_key(_glob_escape(tenant), "*"), count=JOIN_CHUNK)]
        for start in range(0, len(keys), JOIN_CHUNK):
            async with self._redis.pipeline(transaction=False) as pipe:
                for key in keys[start : start + JOIN_CHUNK]:
                    pipe.hmget(key, "s", "m")
                fulls = await pipe.execute()
            messages = [(source.decode(errors="replace"), message) for source, message in fulls if source and message]
            self.received += len(messages)
            await apply(messages)
        last = b"0-0"
        while entries := cast(
            list[Entry], await self._redis.xrange(stream_key(tenant), min=b"(" + last, count=READ_COUNT)
        ):
            await self._apply(apply, entries, own=first)
            last = entries[-1][0]
        if self._followed.get(tenant) is not apply:  # unfollowed or followed afresh meanwhile
            return
        self._positions[tenant] = last
        self.joins += 1
        held = self._held.get(tenant)
        while first and held:
            await apply(held.take(len(held)))
            if self._followed.get(tenant) is not apply:
                return
        # No await since the hold was found empty: from here the bus decodes the tenant's messages itself,
        # each after all it held.
        self._held.pop(tenant, None)
        joined.set()

    async def _read(self) -> None:
        streams = {stream_key(tenant): position for tenant, position in self._positions.items()}
        if not streams:
            await asyncio.sleep(IDLE_READ_SECONDS)
            return
        tenants = {stream_key(tenant): tenant for tenant in self._followed}
        found = cast(
            list[tuple[bytes, list[Entry]]] | None,
            await self._redis.xread(streams, count=READ_COUNT, block=int(READ_BLOCK_SECONDS * 1000)),  # type: ignore[arg-type]
        )
        for key, entries in found or []:
            tenant = tenants.get(key.decode(errors="replace"))
            if tenant is None or tenant not in self._positions:
                continue  # unfollowed while reading
            self._positions[tenant] = entries[-1][0]
            await self._apply(self._followed[tenant], entries)

    async def _apply(self, apply: Apply, entries: list[Entry], *, own: bool = False) -> None:
        """Hand `entries` to `apply`; this replica's own too if `own`, else only the other replicas'."""
        me = self.replica_id.encode()
        messages: Messages = []
        for entry_id, fields in entries:
            if not own and fields.get(b"r") == me:
                continue
            source, message = fields.get(b"s"), fields.get(b"m")
            if type(source) is not bytes or type(message) is not bytes or len(source) > MAX_SOURCE_BYTES:
                self._entry_drops.add("malformed", f"entry {entry_id[:40]!r}")
            elif len(message) > wire.MAX_MESSAGE_BYTES:
                # Checked before anything is made of it, as the bus does.
                self._entry_drops.add("too_large", f"entry {entry_id[:40]!r}: {len(message)} bytes")
            else:
                messages.append((source.decode(errors="replace"), message))
        if messages:
            self.received += len(messages)
            await apply(messages)

    def _trouble(self, what: str, exc: Exception) -> None:
        self.errors += 1
        self._log.log(
            what,
            logging.WARNING,
            "replicas' store %s: %s failed (%s: %s); %d errors so far, retrying",
            self._redacted_url(),
            what,
            type(exc).__name__,
            exc,
            self.errors,
        )

    def _redacted_url(self) -> str:
        return redacted(self.url)


def _glob_escape(text: str) -> str:
    """`text` matched literally in a SCAN pattern."""
    return re.sub(r"([*?\[\]\\])", r"\\\1", text)


class ReplicaMetrics(PrometheusCollector):
    """The link's counts, read at each scrape."""

    def __init__(self, link: ReplicaLink) -> None:
        self._link = link

    def collect(self) -> Iterator[Metric]:
        link = self._link
        yield GaugeMetricFamily(
            "scope_app_replica_store_connected", "Whether the replicas' store answers", value=int(link.connected)
        )
        yield CounterMetricFamily(
            "scope_app_replica_store_errors", "Commands to the replicas' store that failed", value=link.errors
        )
        yield CounterMetricFamily(
            "scope_app_replica_published", "Messages of this replica's bus written for the others", value=link.published
        )
        yield CounterMetricFamily(
            "scope_app_replica_publish_dropped",
            "Messages of this replica's bus never written for the others (store away or too slow)",
            value=link.publish_dropped,
        )
        yield CounterMetricFamily(
            "scope_app_replica_received", "Messages other replicas ingested, fed to this one's", value=link.received
        )
        yield GaugeMetricFamily(
            "scope_app_replica_pending_bytes",
            "Bytes of this replica's bus waiting to be written to the store",
            value=link.pending_bytes,
        )
        yield CounterMetricFamily(
            "scope_app_replica_held_dropped",
            "Messages of this replica's bus for a tenant being joined, dropped past the bound while waiting",
            value=link.held_dropped,
        )
        yield CounterMetricFamily("scope_app_replica_joins", "Tenants loaded afresh from the store", value=link.joins)
        yield GaugeMetricFamily(
            "scope_app_replica_tenants_followed",
            "Tenants whose reports this replica decodes and merges (--multitenant: those its users watch)",
            value=link.streams_followed,
        )
        yield CounterMetricFamily(
            "scope_app_replica_controls_forwarded",
            "Control requests sent to the replica holding the probe's control channel",
            value=link.controls.forwarded,
        )
        yield CounterMetricFamily(
            "scope_app_replica_controls_served",
            "Control requests performed for another replica",
            value=link.controls.served,
        )
        yield CounterMetricFamily(
            "scope_app_replica_pipe_sent",
            "Pipe messages sent to another replica (a browser here, a probe there, or the other way)",
            value=link.controls.pipe_sent,
        )
        yield CounterMetricFamily(
            "scope_app_replica_pipe_received",
            "Pipe messages from another replica passed on to a probe or a browser here",
            value=link.controls.pipe_received,
        )
        dropped = CounterMetricFamily(
            "scope_app_replica_controls_dropped",
            "Messages on this replica's control channel dropped",
            labels=["reason"],
        )
        for reason, count in sorted(link.controls.dropped.items()):
            dropped.add_metric([reason], count)
        yield dropped
        entries = CounterMetricFamily(
            "scope_app_replica_entries_dropped",
            "Other replicas' stream entries left out before decoding",
            labels=["reason"],
        )
        for reason, count in sorted(link.entries_dropped.items()):
            entries.add_metric([reason], count)
        yield entries
