"""Replicas over Redis: any replica ingests, any replica serves.

A real redis-server (tests.fixtures.redis), real `scope app --store` processes, and real ZeroMQ senders
that publish as probes do, each from a loopback address of its own, to one replica at a time: a sender
moved to another replica is a probe failing over, seen from the same host address.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
from typing import Any

import zmq

from scope_app.replicas import ReplicaLink
from scope_app.replicas.link import MAX_PENDING_BYTES, stream_key
from scope_app.replicas.store import async_client, sync_client
from scope_common import wire
from scope_common.report import Report
from tests.fixtures.docker import Containers
from tests.fixtures.ports import free_port
from tests.fixtures.redis import RedisSentinel, RedisServer
from tests.fixtures.replicas import View, replicas
from tests.fixtures.reports import container_id, containers_report
from tests.fixtures.scope import App, ReportSender, Scope, loopback_source, wait_for

WINDOW = 5.0


class Feeder:
    """A probe's stand-in: publishes a full report of one container twice a second, from its own
    loopback address, to one replica at a time (`move_to` switches, as a probe failing over would)."""

    def __init__(self, name: str, app: App) -> None:
        self.name = name
        self.source = loopback_source()
        self._target = app.bus
        self._paused = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"feeder-{name}", daemon=True)
        self._thread.start()

    def move_to(self, app: App) -> None:
        self._target = app.bus

    def pause(self, paused: bool = True) -> None:
        self._paused = paused

    def _run(self) -> None:
        context = zmq.Context()
        socket: zmq.Socket[bytes] | None = None
        connected = ""
        seq = 0
        try:
            while not self._stop.is_set():
                if connected != self._target:
                    if socket is not None:
                        socket.close(linger=0)
                    socket = context.socket(zmq.PUB)
                    connected = self._target
                    socket.connect(f"tcp://{self.source}:0;{connected}")
                if not self._paused and socket is not None:
                    seq += 1
                    report = containers_report(self.name)
                    socket.send(wire.encode(wire.Envelope(f"probe-{self.name}", self.name, seq, time.time(), report)))
                self._stop.wait(0.5)
        finally:
            if socket is not None:
                socket.close(linger=0)
            context.term()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)


def shows(app: App, names: list[str]) -> bool:
    return set(app.nodes("containers")) >= {container_id(name) for name in names}


def test_every_replica_serves_what_any_replica_ingests(scope: Scope, redis_server: RedisServer) -> None:
    apps = replicas(scope, redis_server.url)
    names = [f"c{i}" for i in range(6)]
    feeders = [Feeder(name, apps[i % len(apps)]) for i, name in enumerate(names)]
    try:
        for app in apps:
            wait_for(lambda app=app: shows(app, names), 20, what="every replica to show every probe's containers")  # type: ignore[misc]
            assert {p["id"] for p in app.get("/api/probes")} >= {f"probe-{name}" for name in names}
        views = [View(app) for app in apps]
        try:
            for view in views:
                wait_for(lambda view=view: view.shown >= {container_id(n) for n in names}, 10, what="every websocket")  # type: ignore[misc]
        finally:
            for view in views:
                view.close()
        for app in apps:
            metrics = app.metrics()
            assert metrics["scope_app_replica_store_connected"] == 1
            assert metrics["scope_app_replica_published_total"] > 0
            assert metrics["scope_app_replica_received_total"] > 0
    finally:
        for feeder in feeders:
            feeder.close()


def test_a_real_probe_on_one_replica_shows_on_the_others(scope: Scope, redis_server: RedisServer) -> None:
    apps = replicas(scope, redis_server.url)
    scope.probe([apps[0].bus], hostname="replicated-host", extra=["--no-controls", "--conntrack=off"])
    for app in apps[1:]:
        wait_for(
            lambda app=app: {p["hostname"] for p in app.get("/api/probes")} == {"replicated-host"},  # type: ignore[misc]
            30,
            what="the probe on a replica it does not report to",
        )
        wait_for(lambda app=app: app.nodes("hosts"), 10, what="the probe's host in the map")  # type: ignore[misc]


def test_a_replica_that_joins_loads_what_the_others_hold(scope: Scope, redis_server: RedisServer) -> None:
    first = replicas(scope, redis_server.url, 1, window=20.0)[0]
    names = ["early-a", "early-b"]
    feeders = [Feeder(name, first) for name in names]
    try:
        wait_for(lambda: shows(first, names), 20, what="the first replica to show the probes")
        for feeder in feeders:
            feeder.pause()
        time.sleep(0.6)  # nothing more in flight
        late = replicas(scope, redis_server.url, 1, window=20.0)[0]
        # Nothing is sent any more: what the late replica shows, it loaded from the store.
        wait_for(lambda: shows(late, names), 10, what="the late replica to load every probe's latest report")
    finally:
        for feeder in feeders:
            feeder.close()


def test_killing_a_replica_loses_no_probe(scope: Scope, redis_server: RedisServer) -> None:
    apps = replicas(scope, redis_server.url)
    doomed, other, watched = apps
    names = ["moving", "staying"]
    moving, staying = Feeder("moving", doomed), Feeder("staying", other)
    try:
        for app in apps:
            wait_for(lambda app=app: shows(app, names), 20, what="every replica to show both probes")  # type: ignore[misc]
        view = View(watched)
        try:
            wait_for(lambda: view.shown >= {container_id(n) for n in names}, 10, what="the websocket to show both")
            doomed.kill()
            moving.move_to(other)
            # Over twice the window: the probe would have expired everywhere had nobody taken it over.
            time.sleep(2.5 * WINDOW)
            for app in (other, watched):
                assert shows(app, names), f"{app.url} lost a probe"
            assert container_id("moving") in view.shown
            assert not view.removed, "the open websocket showed a probe gone"
        finally:
            view.close()
    finally:
        moving.close()
        staying.close()


def test_restarting_redis_loses_nothing_and_crashes_nothing(scope: Scope, redis_server: RedisServer) -> None:
    apps = replicas(scope, redis_server.url)
    names = [f"r{i}" for i in range(3)]
    feeders = [Feeder(name, app) for name, app in zip(names, apps, strict=True)]
    try:
        for app in apps:
            wait_for(lambda app=app: shows(app, names), 20, what="every replica to show every probe")  # type: ignore[misc]
        redis_server.restart()  # empty: no persistence
        for app in apps:
            wait_for(
                lambda app=app: app.metrics()["scope_app_replica_joins_total"] >= 2,  # type: ignore[misc]
                WINDOW,
                what="the replica to reconnect and join again",
            )
        after = Feeder("after-restart", apps[0])
        try:
            for app in apps:
                wait_for(lambda app=app: shows(app, [*names, "after-restart"]), WINDOW, what="the map whole again")  # type: ignore[misc]
        finally:
            after.close()
        for app in apps:
            assert app.process.poll() is None, app.log()
            assert app.metrics()["scope_app_replica_store_errors_total"] > 0
            assert "Traceback" not in app.log()
    finally:
        for feeder in feeders:
            feeder.close()


def test_a_control_on_one_replica_reaches_a_probe_connected_to_another(
    scope: Scope, redis_server: RedisServer, containers: Containers
) -> None:
    holder, asked = replicas(scope, redis_server.url, 2, window=15.0)
    scope.probe([holder.bus], hostname="controlled-host")
    container = containers.run(["sh", "-c", "trap 'exit 0' TERM; while :; do sleep 1; done"], name="controlled")
    node = f"{container.id};<container>"
    probe = wait_for(
        lambda: {p["hostname"]: p["id"] for p in asked.get("/api/probes")}.get("controlled-host"),
        30,
        what="the probe on the replica it does not report to",
    )
    wait_for(lambda: node in asked.nodes("containers"), 30, what="the container on that replica")
    # 404 while the asked replica has not yet read who holds the probe's control channel; then 400 (no
    # such control): the request went through.
    wait_for(lambda: asked.control(probe, node, "none")[0] == 400, 15, what="the probe's holder to be known")

    status, body = asked.control(probe, node, "docker_pause_container")
    assert status == 200, body
    container.reload()
    assert container.status == "paused"
    status, body = asked.control(probe, node, "docker_pause_container")
    assert status == 409 and "paused" in body["error"], "the engine's refusal comes back through the holder"
    status, body = asked.control(probe, node, "docker_unpause_container")
    assert status == 200, body
    container.reload()
    assert container.status == "running"
    assert asked.metrics()["scope_app_replica_controls_forwarded_total"] == 3
    assert holder.metrics()["scope_app_replica_controls_served_total"] == 3


def test_each_tenant_gets_exactly_its_own_messages(redis_server: RedisServer) -> None:
    """Two links on one Redis, as two replicas of the hosted service: what one ingests for a tenant
    reaches the other's apply function for that tenant only, live and when joining; a tenant whose name
    is a pattern matches no other tenant's keys."""
    messages = {
        tenant: wire.encode(wire.Envelope(f"probe-{tenant}", "host", 1, time.time(), containers_report(tenant)))
        for tenant in ("t1", "t2")
    }

    async def scenario() -> dict[str, list[tuple[str, bytes]]]:
        ingesting = ReplicaLink(redis_server.url, "ingesting", WINDOW)
        serving = ReplicaLink(redis_server.url, "serving", WINDOW)
        joining = ReplicaLink(redis_server.url, "joining", WINDOW)
        got: dict[str, list[tuple[str, bytes]]] = {"t1": [], "t2": [], "t*": [], "late t2": []}

        def recorder(name: str) -> Any:
            async def apply(batch: list[tuple[str, bytes]]) -> None:
                got[name].extend(batch)

            return apply

        serving.follow("t1", recorder("t1"))
        serving.follow("t2", recorder("t2"))
        tasks = [
            asyncio.create_task(task)
            for task in (ingesting.write_forever(), serving.read_forever(), serving.join_forever())
        ]
        await asyncio.sleep(0.5)  # joined (nothing there yet)
        for tenant, message in messages.items():
            ingesting.publish(tenant, f"10.0.0.{tenant[-1]}", wire.decode(message), message)
        for _ in range(50):
            if got["t1"] and got["t2"]:
                break
            await asyncio.sleep(0.1)
        joining.follow("t*", recorder("t*"))
        joining.follow("t2", recorder("late t2"))
        tasks += [asyncio.create_task(joining.read_forever()), asyncio.create_task(joining.join_forever())]
        for _ in range(50):
            if got["late t2"]:
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.5)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for link in (ingesting, serving, joining):
            await link.close()
        return got

    got = asyncio.run(scenario())
    assert got["t1"] == [("10.0.0.1", messages["t1"])]
    assert got["t2"] == [("10.0.0.2", messages["t2"])]
    # Joining: the latest full report from its key, and the same message again from the stream (the
    # collector refuses the copy as stale).
    assert got["late t2"] == [("10.0.0.2", messages["t2"])] * 2
    assert got["t*"] == []


