"""Traffic on edges, end to end: two containers on the real Docker engine move a known number of bytes
each way over one TCP connection, and the API's edge between them says so, with the packets that carried
them (conntrack's accounting, read by a real probe, merged and rendered by a real app)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.fixtures.docker import Containers
from tests.fixtures.scope import App, Scope, wait_for

pytestmark = [pytest.mark.docker, pytest.mark.root]

HOST = "traffic-host"
MIB = 1 << 20
#: conntrack counts IP packets, headers included: a few percent above the payload on a bulk transfer.
TOLERANCE = 0.10
#: The most one packet conntrack counts can hold (a segmentation-offload super-packet, up to the kernel's
#: GSO_MAX_SIZE: 512 KiB with BIG TCP), and the least (its IPv4 and TCP headers).
MAX_PACKET = 512 << 10
HEADERS = 40


@pytest.fixture
def app(scope: Scope) -> App:
    return scope.app_with_probe(HOST)


def _node_id(container: Any) -> str:
    return f"{container.id};<container>"


def test_an_edge_that_carried_10_mb_shows_about_10_mb_the_way_it_flowed(app: App, containers: Containers) -> None:
    # The server sends 6 MiB back, the client 10 MiB; both then hold the connection open, so it is read
    # from conntrack's table (every few seconds) like any long-lived connection. conntrack counts whole
    # packets: each way carries its payload's headers and the ACKs of the other way's (with 3 MiB back,
    # the ACKs of 10 MiB took that direction just past 10 %).
    server = containers.run(
        ["sh", "-c", "(dd if=/dev/zero bs=1M count=6 2>/dev/null; sleep 600) | nc -l -p 8080 > /dev/null"],
        name="sink",
    )
    address = containers.ip(server)
    client = containers.run(
        [
            "sh",
            "-c",
            f"sleep 1; (dd if=/dev/zero bs=1M count=10 2>/dev/null; sleep 600) | nc {address} 8080 > /dev/null",
        ],
        name="source",
    )

    def edge() -> dict[str, Any] | None:
        node = app.nodes("containers").get(_node_id(client))
        found = node["edges"].get(_node_id(server)) if node is not None else None
        done = found is not None and "bytes" in found and found["bytes"][0] >= 10 * MIB and found["bytes"][1] >= 6 * MIB
        return found if done else None

    found = wait_for(edge, timeout=30, interval=0.5, what="10 MiB and 6 MiB on the edge source -> sink")
    sent, received = found["bytes"]
    print(f"edge source -> sink: {sent} bytes sent, {received} received (payload {10 * MIB} and {6 * MIB})")
    assert 10 * MIB <= sent <= (1 + TOLERANCE) * 10 * MIB, f"client -> server: {sent} bytes"
    assert 6 * MIB <= received <= (1 + TOLERANCE) * 6 * MIB, f"server -> client: {received} bytes"
    assert found["connections"] == 1
    packets = found["packets"]
    print(f"packets: {packets[0]} sent, {packets[1]} received")
    for way in (0, 1):
        assert found["bytes"][way] / MAX_PACKET <= packets[way] <= found["bytes"][way] / HEADERS, (way, packets, found)
    server_node = app.nodes("containers")[_node_id(server)]
    assert _node_id(client) not in server_node["edges"], "the traffic is on the client -> server edge only"
    # The server's details list the connection with the same bytes.
    (row,) = app.node("containers", _node_id(server))["connections"]["in"]
    assert row["id"] == _node_id(client)
    assert 10 * MIB <= row["bytes"][0] <= (1 + TOLERANCE) * 10 * MIB
    assert 6 * MIB <= row["bytes"][1] <= (1 + TOLERANCE) * 6 * MIB
    assert row["packets"][0] > 0 and row["packets"][1] > 0
