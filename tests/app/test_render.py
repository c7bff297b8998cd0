"""Views rendered from hand-built reports: how connections join processes, containers and hosts."""

from __future__ import annotations

import json

from scope_app.collector import Collector
from scope_app.render import Renderer, View, view_options
from scope_app.render.base import INTERNET_IN, INTERNET_OUT, uncontained_id
from scope_common import ids
from scope_common.delta import DeltaEncoder
from scope_common.report import (
    CONTAINER_ID,
    CONTAINER_IPS,
    CONTAINER_IPS_WITH_SCOPES,
    CONTAINER_NAME,
    CONTAINER_PORTS,
    CONTAINER_STATE,
    HOST_NODE_ID,
    HOSTNAME,
    IMAGE_NAME,
    LABEL_PREFIX,
    LOCAL_NETWORKS,
    NAME,
    PID,
    EdgeMetadata,
    Node,
    Report,
)
from scope_common.wire import decode


def _host(report: Report, host: str, *networks: str) -> str:
    node_id = ids.host_id(host)
    report.add(
        Node.build(
            node_id, "host", latest={HOSTNAME: host, HOST_NODE_ID: node_id}, sets={LOCAL_NETWORKS: list(networks)}
        )
    )
    return node_id


def _process(report: Report, host: str, pid: int, name: str, container: str | None = None) -> str:
    node_id = ids.process_id(host, pid)
    parents = {"host": [ids.host_id(host)]}
    if container:
        parents["container"] = [ids.container_id(container)]
    report.add(
        Node.build(
            node_id,
            "process",
            latest={PID: pid, NAME: name, HOST_NODE_ID: ids.host_id(host), CONTAINER_ID: container},
            parents=parents,
        )
    )
    return node_id


def _container(
    report: Report,
    host: str,
    container: str,
    name: str,
    image: str = "busybox:latest",
    *,
    ips: tuple[str, ...] = (),
    ports: tuple[str, ...] = (),
    state: str = "running",
    labels: dict[str, str] | None = None,
) -> str:
    node_id = ids.container_id(container)
    report.add(
        Node.build(
            node_id,
            "container",
            latest={
                CONTAINER_ID: container,
                CONTAINER_NAME: name,
                IMAGE_NAME: image,
                CONTAINER_STATE: state,
                HOST_NODE_ID: ids.host_id(host),
                **{LABEL_PREFIX + k: v for k, v in (labels or {}).items()},
            },
            sets={
                CONTAINER_IPS: list(ips),
                CONTAINER_IPS_WITH_SCOPES: [f"{host};{ip}" for ip in ips],
                CONTAINER_PORTS: list(ports),
            },
            parents={"host": [ids.host_id(host)]},
        )
    )
    return node_id


def _connect(
    report: Report,
    client: tuple[str, str, int],
    server: tuple[str, str, int],
    client_pid: str | None = None,
    server_pid: str | None = None,
) -> None:
    """An endpoint pair client -> server; each side (scope, addr, port) optionally owned by a process."""
    client_id, server_id = ids.endpoint_id(*client), ids.endpoint_id(*server)
    report.add(
        Node.build(
            client_id, "endpoint", adjacency=[server_id], parents={"process": [client_pid]} if client_pid else None
        )
    )
    report.add(Node.build(server_id, "endpoint", parents={"process": [server_pid]} if server_pid else None))


def _render(report: Report, topology: str, **query: str) -> View:
    renderer = Renderer()
    renderer.update(report, 1)
    return renderer.view(topology, view_options(query))


def test_processes_are_joined_through_their_endpoints_client_to_server() -> None:
    report = Report()
    _host(report, "h1", "10.0.0.1/24")
    client = _process(report, "h1", 10, "curl")
    server = _process(report, "h1", 20, "nginx")
    _process(report, "h1", 30, "idle")
    _connect(report, ("h1", "127.0.0.1", 40000), ("h1", "127.0.0.1", 80), client, server)
    view = _render(report, "processes")
    assert set(view.nodes) == {client, server}, "unconnected processes are hidden by default"
    assert view.summaries[client]["adjacency"] == [server]
    assert view.summaries[server]["adjacency"] == []
    assert view.details(client) is not None
    assert _render(report, "processes", unconnected="show").nodes.keys() == {client, server, ids.process_id("h1", 30)}


