"""Replicas of the service follow only the tenants their users watch (issue 18: work shared, not repeated).

A real redis-server, real `scope app --multitenant --store` replicas and real probes, as in
tests/app/test_replicas_multitenant.py: a tenant's probes report to one
replica, where none of its users looks; another replica, where a user does, has the complete picture from
its first answer on, and the first replica decodes none of that tenant's messages.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from pathlib import Path

from tests.fixtures.redis import RedisServer
from tests.fixtures.replicas import multitenant_replicas
from tests.fixtures.scope import App, Scope, scrape_metrics
from tests.fixtures.service import TenantTokens, add_tenant, hostnames, hosts_of, hosts_socket, tenant_probe
from tests.fixtures.waiting import wait_for

METRICS_TOKEN = "operator-metrics-token"
WINDOW = 10.0
HOSTS = {"alpha-1", "alpha-2"}


def replica(scope: Scope, state_dir: Path, store: RedisServer, idle: str = "60s") -> App:
    """A replica whose operator reads /metrics (METRICS_TOKEN); tenants unwatched for `idle` let go."""
    env = {"SCOPE_METRICS_TOKEN": METRICS_TOKEN}
    return multitenant_replicas(scope, state_dir, store.url, 1, WINDOW, extra=[f"--tenant-idle={idle}"], env=env)[0]


def metrics(app: App) -> dict[str, float]:
    return scrape_metrics(
        urllib.request.Request(app.url + "/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
    )


def shared_fulls(store: RedisServer) -> int:
    """How many probes' latest full reports the store holds (every tenant's)."""
    with store.client() as client:
        return len(list(client.scan_iter(match="scope:*:full:*")))


def unwatched_tenant(
    scope: Scope, tmp_path: Path, store: RedisServer, idle: str = "60s"
) -> tuple[App, App, TenantTokens]:
    """Two replicas; tenant alpha's probes (HOSTS) report to the first, where nobody watches alpha, and
    their first full reports are in the store. The second replica has not been asked about alpha."""
    state = tmp_path / "state"
    ingesting, serving = replica(scope, state, store), replica(scope, state, store, idle)
    alpha = add_tenant(state, "alpha", f"--store={store.url}")
    for host in sorted(HOSTS):
        tenant_probe(scope, ingesting, alpha, host)
    wait_for(lambda: shared_fulls(store) == len(HOSTS), 60, what="the probes' full reports in the store")
    return ingesting, serving, alpha


def test_a_replica_where_nobody_watches_a_tenant_decodes_none_of_it(
    redis_server: RedisServer, scope: Scope, tmp_path: Path
) -> None:
    ingesting, serving, alpha = unwatched_tenant(scope, tmp_path, redis_server)

    # The first answer of the replica that never followed alpha is already the complete picture.
    assert hostnames(serving.url, alpha.user_token) == HOSTS
    assert hosts_of(serving, alpha.user_token, "hosts") == HOSTS

    # Reports keep coming (one a second per probe); the replica ingesting them decodes none.
    time.sleep(3)
    seen = metrics(ingesting)
    assert seen["scope_app_replica_tenants_followed"] == 0
    assert seen['scope_app_tenant_reports_applied_total{tenant="alpha"}'] == 0
    assert seen['scope_app_tenant_probes{tenant="alpha"}'] == 0
    assert seen["scope_app_reports_relayed_unapplied_total"] >= 3 * len(HOSTS)
    assert seen["scope_app_reports_received_total"] == seen["scope_app_reports_relayed_unapplied_total"] + sum(
        value for name, value in seen.items() if name.startswith("scope_app_reports_dropped_total")
    )
    watched = metrics(serving)
    assert watched["scope_app_replica_tenants_followed"] == 1
    assert watched['scope_app_tenant_probes{tenant="alpha"}'] == len(HOSTS)
    assert watched['scope_app_tenant_reports_applied_total{tenant="alpha"}'] > 2 * len(HOSTS)

    # Watched on the ingesting replica too from now: complete at once, and the switch from sharing its
    # probes' messages undecoded to decoding them loses none of their deltas.
    assert hostnames(ingesting.url, alpha.user_token) == HOSTS
    time.sleep(3)
    switched = metrics(ingesting)
    assert switched["scope_app_replica_tenants_followed"] == 1
    assert switched['scope_app_tenant_probes{tenant="alpha"}'] == len(HOSTS)
    assert switched['scope_app_tenant_reports_applied_total{tenant="alpha"}'] > 2 * len(HOSTS)
    assert switched.get('scope_app_reports_dropped_total{reason="missed_delta"}', 0) == 0


async def watch_hosts(app: App, token: str, added_later: str, ready: asyncio.Event) -> tuple[set[str], float]:
    """The hosts the first message of `app`'s hosts websocket names, and how long after it (`ready` set
    then) one more message named `added_later` (a probe the caller starts once `ready` is set)."""
    ws = await hosts_socket(app, token)
    try:
        first = await asyncio.wait_for(ws.read_message(), 10)
        assert isinstance(first, str)
        hosts = {node["label_major"] for node in json.loads(first)["add"]}
        started = time.monotonic()
        ready.set()
        while True:
            message = await asyncio.wait_for(ws.read_message(), 60)
            assert isinstance(message, str), "the websocket closed"
            if added_later in {node["label_major"] for node in json.loads(message).get("add") or []}:
                return hosts, time.monotonic() - started
    finally:
        ws.close()


def test_a_websocket_on_a_replica_that_did_not_follow_the_tenant_starts_complete_and_stays_live(
    redis_server: RedisServer, scope: Scope, tmp_path: Path
) -> None:
    ingesting, serving, alpha = unwatched_tenant(scope, tmp_path, redis_server)

    async def scenario() -> tuple[set[str], float]:
        ready = asyncio.Event()
        watching = asyncio.create_task(watch_hosts(serving, alpha.user_token, "alpha-3", ready))
        await ready.wait()
        # A probe that comes up afterwards, on the replica where nobody watches alpha.
        tenant_probe(scope, ingesting, alpha, "alpha-3")
        return await watching

    first, after = asyncio.run(scenario())
    assert first == HOSTS
    assert after < 30
    assert hostnames(serving.url, alpha.user_token) == HOSTS | {"alpha-3"}


def test_a_tenant_nobody_watches_any_more_is_let_go_and_loaded_again_when_watched(
    redis_server: RedisServer, scope: Scope, tmp_path: Path
) -> None:
    _, serving, alpha = unwatched_tenant(scope, tmp_path, redis_server, idle="3s")
    assert hostnames(serving.url, alpha.user_token) == HOSTS
    assert metrics(serving)["scope_app_replica_tenants_followed"] == 1

    # Nobody asks: after the idle period the tenant's view goes, and with it what this replica held of it.
    def let_go() -> bool:
        seen = metrics(serving)
        return seen["scope_app_replica_tenants_followed"] == 0 and seen['scope_app_tenant_probes{tenant="alpha"}'] == 0

    wait_for(let_go, 15, what="the tenant let go")
    # Asked again: loaded again, complete in the first answer.
    assert hostnames(serving.url, alpha.user_token) == HOSTS

    # A websocket open keeps it followed however long nobody asks anything else.
    async def keep_open() -> float:
        ws = await hosts_socket(serving, alpha.user_token)
        try:
            await asyncio.sleep(8)
            return metrics(serving)["scope_app_replica_tenants_followed"]
        finally:
            ws.close()

    assert asyncio.run(keep_open()) == 1
