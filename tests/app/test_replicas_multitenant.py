"""The multi-tenant service on replicas: `scope app --multitenant --store`, the tenant registry in Redis.

A real redis-server (tests.fixtures.redis), real `scope app` replicas sharing it and one state
directory (the service's key pair), tenants added and revoked with `scope tenants --store`, and real
probes feeding the replicas over CurveZMQ with their tenants' tokens, spread across the replicas.
"""

from __future__ import annotations

import asyncio
import http.cookiejar
import json
import logging
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import tornado.httpclient
import tornado.websocket
import zmq

from scope_app.tenancy.directory import TenantDirectory
from scope_app.tenancy.registry import RegistryError, RegistryUnavailable, token_hash
from scope_app.tenancy.shared import TENANTS, FleetBytes, RedisRegistry
from scope_common.curve import probe_keys
from scope_probe.publisher import Publisher
from scope_probe.service import ServiceCredentials
from tests.app.test_multitenant import _echo
from tests.fixtures.netns import Netns, NetnsHost
from tests.fixtures.ports import free_port, free_port_pair
from tests.fixtures.redis import RedisServer
from tests.fixtures.replicas import View, multitenant_replicas
from tests.fixtures.scope import App, Scope, ScopeProcess
from tests.fixtures.service import (
    NO_ENGINE,
    TenantTokens,
    add_tenant,
    hostnames,
    hosts_of,
    hosts_socket,
    request,
    service_probe,
    tenant_probe,
    tenants,
)
from tests.fixtures.waiting import wait_for

WINDOW = 10.0


async def websocket_hosts(app: App, token: str) -> set[str]:
    """The hosts the first message of `app`'s hosts-view websocket names, for the holder of `token`."""
    ws = await hosts_socket(app, token)
    try:
        message = await asyncio.wait_for(ws.read_message(), 10)
        assert isinstance(message, str)
        return {node["label_major"] for node in json.loads(message)["add"]}
    finally:
        ws.close()


def replicas(scope: Scope, state_dir: Path, store: RedisServer, count: int = 3) -> list[App]:
    return multitenant_replicas(scope, state_dir, store.url, count, WINDOW)


def open_shell(asked: App, token: str, host: str) -> tuple[str, str]:
    """The holder of `token` asks `asked` for a shell on `host` (host_exec on its probe, wherever that is
    held); the control's path and the shell's pipe."""
    probe_id = next(p["id"] for p in request(asked.url, token, "/api/probes")[1] if p["hostname"] == host)
    shell = f"/api/control/{probe_id}/{urllib.parse.quote(f'{host};<host>', safe='')}/host_exec"

    def opened() -> Any:
        # 404 until the holder has said, through Redis, that it holds the probe.
        status, body = request(asked.url, token, shell, body=b"{}")
        return body if status == 200 else None

    answer = wait_for(opened, 20, what=f"the shell on {host} asked on {asked.url}")
    assert answer["pipe"], answer
    return shell, answer["pipe"]


async def pipe_websocket(app: App, token: str, pipe: str) -> tornado.websocket.WebSocketClientConnection:
    """The browser's end of `pipe` on `app`, as the holder of `token`."""
    request = tornado.httpclient.HTTPRequest(
        f"ws://127.0.0.1:{app.http_port}/api/pipe/{pipe}", headers={"Authorization": f"Bearer {token}"}
    )
    return await tornado.websocket.websocket_connect(request)


def shell_echoes(asked: App, token: str, host: str) -> str:
    """A shell on `host` asked on `asked` echoes a line through it; the control's path."""
    shell, pipe = open_shell(asked, token, host)

    async def session() -> None:
        ws = await pipe_websocket(asked, token, pipe)
        try:
            await _echo(ws)
        finally:
            ws.close()

    asyncio.run(session())
    return shell