def test_a_remote_address_joins_the_process_another_probe_reported() -> None:
    report_a, report_b = Report(), Report()
    _host(report_a, "a", "10.0.0.1/24")
    _host(report_b, "b", "10.0.0.2/24")
    client = _process(report_a, "a", 1, "client")
    server = _process(report_b, "b", 2, "server")
    _connect(report_a, ("", "10.0.0.1", 50000), ("", "10.0.0.2", 443), client)
    report_b.add(Node.build(ids.endpoint_id("", "10.0.0.2", 443), "endpoint", parents={"process": [server]}))
    merged = report_a.merge(report_b)
    assert _render(merged, "processes").summaries[client]["adjacency"] == [server]
    hosts = _render(merged, "hosts")
    assert hosts.summaries[ids.host_id("a")]["adjacency"] == [ids.host_id("b")]


def test_addresses_outside_every_local_network_are_the_internet_in_and_out() -> None:
    report = Report()
    _host(report, "h1", "10.0.0.1/24")
    web = _process(report, "h1", 1, "nginx")
    _connect(report, ("", "93.184.216.34", 51000), ("", "10.0.0.1", 80), None, web)
    _connect(report, ("", "10.0.0.1", 52000), ("", "1.1.1.1", 443), web, None)
    view = _render(report, "processes")
    assert view.summaries[INTERNET_IN]["adjacency"] == [web]
    assert view.summaries[web]["adjacency"] == [INTERNET_OUT]
    assert view.summaries[INTERNET_IN]["label_major"] == "The Internet"
    assert view.summaries[INTERNET_IN]["pseudo"] is True
    assert set(_render(report, "processes", pseudo="hide").nodes) == set()


def test_an_unknown_local_address_is_a_pseudo_node_of_its_own() -> None:
    report = Report()
    _host(report, "h1", "10.0.0.1/24")
    app = _process(report, "h1", 1, "app")
    _connect(report, ("", "10.0.0.1", 52000), ("", "10.0.0.9", 5432), app, None)
    view = _render(report, "processes")
    (target,) = view.summaries[app]["adjacency"]
    assert view.summaries[target]["label_major"] == "10.0.0.9"


def test_an_unowned_loopback_address_is_not_drawn() -> None:
    report = Report()
    _host(report, "h1", "10.0.0.1/24")
    app = _process(report, "h1", 1, "app")
    _connect(report, ("h1", "127.0.0.1", 52000), ("h1", "127.0.0.1", 6379), app, None)
    view = _render(report, "processes")
    assert view.nodes == {}, "a connection to a loopback port nobody owns has no pseudo node"


def test_containers_join_through_processes_container_ips_and_published_ports() -> None:
    report = Report()
    _host(report, "h1", "192.168.1.10/24")
    web = _container(report, "h1", "a" * 64, "web", ips=("172.17.0.2",), ports=("0.0.0.0:8080->80/tcp",))
    client = _container(report, "h1", "b" * 64, "client", ips=("172.17.0.3",))
    other = _container(report, "h1", "c" * 64, "other", ips=("172.17.0.4",))
    httpd = _process(report, "h1", 100, "httpd", "a" * 64)
    wget = _process(report, "h1", 200, "wget", "b" * 64)
    shell = _process(report, "h1", 300, "sh")
    # /proc: wget -> httpd on the bridge.
    _connect(report, ("h1", "172.17.0.3", 40000), ("h1", "172.17.0.2", 80), wget, httpd)
    # conntrack only (no process any more): other -> web by container IPs.
    _connect(report, ("h1", "172.17.0.4", 40001), ("h1", "172.17.0.2", 80))
    # conntrack only: an outside client to the published port on the host's address.
    _connect(report, ("", "192.168.1.50", 40002), ("", "192.168.1.10", 8080))
    # A host process (not in any container) fetching from the container.
    _connect(report, ("h1", "172.17.0.1", 40003), ("h1", "172.17.0.2", 80), shell, None)
    view = _render(report, "containers")
    assert view.summaries[client]["adjacency"] == [web]
    assert view.summaries[other]["adjacency"] == [web]
    uncontained = uncontained_id(ids.host_id("h1"))
    assert view.summaries[uncontained]["adjacency"] == [web]
    assert view.summaries[uncontained]["label_major"] == "Uncontained"
    in_edges = view.details(web)["connections"]["in"]  # type: ignore[index]
    assert {row["id"] for row in in_edges} >= {client, other, uncontained}
    assert all(row["port"] == "80" for row in in_edges if row["id"] in (client, other))
    published = [row for row in in_edges if row["port"] == "8080"]
    assert len(published) == 1 and view.summaries[published[0]["id"]]["pseudo"]
    details = view.details(web)
    assert details is not None
    assert [n["id"] for n in details["children"][0]["nodes"]] == [httpd]
    meta = {row["id"]: row["value"] for row in details["metadata"]}
    assert meta["image"] == "busybox:latest" and meta["host"] == "h1"
    assert {p["topologyId"] for p in details["parents"]} == {"hosts", "containers-by-image"}


