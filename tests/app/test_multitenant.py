"""The multi-tenant service end to end: `scope app --multitenant`, tenants added with `scope tenants`,
real probes feeding it with their tenants' tokens over CurveZMQ, users reading it with theirs.

The two tenants' probes run on hosts of their own (network namespaces, reaching the service's bus on
the bridge), but every namespace shares this machine's Docker engine: tenant beta's probes are pointed
at no engine, and the test's container is then tenant alpha's alone.
"""

from __future__ import annotations

import asyncio
import http.cookiejar
import json
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import tornado.httpclient
import tornado.websocket
import zmq
import zmq.asyncio

from scope_app.tenancy.directory import TenantDirectory
from scope_app.tenancy.registry import SqliteRegistry, token_hash
from scope_app.tenancy.zap import ZapHandler
from scope_common.curve import KeyPair, probe_keys, serve_curve
from scope_probe.publisher import Publisher
from scope_probe.service import ServiceCredentials
from tests.fixtures.docker import Containers
from tests.fixtures.netns import Netns, NetnsHost
from tests.fixtures.service import Service, TenantTokens, tenants
from tests.fixtures.waiting import wait_for

NO_ENGINE = "--docker-url=unix:///nonexistent/docker.sock"
QUICK_TO_STOP = ["sh", "-c", "trap 'exit 0' TERM; while :; do sleep 1; done"]


def _quote(text: str) -> str:
    return urllib.parse.quote(text, safe="")


@pytest.fixture
def namespaces(netns: Netns) -> list[NetnsHost]:
    """Four hosts: network namespaces on one bridge."""
    return [netns.create() for _ in range(4)]


@pytest.fixture
def hosted(tmp_path: Path, netns: Netns, namespaces: list[NetnsHost]) -> Iterator[Service]:
    """A service whose bus listens on the namespaces' bridge, where their probes reach it."""
    running = Service(tmp_path / "state", bus_host=netns.gateway)
    try:
        yield running
    finally:
        running.close()


@pytest.fixture
def two_tenants(hosted: Service, namespaces: list[NetnsHost]) -> Iterator[tuple[TenantTokens, TenantTokens]]:
    """Tenant alpha with probes on hosts alpha-1 and alpha-2, tenant beta with beta-1 and beta-2, each
    host a network namespace of its own."""
    alpha, beta = hosted.add_tenant("alpha"), hosted.add_tenant("beta")
    # Each host its own process namespace too: with one /proc for all, one host's claims of the same
    # endpoints would overwrite another's.
    for n in (1, 2):
        host = namespaces[n - 1].argv([], own_processes=True)
        hosted.probe(alpha.probe_token, hostname=f"alpha-{n}", service_key=alpha.service_key, prefix=host)
        hosted.probe(
            beta.probe_token,
            hostname=f"beta-{n}",
            service_key=beta.service_key,
            prefix=namespaces[n + 1].argv([], own_processes=True),
            extra=[NO_ENGINE],
        )
    wait_for(lambda: hosted.hostnames(alpha.user_token) == {"alpha-1", "alpha-2"}, timeout=40, what="alpha's probes")
    wait_for(lambda: hosted.hostnames(beta.user_token) == {"beta-1", "beta-2"}, timeout=40, what="beta's probes")
    yield alpha, beta


def _hosts_of(service: Service, token: str, topology: str) -> set[str]:
    """The hosts the nodes of `topology` are on, as the holder of `token` sees them."""
    status, body = service.get(token, f"/api/topology/{topology}")
    assert status == 200, body
    return {node["id"].split(";")[0] for node in body["nodes"].values() if not node.get("pseudo")}


def _container_node(service: Service, token: str, container: Any) -> str | None:
    node_id = f"{container.id};<container>"
    status, body = service.get(token, "/api/topology/containers")
    return node_id if status == 200 and node_id in body["nodes"] else None


async def _websocket_hosts(service: Service, token: str) -> set[str]:
    """The hosts the first websocket message of the hosts view names."""
    ws = await _websocket(service, token, "/api/topology/hosts/ws")
    try:
        message = await asyncio.wait_for(ws.read_message(), 10)
        assert isinstance(message, str)
        # Pseudo nodes aside: a host in a namespace reaches the service through the bridge, "the internet" to it.
        return {node["label_major"] for node in json.loads(message)["add"] if not node.get("pseudo")}
    finally:
        ws.close()


