"""A container that gets a removed container's IP never inherits its edges (real engine, probe and app).

The engine hands a freed IP to the next container it starts; here the new container is given the old
one's address outright, on a network of the test's own, so the reuse happens every time.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from typing import Any

import docker.errors
import pytest

from tests.fixtures.docker import Containers
from tests.fixtures.scope import App, Scope, wait_for

HOST = "reuse-host"
#: How long the new container is watched: longer than conntrack keeps an ended flow (15 s).
WATCH_SECONDS = 20.0


class Network:
    """A user-defined bridge network with a subnet of its own, so addresses can be given out by hand."""

    def __init__(self, client: Any, name: str) -> None:
        self.name = name
        for _ in range(20):
            self.prefix = f"10.{random.randint(100, 250)}.{random.randint(0, 255)}"
            pool = docker.types.IPAMPool(subnet=f"{self.prefix}.0/24", gateway=f"{self.prefix}.1")
            try:
                self.network = client.networks.create(
                    name, driver="bridge", ipam=docker.types.IPAMConfig(pool_configs=[pool])
                )
                return
            except docker.errors.APIError as exc:
                if "overlap" not in str(exc).lower():
                    raise
        raise RuntimeError("no free /24 for a test network")

    def at(self, client: Any, host_part: int) -> dict[str, Any]:
        """`containers.run` arguments that put a container on this network at `<prefix>.<host_part>`."""
        config = client.api.create_endpoint_config(ipv4_address=f"{self.prefix}.{host_part}")
        return {"network": self.name, "networking_config": {self.name: config}}


@pytest.fixture
def network(containers: Containers) -> Iterator[Network]:
    made = Network(containers.client, containers.prefix + "net")
    try:
        yield made
    finally:
        containers.cleanup()  # a network with containers on it cannot be removed
        made.network.remove()


@pytest.fixture
def app(scope: Scope) -> App:
    return scope.app_with_probe(HOST)


def _node_id(container: Any) -> str:
    return f"{container.id};<container>"


def _edge(app: App, client: Any, server: Any) -> bool:
    node = app.nodes("containers").get(_node_id(client))
    return node is not None and _node_id(server) in node["adjacency"]


def _endpoints(app: App, addr: str) -> dict[str, Any]:
    """What the merged report says of the endpoints on `addr`: for a failure message."""
    found: dict[str, Any] = app.get("/api/report")["endpoint"]
    return {
        node_id: {"parents": node["parents"], "adjacency": node["adjacency"], "latest": sorted(node["latest"])}
        for node_id, node in found.items()
        if f";{addr};" in node_id
    }


@pytest.mark.docker
@pytest.mark.root
@pytest.mark.parametrize(
    "client_loop",
    [
        # Short-lived connections: only conntrack sees them, and keeps each for 15 s after it closed.
        "while :; do wget -q -O /dev/null http://{server}/ 2>/dev/null; sleep 0.3; done",
        # One connection held open: /proc sees it too, and conntrack until the container goes.
        "while :; do (sleep 300) | nc {server} 80; sleep 0.3; done",
    ],
    ids=["short-lived", "held-open"],
)
def test_a_container_on_a_reused_ip_never_shows_the_removed_ones_edges(
    app: App, containers: Containers, network: Network, client_loop: str
) -> None:
    client = containers.client
    server = containers.run(["httpd", "-f", "-p", "80"], name="web", **network.at(client, 10))
    server_ip = containers.ip(server, network.name)
    old = containers.run(["sh", "-c", client_loop.format(server=server_ip)], name="old", **network.at(client, 20))
    wait_for(lambda: _edge(app, old, server), timeout=20, what="the old client's edge to the server")

    old.remove(force=True)
    new = containers.run("sleep 300", name="new", **network.at(client, 20))
    reused = f"{network.prefix}.20"
    assert containers.ip(new, network.name) == reused
    wait_for(lambda: _node_id(new) in app.nodes("containers"), timeout=10, what="the new container in the view")

    deadline = time.monotonic() + WATCH_SECONDS
    while time.monotonic() < deadline:
        nodes = app.nodes("containers")
        assert _node_id(old) not in nodes
        assert _node_id(server) not in nodes[_node_id(new)]["adjacency"], (
            f"the new container got the old one's edge; endpoints on the address: {_endpoints(app, reused)}"
        )
        assert _node_id(new) not in nodes[_node_id(server)]["adjacency"]
        time.sleep(0.2)
