"""Replicas over Redis when parts go away or sit on another replica: pipes through the replica holding the
probe, probes moving to another replica when theirs is killed, and Redis restarting under them.

Real redis-server (tests.fixtures.redis), real `scope app --store` and `scope probe` processes, a real
Docker engine for the shells.
"""

from __future__ import annotations

import asyncio
import json
import re
import time

import msgpack

from scope_common import rpc
from tests.app.test_pipes import PipeClient, _open_pipe, _running_execs
from tests.fixtures.docker import Containers
from tests.fixtures.redis import RedisServer
from tests.fixtures.replicas import View, replicas
from tests.fixtures.scope import Scope, wait_for
from tests.fixtures.service import hostnames

WINDOW = 10.0


def test_an_exec_pipe_opened_on_one_replica_echoes_through_the_probe_on_another(
    scope: Scope, redis_server: RedisServer, containers: Containers
) -> None:
    holder, asked = replicas(scope, redis_server.url, 2, window=15.0)
    scope.probe([holder.bus], hostname="piped-host", extra=["--conntrack=off"])
    container = containers.run(["sleep", "600"], name="piped")
    # The browser is on `asked`; the probe's control channel is on `holder` alone.
    pipe = _open_pipe(asked, "containers", f"{container.id};<container>", "docker_exec_container")
    assert asked.metrics()["scope_app_replica_controls_forwarded_total"] >= 1

    async def session() -> None:
        client = await PipeClient.connect(asked, pipe)
        await client.send("echo across-$((6 * 7))\n")
        await client.read_until(b"\r\nacross-42\r\n")
        await client.send(json.dumps({"resize": [101, 33]}))
        await client.send(b"stty size\n")
        await client.read_until(b"\r\n33 101\r\n")
        # More than one credit window each way: flow control holds across Redis too.
        await client.send(b"head -c 3000000 /dev/zero | tr '\\0' x; echo; echo done-$((1 + 1))\n")
        received = await client.read_until(b"\r\ndone-2\r\n", timeout=60)
        assert received.count(b"x") >= 3_000_000
        assert len(_running_execs(container)) == 1
        client.ws.close()

    asyncio.run(session())
    wait_for(lambda: not _running_execs(container), 10, what="the shell to end with the websocket on the other replica")
    assert asked.metrics()["scope_app_replica_pipe_sent_total"] > 0
    assert holder.metrics()["scope_app_replica_pipe_received_total"] > 0
    assert holder.metrics()["scope_app_replica_pipe_sent_total"] > 0


def test_a_pipe_through_a_replica_that_is_killed_is_closed_with_the_reason(
    scope: Scope, redis_server: RedisServer, containers: Containers
) -> None:
    holder, asked = replicas(scope, redis_server.url, 2, window=15.0)
    scope.probe([holder.bus], hostname="orphan-host", extra=["--conntrack=off"])
    container = containers.run(["sleep", "600"], name="orphan")
    pipe = _open_pipe(asked, "containers", f"{container.id};<container>", "docker_exec_container")

    async def session() -> str:
        client = await PipeClient.connect(asked, pipe)
        await client.send("echo alive\n")
        await client.read_until(b"\r\nalive\r\n")
        holder.kill()
        return await client.wait_closed(timeout=20)

    assert "went away" in asyncio.run(session())
    wait_for(lambda: not _running_execs(container), 60, what="the shell to end once its probe lost the app")


def test_a_shell_whose_browser_replica_is_killed_is_ended_by_the_holder(
    scope: Scope, redis_server: RedisServer, containers: Containers
) -> None:
    """The replica with the browser dies: its key expires, the holder closes the routes to it and the
    probe hangs the shell up, rather than leave it running for nobody."""
    holder, asked = replicas(scope, redis_server.url, 2, window=15.0)
    scope.probe([holder.bus], hostname="abandoned-host", extra=["--conntrack=off"])
    container = containers.run(["sleep", "600"], name="abandoned")
    pipe = _open_pipe(asked, "containers", f"{container.id};<container>", "docker_exec_container")

    async def session() -> None:
        client = await PipeClient.connect(asked, pipe)
        await client.send("echo here\n")
        await client.read_until(b"\r\nhere\r\n")
        asked.kill()

    asyncio.run(session())
    assert len(_running_execs(container)) == 1
    wait_for(lambda: not _running_execs(container), 20, what="the shell to end once its browser's replica died")
    assert holder.process.poll() is None and "Traceback" not in holder.log()


