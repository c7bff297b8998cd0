"""Controls end to end, real Docker engine: app <- control channel -> probe -> engine, through the HTTP API."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import docker.errors
import pytest

from tests.fixtures.docker import Containers
from tests.fixtures.scope import App, Scope, ScopeProcess, wait_for

HOST = "controls-host"
HOST_NODE = f"{HOST};<host>"
#: A container that stops at once on SIGTERM (a shell as PID 1 ignores it unless it traps it).
QUICK_TO_STOP = ["sh", "-c", "trap 'exit 0' TERM; while :; do sleep 1; done"]


@pytest.fixture
def app(scope: Scope) -> Iterator[App]:
    app = scope.app()
    scope.probe([app.bus], hostname=HOST)
    wait_for(lambda: _controls(app, "hosts", HOST_NODE), timeout=30, what="the probe's host with its controls")
    yield app


def _node_id(container: Any) -> str:
    return f"{container.id};<container>"


def _controls(app: App, topology: str, node_id: str, **options: str) -> dict[str, dict[str, str]]:
    """The node's controls by id ({} while it has none or is not in the view)."""
    status, body = app.get_status(f"/api/topology/{topology}/{_quote(node_id)}?{_query(options)}")
    return {row["id"]: row for row in body["node"]["controls"]} if status == 200 else {}


def _quote(text: str) -> str:
    import urllib.parse

    return urllib.parse.quote(text, safe="")


def _query(options: dict[str, str]) -> str:
    return "&".join(f"{k}={v}" for k, v in options.items())


def _state(app: App, container: Any) -> str:
    """The container's state as the containers view shows it ("" while it is not there)."""
    node = app.nodes("containers", stopped="show").get(_node_id(container))
    return {row["id"]: row["value"] for row in node["metadata"]}.get("state", "") if node else ""


def test_the_app_says_which_probes_it_can_reach(app: App) -> None:
    probe = _controls(app, "hosts", HOST_NODE)["host_exec"]["probeId"]
    channel = wait_for(lambda: app.get(f"/api/control/{probe}")["connected"], timeout=10, what="the channel")
    assert channel is True
    assert app.get(f"/api/control/{probe}") == {"probeId": probe, "connected": True, "hostId": HOST, "reason": None}
    unknown = app.get("/api/control/no-such-probe")
    assert unknown["connected"] is False and unknown["hostId"] is None and "cannot be reached" in unknown["reason"]


def _probe_of(app: App, container: Any) -> str:
    """The probe offering the container's controls, once the app can reach it (it says 400 to a control
    that does not exist, 404 while the probe is not connected)."""
    controls = wait_for(
        lambda: _controls(app, "containers", _node_id(container)), timeout=10, what="the container's controls"
    )
    probe = next(iter(controls.values()))["probeId"]
    wait_for(lambda: app.control(probe, _node_id(container), "none")[0] == 400, timeout=10, what="the probe's channel")
    return probe


def test_a_running_container_offers_the_controls_of_its_state_and_the_host_a_shell(
    app: App, containers: Containers
) -> None:
    container = containers.run(QUICK_TO_STOP, name="offers")
    controls = wait_for(lambda: _controls(app, "containers", _node_id(container)), timeout=10, what="controls")
    assert list(controls) == [
        "docker_stop_container",
        "docker_restart_container",
        "docker_pause_container",
        "docker_exec_container",
        "docker_attach_container",
        "docker_logs_container",
    ]
    stop = controls["docker_stop_container"]
    assert stop["nodeId"] == _node_id(container) and stop["human"] == "Stop" and stop["icon"]
    assert list(_controls(app, "hosts", HOST_NODE)) == ["host_exec"]
    container.pause()
    wait_for(
        lambda: list(_controls(app, "containers", _node_id(container))) == ["docker_unpause_container"],
        timeout=10,
        what="a paused container to offer unpause alone",
    )
    container.unpause()
    container.stop(timeout=5)
    controls = wait_for(
        lambda: _controls(app, "containers", _node_id(container), stopped="show").get("docker_remove_container"),
        timeout=10,
        what="a stopped container to offer remove",
    )
    assert controls["confirm"], "remove asks before it acts"


