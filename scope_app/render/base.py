"""What every view shares: rendered nodes, view options, and the connection graph of a merged report.

Rendering goes in two steps. `ConnectionGraph` works once per merged report: it finds which process
owns each endpoint and lists every endpoint-to-endpoint connection, client to server. Each view then
maps endpoints to its own nodes (a process, a container, a host, a pseudo node) and adds up the
connections between them. Views are cached per merged report, so none of this runs per request.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from scope_common import ids
from scope_common.report import (
    CONTAINER_ID,
    CPU_USAGE,
    HOST_NODE_ID,
    LOCAL_NETWORKS,
    MEMORY_USAGE,
    REVERSE_DNS,
    Metric,
    Node,
    Report,
)

Json = dict[str, Any]

# Pseudo node ids. `;` keeps them out of every real id space.
INTERNET_IN = "pseudo;in-theinternet"
INTERNET_OUT = "pseudo;out-theinternet"
INTERNET_LABEL = "The Internet"


def uncontained_id(host_node_id: str) -> str:
    return f"pseudo;uncontained;{host_node_id}"


def unknown_address_id(addr: str) -> str:
    return f"pseudo;address;{addr}"


@dataclass(frozen=True, slots=True)
class ViewOptions:
    """The query options of every view; each view reads those that apply to it."""

    system: bool = False
    stopped: bool = False
    unconnected: bool = False
    pseudo: bool = True

    @classmethod
    def parse(cls, query: Mapping[str, str]) -> ViewOptions:
        """Options from query arguments (`show`/`hide`). Raises ValueError on anything else."""
        values: dict[str, bool] = {}
        for name in cls.names():
            raw = query.get(name)
            if raw is None:
                continue
            if raw not in ("show", "hide"):
                raise ValueError(f"option {name} must be show or hide, not {raw[:20]!r}")
            values[name] = raw == "show"
        return cls(**values)

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    def shown(self, name: str) -> str:
        """`show` or `hide`, as the query writes it."""
        return "show" if getattr(self, name) else "hide"


@dataclass(slots=True)
class EdgeInfo:
    """The connections along one edge of a view."""

    count: int = 0
    ports: set[int] = field(default_factory=set)


@dataclass(slots=True)
class RenderedNode:
    """A node of a view, before it becomes JSON."""

    id: str
    kind: str
    label_major: str
    label_minor: str = ""
    rank: str = ""
    shape: str = "circle"
    pseudo: bool = False
    metadata: list[tuple[str, str, str]] = field(default_factory=list)
    #: Rows only the details carry: long or rarely compared facts (a command line) would weigh down
    #: every view of thousands of nodes.
    detail_metadata: list[tuple[str, str, str]] = field(default_factory=list)
    metrics: dict[str, Metric] = field(default_factory=dict)
    parents: list[tuple[str, str, str]] = field(default_factory=list)
    edges: dict[str, EdgeInfo] = field(default_factory=dict)
    #: Report nodes this one stands for (a container's processes, an image's containers).
    children: dict[str, list[str]] = field(default_factory=dict)
    #: Hidden unless the matching option shows it.
    system: bool = False
    stopped: bool = False

    def connect(self, target: str, port: int | None) -> None:
        edge = self.edges.get(target)
        if edge is None:
            edge = self.edges[target] = EdgeInfo()
        edge.count += 1
        if port is not None:
            edge.ports.add(port)

    def summary(self) -> Json:
        """The JSON every client gets for this node (see docs/design.md, NodeSummary)."""
        return {
            "id": self.id,
            "label_major": self.label_major,
            "label_minor": self.label_minor,
            "rank": self.rank,
            "shape": self.shape,
            "kind": self.kind,
            "pseudo": self.pseudo,
            "adjacency": sorted(self.edges),
            "metadata": [{"id": i, "label": label, "value": v} for i, label, v in self.metadata],
            "metrics": [metric_json(key, metric, samples=False) for key, metric in self.metrics.items()],
            "parents": [{"id": i, "label": label, "topologyId": t} for i, label, t in self.parents],
        }


_METRIC_LABELS = {CPU_USAGE: ("cpu", "CPU", "percent"), MEMORY_USAGE: ("memory", "Memory", "filesize")}


def metric_json(key: str, metric: Metric, *, samples: bool = True) -> Json:
    """A metric row. Views leave the samples out (the map and table show the value; with them a
    5,000-node view weighed 11 MB); node details keep them for the sparklines."""
    metric_id, label, fmt = _METRIC_LABELS.get(key, (key, key.replace("_", " ").capitalize(), "number"))
    last = metric.last
    row: Json = {
        "id": metric_id,
        "label": label,
        "format": fmt,
        "value": last.value if last else None,
        "min": metric.min,
        "max": metric.max,
    }
    if samples:
        row["samples"] = [{"date": s.timestamp, "value": s.value} for s in metric.samples]
    return row


def sum_metrics(nodes: Iterable[RenderedNode]) -> dict[str, Metric]:
    """Latest CPU and memory added up, for a node that groups others."""
    totals: dict[str, tuple[float, float, float]] = {}
    for node in nodes:
        for key in (CPU_USAGE, MEMORY_USAGE):
            metric = node.metrics.get(key)
            last = metric.last if metric else None
            if metric is None or last is None:
                continue
            when, value, top = totals.get(key, (0.0, 0.0, 0.0))
            totals[key] = (max(when, last.timestamp), value + last.value, max(top, metric.max))
    return {key: Metric.single(when, value, top) for key, (when, value, top) in totals.items()}


@dataclass(frozen=True, slots=True)
class Connection:
    """One client endpoint connected to one server endpoint."""

    client: Node
    server: Node


class ConnectionGraph:
    """The endpoints of a merged report, who owns them, and who connects to whom.

    Built once per merged report and shared by every view.
    """

    def __init__(self, report: Report) -> None:
        self.report = report
        self.endpoints = report.nodes("endpoint")
        self.processes = report.nodes("process")
        self.containers = report.nodes("container")
        self.hosts = report.nodes("host")
        self.connections: list[Connection] = []
        for node in self.endpoints.values():
            for target in node.adjacency:
                server = self.endpoints.get(target)
                if server is not None and server is not node:
                    self.connections.append(Connection(node, server))
        networks: set[ipaddress.IPv4Network | ipaddress.IPv6Network] = set()
        #: Which host has which address, for joining a published port to its container.
        self.host_addresses: dict[str, str] = {}
        for host in self.hosts.values():
            for text in host.sets.get(LOCAL_NETWORKS, ()):
                try:
                    interface = ipaddress.ip_interface(text)
                except ValueError:
                    continue
                networks.add(interface.network)
                self.host_addresses[str(interface.ip)] = host.id
        self._local_networks = sorted(networks, key=lambda n: (n.version, n.prefixlen))
        self._local_cache: dict[str, bool] = {}

    def process_of(self, endpoint: Node) -> Node | None:
        """The process that owns an endpoint, if any probe saw it."""
        for process_id in endpoint.parents.get("process", ()):
            process = self.processes.get(process_id)
            if process is not None:
                return process
        return None

    def host_of(self, endpoint: Node) -> str | None:
        """The host node id of an endpoint that some probe saw as its own."""
        process = self.process_of(endpoint)
        source = process if process is not None else endpoint
        return source.get(HOST_NODE_ID) or self.own_address_host(endpoint)

    def own_address_host(self, endpoint: Node) -> str | None:
        """The host whose own address (loopback, or an interface's) an endpoint is on, if any.

        Conntrack sees connections no process holds any more, or held by the host itself (docker-proxy
        on the docker0 gateway address): they belong to the host.
        """
        parsed = ids.parse_endpoint_id(endpoint.id)
        if parsed is None:
            return None
        scope_host = parsed.scope.partition("/")[0]
        host = self.host_addresses.get(parsed.addr)
        if host is not None and (not scope_host or host == ids.host_id(scope_host)):
            return host
        if (scope_host and parsed.addr.startswith("127.")) or parsed.addr == "::1":
            return ids.host_id(scope_host) if scope_host else None
        return None

    def is_local(self, endpoint: Node) -> bool:
        """Whether the address is on a network some host of the report is on (or host-scoped)."""
        parsed = ids.parse_endpoint_id(endpoint.id)
        if parsed is None or parsed.scope:
            return True
        known = self._local_cache.get(parsed.addr)
        if known is None:
            try:
                ip = ipaddress.ip_address(parsed.addr)
            except ValueError:
                known = True
            else:
                known = any(ip in net for net in self._local_networks)
            self._local_cache[parsed.addr] = known
        return known

    def pseudo_for(self, endpoint: Node, as_client: bool) -> RenderedNode | None:
        """The pseudo node an endpoint no probe owns stands as: the Internet, or its address.

        None for a host-scoped address (loopback, a docker bridge) nobody owns: a socket whose process
        has gone, or a connection conntrack saw; a node named 127.0.0.1 would only be noise.
        """
        parsed = ids.parse_endpoint_id(endpoint.id)
        if parsed is not None and parsed.scope:
            return None
        if not self.is_local(endpoint):
            node_id = INTERNET_IN if as_client else INTERNET_OUT
            minor = "Inbound" if as_client else "Outbound"
            return RenderedNode(node_id, "pseudo", INTERNET_LABEL, minor, shape="cloud", pseudo=True)
        addr = parsed.addr if parsed else endpoint.id
        return RenderedNode(
            unknown_address_id(addr),
            "pseudo",
            endpoint.get(REVERSE_DNS) or addr,
            addr,
            shape="circle",
            pseudo=True,
        )


#: Maps an endpoint to the id of the view node it belongs to, or None when no real node owns it.
EndpointMapper = Callable[[Node], str | None]
#: Edges of a view by id: client -> server -> what runs along the edge.
Edges = dict[str, dict[str, EdgeInfo]]


def collect_edges(graph: ConnectionGraph, owner: EndpointMapper, pseudo: dict[str, RenderedNode]) -> Edges:
    """Every connection of `graph` as an edge between the ids owning its ends.

    Works on ids only, so a view builds nodes for just the ids it shows. An end no node owns becomes
    a pseudo node (added to `pseudo`), but only when the other end is owned: two unknown addresses
    talking is not something a view can place.
    """
    edges: Edges = {}
    for conn in graph.connections:
        client_id = owner(conn.client)
        server_id = owner(conn.server)
        if client_id is None and server_id is None:
            continue
        if client_id is None:
            client_id = _ensure(pseudo, graph.pseudo_for(conn.client, as_client=True))
        if server_id is None:
            server_id = _ensure(pseudo, graph.pseudo_for(conn.server, as_client=False))
        if client_id is None or server_id is None or client_id == server_id:
            continue
        targets = edges.get(client_id)
        if targets is None:
            targets = edges[client_id] = {}
        edge = targets.get(server_id)
        if edge is None:
            edge = targets[server_id] = EdgeInfo()
        edge.count += 1
        parsed = ids.parse_endpoint_id(conn.server.id)
        if parsed is not None:
            edge.ports.add(parsed.port)
    return edges


def connected_ids(edges: Edges) -> set[str]:
    """Every id at either end of an edge."""
    found = set(edges)
    for targets in edges.values():
        found.update(targets)
    return found


def attach_edges(nodes: dict[str, RenderedNode], edges: Edges) -> None:
    """Give each node its edges to other nodes of the view."""
    for source, targets in edges.items():
        node = nodes.get(source)
        if node is not None:
            node.edges = {target: edge for target, edge in targets.items() if target in nodes}


def connect_nodes(
    graph: ConnectionGraph,
    nodes: dict[str, RenderedNode],
    owner: EndpointMapper,
    pseudo: dict[str, RenderedNode] | None = None,
) -> None:
    """Edges between `nodes`, with the pseudo nodes their connections need added (into `pseudo` first,
    for an `owner` that makes pseudo nodes of its own)."""
    pseudo = {} if pseudo is None else pseudo
    edges = collect_edges(graph, owner, pseudo)
    nodes.update(pseudo)
    attach_edges(nodes, edges)


def _ensure(nodes: dict[str, RenderedNode], node: RenderedNode | None) -> str | None:
    if node is None:
        return None
    if node.id not in nodes:
        nodes[node.id] = node
    return node.id


def process_container(process: Node) -> str | None:
    """The container node id a process belongs to, if any."""
    containers = process.parents.get("container")
    if containers:
        return containers[0]
    container = process.get(CONTAINER_ID)
    return ids.container_id(container) if container else None


def filter_view(nodes: dict[str, RenderedNode], options: ViewOptions, *, drop_unconnected: bool) -> int:
    """Remove the nodes `options` hides, and edges to them. Returns how many nodes were removed."""
    removed = {
        node_id
        for node_id, node in nodes.items()
        if (node.system and not options.system)
        or (node.stopped and not options.stopped)
        or (node.pseudo and not options.pseudo)
    }
    for node_id in removed:
        del nodes[node_id]
    for node in nodes.values():
        for target in [t for t in node.edges if t not in nodes]:
            del node.edges[target]
    if drop_unconnected and not options.unconnected:
        connected = {t for node in nodes.values() for t in node.edges}
        connected.update(node_id for node_id, node in nodes.items() if node.edges)
        unconnected = [node_id for node_id in nodes if node_id not in connected]
        for node_id in unconnected:
            del nodes[node_id]
        removed.update(unconnected)
    # Pseudo nodes exist only to anchor edges: one left without any is noise.
    targets = {t for node in nodes.values() for t in node.edges}
    orphans = [node_id for node_id, node in nodes.items() if node.pseudo and not node.edges and node_id not in targets]
    for node_id in orphans:
        del nodes[node_id]
    return len(removed)