def test_each_tenant_sees_only_its_own_hosts_processes_and_containers(
    hosted: Service, two_tenants: tuple[TenantTokens, TenantTokens], containers: Containers
) -> None:
    service = hosted
    alpha, beta = two_tenants
    container = containers.run(QUICK_TO_STOP, name="alpha-only")
    node_id = wait_for(lambda: _container_node(service, alpha.user_token, container), timeout=20, what="the container")

    assert _hosts_of(service, alpha.user_token, "hosts") == {"alpha-1", "alpha-2"}
    assert _hosts_of(service, beta.user_token, "hosts") == {"beta-1", "beta-2"}
    # A probe sees its own namespace's connections alone, and processes show with connections: its own,
    # to the service, which its first report may predate.
    expected = {alpha.user_token: {"alpha-1", "alpha-2"}, beta.user_token: {"beta-1", "beta-2"}}
    wait_for(
        lambda: all(_hosts_of(service, token, "processes") == hosts for token, hosts in expected.items()),
        timeout=20,
        what="each tenant's processes, of its own hosts",
    )
    assert asyncio.run(_websocket_hosts(service, alpha.user_token)) == {"alpha-1", "alpha-2"}
    assert asyncio.run(_websocket_hosts(service, beta.user_token)) == {"beta-1", "beta-2"}
    assert _container_node(service, beta.user_token, container) is None

    # Another tenant's ids answer exactly as ids that do not exist.
    for topology, other in (("containers", node_id), ("hosts", "alpha-1;<host>")):
        status, body = service.get(beta.user_token, f"/api/topology/{topology}/{_quote(other)}")
        missing = service.get(beta.user_token, f"/api/topology/{topology}/{_quote('no-such;<host>')}")
        assert status == 404 and missing[0] == 404, body
        assert service.get(alpha.user_token, f"/api/topology/{topology}/{_quote(other)}")[0] == 200

    # A control aimed at alpha's probe by beta: 404 as for no probe at all, and the container runs on.
    _, probes = service.get(alpha.user_token, "/api/probes")
    alpha_probe = next(p["id"] for p in probes if p["hostname"] == "alpha-1")
    path = f"/api/control/{alpha_probe}/{_quote(node_id)}/docker_stop_container"
    status, body = service.request(beta.user_token, path, method="POST", body=b"{}")
    absent, _ = service.request(beta.user_token, "/api/control/0123456789abcdef/x/docker_stop_container", method="POST")
    assert status == 404 == absent, body
    time.sleep(2)
    container.reload()
    assert container.status == "running"
    # Alpha's own user can: the control works through the service, and so does a pipe, which is alpha's alone.
    stopper = next(p["id"] for p in probes if p["id"] in json.dumps(_controls(service, alpha.user_token, node_id)))
    status, body = service.request(
        alpha.user_token, f"/api/control/{stopper}/{_quote(node_id)}/docker_exec_container", method="POST", body=b"{}"
    )
    assert status == 200 and body["pipe"], body
    assert asyncio.run(_pipe_echo(service, beta.user_token, body["pipe"])) == 404
    assert asyncio.run(_pipe_echo(service, alpha.user_token, body["pipe"])) == 200
    status, body = service.request(
        alpha.user_token, f"/api/control/{stopper}/{_quote(node_id)}/docker_stop_container", method="POST", body=b"{}"
    )
    assert status == 200, body
    container.reload()
    assert container.status == "exited"


async def _websocket(service: Service, token: str, path: str) -> tornado.websocket.WebSocketClientConnection:
    """A websocket to the service's `path`, as the holder of `token`."""
    request = tornado.httpclient.HTTPRequest(
        f"ws://127.0.0.1:{service.app.http_port}{path}", headers={"Authorization": f"Bearer {token}"}
    )
    return await tornado.websocket.websocket_connect(request)


async def _echo(ws: tornado.websocket.WebSocketClientConnection) -> None:
    """Have the shell at the other end of a pipe's websocket echo a line; fails if the pipe closes first."""
    await ws.write_message(b"echo through-the-$((40+2))-pipe\n", binary=True)
    seen = b""
    while b"through-the-42-pipe" not in seen:
        message = await asyncio.wait_for(ws.read_message(), 10)
        assert message is not None, f"the pipe closed: {seen!r}"
        seen += message if isinstance(message, bytes) else message.encode()


async def _pipe_echo(service: Service, token: str, pipe: str) -> int:
    """Open the pipe's websocket as the holder of `token`; 200 once a shell echoes through it, else the status."""
    try:
        ws = await _websocket(service, token, f"/api/pipe/{pipe}")
    except tornado.httpclient.HTTPClientError as exc:
        return exc.code
    try:
        await _echo(ws)
        return 200
    finally:
        ws.close()