def test_a_connection_from_the_hosts_own_bridge_address_is_uncontained() -> None:
    # docker-proxy (or any host process already gone) on the docker0 gateway, seen only by conntrack.
    report = Report()
    _host(report, "h1", "192.168.1.10/24", "172.17.0.1/16")
    web = _container(report, "h1", "a" * 64, "web", ips=("172.17.0.2",))
    _connect(report, ("h1", "172.17.0.1", 40000), ("h1", "172.17.0.2", 80))
    view = _render(report, "containers")
    assert view.summaries[uncontained_id(ids.host_id("h1"))]["adjacency"] == [web]


def test_an_address_claimed_by_two_containers_joins_neither() -> None:
    report = Report()
    _host(report, "h1", "192.168.1.10/24")
    one = _container(report, "h1", "a" * 64, "one", ips=("172.17.0.2",))
    two = _container(report, "h1", "b" * 64, "two", ips=("172.17.0.2",))
    three = _container(report, "h1", "c" * 64, "three", ips=("172.17.0.3",))
    _connect(report, ("h1", "172.17.0.3", 40000), ("h1", "172.17.0.2", 80))
    view = _render(report, "containers")
    assert one not in view.summaries[three]["adjacency"]
    assert two not in view.summaries[three]["adjacency"]


def test_stopped_and_system_containers_are_hidden_unless_asked_for() -> None:
    report = Report()
    _host(report, "h1")
    running = _container(report, "h1", "a" * 64, "app")
    stopped = _container(report, "h1", "b" * 64, "old", state="exited")
    scope = _container(report, "h1", "c" * 64, "weavescope")
    labelled = _container(report, "h1", "d" * 64, "agent", labels={"works.weave.role": "system"})
    assert set(_render(report, "containers").nodes) == {running}
    assert set(_render(report, "containers", stopped="show").nodes) == {running, stopped}
    assert set(_render(report, "containers", system="show").nodes) == {running, scope, labelled}
    assert _render(report, "containers").filtered_nodes == 3


def test_containers_by_image_groups_containers_of_one_image() -> None:
    report = Report()
    _host(report, "h1")
    a = _container(report, "h1", "a" * 64, "web-1", "registry.local:5000/web:1.2")
    b = _container(report, "h1", "b" * 64, "web-2", "registry.local:5000/web:1.3")
    _container(report, "h1", "c" * 64, "db", "postgres:16")
    view = _render(report, "containers-by-image")
    labels = {s["label_major"]: s for s in view.summaries.values()}
    assert set(labels) == {"registry.local:5000/web", "postgres"}
    web = labels["registry.local:5000/web"]
    assert web["label_minor"] == "2 containers"
    details = view.details(web["id"])
    assert details is not None
    assert {n["id"] for n in details["children"][0]["nodes"]} == {a, b}


def test_grouped_views_keep_pseudo_nodes_and_their_edges() -> None:
    report = Report()
    _host(report, "h1", "10.0.0.1/24")
    web = _container(report, "h1", "a" * 64, "web", "nginx:1")
    nginx = _process(report, "h1", 1, "nginx", "a" * 64)
    _connect(report, ("", "93.184.216.34", 51000), ("h1", "172.17.0.2", 80), None, nginx)
    _connect(report, ("", "10.0.0.1", 52000), ("", "1.1.1.1", 443), nginx, None)
    by_image = _render(report, "containers-by-image")
    group = next(s for s in by_image.summaries.values() if s["label_major"] == "nginx")
    assert by_image.summaries[INTERNET_IN]["adjacency"] == [group["id"]]
    assert group["adjacency"] == [INTERNET_OUT]
    by_name = _render(report, "processes-by-name")
    assert by_name.summaries[INTERNET_IN]["adjacency"] == ["nginx;<process_name>"]
    assert web in _render(report, "containers").nodes


def test_unknown_options_values_are_refused() -> None:
    try:
        view_options({"system": "maybe"})
    except ValueError as exc:
        assert "show or hide" in str(exc)
    else:
        raise AssertionError("accepted system=maybe")