def test_a_container_is_stopped_started_paused_unpaused_restarted_and_removed_through_the_api(
    app: App, containers: Containers
) -> None:
    container = containers.run(QUICK_TO_STOP, name="life")
    node = _node_id(container)
    probe = _probe_of(app, container)

    def act(control: str) -> dict[str, Any]:
        status, body = app.control(probe, node, control)
        assert status == 200, body
        assert body["error"] is None and body["pipe"] is None
        return dict(body)

    act("docker_stop_container")
    container.reload()
    assert container.status == "exited"
    wait_for(lambda: node not in app.nodes("containers"), timeout=5, what="the stopped container to leave the view")
    assert _state(app, container).startswith("Exited")

    act("docker_start_container")
    container.reload()
    assert container.status == "running"
    wait_for(lambda: node in app.nodes("containers"), timeout=5, what="the started container to come back")

    act("docker_pause_container")
    container.reload()
    assert container.status == "paused"
    wait_for(lambda: "Paused" in _state(app, container), timeout=5, what="the view to show it paused")

    act("docker_unpause_container")
    container.reload()
    assert container.status == "running"
    wait_for(lambda: "Paused" not in _state(app, container), timeout=5, what="the view to show it running")

    started = container.attrs["State"]["StartedAt"]
    act("docker_restart_container")
    container.reload()
    assert container.status == "running" and container.attrs["State"]["StartedAt"] != started

    act("docker_stop_container")
    body = act("docker_remove_container")
    assert body["removedNode"] == node
    with pytest.raises(docker.errors.NotFound):
        container.reload()
    wait_for(lambda: node not in app.nodes("containers", stopped="show"), timeout=5, what="the removed container to go")


def test_what_cannot_be_done_is_refused_with_the_reason(app: App, containers: Containers) -> None:
    container = containers.run(QUICK_TO_STOP, name="refused")
    node = _node_id(container)
    probe = _probe_of(app, container)

    status, body = app.control("no-such-probe", node, "docker_stop_container")
    assert status == 404 and "not connected" in body["error"]
    status, body = app.control(probe, node, "docker_explode_container")
    assert status == 400 and "no control" in body["error"]
    status, body = app.control(probe, "f" * 64 + ";<container>", "docker_stop_container")
    assert status == 400 and "no node" in body["error"]
    # The engine refuses: the container is running already. Its state is unchanged.
    status, body = app.control(probe, node, "docker_start_container")
    assert status == 409 and "already running" in body["error"]
    status, body = app.control(probe, node, "docker_unpause_container")
    assert status == 409 and "not paused" in body["error"], body
    # A Docker control on the host node: the probe knows no such container.
    status, body = app.control(probe, HOST_NODE, "docker_stop_container")
    assert status == 400 and "not a container" in body["error"]
    container.reload()
    assert container.status == "running"

    # One log line per control, refused or not: who asked, which probe, node and control, and the outcome.
    lines = [line for line in app.log().splitlines() if "scope.app.controls: control " in line]
    asked = [
        ("docker_stop_container", node, "no-such-probe", "404 probe 'no-such-probe' is not connected"),
        ("docker_explode_container", node, probe, "400 there is no control"),
        ("docker_stop_container", "f" * 64 + ";<container>", probe, "400 probe"),
        ("docker_start_container", node, probe, "409 container"),
        ("docker_unpause_container", node, probe, "409 "),
        ("docker_stop_container", HOST_NODE, probe, "400 "),
    ]
    # (Before them, the "none" controls that waited for the probe's channel.)
    for line, (control, on, via, outcome) in zip(lines[-len(asked) :], asked, strict=True):
        assert f"control {control} on {on} by 127.0.0.1 via probe {via}: {outcome}" in line, line


