"""The shared fixtures do what they promise, against real Docker, namespaces, dnsmasq and Chromium."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import dns.message
import dns.query
import dns.rcode
import dns.resolver
import pytest
from playwright.sync_api import Page

from tests.fixtures.browser import launch_browser, screenshot
from tests.fixtures.dns import WEAVE_NAME, DnsServer
from tests.fixtures.docker import GROUP_LABEL, PID_LABEL, TEST_LABEL, Containers, remove_stale_containers
from tests.fixtures.netns import STATE_DIR, Netns
from tests.fixtures.ports import ephemeral_range, free_port, wait_for_port

# ---------------------------------------------------------------------------------------------- docker


@pytest.mark.docker
def test_container_http_reachable_from_other_container_and_host(containers: Containers) -> None:
    host_port = free_port()
    web = containers.run(
        ["sh", "-c", "echo hello-from-scope > /www/index.html && exec httpd -f -p 80 -h /www"],
        name="web",
        ports={"80/tcp": ("127.0.0.1", host_port)},
    )
    assert web.name == containers.prefix + "web"
    assert web.labels[TEST_LABEL] == "1"
    assert web.labels[GROUP_LABEL] == containers.group
    web_ip = containers.ip(web)

    fetch = f"for i in $(seq 100); do wget -q -O - http://{web_ip}/ && exit 0; sleep 0.1; done; exit 1"
    code, out = containers.output(["sh", "-c", fetch], name="client")
    assert code == 0, out
    assert "hello-from-scope" in out

    wait_for_port("127.0.0.1", host_port)
    with urllib.request.urlopen(f"http://127.0.0.1:{host_port}/", timeout=10) as response:
        assert response.read().decode().strip() == "hello-from-scope"


@pytest.mark.docker
def test_containers_cleanup_removes_everything(docker_client: Any, busybox_image: str) -> None:
    factory = Containers(docker_client, busybox_image)
    running = factory.run("sleep 300", name="sleeper")
    exited = factory.run("true")
    exited.wait(timeout=30)
    # Also one the test made behind the factory's back, carrying only the group label.
    extra = docker_client.containers.run(
        busybox_image, "sleep 300", detach=True, labels={GROUP_LABEL: factory.group, TEST_LABEL: "1"}
    )
    assert running.labels[PID_LABEL].isdigit()
    factory.cleanup()
    left = docker_client.containers.list(all=True, filters={"label": f"{GROUP_LABEL}={factory.group}"})
    assert left == []
    for container in (running, exited, extra):
        with pytest.raises(Exception, match=r"404|No such container"):
            container.reload()


@pytest.mark.docker
def test_leftovers_of_dead_sessions_are_removed_and_live_ones_kept(docker_client: Any, busybox_image: str) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    labels = {TEST_LABEL: "1", PID_LABEL: str(dead.pid)}
    stale = docker_client.containers.run(busybox_image, "sleep 300", detach=True, labels=labels)
    live = docker_client.containers.run(
        busybox_image, "sleep 300", detach=True, labels={**labels, PID_LABEL: str(os.getpid())}
    )
    try:
        removed = remove_stale_containers(docker_client)
        assert stale.name in removed and live.name not in removed
        live.reload()
    finally:
        for container in (stale, live):
            with contextlib.suppress(Exception):
                container.remove(force=True)


# ---------------------------------------------------------------------------------------------- netns

HTTP_CLIENT = """
import sys, time, urllib.request
for _ in range(100):
    try:
        with urllib.request.urlopen(sys.argv[1], timeout=10) as response:
            print(response.read().decode())
        break
    except OSError:
        time.sleep(0.1)
else:
    sys.exit("server never answered")