def _controls(service: Service, token: str, node_id: str) -> list[dict[str, Any]]:
    status, body = service.get(token, f"/api/topology/containers/{_quote(node_id)}")
    assert status == 200, body
    controls: list[dict[str, Any]] = body["node"]["controls"]
    return controls


def test_tokens_a_probe_token_and_the_login_page(service: Service) -> None:
    alpha = service.add_tenant("alpha")
    assert service.get(None, "/api/probes")[0] == 401
    assert service.get("not-a-token", "/api/probes")[0] == 401
    # A probe token that leaks from a host gives no access to the UI.
    assert service.get(alpha.probe_token, "/api/probes")[0] == 401
    assert service.get(alpha.user_token, "/api/probes") == (200, [])
    # Its counters are its own: the bus's, every tenant's together, are not shown.
    stats = service.get(alpha.user_token, "/api/stats")[1]
    assert stats["reports_received"] is None and stats["reports_applied"] == 0
    # The login page's cookie works as the token does, and names the tenant without giving the token away.
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    with opener.open(f"{service.app.url}/?token={_quote(alpha.user_token)}", timeout=10) as response:
        assert response.status == 200
    with opener.open(f"{service.app.url}/api/probes", timeout=10) as response:
        assert json.load(response) == []
    assert [str(c.value).split(".")[0] for c in jar] == ["alpha"]
    assert alpha.user_token not in str(list(jar))
    # Only hashes are stored.
    stored = (service.state_dir / "tenants.sqlite").read_bytes()
    assert alpha.user_token.encode() not in stored and alpha.probe_token.encode() not in stored


def test_a_wrong_token_or_an_unpinned_key_shows_up_nowhere(service: Service) -> None:
    alpha, beta = service.add_tenant("alpha"), service.add_tenant("beta")
    wrong_token = service.probe("not-a-probe-token", hostname="wrong-token", service_key=alpha.service_key)
    wrong_key = service.probe(alpha.probe_token, hostname="wrong-key", service_key=probe_keys("other").public)
    user_token = service.probe(alpha.user_token, hostname="user-token", service_key=alpha.service_key)
    service.probe(alpha.probe_token, hostname="right", service_key=alpha.service_key)
    wait_for(lambda: service.hostnames(alpha.user_token) == {"right"}, timeout=40, what="the right probe")
    wait_for(lambda: "tries again in 2 s" in wrong_token.log(), timeout=20, what="the refused probe to back off")
    time.sleep(3)
    assert service.hostnames(alpha.user_token) == {"right"}
    assert service.hostnames(beta.user_token) == set()
    assert "--service-token is wrong or was revoked" in wrong_token.log() + user_token.log()
    assert "is --service-key the service's key" in wrong_key.log()
    for probe in (wrong_token, wrong_key, user_token):
        assert probe.process.poll() is None, "a refused probe keeps trying, it does not exit"
    assert "is no tenant's (a wrong or revoked token)" in service.app.log()


