"""Controls across replicas: a browser on replica B controls a probe whose control channel replica A holds.

Every REFRESH seconds each replica writes which probes' control channels it holds (one key per tenant
and replica, the tenant by its name or, in the service, by its channel; expiring after a few refreshes,
so a replica that died stops being named within seconds) and reads what the others wrote.
`ControlRouter.request` for a probe held elsewhere comes here (`ControlRouter.remote`): the request goes
by pub/sub to the holder's channel, the holder performs it on its own router (same limits, same timeout)
and publishes the probe's response to the requester's channel. The requesting replica has already
checked the node and control against its merged report, which is the same on every replica. A holder
nobody listens for (PUBLISH reaches no one) is a probe not connected, at once rather than after the
timeout.

Pipes cross replicas the same way. A forwarded control whose response opens a pipe (exec, attach, logs)
leaves a route at the holder: that pipe of that probe belongs to the requesting replica, whose browser
will open it. The requester's PipeHub sends to the probe as to any (`ControlRouter.send_raw`), which hands
what is for a probe held elsewhere to `send`: the message goes to the holder's channel, which checks it
against its routes and passes it to the probe. The probe's messages for a routed pipe go the other way
(`from_probe`). Order matters (a shell's bytes): every pipe message leaves a replica through one queue,
written by one task in order, and Redis keeps one publisher's messages in order. Credit flows end to
end as it does on one app, so a slow browser still holds the probe back. A route ends with a
`pipe_close` either way, when the probe goes away from the holder (the requester is told), and when the
requester is gone (no key of its any more: the probe is told); a requester whose holder is gone closes
the pipes it has through it.

A replica that missed a delta of a probe another replica holds (its stream entry was lost while Redis
was away) asks for a full report the same way: the holder asks the probe, so every replica's picture
of it is whole again within seconds rather than at the probe's next periodic full report.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import re
from collections.abc import Callable
from typing import Any

import msgpack
import redis.asyncio
from redis.exceptions import RedisError

from scope_app.controls import MAX_PROBES, ControlRouter, ProbeBusy, ProbeNotConnected
from scope_common import rpc
from scope_common.drops import Drops

log = logging.getLogger(__name__)

#: How often a replica says which probes it holds, and reads what the others hold.
REFRESH = 2.0
#: What a holder's word is worth: past this many refreshes without one, it is gone.
HOLDER_TTL = 3 * REFRESH
#: How long past the probe's own timeout an answer is waited for (two hops through Redis).
ANSWER_GRACE = 2.0
#: Reconnection back-off (the channel's, and the link's store), doubled after each failure in a row.
MIN_BACKOFF = 0.2
MAX_BACKOFF = 5.0
#: Largest message on a replica's channel: a request or a response, with its texts.
MAX_MESSAGE_BYTES = rpc.MAX_RPC_MESSAGE_BYTES + 1024

REQUEST = "q"
ANSWER = "a"
#: Control-channel messages for a probe held by another replica (pipe messages, asks for a full report),
#: and pipe messages from it.
TO_PROBE = "t"
FROM_PROBE = "f"
#: What a replica passes on to a probe it holds for another, and to a browser from another's probe.
TO_PROBE_KINDS = frozenset({rpc.PIPE_DATA, rpc.PIPE_CREDIT, rpc.PIPE_RESIZE, rpc.PIPE_CLOSE, rpc.FULL_REPORT})
FROM_PROBE_KINDS = frozenset({rpc.PIPE_DATA, rpc.PIPE_CREDIT, rpc.PIPE_CLOSE})
#: Pipes of other replicas' browsers a holder routes at once (a probe has at most 32 open).
MAX_ROUTES = 10_000
#: Pipe messages waiting to be published while Redis is slow; past it they are dropped (the pipe stalls
#: and its ends close it, as a lost connection would).
MAX_OUTBOX = 10_000
#: Outcomes of a forwarded request, besides a response.
OK, NOT_CONNECTED, BUSY, TIMEOUT = "ok", "not_connected", "busy", "timeout"

Trouble = Callable[[str, Exception], None]


def holders_key(tenant: str, replica_id: str) -> str:
    """The probes whose control channels `replica_id` holds, for `tenant`."""
    return f"scope:{{{tenant}}}:controls:{replica_id}"


def channel(replica_id: str) -> str:
    """Where requests for `replica_id`, and answers to it, are published."""
    return f"scope:replica:{replica_id}"


class ReplicaControls:
    """The probes other replicas hold, by tenant: `ControlRouter.remote`, for every tenant attached.

    Each tenant is known across replicas by its key: its name alone for the implicit tenant, its channel
    (`tenant_channel`: name and key fingerprint) for a tenant of the service, as its stream is. The holders'
    keys, the requests and the pipe messages carry that key, so a tenant added again under the same name
    never reaches what the old one left, and a tenant's request only ever finds its own probes."""

    def __init__(self, client: redis.asyncio.Redis, replica_id: str, trouble: Trouble) -> None:
        self._redis = client
        self.replica_id = replica_id
        self._trouble = trouble
        #: By tenant key: the router its probes connect to, and the tenant's name there.
        self._routers: dict[str, ControlRouter] = {}
        self._names: dict[str, str] = {}
        #: Each tenant's key, by name.
        self._keys: dict[str, str] = {}
        #: By tenant key: the replica holding each probe's control channel, as last read.
        self._holders: dict[str, dict[str, str]] = {}
        self._pending: dict[int, asyncio.Future[tuple[str, bytes]]] = {}
        self._serving: set[asyncio.Task[None]] = set()
        #: Pipes of probes held here that other replicas' browsers have: (tenant key, probe, pipe) -> replica.
        self._routes: dict[tuple[str, str, str], str] = {}
        #: Pipe messages on their way out, in order: (channel, message).
        self._outbox: collections.deque[tuple[str, bytes]] = collections.deque()
        self._wake = asyncio.Event()
        self._ids = itertools.count(1)
        self._drops = Drops(log, "replica controls dropped a message")
        #: Dropped messages by reason.
        self.dropped = self._drops.counts
        #: Requests sent to the replica holding the probe, and performed for another replica.
        self.forwarded = 0
        self.served = 0
        #: Pipe messages sent to another replica, and received from one and passed on.
        self.pipe_sent = 0
        self.pipe_received = 0

    def attach(self, tenant: str, router: ControlRouter, key: str | None = None) -> None:
        """Reach `tenant`'s probes other replicas hold, and let them reach those connected to `router`,
        under `key` across replicas (default: the tenant's name), in place of any key before."""
        key = key or tenant
        if self._keys.get(tenant) == key:
            return
        self.detach(tenant)
        self._keys[tenant], self._names[key], self._routers[key] = key, tenant, router
        router.remote = self

    def detach(self, tenant: str) -> None:
        """Stop reaching `tenant`'s probes across replicas (revoked): its routes end with it."""
        key = self._keys.pop(tenant, None)
        if key is None:
            return
        self._names.pop(key, None)
        self._routers.pop(key, None)
        self._holders.pop(key, None)
        for route in [route for route in self._routes if route[0] == key]:
            del self._routes[route]

    # -------------------------------------------------- what ControlRouter asks (RemoteControls)

    def connected(self, tenant: str, probe_id: str) -> bool:
        key = self._keys.get(tenant)
        return key is not None and self._holder(key, probe_id) is not None

    def send(self, tenant: str, probe_id: str, raw: bytes) -> bool:
        """Send a message to `probe_id` through the replica holding it (a pipe message: this replica's
        browser has the pipe; or an ask for a full report: this replica missed a delta of the probe's);
        False when no replica holds it as a probe of `tenant`."""
        key = self._keys.get(tenant)
        holder = self._holder(key, probe_id) if key is not None else None
        if key is None or holder is None:
            return False
        return self._queue(holder, [TO_PROBE, key, self.replica_id, probe_id, raw])

    def from_probe(self, tenant: str, probe_id: str, message: rpc.Message) -> bool:
        """Pass a pipe message of a probe connected here to the replica whose browser has the pipe; False
        when the pipe is not routed to another replica."""
        key = self._keys.get(tenant)
        route = (key or "", probe_id, message.text("pipe"))
        owner = self._routes.get(route) if key is not None else None
        if key is None or owner is None:
            return False
        if message.kind == rpc.PIPE_CLOSE:
            del self._routes[route]
        self._queue(owner, [FROM_PROBE, key, self.replica_id, probe_id, rpc.encode(message)])
        return True

    def gone(self, tenant: str, probe_id: str) -> None:
        """The probe left this replica: tell the replicas with pipes through it that those pipes ended."""
        key = self._keys.get(tenant)
        for route, owner in list(self._routes.items()):
            if key is not None and route[:2] == (key, probe_id):
                del self._routes[route]
                close = rpc.Message.make(rpc.PIPE_CLOSE, pipe=route[2], reason="the probe went away")
                self._queue(owner, [FROM_PROBE, key, self.replica_id, probe_id, rpc.encode(close)])

    def _holder(self, key: str, probe_id: str) -> str | None:
        return self._holders.get(key, {}).get(probe_id)

    async def refresh_forever(self) -> None:
        while True:
            try:
                await self._refresh()
            except (RedisError, OSError) as exc:
                self._trouble("controls refresh", exc)
            await asyncio.sleep(REFRESH)

    async def _refresh(self) -> None:
        async with self._redis.pipeline(transaction=False) as pipe:
            for key, router in self._routers.items():
                held = sorted(p for p, link in router.probes.items() if link.tenant == self._names[key])
                packed = msgpack.packb(held, use_bin_type=True)
                pipe.set(holders_key(key, self.replica_id), packed, px=int(HOLDER_TTL * 1000))
            await pipe.execute()
        for key in list(self._routers):
            pattern = holders_key(re.sub(r"([*?\[\]\\])", r"\\\1", key), "*")
            found = [name async for name in self._redis.scan_iter(match=pattern)]
            values = await self._redis.mget(found) if found else []
            holders: dict[str, str] = {}
            live = {self.replica_id}
            for name, value in zip(found, values, strict=True):
                replica = name.decode(errors="replace").rpartition(":")[2]
                if replica == self.replica_id or not isinstance(value, bytes):
                    continue
                live.add(replica)
                for probe_id in _strings(value):
                    holders[probe_id] = replica
            if key not in self._routers:
                continue  # detached (revoked) meanwhile
            before, self._holders[key] = self._holders.get(key, {}), holders
            self._end_orphans(key, live, before, holders)

    def _end_orphans(self, key: str, live: set[str], before: dict[str, str], now: dict[str, str]) -> None:
        """Close the pipes whose other end's replica is gone: routes to a replica that no longer says it
        is there (the probe is told), and pipes to probes whose holder changed (the browser is told)."""
        router, tenant = self._routers[key], self._names[key]
        for route, owner in list(self._routes.items()):
            if route[0] == key and owner not in live:
                del self._routes[route]
                close = rpc.Message.make(rpc.PIPE_CLOSE, pipe=route[2], reason="the app holding the browser went away")
                router.send(route[1], close, tenant)
        for probe_id, holder in before.items():
            if now.get(probe_id) != holder and not router.holds(probe_id, tenant) and router.on_gone is not None:
                router.on_gone(probe_id)

    # ------------------------------------------------------------------ pipes

    def _queue(self, replica: str, fields: list[Any]) -> bool:
        if len(self._outbox) >= MAX_OUTBOX:
            self._drops.add("outbox_full", f"a pipe message for {replica[:40]}")
            return False
        self._outbox.append((channel(replica), msgpack.packb(fields, use_bin_type=True)))
        self._wake.set()
        return True

    async def send_forever(self) -> None:
        """Publish the queued pipe messages in order, all that waited in one pipelined round trip."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._outbox:
                batch = [self._outbox.popleft() for _ in range(min(len(self._outbox), 100))]
                try:
                    async with self._redis.pipeline(transaction=False) as pipe:
                        for name, message in batch:
                            pipe.publish(name, message)
                        await pipe.execute()
                except (RedisError, OSError) as exc:
                    # Lost like bytes on a connection that broke: the pipe stalls, its ends close it.
                    self._drops.add("unsent", f"{len(batch)} pipe messages")
                    self._trouble("pipe messages", exc)
                    await asyncio.sleep(MIN_BACKOFF)
                    continue
                self.pipe_sent += len(batch)

    def _pipe_message(self, kind: str, key: str, sender: str, probe_id: str, raw: bytes) -> None:
        """A pipe message another replica sent: for a probe held here, or from one it holds."""
        router, tenant = self._routers.get(key), self._names.get(key, "")
        accept = TO_PROBE_KINDS if kind == TO_PROBE else FROM_PROBE_KINDS
        try:
            message = rpc.decode(raw, accept)
        except rpc.RpcError as exc:
            self._drops.add(exc.reason, f"a pipe message from {sender[:40]}: {exc}")
            return
        if message.kind == rpc.FULL_REPORT:
            if router is not None:  # the holder asks, at most as often as it would for itself
                router.ask_full_report(probe_id, tenant)
            return
        route = (key, probe_id, message.text("pipe"))
        if kind == TO_PROBE:
            if router is None or self._routes.get(route) != sender:
                self._drops.add("unknown_pipe", f"from {sender[:40]} for a pipe not routed to it")
                return
            if message.kind == rpc.PIPE_CLOSE:
                del self._routes[route]
            router.send_raw(probe_id, raw, tenant)
        else:
            if router is None or self._holder(key, probe_id) != sender or router.on_pipe is None:
                self._drops.add("unknown_pipe", f"from {sender[:40]}, which does not hold probe {probe_id[:40]}")
                return
            router.on_pipe(probe_id, message)
        self.pipe_received += 1

    async def listen_forever(self) -> None:
        backoff = MIN_BACKOFF
        while True:
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(channel(self.replica_id))
                while True:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                    backoff = MIN_BACKOFF
                    if message is not None and isinstance(message.get("data"), bytes):
                        self._handle(message["data"])
            except (RedisError, OSError) as exc:
                self._trouble("controls channel", exc)
            finally:
                await pubsub.aclose()  # type: ignore[no-untyped-call]
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF)

    def _handle(self, raw: bytes) -> None:
        if len(raw) > MAX_MESSAGE_BYTES:
            self._drops.add("too_large", f"{len(raw)} bytes")
            return
        try:
            fields = msgpack.unpackb(raw, raw=False, max_bin_len=MAX_MESSAGE_BYTES, max_str_len=MAX_MESSAGE_BYTES)
        except (ValueError, TypeError, msgpack.UnpackException) as exc:
            self._drops.add("malformed", type(exc).__name__)
            return
        if _shaped(fields, [str, str, str, int, str, str, str, str]) and fields[0] == REQUEST:
            task = asyncio.create_task(self._serve(*fields[1:]))
            self._serving.add(task)
            task.add_done_callback(self._serving.discard)
        elif _shaped(fields, [str, str, str, str, bytes]) and fields[0] in (TO_PROBE, FROM_PROBE):
            self._pipe_message(*fields)
        elif _shaped(fields, [str, int, str, bytes]) and fields[0] == ANSWER:
            future = self._pending.get(fields[1])
            if future is None or future.done():
                self._drops.add("unexpected_answer", f"to request {fields[1]}")
            else:
                future.set_result((fields[2], fields[3]))
        else:
            self._drops.add("malformed", "not a request or an answer")

    async def _serve(
        self, key: str, reply_to: str, request_id: int, probe_id: str, node_id: str, control: str, args: str
    ) -> None:
        """Perform a request another replica forwarded, if this one holds the probe as one of that
        tenant's (another tenant's probe is as one not connected); answer it."""
        router, tenant = self._routers.get(key), self._names.get(key, "")
        raw = b""
        if router is None or not router.holds(probe_id, tenant):
            status = NOT_CONNECTED
        else:
            try:
                response = await router.request(probe_id, node_id, control, args, tenant)
                raw = rpc.encode(response)
                status = OK
                pipe = response.text("pipe")
                if pipe and len(self._routes) < MAX_ROUTES:
                    self._routes[(key, probe_id, pipe)] = reply_to
                elif pipe:
                    self._drops.add("too_many_routes", f"pipe {pipe[:40]} of probe {probe_id[:40]}")
            except ProbeNotConnected:
                status = NOT_CONNECTED
            except ProbeBusy:
                status = BUSY
            except TimeoutError:
                status = TIMEOUT
        self.served += 1
        try:
            answer = msgpack.packb([ANSWER, request_id, status, raw], use_bin_type=True)
            await self._redis.publish(channel(reply_to), answer)
        except (RedisError, OSError) as exc:
            self._trouble("controls answer", exc)

    async def request(self, tenant: str, probe_id: str, node_id: str, control: str, args: str) -> rpc.Message:
        """Have the replica holding `probe_id` as a probe of `tenant` perform the control; the probe's
        response. Raises what `ControlRouter.request` raises."""
        key = self._keys.get(tenant)
        holder = self._holder(key, probe_id) if key is not None else None
        if key is None or holder is None:
            raise ProbeNotConnected(probe_id)
        request_id = next(self._ids)
        future: asyncio.Future[tuple[str, bytes]] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        message = [REQUEST, key, self.replica_id, request_id, probe_id, node_id, control, args]
        try:
            try:
                listeners = await self._redis.publish(channel(holder), msgpack.packb(message, use_bin_type=True))
            except (RedisError, OSError) as exc:
                self._trouble("controls request", exc)
                raise ProbeNotConnected(probe_id) from exc
            if not listeners:
                raise ProbeNotConnected(probe_id)
            self.forwarded += 1
            status, raw = await asyncio.wait_for(future, rpc.REQUEST_TIMEOUT + ANSWER_GRACE)
        finally:
            self._pending.pop(request_id, None)
        if status == OK:
            try:
                return rpc.decode(raw, frozenset({rpc.RESPONSE}))
            except rpc.RpcError as exc:
                self._drops.add(exc.reason, f"answer from {holder[:40]}: {exc}")
                raise TimeoutError(f"replica {holder} answered with a bad response") from None
        if status == BUSY:
            raise ProbeBusy(probe_id)
        if status == TIMEOUT:
            raise TimeoutError(f"probe {probe_id} did not answer replica {holder}")
        raise ProbeNotConnected(probe_id)


def _shaped(fields: Any, kinds: list[type]) -> bool:
    """Whether `fields` is a list of exactly these kinds, in order."""
    return (
        type(fields) is list
        and len(fields) == len(kinds)
        and all(type(f) is k for f, k in zip(fields, kinds, strict=True))
    )


def _strings(value: bytes) -> list[str]:
    """The probe ids in a holder's key; none when it is not a list of strings."""
    try:
        # Bounded before unpacking: no more ids than a router holds, each no longer than an rpc text.
        found = msgpack.unpackb(
            value, raw=False, max_array_len=MAX_PROBES, max_str_len=rpc.MAX_TEXT, max_bin_len=0, max_map_len=0
        )
    except (ValueError, TypeError, msgpack.UnpackException):
        return []
    return [s for s in found if type(s) is str] if type(found) is list else []
