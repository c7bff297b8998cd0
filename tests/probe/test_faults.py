"""Faults on the probe's side, with real parts: the probe restarted, its Docker engine restarted, and the
WeaveDNS answer for the apps changed. Each time the map is whole again within one window of the app,
and nothing of what went away stays behind."""

from __future__ import annotations

import contextlib
import time
from typing import Any

from tests.fixtures.dns import WEAVE_NAME, DnsServer
from tests.fixtures.docker import Containers
from tests.fixtures.dockerd import PrivateDockerd
from tests.fixtures.ports import free_port_pair
from tests.fixtures.scope import App, Scope, wait_for

WINDOW = 3.0


def _probe_ids(app: App) -> set[str]:
    return {probe["id"] for probe in app.get("/api/probes")}


def _has_host(app: App, hostname: str) -> bool:
    return f"{hostname};<host>" in app.nodes("hosts")


def _container_node(container: Any) -> str:
    return f"{container.id};<container>"


def test_a_restarted_probe_shows_and_the_old_one_is_gone_after_the_window(scope: Scope) -> None:
    app = scope.app(window=f"{WINDOW:g}s")
    old = scope.probe([app.bus], hostname="restarted-probe")
    wait_for(lambda: _has_host(app, "restarted-probe"), timeout=15, what="the first probe's host")
    (old_id,) = _probe_ids(app)
    old_process = f"restarted-probe;{old.pid}"
    wait_for(
        lambda: old_process in app.nodes("processes", unconnected="show"),
        timeout=10,
        what="the first probe's own process",
    )

    old.kill()  # no goodbye: as a crash or a killed container would leave it
    new = scope.probe([app.bus], hostname="restarted-probe")
    new_ids = wait_for(lambda: _probe_ids(app) - {old_id}, timeout=15, what="the new probe's reports")
    wait_for(lambda: _probe_ids(app) == new_ids, timeout=WINDOW + 5, what="the old probe to expire")
    processes = app.nodes("processes", unconnected="show")
    assert old_process not in processes, "the killed probe's process is a ghost"
    assert f"restarted-probe;{new.pid}" in processes
    assert _has_host(app, "restarted-probe")


def test_after_its_engine_restarts_the_probes_containers_come_back(
    scope: Scope, private_dockerd: PrivateDockerd, private_containers: Containers
) -> None:
    """The engine is the test's own: the shared one is never stopped."""
    running = [
        private_containers.run(["sleep", "3600"], network_mode="none", restart_policy={"Name": "always"})
        for _ in range(2)
    ]
    app = scope.app(window=f"{WINDOW:g}s")
    probe = scope.probe([app.bus], hostname="engine-host", extra=[f"--docker-url={private_dockerd.url}"])
    nodes = {_container_node(container) for container in running}
    wait_for(lambda: nodes <= app.nodes("containers").keys(), timeout=15, what="the containers in the map")

    private_dockerd.restart()
    back = time.monotonic()
    # The engine restarts them (restart policy); the probe must follow the new engine, not stay on the
    # state it mirrored before: a container started and one removed after the restart show as such.
    with contextlib.closing(private_dockerd.client()) as client:
        wait_for(
            lambda: all(client.containers.get(c.id).status == "running" for c in running),
            timeout=30,
            what="the engine to restart the containers",
        )
    removed, kept = running
    removed.remove(force=True)
    started = private_containers.run(["sleep", "3600"], network_mode="none")
    want = {_container_node(kept), _container_node(started)}

    def followed() -> bool:
        shown = app.nodes("containers").keys()
        return want <= shown and _container_node(removed) not in shown

    wait_for(followed, timeout=WINDOW + 15, what="the map to follow the restarted engine")
    print(f"map whole {time.monotonic() - back:.1f} s after the engine answered again")
    assert probe.process.poll() is None
    assert "Traceback" not in probe.log()


def test_the_probe_moves_to_the_app_the_dns_answer_names(scope: Scope, weavedns: DnsServer) -> None:
    """Two apps on two loopback addresses with the same port, as two hosts' apps would be."""
    port = free_port_pair()
    first = scope.app(window=f"{WINDOW:g}s", bus_port=port, extra=[f"--bus=127.0.0.2:{port}"])
    second = scope.app(window=f"{WINDOW:g}s", bus_port=port, extra=[f"--bus=127.0.0.3:{port}"])
    weavedns.set_records(["127.0.0.2"])
    probe = scope.probe(
        [],
        hostname="moving-host",
        extra=[
            f"--weave-dns-name={WEAVE_NAME}",
            f"--weave-dns-server={weavedns.listen}:{weavedns.port}",
            f"--weave-port={port}",
            "--resolve-interval=500ms",
        ],
    )
    wait_for(lambda: _has_host(first, "moving-host"), timeout=15, what="the probe in the first app")
    assert not _has_host(second, "moving-host")

    weavedns.set_records(["127.0.0.3"])
    moved = time.monotonic()
    wait_for(lambda: _has_host(second, "moving-host"), timeout=WINDOW + 5, what="the probe in the second app")
    wait_for(lambda: not _has_host(first, "moving-host"), timeout=WINDOW + 5, what="the first app to forget it")
    print(f"moved in {time.monotonic() - moved:.1f} s")
    assert len(second.nodes("processes", unconnected="show")) > 10, (
        "the whole picture in the new app, not only what changed"
    )
    # The control channel moved too: the new app can reach the probe.
    (probe_id,) = _probe_ids(second)
    wait_for(
        lambda: second.control(probe_id, "moving-host;<host>", "none")[0] == 400,
        timeout=10,
        what="the probe's control channel to the second app",
    )
    assert "Traceback" not in probe.log()
