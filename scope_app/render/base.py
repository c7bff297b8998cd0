"""What every view shares: rendered nodes, view options, and the connection graph of a merged report.

Rendering goes in two steps. `ConnectionGraph` works once per merged report: it finds which process
owns each endpoint and lists every endpoint-to-endpoint connection, client to server. Each view then
maps endpoints to its own nodes (a process, a container, a host, a pseudo node) and adds up the
connections between them. Views are cached per merged report, so none of this runs per request.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import logging
from collections.abc import Callable, Collection, Iterable, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import Any, cast

from scope_common import ids
from scope_common.report import (
    CONTAINER_ID,
    CONTAINER_IPS_WITH_SCOPES,
    CONTAINER_PORTS,
    CONTAINER_STATE,
    CPU_USAGE,
    HOST_NODE_ID,
    LOCAL_NETWORKS,
    MEMORY_USAGE,
    REVERSE_DNS,
    EdgeMetadata,
    Metric,
    MetricTemplate,
    Node,
    Report,
)
from scope_common.supervise import RateLimitedLog

Json = dict[str, Any]

log = logging.getLogger(__name__)
_failures_log = RateLimitedLog(log)

# Pseudo node ids. `;` keeps them out of every real id space.
INTERNET_IN = "pseudo;in-theinternet"
INTERNET_OUT = "pseudo;out-theinternet"
INTERNET_LABEL = "The Internet"


def uncontained_id(host_node_id: str) -> str:
    return f"pseudo;uncontained;{host_node_id}"


def parse_uncontained_id(node_id: str) -> str | None:
    """The host node id of an uncontained pseudo node's id, or None when `node_id` is not one."""
    prefix = uncontained_id("")
    return node_id[len(prefix) :] if node_id.startswith(prefix) else None


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
    """The connections along one edge of a view. Read-only once in a view: views share them."""

    count: int = 0
    ports: AbstractSet[int] = field(default_factory=frozenset)
    #: Bytes client -> server (egress) and back (ingress) over the connections on the edge now, of those
    #: that carry byte counts (`metered`: conntrack's accounting was on for them).
    egress_bytes: int = 0
    ingress_bytes: int = 0
    metered: int = 0
    #: Counters that only grow while the edge lasts: bytes each way and connections seen since the edge
    #: appeared. Connections that close and are forgotten do not lower them, so their growth over time is
    #: the edge's traffic rate and connection rate, which the current sums above cannot give (a client
    #: that connects every second keeps about the same number of lingering connections).
    egress_seen: int = 0
    ingress_seen: int = 0
    opened: int = 0
    #: Packets each way over the connections on the edge now, as the bytes (0 where not counted).
    egress_packets: int = 0
    ingress_packets: int = 0

    def plus(self, other: EdgeInfo) -> EdgeInfo:
        """Both edges' connections together (a grouped view's edge)."""
        return EdgeInfo(
            self.count + other.count,
            {*self.ports, *other.ports},
            self.egress_bytes + other.egress_bytes,
            self.ingress_bytes + other.ingress_bytes,
            self.metered + other.metered,
            self.egress_seen + other.egress_seen,
            self.ingress_seen + other.ingress_seen,
            self.opened + other.opened,
            self.egress_packets + other.egress_packets,
            self.ingress_packets + other.ingress_packets,
        )

    def summary(self) -> Json:
        """The edge as a NodeSummary carries it; bytes only where some connection is metered."""
        edge: Json = {"connections": self.count, "opened": self.opened}
        if self.metered:
            edge["bytes"] = [self.egress_bytes, self.ingress_bytes]
            edge["bytes_seen"] = [self.egress_seen, self.ingress_seen]
            edge["packets"] = [self.egress_packets, self.ingress_packets]
        return edge

    def summary_key(self) -> tuple[int, ...]:
        """What `summary` depends on: a summary is built again only when it changed."""
        return (
            self.count,
            self.opened,
            self.metered,
            self.egress_bytes,
            self.ingress_bytes,
            self.egress_seen,
            self.ingress_seen,
            self.egress_packets,
            self.ingress_packets,
        )


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
    #: How `metrics` are shown, by metric key: the templates of the report node's topology.
    metric_templates: Mapping[str, MetricTemplate] = field(default_factory=dict)
    #: Summaries by edges (targets and traffic), shared by the copies `cached_node` makes of one built node.
    _memo: dict[tuple[tuple[str, tuple[int, ...]], ...], tuple[Json, str]] = field(
        default_factory=dict, repr=False, compare=False
    )
    #: The summary's parts that neither edges nor metrics change, as rows and as JSON text, made once and
    #: shared by every copy, also by those with other metrics (`with_metrics`): every report moves every
    #: container's metrics, and building and serialising the rest of each again was most of a view's cost.
    _parts: list[Any] = field(default_factory=list, repr=False, compare=False)

    def fresh_copy(self) -> RenderedNode:
        """This node without edges or children, sharing the rest (read-only) and the summary memo."""
        return RenderedNode(
            self.id,
            self.kind,
            self.label_major,
            self.label_minor,
            self.rank,
            self.shape,
            self.pseudo,
            self.metadata,
            self.detail_metadata,
            self.metrics,
            self.parents,
            {},
            {},
            self.system,
            self.stopped,
            self.metric_templates,
            self._memo,
            self._parts,
        )

    def with_metrics(self, metrics: dict[str, Metric]) -> RenderedNode:
        """A fresh copy showing `metrics` instead: its summaries are made anew, from the same static parts."""
        copy = self.fresh_copy()
        copy.metrics = metrics
        copy._memo = {}
        return copy

    def summary(self) -> Json:
        """The JSON every client gets for this node (see docs/design.md, NodeSummary).

        Kept on the node while its edges (targets and traffic) stay the same: a view reuses the nodes whose report
        nodes did not change (`cached_node`), so an unchanged node costs neither building nor JSON, and
        an unchanged summary is the same object, which is how a feed's diff skips it."""
        return self._memoized()[0]

    def view_entry(self) -> str:
        """`"id":summary` as a view's JSON lists it, serialised once for as long as the summary stays
        the same: a view of thousands of nodes is joined from these."""
        return self._memoized()[1]

    def _memoized(self) -> tuple[Json, str]:
        # The edges are the index's own tallies, updated in place: the key copies their figures.
        key = tuple(sorted((target, edge.summary_key()) for target, edge in self.edges.items()))
        found = self._memo.get(key)
        if found is None:
            if len(self._memo) >= 4:  # the views of a few option sets; older edges are not coming back
                self._memo.clear()
            found = self._memo[key] = self._build_summary([target for target, _ in key])
        return found

    def _build_summary(self, adjacency: list[str]) -> tuple[Json, str]:
        """The summary and its `"id":summary` JSON, from the static parts (made at the first call) and
        the edges and metrics of now."""
        if not self._parts:
            head = {
                "id": self.id,
                "label_major": self.label_major,
                "label_minor": self.label_minor,
                "rank": self.rank,
                "shape": self.shape,
                "kind": self.kind,
                "pseudo": self.pseudo,
            }
            metadata = [{"id": i, "label": label, "value": v} for i, label, v in self.metadata]
            parents = [{"id": i, "label": label, "topologyId": t} for i, label, t in self.parents]
            self._parts[:] = [
                head,
                metadata,
                parents,
                f'{_dumps(self.id)}:{_dumps(head)[:-1]},"adjacency":',
                f',"metadata":{_dumps(metadata)},"metrics":',
                f',"parents":{_dumps(parents)}}}',
            ]
        head, metadata, parents, before_adjacency, before_metrics, after_metrics = self._parts
        edges = {target: self.edges[target].summary() for target in adjacency}
        metrics = [
            metric_json(key, metric, self.metric_templates.get(key), samples=False)
            for key, metric in self.metrics.items()
        ]
        summary = {
            **head,
            "adjacency": adjacency,
            "edges": edges,
            "metadata": metadata,
            "metrics": metrics,
            "parents": parents,
        }
        entry = (
            f'{before_adjacency}{_dumps(adjacency)},"edges":{_dumps(edges)}{before_metrics}{_dumps(metrics)}'
            f"{after_metrics}"
        )
        return summary, entry