def test_every_replica_shows_each_tenant_exactly_its_own_picture(
    redis_server: RedisServer, scope: Scope, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    apps = replicas(scope, state, redis_server)
    # Added after the replicas started, through the store: every replica knows them at once.
    alpha, beta = (add_tenant(state, name, f"--store={redis_server.url}") for name in ("alpha", "beta"))
    own = {alpha.user_token: {"alpha-1", "alpha-2"}, beta.user_token: {"beta-1", "beta-2"}}
    # Each tenant's probes on different replicas; replica 0 ingests one probe of each tenant.
    tenant_probe(scope, apps[0], alpha, "alpha-1")
    tenant_probe(scope, apps[1], alpha, "alpha-2")
    tenant_probe(scope, apps[2], beta, "beta-1")
    tenant_probe(scope, apps[0], beta, "beta-2")

    for app in apps:
        for token, hosts in own.items():
            wait_for(lambda url=app.url, token=token, hosts=hosts: hostnames(url, token) == hosts, 60, what="probes")  # type: ignore[misc]
    for app in apps:
        for token, hosts in own.items():
            wait_for(lambda app=app, token=token, hosts=hosts: hosts_of(app, token, "hosts") == hosts, 20, what="hosts")  # type: ignore[misc]
            assert hosts_of(app, token, "processes") == hosts
            assert asyncio.run(websocket_hosts(app, token)) == hosts
            assert hostnames(app.url, token) == hosts
        # Another tenant's ids answer exactly as ids that do not exist, on every replica.
        for token, other in ((beta.user_token, "alpha-1"), (alpha.user_token, "beta-1")):
            path = f"/api/topology/hosts/{urllib.parse.quote(f'{other};<host>', safe='')}"
            assert request(app.url, token, path)[0] == 404
            assert request(app.url, token, "/api/topology/hosts/no-such%3B%3Chost%3E")[0] == 404
        assert request(app.url, alpha.user_token, "/api/topology/hosts/alpha-2%3B%3Chost%3E")[0] == 200

    # Revoked through the store: refused by every replica within about a second.
    done = tenants(state, f"--store={redis_server.url}", "revoke", "alpha")
    assert done.returncode == 0, done.stderr
    for app in apps:
        wait_for(lambda app=app: request(app.url, alpha.user_token, "/api/probes")[0] == 401, 5, what="alpha refused")  # type: ignore[misc]
    # Added again under its name, with new tokens: its old probes do not come back on any replica,
    # neither from their connections nor from what the old alpha left in the store.
    again = add_tenant(state, "alpha", f"--store={redis_server.url}")
    time.sleep(4)
    for app in apps:
        assert hostnames(app.url, again.user_token) == set()
        assert hostnames(app.url, beta.user_token) == {"beta-1", "beta-2"}
        assert app.process.poll() is None and "Traceback" not in app.log()


def two_tenants_held_by_one_replica(
    scope: Scope, state: Path, redis_server: RedisServer
) -> tuple[App, App, TenantTokens, TenantTokens]:
    """Replicas A (the holder) and B; tenants alpha and beta, each with a probe (alpha-1, beta-1) sending to
    A alone, both seen on B."""
    holder, asked = replicas(scope, state, redis_server, 2)
    alpha, beta = (add_tenant(state, name, f"--store={redis_server.url}") for name in ("alpha", "beta"))
    tenant_probe(scope, holder, alpha, "alpha-1")
    tenant_probe(scope, holder, beta, "beta-1")
    for token, host in ((alpha.user_token, "alpha-1"), (beta.user_token, "beta-1")):
        wait_for(lambda token=token, host=host: hostnames(asked.url, token) == {host}, 60, what="the probes on B")  # type: ignore[misc]
    return holder, asked, alpha, beta


def test_a_tenants_shell_opened_on_one_replica_runs_on_its_probe_held_by_another(
    redis_server: RedisServer, scope: Scope, tmp_path: Path
) -> None:
    """Alpha's and beta's probes send to replica A alone; alpha's user asks replica B for a shell on
    alpha's host (host_exec): B forwards it to A, which holds the probe's control channel, and the shell
    echoes through B. Beta's user asking for alpha's probe gets 404 on either replica, as for no probe."""
    holder, asked, alpha, beta = two_tenants_held_by_one_replica(scope, tmp_path / "state", redis_server)
    shell = shell_echoes(asked, alpha.user_token, "alpha-1")
    beta_probe = request(asked.url, beta.user_token, "/api/probes")[1][0]["id"]
    node = urllib.parse.quote("alpha-1;<host>", safe="")
    # Another tenant's probe is no probe, on the replica holding it and on the other; its own still answers.
    for app in (asked, holder):
        status, body = request(app.url, beta.user_token, shell, body=b"{}")
        assert status == 404 and "is not connected" in body["error"], (status, body)
        status, body = request(app.url, beta.user_token, f"/api/control/{beta_probe}/{node}/host_exec", body=b"{}")
        assert status == 400, (status, body)  # beta's probe is there, and reports no alpha-1
    for app in (asked, holder):
        assert app.process.poll() is None and "Traceback" not in app.log()


def test_revoking_a_tenant_closes_its_pipe_through_another_replica_with_the_reason(
    redis_server: RedisServer, scope: Scope, tmp_path: Path
) -> None:
    """Alpha's and beta's probes send to replica A alone; each user has a shell open through replica B.
    Alpha revoked: B closes alpha's pipe itself, saying why, within a few seconds (it does not wait for
    A, which drops alpha's routes); beta's shell through B echoes on."""
    state = tmp_path / "state"
    holder, asked, alpha, beta = two_tenants_held_by_one_replica(scope, state, redis_server)
    _, alpha_pipe = open_shell(asked, alpha.user_token, "alpha-1")
    _, beta_pipe = open_shell(asked, beta.user_token, "beta-1")

    async def across_the_revocation() -> None:
        alpha_shell = await pipe_websocket(asked, alpha.user_token, alpha_pipe)
        beta_shell = await pipe_websocket(asked, beta.user_token, beta_pipe)
        await _echo(alpha_shell)
        await _echo(beta_shell)
        done = await asyncio.to_thread(tenants, state, f"--store={redis_server.url}", "revoke", "alpha")
        assert done.returncode == 0, done.stderr
        revoked = time.monotonic()
        # Each read waits 10 s at most: the shell is idle, so what comes is the close.
        while await asyncio.wait_for(alpha_shell.read_message(), 10) is not None:
            pass
        print(f"alpha's pipe through B closed {time.monotonic() - revoked:.2f} s after `scope tenants revoke`")
        assert alpha_shell.close_reason is not None and "its tenant was revoked" in alpha_shell.close_reason, (
            alpha_shell.close_reason
        )
        await _echo(beta_shell)
        beta_shell.close()

    asyncio.run(across_the_revocation())
    for app in (asked, holder):
        assert app.process.poll() is None and "Traceback" not in app.log()


#: A probe's host of its own: a network namespace on the test's bridge, with its own processes too (a
#: probe reads its host's connections through /proc; with one /proc, each would report all of them).


def host_probe(scope: Scope, host: NetnsHost, addresses: list[str], tokens: TenantTokens, name: str) -> ScopeProcess:
    """A probe of the tenant of `tokens` on `host`, named `name`, given every replica's bus at `addresses`."""
    prefix = host.argv([], own_processes=True)
    return service_probe(
        scope, addresses, tokens.probe_token, tokens.service_key, hostname=name, prefix=prefix, extra=[NO_ENGINE]
    )


def exactly_their_own(apps: list[App], own: dict[str, set[str]]) -> bool:
    """Whether every app shows the holder of each token exactly these hosts: its probes and its hosts view."""
    return all(
        hostnames(app.url, token) == hosts and hosts_of(app, token, "hosts") == hosts
        for app in apps
        for token, hosts in own.items()
    )


def host_nodes(hosts: set[str]) -> set[str]:
    return {f"{host};<host>" for host in hosts}


def test_a_probe_whose_replica_is_killed_moves_and_no_tenant_sees_it_gone(
    redis_server: RedisServer, scope: Scope, netns: Netns, tmp_path: Path
) -> None:
    """Three replicas; every probe is given all three and takes the first, in order, that answers. The
    replica listed first starts last: alpha-2 and beta's probes leave it for the next before it is up,
    and alpha-1, started once it is, stays on it. Killing that replica moves alpha-1 to another: alpha's
    map is whole again on both survivors within one window, alpha's websockets there never show one of
    its hosts gone, and beta's see nothing happen, its own hosts and no other tenant's."""
    state = tmp_path / "state"
    hosts = [netns.create() for _ in range(4)]
    ports: set[int] = set()
    while len(ports) < 3:
        ports.add(free_port_pair(netns.gateway))
    # In the order the probes try them; the first is the one that is killed.
    order = sorted(ports, key=lambda port: f"tcp://{netns.gateway}:{port}")
    addresses = [f"{netns.gateway}:{port}" for port in order]
    store = redis_server.url
    survivors = multitenant_replicas(scope, state, store, window=WINDOW, bus_host=netns.gateway, bus_ports=order[1:])
    alpha, beta = (add_tenant(state, name, f"--store={store}") for name in ("alpha", "beta"))
    own = {alpha.user_token: {"alpha-1", "alpha-2"}, beta.user_token: {"beta-1", "beta-2"}}
    early = [
        host_probe(scope, hosts[1], addresses, alpha, "alpha-2"),
        host_probe(scope, hosts[2], addresses, beta, "beta-1"),
        host_probe(scope, hosts[3], addresses, beta, "beta-2"),
    ]
    left_first = f"leaving the app at tcp://{addresses[0]}"
    for probe in early:
        wait_for(lambda probe=probe: left_first in probe.log(), 30, what="the probe to leave the first address")  # type: ignore[misc]
    (doomed,) = multitenant_replicas(scope, state, store, window=WINDOW, bus_host=netns.gateway, bus_ports=order[:1])
    mover = host_probe(scope, hosts[0], addresses, alpha, "alpha-1")
    apps = [doomed, *survivors]
    wait_for(lambda: exactly_their_own(apps, own), 60, what="each tenant's hosts on every replica")
    views = {token: [View(app, "hosts", token) for app in survivors] for token in own}
    seen_before_kill: dict[int, int] = {}
    try:
        for token, opened in views.items():
            for view in opened:
                wait_for(lambda v=view, t=token: v.shown >= host_nodes(own[t]), 10, what="the hosts on a websocket")  # type: ignore[misc]
                seen_before_kill[id(view)] = len(view.messages)
        assert "leaving the app at" not in mover.log()
        doomed.kill()
        killed = time.monotonic()
        wait_for(lambda: left_first in mover.log(), WINDOW, what="alpha-1 to leave the killed replica")
        # Past the window: what the survivors show of alpha-1 now, it reported after it moved.
        time.sleep(max(0.0, killed + WINDOW + 2 - time.monotonic()))
        assert exactly_their_own(survivors, own), "a tenant's map is not whole, or not its own, after the move"
    finally:
        for opened in views.values():
            for view in opened:
                view.close()
    for token, opened in views.items():
        mine = host_nodes(own[token])
        for view in opened:
            during = [{node for node in state if node.endswith(";<host>")} for state in view.states]
            assert all(hosts <= mine for hosts in during), f"another tenant's host on a websocket: {during}"
            assert not view.removed & mine, "an open websocket showed one of its tenant's hosts gone"
            assert during[-1] == mine, during[-1]
            assert len(view.states) > seen_before_kill[id(view)], "the websocket was not fed on through the move"
            if token == beta.user_token:
                # Nothing happened to beta: its hosts, all of them and only they, after every message.
                assert all(hosts == mine for hosts in during[seen_before_kill[id(view)] - 1 :]), during
    for app in survivors:
        assert app.process.poll() is None and "Traceback" not in app.log()


@pytest.fixture
def lasting_redis() -> Iterator[RedisServer]:
    """A Redis that keeps its data on disk (append-only file) across a restart, as the service's must:
    the tenant registry in it cannot be rebuilt (tests.fixtures.redis's plain one comes back empty)."""
    server = RedisServer(["--appendonly", "yes"])
    try:
        yield server
    finally:
        server.close()


def logged_in_hostnames(app: App, token: str) -> set[str]:
    """Log in on `app`'s page with `token`, as a browser does; the hosts of the probes the session sees."""
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
    with opener.open(f"{app.url}/?token={urllib.parse.quote(token, safe='')}", timeout=10) as response:
        assert response.status == 200
    with opener.open(f"{app.url}/api/probes", timeout=10) as response:
        return {probe["hostname"] for probe in json.load(response)}


def test_restarting_redis_under_multitenant_replicas_heals_each_tenants_map_controls_and_registry(
    lasting_redis: RedisServer, scope: Scope, netns: Netns, tmp_path: Path
) -> None:
    """Redis restarts under three replicas and real probes of two tenants, every probe given every
    replica (so all on the first in order): each replica reconnects; within one window each tenant's map
    is whole and exactly its own again on every replica, from what came through the new connections; a
    tenant's shell asked on another replica runs on its probe; users log in on every replica, a tenant
    added after the restart reports; no replica dies or logs a traceback."""
    state = tmp_path / "state"
    hosts = [netns.create() for _ in range(5)]
    store = lasting_redis.url
    apps = multitenant_replicas(scope, state, store, window=WINDOW, bus_host=netns.gateway)
    addresses = [f"{netns.gateway}:{app.bus_port}" for app in apps]
    holder = min(apps, key=lambda app: f"tcp://{netns.gateway}:{app.bus_port}")
    others = [app for app in apps if app is not holder]
    alpha, beta = (add_tenant(state, name, f"--store={store}") for name in ("alpha", "beta"))
    own = {alpha.user_token: {"alpha-1", "alpha-2"}, beta.user_token: {"beta-1", "beta-2"}}
    for host, (tokens, name) in zip(
        hosts, [(alpha, "alpha-1"), (alpha, "alpha-2"), (beta, "beta-1"), (beta, "beta-2")], strict=False
    ):
        host_probe(scope, host, addresses, tokens, name)
    wait_for(lambda: exactly_their_own(apps, own), 60, what="each tenant's hosts on every replica")

    lasting_redis.restart()
    restarted = time.monotonic()
    # Not every replica need say it reconnected: one whose connections were idle while Redis was away
    # finds them broken afterwards and sends its command again at once (store.async_client). That each
    # reaches the restarted Redis is what follows shows: maps whole past the window, a tenant added now.
    wait_for(lambda: exactly_their_own(apps, own), WINDOW, what="each tenant's map whole again")
    # Past the window: every report each replica shows came through the store after the restart.
    time.sleep(max(0.0, restarted + WINDOW + 2 - time.monotonic()))
    assert exactly_their_own(apps, own), "a tenant's map is not whole, or not its own, after the restart"

    shell_echoes(others[0], alpha.user_token, "alpha-1")
    shell_echoes(others[1], beta.user_token, "beta-2")
    for app in apps:
        assert logged_in_hostnames(app, alpha.user_token) == own[alpha.user_token]
    gamma = add_tenant(state, "gamma", f"--store={store}")
    host_probe(scope, hosts[4], addresses, gamma, "gamma-1")
    own[gamma.user_token] = {"gamma-1"}
    wait_for(lambda: exactly_their_own(apps, own), 30, what="gamma's probe on every replica, and each its own")
    for app in apps:
        assert app.process.poll() is None, app.log()
        assert "Traceback" not in app.log()


def test_a_replica_with_another_service_key_refuses_to_start(redis_server: RedisServer, tmp_path: Path) -> None:
    add_tenant(tmp_path / "first", "alpha", f"--store={redis_server.url}")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "scope_app",
            f"--listen=127.0.0.1:{free_port()}",
            f"--bus=127.0.0.1:{free_port_pair()}",
            "--multitenant",
            f"--state-dir={tmp_path / 'other'}",
            f"--store={redis_server.url}",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1
    assert "is not the one the other replicas" in result.stderr and "service.key" in result.stderr
    assert tenants(tmp_path / "other", f"--store={redis_server.url}", "list").returncode == 1


def test_the_registry_in_the_store(redis_server: RedisServer, caplog: pytest.LogCaptureFixture) -> None:
    registry = RedisRegistry(redis_server.url)
    with pytest.raises(RegistryUnavailable):
        registry.list()  # nothing added yet: no registry, which is not a registry without tenants
    alpha = registry.add("alpha", token_hash("alpha user"), "aa" * 32)
    registry.add("beta", token_hash("beta user"), "bb" * 32)
    with pytest.raises(RegistryError):
        registry.add("alpha", token_hash("other"), "cc" * 32)
    with pytest.raises(RegistryError):
        registry.add("gamma", token_hash("alpha user"), "cc" * 32)
    assert [t.name for t in registry.list()] == ["alpha", "beta"]
    # The store is shared: records that are not a tenant's (too big, a bad key, not JSON) are left out, the others kept.
    raw = redis.Redis.from_url(redis_server.url)
    record = {"name": "mallory", "created": 1.0, "user_token_hash": token_hash("m"), "probe_key": "dd" * 32}
    raw.hset(TENANTS, "huge", json.dumps({**record, "name": "huge", "probe_key": "ee" * 32, "pad": "x" * 100_000}))
    raw.hset(TENANTS, "badkey", json.dumps({**record, "name": "badkey", "probe_key": "not hex"}))
    raw.hset(TENANTS, "junk", b"\xff{")
    assert [t.name for t in registry.list()] == ["alpha", "beta"]
    raw.hdel(TENANTS, "huge", "badkey", "junk")
    raw.close()
    assert registry.by_user_token_hash(token_hash("alpha user")) == alpha
    assert registry.by_probe_key("aa" * 32) == alpha
    assert registry.by_name("beta") is not None
    revoked: list[str] = []
    directory = TenantDirectory(registry, revoked.append)
    registry.revoke("beta")
    with pytest.raises(RegistryError):
        registry.revoke("beta")
    assert registry.by_probe_key("bb" * 32) is None and registry.by_user_token_hash(token_hash("beta user")) is None
    directory.refresh()
    assert revoked == ["beta"]
    # A Redis that comes back empty is not every tenant revoked: the directory keeps what it knew.
    redis_server.restart()
    directory.refresh()
    assert set(directory.tenants) == {"alpha"} and revoked == ["beta"]
    assert directory.by_user_token_hash(token_hash("alpha user")) == alpha
    # A tenant added then (`scope tenants add` makes a registry where it finds none) is no reason to cut
    # alpha off: the directory takes the new registry's tenants beside the ones it knew, and says why.
    registry.add("gamma", token_hash("gamma user"), "cc" * 32)
    with caplog.at_level(logging.ERROR, logger="scope_app.tenancy.directory"):
        directory.refresh()
    assert set(directory.tenants) == {"alpha", "gamma"} and revoked == ["beta"]
    assert "registry was made anew" in caplog.text
    assert directory.admits_key("aa" * 32) and directory.admits_key("cc" * 32)
    registry.revoke("gamma")  # the new registry's own revocations still cut off
    directory.refresh()
    assert set(directory.tenants) == {"alpha"} and revoked == ["beta", "gamma"]
    redis_server.stop()
    directory.refresh()
    assert directory.admits_key("aa" * 32) and not directory.admits_key("cc" * 32)
    registry.close()


def test_a_tenant_byte_rate_is_counted_across_replicas(redis_server: RedisServer) -> None:
    """Two replicas' budgets for one tenant of 1,000 bytes a second (5,000 over the window): what one
    admitted, the other refuses once they have synced; a second tenant is not charged; the window slides."""
    now = [1_000_000.0]

    async def scenario() -> list[bool]:
        first, second = (FleetBytes(redis_server.url, name, 1_000, clock=lambda: now[0]) for name in ("a", "b"))
        seen = [first.take("t", 3_000), second.take("t", 3_000)]  # neither knows of the other yet
        await first.sync()
        await second.sync()
        await first.sync()
        seen += [first.take("t", 100), second.take("t", 100), second.take("other", 4_000)]
        now[0] += 5  # past the window
        await first.sync()
        seen += [first.take("t", 4_000)]
        await first.close()
        await second.close()
        return seen

    assert asyncio.run(scenario()) == [True, True, False, False, True, True]


def test_a_tenant_spread_over_replicas_gets_its_byte_rate_once(
    redis_server: RedisServer, scope: Scope, tmp_path: Path
) -> None:
    """A tenant allowed 10,000 bytes a second sends 6,000 a second to each of three replicas: each alone
    would let all of it in (bursts of 50,000 pass), the replicas together refuse what is past the rate."""
    state = tmp_path / "state"
    alpha = add_tenant(state, "alpha", f"--store={redis_server.url}")
    apps = [
        scope.app(
            window=f"{WINDOW:g}s",
            extra=[
                "--multitenant",
                f"--state-dir={state}",
                f"--store={redis_server.url}",
                "--tenant-max-bytes-per-second=10000",
            ],
        )
        for _ in range(3)
    ]
    credentials = ServiceCredentials(probe_keys(alpha.probe_token), alpha.service_key)
    publishers = [Publisher(zmq.Context.instance(), credentials) for _ in apps]
    try:
        for publisher, app in zip(publishers, apps, strict=True):
            publisher.set_apps({f"tcp://{app.bus}"})
        # Bytes the gate counts before decoding: what they are does not matter (they are dropped after).
        for _ in range(6 * 15):
            for publisher in publishers:
                publisher.new_subscribers()
                publisher.send(b"x" * 1_000)
            time.sleep(1 / 6)
        stats = [request(app.url, alpha.user_token, "/api/stats")[1] for app in apps]
        refused = [each["reports_dropped"].get("over_byte_rate", 0) for each in stats]
        sent = sum(publisher.sent for publisher in publishers)
        # 90,000 bytes every 5 s against 50,000 allowed: after the burst, about 4 messages in 9 are refused.
        assert sum(refused) > sent // 5, (refused, sent)
        assert sum(refused) < sent * 2 // 3, (refused, sent)
    finally:
        for publisher in publishers:
            publisher.close()