def test_a_view_past_the_cap_keeps_the_most_connected_nodes_and_says_how_many_there_were() -> None:
    report = Report()
    _host(report, "h1", "10.0.0.1/24")
    server = _process(report, "h1", 1, "db")
    clients = [_process(report, "h1", pid, f"client{pid}") for pid in range(2, 7)]
    for port, client in enumerate(clients[:2], start=5000):
        _connect(report, ("h1", "127.0.0.1", port), ("h1", "127.0.0.1", 5432), client, server)
    renderer = Renderer(max_view_nodes=3)
    renderer.update(report, 1)
    view = renderer.view("processes", view_options({"unconnected": "show"}))
    assert set(view.nodes) == {server, *clients[:2]}, "the server and its two clients have edges"
    assert view.total == 6
    assert json.loads(view.json)["total"] == 6
    counts = {t["id"]: t["stats"]["node_count"] for t in renderer.topology_list()}
    assert counts["processes"] == 3, "unconnected processes are hidden by default: three left, all shown"


def test_search_keeps_matching_nodes_and_the_edges_between_them() -> None:
    report = Report()
    _host(report, "h1", "10.0.0.1/24")
    server = _process(report, "h1", 1, "postgres")
    client = _process(report, "h1", 2, "worker")
    _connect(report, ("h1", "127.0.0.1", 5000), ("h1", "127.0.0.1", 5432), client, server)
    renderer = Renderer()
    renderer.update(report, 1)
    view = renderer.view("processes", view_options({}), search="POST")
    assert list(view.nodes) == [server]
    assert view.summaries[server]["adjacency"] == []
    both = renderer.view("processes", view_options({}), search="h1")
    assert both.summaries[client]["adjacency"] == [server]


def _metered(report: Report, client_port: int, sent: int, got: int) -> None:
    """A connection from process 10 (port `client_port`) to process 20 (port 80) on host h1 that carried `sent`
    bytes to the server and `got` back (as conntrack's accounting counts them)."""
    client, server = _process(report, "h1", 10, "curl"), _process(report, "h1", 20, "nginx")
    client_id, server_id = ids.endpoint_id("h1", "127.0.0.1", client_port), ids.endpoint_id("h1", "127.0.0.1", 80)
    edges = {server_id: EdgeMetadata(1, sent, got)}
    report.add(Node.build(client_id, "endpoint", adjacency=edges, edges=edges, parents={"process": [client]}))
    report.add(Node.build(server_id, "endpoint", parents={"process": [server]}))


def test_an_edge_carries_its_connections_bytes_and_counts_what_it_carried_and_opened_since_it_appeared() -> None:
    renderer = Renderer()
    collector = Collector(lambda report, version, changed: renderer.update(report, version, changed))
    encoder = DeltaEncoder("p", "h1")

    def publish(*connections: tuple[int, int, int]) -> dict[str, object]:
        """One probe report with a connection client:port -> server:80 per (port, sent, got); the edge's JSON."""
        report = Report()
        _host(report, "h1", "10.0.0.1/24")
        for port, sent, got in connections:
            _metered(report, port, sent, got)
        collector.add(decode(encoder.encode(report)))
        view = renderer.view("processes", view_options({}), max_age=0)
        (client,) = (node for node in view.summaries.values() if node["adjacency"])
        edge: dict[str, object] = client["edges"][client["adjacency"][0]]
        return edge

    first = publish((5000, 1000, 10), (5001, 2000, 20))
    assert first["connections"] == 2
    assert first["bytes"] == [3000, 30], "client -> server and back, over the connections on the edge"
    # One connection goes on sending, one closed and is forgotten, a new one opens.
    later = publish((5000, 6000, 60), (5002, 500, 5))
    assert later["connections"] == 2
    assert later["bytes"] == [6500, 65]
    assert later["opened"] == first["opened"] + 1  # type: ignore[operator]
    seen_before, seen_now = first["bytes_seen"], later["bytes_seen"]
    assert isinstance(seen_before, list) and isinstance(seen_now, list)
    assert [now - before for now, before in zip(seen_now, seen_before, strict=True)] == [5000 + 500, 50 + 5], (
        "what the edge carried in between: the forgotten connection does not count against it"
    )
    # A lone connection that goes on sending is recounted on every update: the edge keeps its counters.
    lone = publish((5002, 900, 9))
    lone_later = publish((5002, 1000, 10))
    assert lone_later["connections"] == 1 and lone_later["bytes"] == [1000, 10]
    assert lone_later["opened"] == lone["opened"] == later["opened"]
    assert lone_later["bytes_seen"] == [seen_now[0] + 500, seen_now[1] + 5]