"""


@pytest.mark.root
def test_netns_hosts_reach_each_other_over_tcp(netns: Netns, tmp_path: Path) -> None:
    server, client = netns.create(), netns.create()
    assert server.ip != client.ip
    assert server.ip.startswith("10.231.") and server.gateway == netns.gateway
    (tmp_path / "index.html").write_text("hello-from-netns\n")
    port = 8080
    server.popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", server.ip, "--directory", str(tmp_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    # Poll from the client host itself: the server is only reachable through the bridge.
    url = f"http://{server.ip}:{port}/index.html"
    result = client.run([sys.executable, "-c", HTTP_CLIENT, url], capture_output=True, text=True)
    assert "hello-from-netns" in result.stdout

    # Each host has its own hostname, loopback and (for the probe's conntrack reporter) tracked flows.
    assert client.run(["hostname"], capture_output=True, text=True).stdout.strip() == client.name
    assert server.run(["hostname"], capture_output=True, text=True).stdout.strip() == server.name
    flows = server.run(["conntrack", "-L", "-p", "tcp"], capture_output=True, text=True).stdout
    assert f"src={client.ip} dst={server.ip}" in flows and f"dport={port}" in flows
    assert "packets=" in flows, "conntrack accounting is off in the namespace"

    # Loopback is up inside a host, and its address is not reachable from the other host's loopback.
    lo = server.run([sys.executable, "-c", _LO_CHECK], capture_output=True, text=True)
    assert lo.stdout.strip() == "ok"


_LO_CHECK = """
import socket
s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen()
socket.create_connection(s.getsockname(), timeout=5).close()
print("ok")
"""


@pytest.mark.root
def test_netns_cleanup_removes_everything() -> None:
    factory = Netns()
    host = factory.create()
    proc = host.popen(["sleep", "300"])
    bridge = host.bridge
    assert Path(f"/sys/class/net/{bridge}").exists()
    factory.cleanup()
    assert proc.poll() is not None
    assert host.name not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not Path(f"/sys/class/net/{bridge}").exists()
    rule = ["iptables", "-w", "-C", "FORWARD", "-i", bridge, "-o", bridge, "-j", "ACCEPT"]
    assert subprocess.run(rule, capture_output=True).returncode != 0
    links = json.loads(subprocess.run(["ip", "-j", "link"], capture_output=True, text=True).stdout)
    assert not [link["ifname"] for link in links if link["ifname"].startswith(f"sv{bridge[3:]}")]


LEFTOVER_SCRIPT = """
import os, sys
sys.path.insert(0, sys.argv[1])
from tests.fixtures.netns import STATE_DIR, Netns
host = Netns().create()
print(host.name, host.bridge, flush=True)
os._exit(0)  # no teardown, as if the test run had been killed
"""


@pytest.mark.root
def test_netns_leftovers_of_a_dead_session_are_removed(netns: Netns) -> None:
    repo = str(Path(__file__).resolve().parents[1])
    out = subprocess.run(
        [sys.executable, "-c", LEFTOVER_SCRIPT, repo], capture_output=True, text=True, check=True
    ).stdout
    name, bridge = out.split()
    assert Path(f"/sys/class/net/{bridge}").exists()
    host = netns.create()  # the first create of a session sweeps up after dead ones
    if host.bridge == bridge:  # the dead session's subnet was freed and given to us
        assert host.name == name
        assert (STATE_DIR / f"{bridge}.pid").read_text().strip() == str(os.getpid())
    else:
        assert name not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        assert not Path(f"/sys/class/net/{bridge}").exists()


# ------------------------------------------------------------------------------------------------ dns


def _resolver(server: DnsServer) -> dns.resolver.Resolver:
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = [server.listen]
    resolver.port = server.port
    resolver.lifetime = 5
    return resolver


def test_weavedns_serves_and_updates_records(weavedns: DnsServer) -> None:
    resolver = _resolver(weavedns)
    with pytest.raises(dns.resolver.NXDOMAIN):
        resolver.resolve(WEAVE_NAME, "A")

    weavedns.set_records(["127.0.0.1", "127.0.0.2"])
    answer = resolver.resolve(WEAVE_NAME, "A")
    assert sorted(r.to_text() for r in answer) == ["127.0.0.1", "127.0.0.2"]

    weavedns.set_records(["127.0.0.3"])
    assert [r.to_text() for r in resolver.resolve(WEAVE_NAME, "A")] == ["127.0.0.3"]
    # TCP too: large answers and some resolvers use it.
    query = dns.message.make_query(WEAVE_NAME, "A")
    response = dns.query.tcp(query, "127.0.0.1", port=weavedns.port, timeout=5)
    assert [r.to_text() for rrset in response.answer for r in rrset] == ["127.0.0.3"]

    weavedns.set_records([])
    with pytest.raises(dns.resolver.NXDOMAIN):
        resolver.resolve(WEAVE_NAME, "A")
    assert weavedns.query("other.weave.local").rcode() == dns.rcode.NXDOMAIN


ORPHAN_SCRIPT = """
import sys, time
sys.path.insert(0, sys.argv[1])
from tests.fixtures.dns import DnsServer
server = DnsServer()
server.start()
print(server._proc.pid, flush=True)
time.sleep(300)
"""


def test_dnsmasq_dies_with_a_killed_test_process() -> None:
    """A pytest killed outright (no teardown) must not leave dnsmasq behind."""
    repo = str(Path(__file__).resolve().parents[1])
    parent = subprocess.Popen([sys.executable, "-c", ORPHAN_SCRIPT, repo], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        dnsmasq_pid = int(parent.stdout.readline())
        assert Path(f"/proc/{dnsmasq_pid}").exists()
    finally:
        parent.kill()
        parent.wait()
    deadline = time.monotonic() + 10
    while Path(f"/proc/{dnsmasq_pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not Path(f"/proc/{dnsmasq_pid}").exists()


# -------------------------------------------------------------------------------------------- browser


@pytest.mark.browser
def test_asyncio_usable_again_after_browser_closes() -> None:
    """Playwright's sync API holds the thread's event loop while open; closing must give it back.

    Runs before the module-scoped `browser` fixture is first used in this module (file order).
    """
    with launch_browser() as instance:
        assert instance.is_connected()

    async def answer() -> int:
        await asyncio.sleep(0)
        return 42

    assert asyncio.run(answer()) == 42


@pytest.mark.browser
def test_browser_renders_page_and_saves_screenshot(page: Page) -> None:
    page.goto("data:text/html,<title>fixture</title><h1 id='t' style='color:teal'>scope fixture</h1>")
    assert page.title() == "fixture"
    assert page.inner_text("#t") == "scope fixture"
    path = screenshot(page, "fixtures/data url")
    assert path.name == "fixtures_data_url.png"
    data = path.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 1000


# ---------------------------------------------------------------------------------------------- ports


def test_free_port_is_bindable_and_never_one_the_kernel_could_give_an_outgoing_connection() -> None:
    low, high = ephemeral_range()
    ports = [free_port() for _ in range(50)]
    assert not [port for port in ports if low <= port <= high]
    port = ports[0]
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
    udp_port = free_port(udp=True)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", udp_port))