def test_after_redis_restarts_each_clients_first_command_goes_through(redis_server: RedisServer) -> None:
    """Every idle pooled connection is dead once Redis restarted: the store's clients send a command that
    finds its connection broken once more, on a new one, so a Redis that is back answers the first command,
    asyncio or blocking, and the link's writer (pipelined) counts no batch as dropped."""
    message = wire.encode(wire.Envelope("probe-w", "host", 1, time.time(), containers_report("w")))

    async def scenario() -> tuple[list[Any], int, int]:
        client = async_client(redis_server.url, socket_timeout=5.0)
        link = ReplicaLink(redis_server.url, "writer", WINDOW)
        writer = asyncio.create_task(link.write_forever())
        answers: list[Any] = [await client.set("k", "v")]
        link.publish("t", "10.0.0.1", wire.decode(message), message)
        while link.published + link.publish_dropped < 1:
            await asyncio.sleep(0.05)
        # Here, not on a thread: the kernel stops redis-server when the thread that started it ends.
        redis_server.restart()
        answers.append(await client.get("k"))  # empty: nothing kept
        link.publish("t", "10.0.0.1", wire.decode(message), message)
        while link.published + link.publish_dropped < 2:
            await asyncio.sleep(0.05)
        writer.cancel()
        await asyncio.gather(writer, return_exceptions=True)
        await link.close()
        await client.aclose()
        return answers, link.published, link.publish_dropped

    assert asyncio.run(scenario()) == ([True, None], 2, 0)
    blocking = sync_client(redis_server.url, socket_timeout=5.0)
    blocking.set("k", "v")
    redis_server.restart()
    assert blocking.get("k") is None
    blocking.close()