def test_cross_site_and_non_json_requests_are_refused(app: App, containers: Containers) -> None:
    container = containers.run(QUICK_TO_STOP, name="csrf")
    node = _node_id(container)
    probe = _probe_of(app, container)
    status, body = app.control(probe, node, "docker_stop_container", headers={"Origin": "http://evil.example"})
    assert status == 403 and "cross-site" in body["error"]
    status, _ = app.control(probe, node, "docker_stop_container", headers={"Sec-Fetch-Site": "cross-site"})
    assert status == 403
    # A form post (text/plain needs no preflight, so another site could send it) is not JSON.
    status, _ = app.control(probe, node, "docker_stop_container", body=b"a=b", headers={"Content-Type": "text/plain"})
    assert status == 415
    container.reload()
    assert container.status == "running", "nothing refused reached the engine"
    # The app's own page may: same origin, JSON body.
    status, _ = app.control(
        probe,
        node,
        "docker_pause_container",
        body=json.dumps({}).encode(),
        headers={"Origin": app.url, "Content-Type": "application/json"},
    )
    assert status == 200
    container.reload()
    assert container.status == "paused"


def test_a_read_only_app_lists_no_controls_and_refuses_them(scope: Scope, containers: Containers) -> None:
    app = scope.app(extra=["--read-only"])
    scope.probe([app.bus], hostname=HOST)
    container = containers.run(QUICK_TO_STOP, name="readonly")
    node = _node_id(container)
    wait_for(lambda: node in app.nodes("containers"), timeout=15, what="the container")
    assert app.node("containers", node)["controls"] == []
    # The probe does offer them (its report says so), and the app is connected to it.
    offered = app.get("/api/report")["container"][node]
    probe = offered["latest"]["control_probe_id"]["value"]
    assert "docker_stop_container" in offered["sets"]["controls"]
    status, body = app.control(probe, node, "docker_stop_container")
    assert status == 403 and "read-only" in body["error"]
    container.reload()
    assert container.status == "running"


def test_a_probe_without_controls_offers_none(scope: Scope, containers: Containers) -> None:
    app = scope.app()
    scope.probe([app.bus], hostname=HOST, extra=["--no-controls"])
    container = containers.run(QUICK_TO_STOP, name="nocontrols")
    node = _node_id(container)
    wait_for(lambda: node in app.nodes("containers"), timeout=15, what="the container")
    assert app.node("containers", node)["controls"] == []
    assert app.node("hosts", HOST_NODE)["controls"] == []
    assert "control_probe_id" not in app.get("/api/report")["container"][node]["latest"]


def test_a_probe_killed_mid_control_is_a_504_and_the_app_serves_on(scope: Scope, containers: Containers) -> None:
    app = scope.app()
    probe_process: ScopeProcess = scope.probe([app.bus], hostname=HOST)
    # A shell as PID 1 ignores SIGTERM: stopping it takes the probe's whole grace period.
    container = containers.run(["sh", "-c", "while :; do sleep 1; done"], name="slowstop")
    node = _node_id(container)
    probe = _probe_of(app, container)
    outcome: list[tuple[int, Any]] = []
    asking = threading.Thread(target=lambda: outcome.append(app.control(probe, node, "docker_stop_container")))
    started = time.monotonic()
    asking.start()
    time.sleep(1.0)
    probe_process.kill()
    asking.join(20)
    elapsed = time.monotonic() - started
    status, body = outcome[0]
    assert status == 504, body
    print(f"504 after {elapsed:.1f} s")
    assert app.get("/api")["version"]
    status, body = app.control(probe, node, "docker_stop_container")
    assert status == 404, "the dead probe is no longer connected"
    channel = app.get(f"/api/control/{probe}")
    assert channel["connected"] is False and "cannot be reached" in channel["reason"]