def test_revoking_a_tenant_cuts_its_probes_off_and_its_user_token(service: Service) -> None:
    alpha, beta = service.add_tenant("alpha"), service.add_tenant("beta")
    service.probe(alpha.probe_token, hostname="alpha-1", service_key=alpha.service_key, extra=[NO_ENGINE])
    service.probe(beta.probe_token, hostname="beta-1", service_key=beta.service_key, extra=[NO_ENGINE])
    wait_for(lambda: service.hostnames(alpha.user_token) == {"alpha-1"}, timeout=40, what="alpha's probe")
    wait_for(lambda: service.hostnames(beta.user_token) == {"beta-1"}, timeout=40, what="beta's probe")
    # A shell on alpha-1 (host_exec), whose pipe stays open across the revocation.
    _, probes = service.get(alpha.user_token, "/api/probes")
    path = f"/api/control/{probes[0]['id']}/{_quote('alpha-1;<host>')}/host_exec"

    def opened() -> Any:
        # 404 until the probe's control channel is up, which may be a moment after its first report.
        status, body = service.request(alpha.user_token, path, method="POST", body=b"{}")
        return body if status == 200 else None

    body = wait_for(opened, timeout=20, what="a shell on alpha-1")
    assert body["pipe"], body

    async def across_the_revocation() -> None:
        alpha_map = await _websocket(service, alpha.user_token, "/api/topology/hosts/ws")
        beta_map = await _websocket(service, beta.user_token, "/api/topology/hosts/ws")
        shell = await _websocket(service, alpha.user_token, f"/api/pipe/{body['pipe']}")
        for ws in (alpha_map, beta_map):
            assert await asyncio.wait_for(ws.read_message(), 10) is not None
        await _echo(shell)
        done = await asyncio.to_thread(tenants, service.state_dir, "revoke", "alpha")
        assert done.returncode == 0, done.stderr
        revoked = time.monotonic()
        # Read on until each closes: what the map was sent meanwhile is its probe leaving.
        for name, ws in (("map", alpha_map), ("shell", shell)):
            while await asyncio.wait_for(ws.read_message(), 10) is not None:
                pass
            print(f"alpha's {name} closed {time.monotonic() - revoked:.2f} s after `scope tenants revoke` returned")
            assert ws.close_reason is not None and "its tenant was revoked" in ws.close_reason, ws.close_reason
        assert alpha_map.close_code == 1008
        # Beta's map is fed on.
        assert await asyncio.wait_for(beta_map.read_message(), 10) is not None
        beta_map.close()

    asyncio.run(across_the_revocation())
    assert service.get(alpha.user_token, "/api/probes")[0] == 401
    listed = tenants(service.state_dir, "list", "--json")
    assert [t["tenant"] for t in json.loads(listed.stdout)] == ["beta"]
    # Alpha's probe is gone from the service (the operator's view), and what it still sends is dropped.
    figures = service.metrics(service.metrics_token)
    assert 'scope_app_tenant_probes{tenant="alpha"}' not in figures
    assert figures['scope_app_tenant_probes{tenant="beta"}'] == 1
    wait_for(
        lambda: (
            service.metrics(service.metrics_token).get('scope_app_reports_dropped_total{reason="revoked_tenant"}', 0)
            > 0
        ),
        timeout=10,
        what="alpha's probe's reports to be dropped",
    )
    # Added again under the same name, with new tokens: alpha-1's old token does not bring it back.
    again = service.add_tenant("alpha")
    time.sleep(4)
    assert service.hostnames(again.user_token) == set()
    assert service.hostnames(beta.user_token) == {"beta-1"}


def test_metrics_are_the_operators_alone_and_count_per_tenant(tmp_path: Any) -> None:
    """/metrics names every tenant: a user token or a probe token opens it no more than no
    token does; the operator's token (given by the environment) shows each tenant's figures."""
    service = Service(tmp_path / "state", extra=["--tenant-max-probes=1"])
    try:
        alpha, beta = service.add_tenant("alpha"), service.add_tenant("beta")
        for n in (1, 2):  # alpha's second probe is over its limit of one
            service.probe(alpha.probe_token, hostname=f"alpha-{n}", service_key=alpha.service_key, extra=[NO_ENGINE])
        service.probe(beta.probe_token, hostname="beta-1", service_key=beta.service_key, extra=[NO_ENGINE])
        service.add_tenant("gamma")
        wait_for(lambda: len(service.hostnames(alpha.user_token)) == 1, timeout=40, what="alpha's probe")
        wait_for(lambda: service.hostnames(beta.user_token) == {"beta-1"}, timeout=40, what="beta's probe")
        for token in (None, alpha.user_token, alpha.probe_token, "not-a-token"):
            with pytest.raises(urllib.error.HTTPError) as refused:
                service.metrics(token)
            assert refused.value.code == 401, token
            assert b"alpha" not in refused.value.read()

        def refused_for_alpha() -> dict[str, float] | None:
            figures = service.metrics(service.metrics_token)
            key = 'scope_app_tenant_reports_refused_total{reason="too_many_probes_from_source",tenant="alpha"}'
            # The service reads the registry again every second: gamma, just added, may not be in yet.
            return figures if figures.get(key, 0) > 0 and figures["scope_app_tenants"] == 3 else None

        figures = wait_for(refused_for_alpha, timeout=20, what="alpha's second probe to be refused, gamma listed")
        assert figures['scope_app_tenant_probes{tenant="alpha"}'] == 1
        assert figures['scope_app_tenant_probes{tenant="beta"}'] == 1
        assert figures['scope_app_tenant_probes{tenant="gamma"}'] == 0
        for tenant in ("alpha", "beta"):
            assert figures[f'scope_app_tenant_reports_applied_total{{tenant="{tenant}"}}'] > 0
            assert figures[f'scope_app_tenant_stored_nodes{{tenant="{tenant}"}}'] > 0
        assert not any("reports_refused" in key and 'tenant="beta"' in key for key in figures)
        assert figures["scope_app_probe_connections_admitted_total"] >= 3
    finally:
        service.close()


