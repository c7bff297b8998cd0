"""A probe given several apps publishes to one at a time and moves on when its app goes away.

Real processes: two `scope app --multitenant` sharing one --state-dir (one tenant registry and key pair,
as replicas of one service on one machine), and a real `scope probe --service-host=A,B`. The apps do not
share reports here (no --store): what each shows is what the probe publishes to it, so the map says which
one the probe chose.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from scope_common import rpc
from scope_common.curve import probe_keys
from scope_probe.failover import Failover
from scope_probe.main import build_parser, service_hosts
from tests.fixtures.dns import WEAVE_NAME, DnsServer
from tests.fixtures.ports import free_port, free_port_pair
from tests.fixtures.scope import App, Scope, ScopeProcess, scrape_metrics, wait_for
from tests.fixtures.service import TenantTokens, add_tenant, hostnames, request, service_probe

#: The apps' window: a probe silent this long is dropped from the map.
WINDOW = 15.0


class Replicas:
    """Two service processes on one state directory, and the probes started against them."""

    def __init__(self, scope: Scope, state_dir: Path) -> None:
        self.scope = scope
        self.state_dir = state_dir
        # One after the other: the first creates the key pair the second then reads.
        flags = ["--multitenant", f"--state-dir={state_dir}"]
        self.apps = [scope.app(window=f"{WINDOW:.0f}s", extra=flags) for _ in range(2)]

    def add_tenant(self, name: str) -> TenantTokens:
        return add_tenant(self.state_dir, name)

    def probe(
        self, token: str, service_key: str, hosts: list[str], hostname: str, extra: list[str] | None = None
    ) -> ScopeProcess:
        return service_probe(self.scope, hosts, token, service_key, hostname=hostname, extra=extra)


@pytest.fixture
def replicas(scope: Scope, tmp_path: Path) -> Replicas:
    return Replicas(scope, tmp_path / "state")


def test_a_service_probe_publishes_to_one_replica_and_moves_when_it_is_killed(replicas: Replicas) -> None:
    tenant = replicas.add_tenant("acme")
    first, second = replicas.apps
    # Both forms at once: the flag again, and a comma list.
    metrics = free_port()
    probe = replicas.probe(
        tenant.probe_token,
        tenant.service_key,
        [first.bus, f"{second.bus},{first.bus}"],
        "mover",
        [f"--metrics-listen=127.0.0.1:{metrics}"],
    )

    def holder() -> App | None:
        holding = [app for app in replicas.apps if hostnames(app.url, tenant.user_token) == {"mover"}]
        return holding[0] if len(holding) == 1 else None

    held = wait_for(holder, 30, what="the probe on one replica")
    other = second if held is first else first
    time.sleep(3)  # several publishes: the probe still reports to that one alone
    assert hostnames(other.url, tenant.user_token) == set(), "the probe published to both replicas"

    held.kill()
    killed = time.monotonic()
    wait_for(
        lambda: hostnames(other.url, tenant.user_token) == {"mover"}, WINDOW, what="the probe on the other replica"
    )
    moved_after = time.monotonic() - killed
    wait_for(lambda: "mover;<host>" in _nodes(other, tenant.user_token), 5, what="its host in the map")
    print(f"the probe showed on the other replica {moved_after:.1f} s after its own was killed")
    assert "leaving the app at" in probe.log() and "(it stopped answering)" in probe.log()
    scraped = scrape_metrics(f"http://127.0.0.1:{metrics}/metrics")
    assert scraped["scope_probe_app_moves_total"] == 1 and scraped["scope_probe_apps"] == 1
    assert probe.process.poll() is None


def _ports_of(app: App) -> tuple[str, str]:
    """The addresses of an app's bus and of its control port after it, as the probe's log names them."""
    host, port = app.bus.rsplit(":", 1)
    return f"tcp://{app.bus}", f"tcp://{host}:{int(port) + rpc.CONTROL_PORT_OFFSET}"


def test_a_wrong_token_or_key_is_said_for_each_replica_and_retried_with_a_back_off(replicas: Replicas) -> None:
    tenant = replicas.add_tenant("acme")
    first, second = replicas.apps
    hosts = [f"{first.bus},{second.bus}"]
    wrong_token = replicas.probe("not-a-probe-token", tenant.service_key, hosts, "wrong-token")
    wrong_key = replicas.probe(tenant.probe_token, probe_keys("other").public, hosts, "wrong-key")

    def said_for_both() -> bool:
        # Said of each replica, by its bus or its control port (whichever socket's handshake came first:
        # the probe leaves a replica after its patience whether or not both were refused by then).
        refused, unpinned = wrong_token.log(), wrong_key.log()
        return all(
            any(f"the service at {address} refused this probe" in refused for address in _ports_of(app))
            and any(f"no encrypted handshake with the service at {address}" in unpinned for address in _ports_of(app))
            for app in replicas.apps
        )

    # Each replica is tried in turn (patience 7 s), and none lets either probe in.
    wait_for(said_for_both, 30, what="both replicas to refuse both probes")
    assert "--service-token is wrong or was revoked" in wrong_token.log()
    assert "is --service-key the service's key" in wrong_key.log()
    assert "tries again in 2 s" in wrong_token.log(), "the refusals are retried with a back-off"
    for app in replicas.apps:
        assert hostnames(app.url, tenant.user_token) == set()
    for probe in (wrong_token, wrong_key):
        assert probe.process.poll() is None, "a refused probe keeps trying, it does not exit"
        assert "Traceback" not in probe.log()


def test_a_plain_probe_with_publish_to_one_takes_one_a_record_and_moves_to_another(
    scope: Scope, weavedns: DnsServer
) -> None:
    """One DNS name, two A records (two apps on two loopback addresses, the same port, as two hosts'):
    `--publish-to=one` reports to one of them, and to the other once it is killed. A plain probe without
    the flag still publishes to both (the default is unchanged)."""
    port = free_port_pair()
    apps = [
        scope.app(window=f"{WINDOW:.0f}s", bus_port=port, extra=[f"--bus=127.0.0.{last}:{port}"]) for last in (2, 3)
    ]
    weavedns.set_records(["127.0.0.2", "127.0.0.3"])
    dns = [f"--weave-dns-name={WEAVE_NAME}", f"--weave-dns-server={weavedns.listen}:{weavedns.port}"]
    flags = [*dns, f"--weave-port={port}", "--conntrack=off", "--no-controls"]
    scope.probe([], hostname="everywhere", extra=flags)
    probe = scope.probe([], hostname="one-at-a-time", extra=[*flags[:-1], "--publish-to=one"])

    def hosts(app: App) -> set[str]:
        return {p["hostname"] for p in app.get("/api/probes")}

    for app in apps:
        wait_for(lambda app=app: "everywhere" in hosts(app), 20, what="the default probe on both apps")  # type: ignore[misc]
    held = wait_for(
        lambda: next(iter([app for app in apps if "one-at-a-time" in hosts(app)]), None), 20, what="one app"
    )
    other = apps[1] if held is apps[0] else apps[0]
    time.sleep(3)
    assert "one-at-a-time" not in hosts(other), "--publish-to=one published to both A records"
    held.kill()
    killed = time.monotonic()
    wait_for(lambda: "one-at-a-time" in hosts(other), WINDOW, what="the probe on the other A record")
    print(f"the probe showed on the other app {time.monotonic() - killed:.1f} s after its own was killed")
    assert "Traceback" not in probe.log()


def test_a_probe_leaves_an_address_nobody_answers_at_and_keeps_the_one_that_takes_its_reports(
    scope: Scope, weavedns: DnsServer
) -> None:
    """The first A record (in order) has no app: the probe leaves it once its patience is over. Without a
    control channel the app taking its reports is the sign of life, and that app is kept."""
    port = free_port_pair()
    app = scope.app(window=f"{WINDOW:.0f}s", bus_port=port, extra=[f"--bus=127.0.0.3:{port}"])
    weavedns.set_records(["127.0.0.2", "127.0.0.3"])
    dns = [f"--weave-dns-name={WEAVE_NAME}", f"--weave-dns-server={weavedns.listen}:{weavedns.port}"]
    probe = scope.probe(
        [], hostname="patient", extra=[*dns, f"--weave-port={port}", "--publish-to=one", "--no-controls"]
    )
    wait_for(lambda: "patient" in {p["hostname"] for p in app.get("/api/probes")}, 20, what="the probe on the app")
    assert f"leaving the app at tcp://127.0.0.2:{port} (it did not answer within 7 s)" in probe.log()
    time.sleep(10)  # past the patience again: an app that took the reports is not left
    assert probe.log().count("leaving the app at") == 1, probe.log()
    assert "patient" in {p["hostname"] for p in app.get("/api/probes")}


def _nodes(app: App, user_token: str) -> set[str]:
    status, body = request(app.url, user_token, "/api/topology/hosts")
    return set(body["nodes"]) if status == 200 else set()


def _next_move(failover: Failover, apps: set[str], clock: Clock) -> tuple[str, float]:
    """Step the clock until the failover moves: to which app, after how long."""
    start, now = clock.now, failover.choose(apps)
    while (chosen := failover.choose(apps)) == now:
        clock.now += 0.5
    return next(iter(chosen)), clock.now - start


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_failover_keeps_its_app_moves_in_turn_and_backs_off_after_a_whole_round() -> None:
    clock = Clock()
    failover = Failover(patience=5.0, max_patience=18.0, clock=clock)
    apps = {"tcp://10.0.0.1:4030", "tcp://10.0.0.2:4030", "tcp://10.0.0.3:4030"}
    assert failover.choose(set()) == set()
    assert failover.choose(apps) == {"tcp://10.0.0.1:4030"}
    failover.answered("tcp://10.0.0.1:4030")
    clock.now = 100.0
    assert failover.choose(apps) == {"tcp://10.0.0.1:4030"}, "an app that answers is kept"
    failover.silent("tcp://10.0.0.2:4030")  # not the one published to: nothing changes
    assert failover.choose(apps) == {"tcp://10.0.0.1:4030"}
    failover.silent("tcp://10.0.0.1:4030")
    assert failover.choose(apps) == {"tcp://10.0.0.2:4030"}, "a silent app is left at once"
    # Nobody answers any more: each app gets the patience, then a whole round doubles it.
    moves = [_next_move(failover, apps, clock) for _ in range(9)]
    assert [app for app, _ in moves] == [f"tcp://10.0.0.{i}:4030" for i in (3, 1, 2) * 3]
    assert [wait for _, wait in moves] == [5.5] * 3 + [10.5] * 3 + [18.5] * 3
    # An address no longer found is left; one that answers again resets the patience.
    assert failover.choose({"tcp://10.0.0.9:4030"}) == {"tcp://10.0.0.9:4030"}
    assert failover.moves >= 7


def test_service_hosts_come_from_repeated_flags_comma_lists_or_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    args = build_parser().parse_args(["--service-host=a:1,b:2", "--service-host", " c ", "--publish-to=one"])
    assert service_hosts(args.service_host) == ["a:1", "b:2", "c"]
    assert args.publish_to == "one"
    monkeypatch.setenv("SCOPE_SERVICE_HOST", "d,e:5")
    assert service_hosts(build_parser().parse_args([]).service_host) == ["d", "e:5"]
    assert build_parser().parse_args([]).publish_to == "all", "plain probes publish to every app by default"