def test_what_waits_for_a_store_that_is_away_is_bounded_in_bytes() -> None:
    """Redis away: what this replica's bus took waits for it, the oldest dropped (and counted) once the
    waiting messages would pass the bound in bytes, whatever their count: large messages cannot make a long
    outage take the replica's memory."""
    head = wire.decode_head(wire.encode(wire.Envelope("probe-big", "host", 1, time.time(), containers_report("b"))))
    message = b"m" * (1024 * 1024)
    count = MAX_PENDING_BYTES // len(message) + 40

    async def scenario() -> tuple[int, int]:
        link = ReplicaLink(f"redis://127.0.0.1:{free_port()}/0", "away", WINDOW)  # nobody listens there
        for _ in range(count):
            link.publish("t", "10.0.0.1", head, message)
        await link.close()
        return link.pending_bytes, link.publish_dropped

    pending, dropped = asyncio.run(scenario())
    assert pending <= MAX_PENDING_BYTES
    assert dropped == 40 and pending == (count - 40) * len(message)


def test_a_store_that_is_not_redis_is_refused_at_start() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "scope_app", "--store=http://127.0.0.1:1/"], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 2
    assert "not a Redis URL" in result.stderr


def test_a_bad_entry_in_the_store_is_left_out_and_the_others_stand(scope: Scope, redis_server: RedisServer) -> None:
    """The store is shared: an entry that is not what a replica writes is counted, never decoded."""
    apps = replicas(scope, redis_server.url, count=2)
    feeder = Feeder("kept", apps[0])
    try:
        wait_for(lambda: shows(apps[1], ["kept"]), 20, what="the feeder's containers on the other replica")
        client = redis_server.client()
        key = stream_key("")
        client.xadd(key, {"r": "someone", "s": "x" * 10_000, "m": b"\x00"})
        client.xadd(key, {"r": "someone", "s": "127.0.0.9", "m": b"\x00" * (wire.MAX_MESSAGE_BYTES + 1)})
        client.close()

        def counted() -> bool:
            metrics = apps[1].metrics()
            return (
                metrics.get('scope_app_replica_entries_dropped_total{reason="malformed"}', 0) >= 1
                and metrics.get('scope_app_replica_entries_dropped_total{reason="too_large"}', 0) >= 1
            )

        wait_for(counted, 10, what="both bad entries counted")
        assert shows(apps[1], ["kept"])
        assert apps[1].get_status("/api/topology/containers")[0] == 200
    finally:
        feeder.close()


