"""Faults on the app's side, with real parts: the app restarted on the same ports, and the network between
two hosts (network namespaces) cut and restored. The map is whole again within one window, and what went
away meanwhile does not stay behind as a ghost."""

from __future__ import annotations

import sys
import time

from tests.fixtures.docker import Containers
from tests.fixtures.netns import Netns
from tests.fixtures.ports import free_port
from tests.fixtures.scope import App, Scope, wait_for

#: The app's default window: "within one window" as a user runs it.
APP_WINDOW = 15.0
#: A short window, for a test that waits for things to expire. Not shorter: a probe in a namespace host
#: sees the whole machine's processes, and on a busy test machine gathering them takes seconds.
WINDOW = 8.0


def _whole(app: App, hostname: str, container_node: str) -> bool:
    """The probe's host, its processes and the test's container all in the map."""
    return (
        f"{hostname};<host>" in app.nodes("hosts")
        and container_node in app.nodes("containers")
        and len(app.nodes("processes", unconnected="show")) > 10
    )


def test_an_app_restarted_on_the_same_ports_has_the_whole_map_within_one_window(
    scope: Scope, containers: Containers
) -> None:
    container = containers.run(["sleep", "3600"])
    container_node = f"{container.id};<container>"
    app = scope.app(window=f"{APP_WINDOW:g}s")
    # Full reports only every hour: the new app must get one because it subscribed, not by waiting.
    probe = scope.probe([app.bus], hostname="app-restart-host", extra=["--full-report-interval=1h"])
    wait_for(lambda: _whole(app, "app-restart-host", container_node), timeout=20, what="the map")

    http_port, bus_port = app.http_port, app.bus_port
    app.kill()
    restarted = scope.app(window=f"{APP_WINDOW:g}s", http_port=http_port, bus_port=bus_port)
    began = time.monotonic()
    wait_for(
        lambda: _whole(restarted, "app-restart-host", container_node),
        timeout=APP_WINDOW,
        what="the whole map in the restarted app within one window",
    )
    print(f"map whole {time.monotonic() - began:.1f} s after the app answered again")
    assert probe.process.poll() is None


def test_a_host_cut_off_and_back_recovers_without_ghost_nodes(scope: Scope, netns: Netns) -> None:
    """Two hosts publish to an app beside them; one loses its link for a while, and a process that
    ended meanwhile must not come back with it."""
    steady, cut = netns.create(), netns.create()
    port = free_port(netns.gateway)
    app = scope.app(window=f"{WINDOW:g}s", bus_port=port, extra=[f"--bus={netns.gateway}:{port}"])
    bus = f"{netns.gateway}:{port}"
    for host in (steady, cut):
        scope.probe([bus], hostname=host.hostname, prefix=host.argv([]))
    # A process seen from the cut-off host: it ends while the host is away.
    doomed = cut.popen([sys.executable, "-c", "import time; time.sleep(300)"])
    doomed_node = f"{cut.hostname};{doomed.pid}"
    hosts = {f"{steady.hostname};<host>", f"{cut.hostname};<host>"}
    wait_for(lambda: hosts <= app.nodes("hosts").keys(), timeout=20, what="both hosts")
    wait_for(
        lambda: doomed_node in app.nodes("processes", unconnected="show"),
        timeout=10,
        what="the process on the cut-off host",
    )

    cut.run(["ip", "link", "set", "eth0", "down"])
    wait_for(
        lambda: f"{cut.hostname};<host>" not in app.nodes("hosts"),
        timeout=WINDOW + 5,
        what="the cut-off host to leave the map",
    )
    assert f"{steady.hostname};<host>" in app.nodes("hosts"), "the other host stayed"
    doomed.kill()
    doomed.wait()

    cut.run(["ip", "link", "set", "eth0", "up"])
    restored = time.monotonic()
    wait_for(lambda: hosts <= app.nodes("hosts").keys(), timeout=30, what="the host back after the cut")
    print(f"host back {time.monotonic() - restored:.1f} s after the link came up")
    time.sleep(WINDOW + 1)
    processes = app.nodes("processes", unconnected="show")
    assert doomed_node not in processes, "a process that ended during the cut is a ghost"
    assert hosts <= app.nodes("hosts").keys()
    assert len(app.get("/api/probes")) == 2, "one probe record per host, none left from before the cut"