def test_a_probe_given_every_replica_moves_to_another_when_its_own_is_killed(
    scope: Scope, redis_server: RedisServer, containers: Containers
) -> None:
    """`--publish-to=one`: the probe reports to one replica (the others get it through Redis) and moves
    when its own goes away; an open websocket on a surviving replica never shows the probe gone."""
    apps = replicas(scope, redis_server.url, 3, window=WINDOW)
    probe = scope.probe(
        [app.bus for app in apps], hostname="mobile-host", extra=["--publish-to=one", "--conntrack=off"]
    )
    for app in apps:
        wait_for(lambda app=app: hostnames(app.url, None) == {"mobile-host"}, 30, what="the probe on every replica")  # type: ignore[misc]
    host = "mobile-host;<host>"
    container = f"{containers.run(['sleep', '600'], name='mobile').id};<container>"
    for app in apps:
        wait_for(lambda app=app: container in app.nodes("containers"), 30, what="the container on every replica")  # type: ignore[misc]
    held = [app for app in apps if app.metrics()["scope_app_replica_published_total"] > 0]
    assert len(held) == 1, "the probe publishes to one replica"
    survivors = [app for app in apps if app is not held[0]]
    view = View(survivors[1])
    try:
        wait_for(lambda: container in view.shown, 10, what="the container on the websocket")
        held[0].kill()
        time.sleep(2 * WINDOW)
        for app in survivors:
            assert host in app.nodes("hosts"), f"{app.url} lost the probe"
        assert container in view.shown
        assert container not in view.removed, "the open websocket showed the probe's container gone"
    finally:
        view.close()
    published = {app.url: app.metrics()["scope_app_replica_published_total"] for app in survivors}
    assert sum(1 for count in published.values() if count > 0) == 1, published
    assert "leaving the app at" in probe.log()


def test_restarting_redis_under_real_probes_heals_the_map_controls_and_pipes(
    scope: Scope, redis_server: RedisServer, containers: Containers
) -> None:
    """Redis comes back empty: every replica reconnects and rejoins, each probe's next full report (asked
    for by the replicas that missed its deltas, or periodic) makes the map whole again within the window,
    controls and pipes across replicas work again, and nothing crashes."""
    apps = replicas(scope, redis_server.url, 2, window=WINDOW)
    for index, app in enumerate(apps):
        # Both probes report the same engine's containers: only the first offers controls, so a pipe
        # opened on the second replica goes through Redis.
        extra = ["--conntrack=off", *(["--no-controls"] if index else [])]
        scope.probe([app.bus], hostname=f"host-{index}", extra=extra)
    hosts = {f"host-{index};<host>" for index in range(len(apps))}
    for app in apps:
        wait_for(lambda app=app: set(app.nodes("hosts")) >= hosts, 30, what="both probes on every replica")  # type: ignore[misc]

    redis_server.restart()
    restarted = time.monotonic()
    for app in apps:
        wait_for(
            lambda app=app: app.metrics()["scope_app_replica_joins_total"] >= 2,  # type: ignore[misc]
            WINDOW,
            what="the replica to reconnect and join again",
        )
        wait_for(lambda app=app: set(app.nodes("hosts")) >= hosts, WINDOW, what="the map whole again")  # type: ignore[misc]
    # After the window, every probe's report stood only on what came through the new Redis.
    time.sleep(max(0.0, restarted + WINDOW + 1 - time.monotonic()))
    for app in apps:
        assert set(app.nodes("hosts")) >= hosts, f"{app.url} lost a probe after Redis restarted"

    container = containers.run(["sleep", "600"], name="after-restart")
    pipe = _open_pipe(apps[1], "containers", f"{container.id};<container>", "docker_exec_container")

    async def session() -> None:
        client = await PipeClient.connect(apps[1], pipe)
        await client.send("echo healed\n")
        await client.read_until(b"\r\nhealed\r\n")
        client.ws.close()

    asyncio.run(session())
    for app in apps:
        assert app.process.poll() is None, app.log()
        assert app.metrics()["scope_app_replica_store_errors_total"] > 0, "the restart was noticed and counted"
        assert "Traceback" not in app.log()


def test_pipe_messages_no_route_allows_are_dropped_and_counted(scope: Scope, redis_server: RedisServer) -> None:
    """The replicas' channels are on a shared Redis: a pipe message for a pipe not routed to its sender, or
    from a replica that does not hold the probe, or that is no control-channel message at all, is counted
    and goes nowhere."""
    (app,) = replicas(scope, redis_server.url, 1)
    found = re.search(r"app starting, version \S+, ID (\w+)", app.log())
    assert found, app.log()
    name = f"scope:replica:{found.group(1)}"
    keystrokes = rpc.encode(rpc.Message.make(rpc.PIPE_DATA, b"rm -rf /\n", pipe="not-routed"))
    with redis_server.client() as client:
        # An answer to no request: harmless, and counted on its own.
        answer = msgpack.packb(["a", 0, "ok", b""], use_bin_type=True)
        wait_for(lambda: client.publish(name, answer) == 1, 10, what="the replica to listen")
        for kind in ("t", "f"):
            client.publish(name, msgpack.packb([kind, "", "intruder", "probe-x", keystrokes], use_bin_type=True))
        client.publish(name, msgpack.packb(["t", "", "intruder", "probe-x", b"\x00garbage"], use_bin_type=True))

    def counted() -> bool:
        metrics = app.metrics()
        return (
            metrics.get('scope_app_replica_controls_dropped_total{reason="unknown_pipe"}', 0) == 2
            and metrics.get('scope_app_replica_controls_dropped_total{reason="malformed"}', 0) == 1
        )

    wait_for(counted, 10, what="every bad message counted")
    assert app.metrics()["scope_app_replica_pipe_received_total"] == 0
    assert app.process.poll() is None and "Traceback" not in app.log()