def test_a_probe_of_a_tenant_just_added_is_its_tenants_from_its_first_report(tmp_path: Path) -> None:
    """The service reads the registry again every second, but ZAP reads it for each connection: a probe
    that connects within that second is its tenant's at once (its first report is the full one), until
    a listing read after shows the tenant, or shows it revoked."""
    registry = SqliteRegistry(tmp_path / "tenants.sqlite")
    revoked: list[str] = []
    directory = TenantDirectory(registry, revoked.append)
    key = probe_keys("alpha's probe token").public
    registry.add("alpha", token_hash("alpha's user token"), key)  # by `scope tenants add`, meanwhile
    assert directory.tenant_of_key(key) is None, "nothing admitted it yet"
    assert directory.admits_key(key)
    assert directory.tenant_of_key(key) == "alpha"
    directory.refresh()
    assert directory.tenant_of_key(key) == "alpha"
    registry.revoke("alpha")
    directory.refresh()
    assert directory.tenant_of_key(key) is None and revoked == ["alpha"]
    assert not directory.admits_key(key)
    assert directory.tenant_of_key(key) is None


class TcpProxy:
    """Forwards one port to another, keeping a copy of every byte the client sent."""

    def __init__(self, target: tuple[str, int]) -> None:
        self._target = target
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.captured = bytearray()
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self._target)
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, capture: bool) -> None:
        try:
            while data := source.recv(65536):
                if capture:
                    with self._lock:
                        self.captured += data
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for end in (source, sink):
                end.close()

    def close(self) -> None:
        self._listener.close()


def test_the_bytes_on_the_wire_are_not_readable(service: Service) -> None:
    alpha = service.add_tenant("alpha")
    proxy = TcpProxy(("127.0.0.1", service.app.bus_port))
    try:
        hostname = "wire-secret-hostname"
        service.probe(
            alpha.probe_token, hostname=hostname, service_key=alpha.service_key, bus=f"127.0.0.1:{proxy.port}"
        )
        wait_for(lambda: service.hostnames(alpha.user_token) == {hostname}, timeout=40, what="the probe via the proxy")

        def python_shown() -> bool:
            # Processes show once their connections are reported, which may be a report after the host.
            status, body = service.get(alpha.user_token, "/api/topology/processes")
            names = {node["label_major"] for node in body["nodes"].values() if not node.get("pseudo")}
            return status == 200 and "python" in " ".join(names)

        wait_for(python_shown, timeout=40, what="the probe's own process in the tenant's processes view")
        time.sleep(2)
        with proxy._lock:
            captured = bytes(proxy.captured)
        # At least one full report (a few KB compressed; the hostname in the API shows it came this way).
        assert len(captured) > 4_000, "the reports went through the proxy"
        for secret in (hostname, "python", "scope_probe", "pytest"):
            assert secret.encode() not in captured, secret
    finally:
        proxy.close()


def test_without_the_authenticator_no_probe_gets_in(tmp_path: Any) -> None:
    """A CURVE server set up as the service's bus, with and then without its ZAP handler running."""
    server = KeyPair(probe_keys("server").public, probe_keys("server").secret)
    token = "a-probe-token"
    credentials = ServiceCredentials(probe_keys(token), server.public)

    async def received(with_zap: bool) -> int:
        context = zmq.asyncio.Context()
        zap = ZapHandler(context, lambda key: key == credentials.keys.public) if with_zap else None
        zap_task = asyncio.ensure_future(zap.run()) if zap is not None else None
        sub = context.socket(zmq.SUB)
        serve_curve(sub, server)
        sub.subscribe(b"")
        port = sub.bind_to_random_port("tcp://127.0.0.1")
        publisher = Publisher(zmq.Context.instance(), credentials)
        publisher.set_apps({f"tcp://127.0.0.1:{port}"})
        count = 0
        try:
            deadline = time.monotonic() + 3
            while time.monotonic() < deadline:
                publisher.new_subscribers()
                publisher.send(b"report")
                try:
                    frame = await asyncio.wait_for(sub.recv(copy=False), 0.1)
                except TimeoutError:
                    continue
                assert frame.get("User-Id") == credentials.keys.public
                count += 1
        finally:
            publisher.close()
            if zap_task is not None and zap is not None:
                zap_task.cancel()
                zap.close()
            sub.close(linger=0)
            context.term()
        return count

    assert asyncio.run(received(with_zap=True)) > 0
    assert asyncio.run(received(with_zap=False)) == 0