def test_a_probe_waiting_for_a_full_report_stays_on_every_replica(scope: Scope, redis_server: RedisServer) -> None:
    """Deltas after a lost message are refused (the replica waits for the probe's next full report) but
    say the probe is alive: the replica they reach shares them, so no other lets the probe expire."""
    apps = replicas(scope, redis_server.url, count=2)
    sender = ReportSender(apps[0], probe_id="gappy", host_id="gappy-host")
    try:
        sender.send_until(containers_report("gappy"), lambda: shows(apps[1], ["gappy"]), timeout=20)
        seq = 1_000
        deadline = time.monotonic() + 2.5 * WINDOW
        while time.monotonic() < deadline:
            seq += 2  # one lost before each
            delta = wire.Envelope("gappy", "gappy-host", seq, time.time(), Report(), full=False, base_seq=seq - 1)
            sender.send_raw(wire.encode(delta))
            time.sleep(0.5)
        for app in apps:
            assert [p["id"] for p in app.get("/api/probes")] == ["gappy"], app.url
    finally:
        sender.close()


def test_replicas_on_a_store_kept_by_sentinel_follow_its_failover(scope: Scope, redis_sentinel: RedisSentinel) -> None:
    """`--store redis+sentinel://…`: the replicas find the primary through the sentinel, and when the primary
    dies and the sentinel promotes its replica, they reach the new one and the map is whole again."""
    apps = replicas(scope, redis_sentinel.url, 2, WINDOW)
    names = ["s0", "s1"]
    feeders = [Feeder(name, app) for name, app in zip(names, apps, strict=True)]
    try:
        for app in apps:
            wait_for(lambda app=app: shows(app, names), 20, what="every replica to show every probe")  # type: ignore[misc]
        redis_sentinel.primary.stop()
        wait_for(
            lambda: redis_sentinel.primary_port() == redis_sentinel.replica.port,
            30,
            what=f"the sentinel to promote the replica:\n{redis_sentinel.log()}",
        )
        after = Feeder("after-failover", apps[0])
        try:
            for app in apps:
                wait_for(
                    lambda app=app: shows(app, [*names, "after-failover"]),  # type: ignore[misc]
                    2 * WINDOW,
                    what="a probe of one replica on the other through the new primary",
                )
        finally:
            after.close()
        for app in apps:
            assert app.process.poll() is None, app.log()
            assert app.metrics()["scope_app_replica_store_connected"] == 1
            assert "Traceback" not in app.log()
    finally:
        for feeder in feeders:
            feeder.close()


def test_a_sentinel_store_url_without_a_service_is_refused_at_start() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "scope_app", "--store=redis+sentinel://127.0.0.1:26379"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "SERVICE" in result.stderr


def test_replicas_on_a_tls_store_share_the_map_and_one_that_cannot_verify_it_stays_away(scope: Scope) -> None:
    """`--store rediss://…`: replicas reach a Redis that speaks TLS only, verifying its certificate against
    the CA they are given; a replica not given that CA refuses the store (a store it cannot verify is not
    the operator's), keeps running and says why."""
    server = RedisServer(tls=True)
    try:
        apps = replicas(scope, server.url, 2, WINDOW)
        names = ["t0", "t1"]
        feeders = [Feeder(name, app) for name, app in zip(names, apps, strict=True)]
        try:
            for app in apps:
                wait_for(lambda app=app: shows(app, names), 20, what="every replica to show every probe")  # type: ignore[misc]
            unverified = scope.app(window=f"{WINDOW}s", extra=[f"--store=rediss://127.0.0.1:{server.port}/0"])
            wait_for(
                lambda: unverified.metrics()["scope_app_replica_store_errors_total"] > 0,
                20,
                what="the replica without the CA to fail to reach the store",
            )
            metrics = unverified.metrics()
            assert metrics["scope_app_replica_store_connected"] == 0
            assert metrics["scope_app_replica_received_total"] == 0
            assert "certificate verify failed" in unverified.log()
            assert unverified.process.poll() is None
        finally:
            for feeder in feeders:
                feeder.close()
    finally:
        server.close()
