"""Containers in the map, end to end against the real Docker engine: probe -> bus -> app -> API."""

from __future__ import annotations

import subprocess
import time
from typing import Any

import pytest

from tests.fixtures.docker import Containers
from tests.fixtures.ports import free_port
from tests.fixtures.scope import App, Scope, wait_for

HOST = "containers-host"


@pytest.fixture
def app(scope: Scope) -> App:
    return scope.app_with_probe(HOST)


def _node_id(container: Any) -> str:
    return f"{container.id};<container>"


def _edge(app: App, client: Any, server: Any, **options: str) -> bool:
    node = app.nodes("containers", **options).get(_node_id(client))
    return node is not None and _node_id(server) in node["adjacency"]


def test_a_client_container_has_an_edge_to_the_server_it_fetches_from(app: App, containers: Containers) -> None:
    server = containers.run(["httpd", "-f", "-p", "80"], name="web")
    address = containers.ip(server)
    # A long-lived connection (nc holding it open) is seen in /proc.
    client = containers.run(["sh", "-c", f"while :; do (sleep 30) | nc {address} 80; done"], name="client")
    wait_for(lambda: _edge(app, client, server), timeout=15, what="the edge client -> server")
    nodes = app.nodes("containers")
    assert nodes[_node_id(server)]["label_major"] == server.name
    assert nodes[_node_id(server)]["label_minor"] == HOST
    assert _node_id(client) not in nodes[_node_id(server)]["adjacency"], "edges go client -> server"
    details = app.node("containers", _node_id(server))
    meta = {row["id"]: row["value"] for row in details["metadata"]}
    assert meta["image"] == "scope-test/busybox:latest"
    assert meta["host"] == HOST
    assert meta["ips"] == address
    assert [row["id"] for row in details["connections"]["in"]] == [_node_id(client)]
    assert details["connections"]["in"][0]["port"] == "80"
    # Its processes come with the next full gather; the edge may be drawn before (by the tracer, at once).
    wait_for(
        lambda: any(
            child["label"] == "httpd"
            for group in app.node("containers", _node_id(server))["children"]
            for child in group["nodes"]
        ),
        timeout=5,
        what="httpd among the server's processes",
    )
    assert {p["topologyId"] for p in details["parents"]} == {"hosts", "containers-by-image"}


def test_short_lived_connections_every_second_make_the_same_edge_through_conntrack(
    app: App, containers: Containers
) -> None:
    server = containers.run(["httpd", "-f", "-p", "80"], name="web")
    address = containers.ip(server)
    client = containers.run(
        ["sh", "-c", f"while :; do wget -q -O /dev/null http://{address}/ 2>/dev/null; sleep 1; done"], name="fetch"
    )
    wait_for(lambda: _edge(app, client, server), timeout=15, what="the edge made of one-second connections")

    # The connections were too short for /proc to catch every time: conntrack saw them (the tracer may
    # have drawn the edge first: it publishes at once, conntrack with the next report).
    def conntracked() -> list[str]:
        return [
            node_id
            for node_id, node in app.get("/api/report")["endpoint"].items()
            if node_id.startswith(f"{HOST};{address};80") and "conntracked" in node["latest"]
        ]

    wait_for(conntracked, timeout=5, what="the server endpoint seen by conntrack")
    # The edge stays while the client keeps connecting.
    time.sleep(3)
    assert _edge(app, client, server)


def test_a_published_port_fetched_from_the_host_joins_its_container(app: App, containers: Containers) -> None:
    port = free_port()
    server = containers.run(["httpd", "-f", "-p", "80"], name="published", ports={"80/tcp": ("127.0.0.1", port)})
    uncontained = f"pseudo;uncontained;{HOST};<host>"

    def joined() -> bool:
        subprocess.run(
            ["busybox", "wget", "-q", "-O", "/dev/null", f"http://127.0.0.1:{port}/"], timeout=5, check=False
        )
        node = app.nodes("containers").get(uncontained)
        return node is not None and _node_id(server) in node["adjacency"]

    wait_for(joined, timeout=20, interval=0.5, what="the host's fetch to reach the published container")
    details = app.node("containers", _node_id(server))
    meta = {row["id"]: row["value"] for row in details["metadata"]}
    assert meta["ports"] == f"127.0.0.1:{port}->80/tcp"


def test_a_new_container_appears_within_two_seconds_and_a_stopped_one_leaves(app: App, containers: Containers) -> None:
    container = containers.run(["sleep", "600"], name="fresh")
    started = time.monotonic()
    wait_for(lambda: _node_id(container) in app.nodes("containers"), timeout=2, interval=0.02, what="the new container")
    print(f"container in the API {time.monotonic() - started:.3f} s after docker run returned")

    container.stop(timeout=0)
    wait_for(lambda: _node_id(container) not in app.nodes("containers"), timeout=5, what="the stopped container to go")
    stopped = app.nodes("containers", stopped="show")[_node_id(container)]
    state = {row["id"]: row["value"] for row in stopped["metadata"]}["state"]
    assert state.startswith("Exited"), state


def test_containers_by_image_groups_containers_of_one_image(app: App, containers: Containers) -> None:
    first = containers.run(["sleep", "600"], name="one")
    second = containers.run(["sleep", "600"], name="two")

    ours = {_node_id(first), _node_id(second)}

    def grouped() -> dict[str, Any] | None:
        """The image's node once both containers are its members (other tests' containers may be too)."""
        for node in app.nodes("containers-by-image").values():
            if node["label_major"] == "scope-test/busybox":
                details = app.node("containers-by-image", node["id"])
                members = {child["id"] for child in details["children"][0]["nodes"]}
                return details if ours <= members else None
        return None

    details = wait_for(grouped, timeout=10, what="one image node holding both containers")
    assert details["kind"] == "image"
    assert int(details["label_minor"].split()[0]) >= 2 and details["label_minor"].endswith("containers")
    assert len([n for n in app.nodes("containers-by-image").values() if n["label_major"] == "scope-test/busybox"]) == 1


def test_scope_itself_is_a_system_container_hidden_by_default(app: App, containers: Containers) -> None:
    system = containers.run(["sleep", "600"], name="agent", labels={"works.weave.role": "system"})
    wait_for(
        lambda: _node_id(system) in app.nodes("containers", system="show"), timeout=10, what="the system container"
    )
    assert _node_id(system) not in app.nodes("containers")