#: Compact JSON, as views send it.
_dumps = json.JSONEncoder(separators=(",", ":")).encode


def metric_json(key: str, metric: Metric, template: MetricTemplate | None = None, *, samples: bool = True) -> Json:
    """A metric row, as its template says (one without: under its key, as a number). Views leave the
    samples out (the map and table show the value; with them a 5,000-node view weighed 11 MB); node
    details keep them for the sparklines."""
    if template is None:
        template = MetricTemplate(0, key, key, key.replace("_", " ").capitalize())
    last = metric.last
    row: Json = {
        "id": template.id,
        "label": template.label,
        "format": template.format,
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


RUNNING_STATES = ("running", "paused", "restarting")


def published_port(mapping: str) -> int | None:
    """The host port of `0.0.0.0:8080->80/tcp`; None for an exposed but unpublished port."""
    published, arrow, _ = mapping.partition("->")
    if not arrow:
        return None
    port = published.rpartition(":")[2]
    return int(port) if ids.is_decimal(port, 5) else None


class ContainerClaims:
    """Which running container holds an address, or a published port of a host, kept up to date
    container by container. An address or port two containers claim belongs to neither: a wrong edge
    is worse than none."""

    def __init__(self) -> None:
        self._by_ip: dict[str, set[str]] = {}
        self._by_port: dict[tuple[str, int], set[str]] = {}
        self._held: dict[str, tuple[tuple[str, ...], tuple[tuple[str, int], ...]]] = {}

    def follow(self, container_id: str, container: Node | None) -> tuple[set[str], set[tuple[str, int]]]:
        """Take a container's current claims (None: it is gone). Returns the addresses and ports whose
        claims changed: only endpoints on those can change hands."""
        claims: tuple[tuple[str, ...], tuple[tuple[str, int], ...]] = ((), ())
        if container is not None and container.get(CONTAINER_STATE) in RUNNING_STATES:
            host = container.get(HOST_NODE_ID)
            ports = (published_port(m) for m in container.sets.get(CONTAINER_PORTS, ()))
            claims = (
                container.sets.get(CONTAINER_IPS_WITH_SCOPES, ()),
                tuple((host, p) for p in ports if host and p is not None),
            )
        held = self._held.get(container_id, ((), ()))
        if claims == held:
            return set(), set()
        for ip in held[0]:
            _release(self._by_ip, ip, container_id)
        for port in held[1]:
            _release(self._by_port, port, container_id)
        for ip in claims[0]:
            self._by_ip.setdefault(ip, set()).add(container_id)
        for port in claims[1]:
            self._by_port.setdefault(port, set()).add(container_id)
        if claims == ((), ()):
            self._held.pop(container_id, None)
        else:
            self._held[container_id] = claims
        return set(held[0]) ^ set(claims[0]), set(held[1]) ^ set(claims[1])

    def by_ip(self, scoped_ip: str) -> str | None:
        return _only(self._by_ip.get(scoped_ip))

    def by_port(self, host_node_id: str, port: int) -> str | None:
        return _only(self._by_port.get((host_node_id, port)))


def _release(claims: dict[Any, set[str]], key: Any, container_id: str) -> None:
    holders = claims.get(key)
    if holders is not None:
        holders.discard(container_id)
        if not holders:
            del claims[key]


def _only(holders: set[str] | None) -> str | None:
    return next(iter(holders)) if holders is not None and len(holders) == 1 else None


class ConnectionGraph:
    """The endpoints of a merged report, who owns them, and who connects to whom.

    Kept from one merged report to the next and updated by what changed (`update`), since the merged
    report is updated in place: an arrival re-links only the endpoints it changed, and each view's
    edges (`edges`) are recounted only for the connections whose ends, or whatever owns those ends,
    changed, rather than for all of a fleet's (100,000 connections at 100 hosts). Shared by every view.
    """

    def __init__(self, report: Report, failures: dict[str, int] | None = None) -> None:
        self.report = report
        #: Report nodes left out of views because building their view node failed, by kind.
        self.failures: dict[str, int] = {} if failures is None else failures
        self.endpoints = report.topology("endpoint").nodes
        self.processes = report.topology("process").nodes
        self.containers = report.topology("container").nodes
        self.hosts = report.topology("host").nodes
        #: Client endpoint id -> the ids of the endpoints it connects to that are in the report.
        self.connections: dict[str, list[str]] = {}
        self._targets: dict[str, tuple[str, ...]] = {}
        self._clients_of: dict[str, set[str]] = {}
        self._parsed: dict[str, ids.Endpoint | None] = {}
        #: Process id -> the endpoints that name it their parent; container id -> its processes.
        self._endpoints_of: dict[str, set[str]] = {}
        self._owners_of: dict[str, tuple[str, ...]] = {}
        self._processes_of: dict[str, set[str]] = {}
        self._container_of: dict[str, str] = {}
        #: Process id -> what its endpoints' owners read of it: its container and its host. A process
        #: whose metrics moved keeps them, so its endpoints keep their owners and no edge is recounted.
        self._placement: dict[str, tuple[str | None, str | None]] = {}
        #: The containers of the report as last followed: one that came or went moves its processes'
        #: endpoints; one that only changed (its metrics, every report) does not.
        self._container_ids: set[str] = set(self.containers)
        #: Endpoints no process of the report owns: they are placed by addresses (a container's IP, a
        #: host's), so they move when those change; by address and by port, to find those a change of
        #: one container's claims can move.
        self.orphans: set[str] = set()
        self._orphans_at: dict[str, set[str]] = {}
        self._orphans_on_port: dict[int, set[str]] = {}
        #: View nodes by kind and id, with what they were built from (`cached_node`).
        self.rendered: dict[str, dict[str, tuple[Node, tuple[object, ...], RenderedNode]]] = {}
        self.claims = ContainerClaims()
        for container_id, container in self.containers.items():
            self.claims.follow(container_id, container)
        self.host_addresses: dict[str, str] = {}
        #: Host id -> its local networks as last indexed.
        self._host_networks: dict[str, tuple[str, ...]] = {}
        self._local_networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        self._local_cache: dict[str, bool] = {}
        self._edge_indexes: dict[EndpointMapper, EdgeIndex] = {}
        for process in self.processes.values():
            self._add_process(process)
        for node in self.endpoints.values():
            self._link(node)
            self._own(node)
        self._index_hosts()

    def update(self, changed: Collection[tuple[str, str]]) -> None:
        """Follow the report's changes (topology, node id pairs) since the last call."""
        touched: set[str] = set()
        processes: set[str] = set()
        containers: set[str] = set()
        hosts: set[str] = set()
        for topology, node_id in changed:
            if topology == "endpoint":
                touched.add(node_id)
            elif topology == "process":
                processes.add(node_id)
            elif topology == "container":
                containers.add(node_id)
            elif topology == "host":
                hosts.add(node_id)
        dirty = set(touched)
        for node_id in touched:
            dirty.update(self._clients_of.get(node_id, ()))  # a target that came or went
        for node_id in dirty:
            self._unlink(node_id)
            self._disown(node_id)
            node = self.endpoints.get(node_id)
            if node is not None:
                self._link(node)
                self._own(node)
            elif node_id in touched:
                self._parsed.pop(node_id, None)
        moved: set[str] = set()
        for process_id in processes:
            placed = self._placement.get(process_id)
            self._remove_process(process_id)
            process = self.processes.get(process_id)
            if process is not None:
                self._add_process(process)
            if self._placement.get(process_id) != placed:
                moved.add(process_id)
        # A process that came or went (or moved to another container or host) changes its endpoints'
        # owners; a container that came or went, its processes' endpoints'.
        for container_id in containers:
            present = container_id in self.containers
            if present != (container_id in self._container_ids):
                moved.update(self._processes_of.get(container_id, ()))
                if present:
                    self._container_ids.add(container_id)
                else:
                    self._container_ids.discard(container_id)
        for process_id in moved:
            endpoints = tuple(self._endpoints_of.get(process_id, ()))
            dirty.update(endpoints)
            for endpoint_id in endpoints:
                self._disown(endpoint_id)
                node = self.endpoints.get(endpoint_id)
                if node is not None:
                    self._own(node)
        for topology, node_id in changed:
            if node_id not in self.report.nodes(topology):
                for cache in self.rendered.values():
                    cache.pop(node_id, None)
        claimed_ips: set[str] = set()
        claimed_ports: set[tuple[str, int]] = set()
        for container_id in containers:
            ips, ports = self.claims.follow(container_id, self.containers.get(container_id))
            claimed_ips |= ips
            claimed_ports |= ports
        # Orphans are placed by the hosts' addresses (all of them may move) and by the containers'
        # claims (only those on an address or port whose claims changed).
        # Every report moves its host's metrics; only a host that came, went or changed its networks
        # indexes the hosts' addresses again (all of them: it is rare, and a fleet's hosts are few).
        networks_moved = any(self._networks_of(host_id) != self._host_networks.get(host_id) for host_id in hosts)
        addresses_changed = networks_moved and self._index_hosts()
        if not addresses_changed:
            for ip in claimed_ips:
                dirty.update(self._orphans_at.get(ip, ()))
            for port in {port for _, port in claimed_ports}:
                dirty.update(self._orphans_on_port.get(port, ()))
        for index in self._edge_indexes.values():
            index.dirty.update(dirty)
            index.addresses_changed |= addresses_changed

    def edges(self, owner: EndpointMapper) -> EdgeIndex:
        """The edges of a view whose nodes own endpoints as `owner` says, up to date.

        `owner` may read an endpoint, its process, the container the process runs in, and for orphans
        (endpoints no process owns) the hosts' addresses and the containers' claims (`claimant`).
        """
        index = self._edge_indexes.get(owner)
        if index is None:
            index = self._edge_indexes[owner] = EdgeIndex(owner)
            index.rebuild(self)
        else:
            index.refresh(self)
        return index

    def parse(self, endpoint_id: str) -> ids.Endpoint | None:
        """The parts of an endpoint id, parsed once per id."""
        try:
            return self._parsed[endpoint_id]
        except KeyError:
            parsed = self._parsed[endpoint_id] = ids.parse_endpoint_id(endpoint_id)
            return parsed

    def _link(self, node: Node) -> None:
        targets = node.adjacency
        if not targets:
            return
        self._targets[node.id] = targets
        for target in targets:
            clients = self._clients_of.get(target)
            if clients is None:
                clients = self._clients_of[target] = set()
            clients.add(node.id)
        servers = [t for t in targets if t != node.id and t in self.endpoints]
        if servers:
            self.connections[node.id] = servers

    def _unlink(self, node_id: str) -> None:
        self.connections.pop(node_id, None)
        for target in self._targets.pop(node_id, ()):
            clients = self._clients_of.get(target)
            if clients is not None:
                clients.discard(node_id)
                if not clients:
                    del self._clients_of[target]

    def _own(self, node: Node) -> None:
        owners = node.parents.get("process", ())
        if owners:
            self._owners_of[node.id] = owners
            for process_id in owners:
                self._endpoints_of.setdefault(process_id, set()).add(node.id)
        if self.process_of(node) is None:
            self.orphans.add(node.id)
            parsed = self.parse(node.id)
            if parsed is not None:
                self._orphans_at.setdefault(ids.scoped_address(parsed.scope, parsed.addr), set()).add(node.id)
                self._orphans_on_port.setdefault(parsed.port, set()).add(node.id)

    def _disown(self, node_id: str) -> None:
        if node_id in self.orphans:
            self.orphans.discard(node_id)
            parsed = self.parse(node_id)
            if parsed is not None:
                _release(self._orphans_at, ids.scoped_address(parsed.scope, parsed.addr), node_id)
                _release(self._orphans_on_port, parsed.port, node_id)
        for process_id in self._owners_of.pop(node_id, ()):
            endpoints = self._endpoints_of.get(process_id)
            if endpoints is not None:
                endpoints.discard(node_id)
                if not endpoints:
                    del self._endpoints_of[process_id]

    def _add_process(self, process: Node) -> None:
        container_id = process_container(process)
        self._placement[process.id] = (container_id, process.get(HOST_NODE_ID))
        if container_id is not None:
            self._container_of[process.id] = container_id
            self._processes_of.setdefault(container_id, set()).add(process.id)

    def _remove_process(self, process_id: str) -> None:
        self._placement.pop(process_id, None)
        container_id = self._container_of.pop(process_id, None)
        if container_id is not None:
            processes = self._processes_of[container_id]
            processes.discard(process_id)
            if not processes:
                del self._processes_of[container_id]

    def endpoint_ids_of(self, process_id: str) -> Collection[str]:
        """The endpoints a process owns."""
        return self._endpoints_of.get(process_id, ())

    def process_ids_in(self, container_id: str) -> Collection[str]:
        """The processes that run in a container."""
        return self._processes_of.get(container_id, ())

    def _networks_of(self, host_id: str) -> tuple[str, ...] | None:
        """A host's local networks as reported (None: the host is not in the report)."""
        host = self.hosts.get(host_id)
        return None if host is None else host.sets.get(LOCAL_NETWORKS, ())

    def _index_hosts(self) -> bool:
        """Index the hosts' addresses and networks. Returns whether they changed."""
        networks: set[ipaddress.IPv4Network | ipaddress.IPv6Network] = set()
        addresses: dict[str, str] = {}
        self._host_networks = {host_id: host.sets.get(LOCAL_NETWORKS, ()) for host_id, host in self.hosts.items()}
        for host in self.hosts.values():
            for text in host.sets.get(LOCAL_NETWORKS, ()):
                try:
                    interface = ipaddress.ip_interface(text)
                except ValueError:
                    continue
                networks.add(interface.network)
                addresses[str(interface.ip)] = host.id
        ordered = sorted(networks, key=lambda n: (n.version, n.prefixlen))
        if addresses == self.host_addresses and ordered == self._local_networks:
            return False
        #: Which host has which address, for joining a published port to its container.
        self.host_addresses = addresses
        self._local_networks = ordered
        self._local_cache = {}
        return True

    def claimant(self, endpoint: Node) -> str | None:
        """The running container whose address an endpoint is on, or whose published port it is."""
        parsed = self.parse(endpoint.id)
        if parsed is None:
            return None
        found = self.claims.by_ip(ids.scoped_address(parsed.scope, parsed.addr))
        if found is not None:
            return found
        # A published port is reached on an address of its host: a host-scoped one, or one of its own.
        scope_host = ids.scope_host(parsed.scope)
        host = ids.host_id(scope_host) if scope_host else self.host_addresses.get(parsed.addr, "")
        return self.claims.by_port(host, parsed.port)

    def clients_of(self, endpoint_id: str) -> Collection[str]:
        """The endpoints whose adjacency names `endpoint_id`."""
        return self._clients_of.get(endpoint_id, ())

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
        parsed = self.parse(endpoint.id)
        if parsed is None:
            return None
        scope_host = ids.scope_host(parsed.scope)
        host = self.host_addresses.get(parsed.addr)
        if host is not None and (not scope_host or host == ids.host_id(scope_host)):
            return host
        if (scope_host and parsed.addr.startswith("127.")) or parsed.addr == "::1":
            return ids.host_id(scope_host) if scope_host else None
        return None

    def is_local(self, endpoint: Node) -> bool:
        """Whether the address is on a network some host of the report is on (or host-scoped)."""
        parsed = self.parse(endpoint.id)
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

    def pseudo_id(self, endpoint: Node, as_client: bool) -> str | None:
        """The id of the pseudo node an endpoint no probe owns stands as: the Internet, or its address.

        None for a host-scoped address (loopback, a docker bridge) nobody owns: a socket whose process
        has gone, or a connection conntrack saw; a node named 127.0.0.1 would only be noise.
        """
        parsed = self.parse(endpoint.id)
        if parsed is not None and parsed.scope:
            return None
        if not self.is_local(endpoint):
            return INTERNET_IN if as_client else INTERNET_OUT
        return unknown_address_id(parsed.addr if parsed else endpoint.id)

    def pseudo_node(self, pseudo_id: str, endpoint: Node) -> RenderedNode:
        """The pseudo node `pseudo_id` (from `pseudo_id`) for `endpoint`."""
        if pseudo_id in (INTERNET_IN, INTERNET_OUT):
            minor = "Inbound" if pseudo_id == INTERNET_IN else "Outbound"
            return RenderedNode(pseudo_id, "pseudo", INTERNET_LABEL, minor, shape="cloud", pseudo=True)
        parsed = self.parse(endpoint.id)
        addr = parsed.addr if parsed else endpoint.id
        return RenderedNode(pseudo_id, "pseudo", endpoint.get(REVERSE_DNS) or addr, addr, shape="circle", pseudo=True)


#: Maps an endpoint to the id of the view node it belongs to, or None when no real node owns it. A
#: module-level function: it is the key of the view's edge index, kept from one report to the next.
EndpointMapper = Callable[["ConnectionGraph", Node], str | None]
#: Edges of a view by id: client -> server -> what runs along the edge.
Edges = dict[str, dict[str, EdgeInfo]]


class _Tally(EdgeInfo):
    """The connections along one edge, countable down as well as up (by port too)."""

    __slots__ = ("port_counts",)

    def __init__(self) -> None:
        self.port_counts: dict[int, int] = {}
        super().__init__(0, self.port_counts.keys())


class EdgeIndex:
    """One view's edges between the ids owning each connection's ends, kept up to date.

    Each connection's contribution (source id, target id, port) is remembered, so a change recounts
    only the connections whose ends are `dirty`. An end no node owns becomes a pseudo node, but only
    when the other end is owned: two unknown addresses talking is not something a view can place.
    """

    def __init__(self, owner: EndpointMapper) -> None:
        self._owner = owner
        #: Connection -> (source id, target id, port, its edge metadata where it has counters).
        self._counted: dict[tuple[str, str], tuple[str, str, int | None, EdgeMetadata | None]] = {}
        #: Connection -> the most bytes each way it was seen with, for as long as it is in the report: what
        #: it carried since, and only that, adds to its edge's `*_seen` counters; a first sight, to `opened`.
        self._seen: dict[tuple[str, str], tuple[int, int]] = {}
        self._by_endpoint: dict[str, set[tuple[str, str]]] = {}
        #: Source id -> target id -> tally.
        self.tallies: dict[str, dict[str, EdgeInfo]] = {}
        #: Pseudo node id -> the endpoints it stands for, with how many connection ends each.
        self.pseudo: dict[str, dict[str, int]] = {}
        #: Set by the graph: endpoints whose owner may have changed (orphans on an address or port whose
        #: claims changed among them); whether the hosts' addresses, which place every orphan, did.
        self.dirty: set[str] = set()
        self.addresses_changed = False

    def rebuild(self, graph: ConnectionGraph) -> None:
        self._counted.clear()
        self._seen.clear()
        self._by_endpoint.clear()
        self.tallies.clear()
        self.pseudo.clear()
        self.dirty.clear()
        self.addresses_changed = False
        for client_id, servers in graph.connections.items():
            for server_id in servers:
                self._count(graph, client_id, server_id)

    def refresh(self, graph: ConnectionGraph) -> None:
        dirty, self.dirty = self.dirty, set()
        if self.addresses_changed:
            self.addresses_changed = False
            dirty |= graph.orphans
        keys: set[tuple[str, str]] = set()
        for endpoint_id in dirty:
            keys.update(self._by_endpoint.get(endpoint_id, ()))
            for server_id in graph.connections.get(endpoint_id, ()):
                keys.add((endpoint_id, server_id))
            for client_id in graph.clients_of(endpoint_id):
                if endpoint_id in graph.connections.get(client_id, ()):
                    keys.add((client_id, endpoint_id))
        emptied: set[tuple[str, str]] = set()
        for key in keys:
            edge = self._uncount(key)
            if edge is not None:
                emptied.add(edge)
            if key[1] in graph.connections.get(key[0], ()):
                self._count(graph, *key)
            else:
                self._seen.pop(key, None)
        # Only now are edges left without connections dropped: one recounted is the same edge, and keeps
        # its counters of what it carried.
        for source, target in emptied:
            targets = self.tallies.get(source)
            if targets is not None and target in targets and not targets[target].count:
                del targets[target]
                if not targets:
                    del self.tallies[source]

    def _count(self, graph: ConnectionGraph, client_id: str, server_id: str) -> None:
        endpoints = graph.endpoints
        client, server = endpoints[client_id], endpoints[server_id]
        source = self._owner(graph, client)
        target = self._owner(graph, server)
        if source is None and target is None:
            return
        if source is None:
            source = graph.pseudo_id(client, as_client=True)
            if source is None:
                return
            self._hold_pseudo(source, client_id)
        if target is None:
            target = graph.pseudo_id(server, as_client=False)
            if target is None:
                return
            self._hold_pseudo(target, server_id)
        if source == target:
            self._release_pseudo(source, client_id)
            self._release_pseudo(target, server_id)
            return
        parsed = graph.parse(server_id)
        port = parsed.port if parsed is not None else None
        key = (client_id, server_id)
        metadata = client.edges.get(server_id)
        if metadata is not None and metadata.egress_bytes is None and metadata.ingress_bytes is None:
            metadata = None  # not metered
        self._counted[key] = (source, target, port, metadata)
        self._by_endpoint.setdefault(client_id, set()).add(key)
        self._by_endpoint.setdefault(server_id, set()).add(key)
        targets = self.tallies.get(source)
        if targets is None:
            targets = self.tallies[source] = {}
        tally = targets.get(target)
        if tally is None:
            tally = targets[target] = _Tally()
        tally.count += 1
        if port is not None:
            ports = cast(_Tally, tally).port_counts
            ports[port] = ports.get(port, 0) + 1
        seen = self._seen.get(key)
        if seen is None:
            tally.opened += 1
            seen = (0, 0)
        if metadata is not None:
            sent, received = metadata.egress_bytes or 0, metadata.ingress_bytes or 0
            tally.metered += 1
            tally.egress_bytes += sent
            tally.ingress_bytes += received
            tally.egress_packets += metadata.egress_packets or 0
            tally.ingress_packets += metadata.ingress_packets or 0
            tally.egress_seen += max(0, sent - seen[0])
            tally.ingress_seen += max(0, received - seen[1])
            seen = (max(sent, seen[0]), max(received, seen[1]))
        self._seen[key] = seen

    def _uncount(self, key: tuple[str, str]) -> tuple[str, str] | None:
        """Take a connection off its edge; returns the edge (source, target) when that left it empty, to
        be dropped by the caller unless a connection is counted on it again."""
        counted = self._counted.pop(key, None)
        if counted is None:
            return None
        for endpoint_id in key:
            keys = self._by_endpoint.get(endpoint_id)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self._by_endpoint[endpoint_id]
        source, target, port, metadata = counted
        targets = self.tallies[source]
        tally = targets[target]
        tally.count -= 1
        if metadata is not None:
            tally.metered -= 1
            tally.egress_bytes -= metadata.egress_bytes or 0
            tally.ingress_bytes -= metadata.ingress_bytes or 0
            tally.egress_packets -= metadata.egress_packets or 0
            tally.ingress_packets -= metadata.ingress_packets or 0
        if port is not None:
            ports = cast(_Tally, tally).port_counts
            left = ports[port] - 1
            if left:
                ports[port] = left
            else:
                del ports[port]
        self._release_pseudo(source, key[0])
        self._release_pseudo(target, key[1])
        return (source, target) if not tally.count else None

    def _hold_pseudo(self, pseudo_id: str, endpoint_id: str) -> None:
        holders = self.pseudo.get(pseudo_id)
        if holders is None:
            holders = self.pseudo[pseudo_id] = {}
        holders[endpoint_id] = holders.get(endpoint_id, 0) + 1

    def _release_pseudo(self, node_id: str, endpoint_id: str) -> None:
        holders = self.pseudo.get(node_id)
        if holders is None or endpoint_id not in holders:
            return
        if holders[endpoint_id] > 1:
            holders[endpoint_id] -= 1
        else:
            del holders[endpoint_id]
            if not holders:
                del self.pseudo[node_id]

    def edges(self) -> Edges:
        """The edges as views use them: source -> target -> EdgeInfo. Read-only: the index's own."""
        return self.tallies

    def pseudo_nodes(self, graph: ConnectionGraph) -> dict[str, RenderedNode]:
        return {
            pseudo_id: graph.pseudo_node(pseudo_id, graph.endpoints[next(iter(holders))])
            for pseudo_id, holders in self.pseudo.items()
        }


def connected_ids(edges: Edges) -> set[str]:
    """Every id at either end of an edge."""
    found = set(edges)
    for targets in edges.values():
        found.update(targets)
    return found


def cached_node(
    graph: ConnectionGraph,
    kind: str,
    node: Node,
    labels: tuple[object, ...],
    build: Callable[[], RenderedNode],
    metrics: Callable[[], dict[str, Metric]],
) -> RenderedNode | None:
    """The view node of kind `kind` for the report node `node`, built again only when what it is built
    from changed: `labels` (other nodes' labels, the templates; compared by identity first), or `node`
    in more than its metrics and its latest's timestamps, which no view shows. A node whose metrics alone
    moved, as every container's do in every report, keeps what was built and serialised of the rest, and
    only its metrics (`metrics()`: those it shows) are serialised again. A copy each time, with edges and
    children of its own: views of other options hold the earlier copies.

    None when building it fails: decoding checks what it can, but one node no check foresaw must cost
    only itself, never the view. Counted in `graph.failures` and logged (rate-limited)."""
    cache = graph.rendered.get(kind)
    if cache is None:
        cache = graph.rendered[kind] = {}
    hit = cache.get(node.id)
    if hit is not None and hit[1] == labels:
        known, _, view_node = hit
        if known is node:
            return view_node.fresh_copy()
        if _same_but_metrics(known, node):
            shown = metrics()
            if not _same_metrics(view_node.metrics, shown):
                view_node = view_node.with_metrics(shown)
            cache[node.id] = (node, labels, view_node)
            return view_node.fresh_copy()
    try:
        built = build()
        built.summary()
    except Exception:
        key = f"node:{kind}"
        graph.failures[key] = graph.failures.get(key, 0) + 1
        _failures_log.log(key, logging.ERROR, "left %s %r out of the views", kind, node.id[:100], exc_info=True)
        return None
    cache[node.id] = (node, labels, built.fresh_copy())
    return built


def _same_but_metrics(a: Node, b: Node) -> bool:
    """Whether two versions of a report node differ at most in their metrics and their latest's timestamps."""
    if a.id != b.id or a.sets != b.sets or a.parents != b.parents or len(a.latest) != len(b.latest):
        return False
    latest = b.latest
    for key, (_, value) in a.latest.items():
        found = latest.get(key)
        if found is None or found[1] != value:
            return False
    return True


def _same_metrics(a: Mapping[str, Metric], b: Mapping[str, Metric]) -> bool:
    """Whether `a` and `b` hold the same metric objects (a metric that moved is a new one)."""
    return len(a) == len(b) and all(a.get(key) is metric for key, metric in b.items())


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
    own_pseudo: Callable[[str], RenderedNode | None] | None = None,
) -> Edges:
    """Give `nodes` their edges, adding the pseudo nodes the connections need: the Internet and
    addresses, and those that `own_pseudo` makes of ids `owner` gives that are not in `nodes`.
    Returns all the edges."""
    index = graph.edges(owner)
    edges = index.edges()
    nodes.update(index.pseudo_nodes(graph))
    if own_pseudo is not None:
        for node_id in connected_ids(edges) - nodes.keys():
            made = own_pseudo(node_id)
            if made is not None:
                nodes[node_id] = made
    attach_edges(nodes, edges)
    return edges


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
