"""Topology views of the merged report, rendered once per merged report and options, then shared.

`Renderer.view(topology, options)` is what the API and the websockets call. The first call after a
new merged report renders; every other caller (each browser, each request) gets the same `View`, whose
JSON is also built once.

A view whose rendering fails anyway (a node that breaks is already left out, `cached_node`) is served
as it was last rendered, or empty, and the connection graph is built afresh for the next render:
whatever went wrong, the API keeps answering. Failures are counted in `Renderer.failures`.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any

from scope_app.render.base import ConnectionGraph, Json, RenderedNode, ViewOptions, metric_json
from scope_app.render.containers import (
    render_containers,
    render_containers_by_hostname,
    render_containers_by_image,
)
from scope_app.render.hosts import render_hosts
from scope_app.render.processes import render_processes, render_processes_by_name
from scope_app.render.templates import node_controls
from scope_common.delta import NodeKey
from scope_common.report import CMDLINE, CONTAINER_NAME, NAME, PID, Report
from scope_common.supervise import RateLimitedLog

log = logging.getLogger(__name__)

RenderFunction = Callable[[ConnectionGraph, ViewOptions], tuple[dict[str, RenderedNode], int]]


@dataclass(frozen=True)
class Topology:
    """A view the API offers."""

    id: str
    name: str
    render: RenderFunction
    options: tuple[str, ...]


TOPOLOGIES: dict[str, Topology] = {
    t.id: t
    for t in (
        Topology("containers", "Containers", render_containers, ("system", "stopped", "pseudo")),
        Topology(
            "containers-by-image",
            "Containers by image",
            render_containers_by_image,
            ("system", "stopped", "pseudo"),
        ),
        Topology(
            "containers-by-hostname",
            "Containers by hostname",
            render_containers_by_hostname,
            ("system", "stopped", "pseudo"),
        ),
        Topology("processes", "Processes", render_processes, ("unconnected", "pseudo")),
        Topology("processes-by-name", "Processes by name", render_processes_by_name, ("unconnected", "pseudo")),
        Topology("hosts", "Hosts", render_hosts, ("pseudo",)),
    )
}

_DEFAULT_OPTIONS = ViewOptions()

#: Views for different option sets are cached side by side; this bounds how many.
MAX_CACHED_VIEWS = 64
#: A view older than the newest report is served again while it is younger than this many times what
#: rendering it cost: rendering then takes at most about a quarter of the app's time, however fast
#: reports arrive and requests come, and a view that is cheap to render is always fresh.
STALE_AFTER_COSTS = 3.0
#: However costly, a view is never served older than this (seconds).
MAX_STALENESS = 2.0
#: The most nodes a view sends, by default (`scope app --max-view-nodes`): a browser draws 5,000 in
#: half a second, and a processes view of a big fleet has hundreds of thousands. Past this a view keeps
#: the most connected nodes and says how many there were (`View.total`); a search narrows it on the server.
MAX_VIEW_NODES = 10_000


@dataclass
class View:
    """One rendered topology: its nodes, their JSON, and the numbers the topology list shows."""

    topology: str
    nodes: dict[str, RenderedNode]
    filtered_nodes: int
    graph: ConnectionGraph
    #: The merged report's version it shows, when it was rendered (monotonic), and what that cost.
    version: int = 0
    rendered_at: float = 0.0
    cost: float = 0.0
    #: How many nodes matched before the cap (`Renderer.max_view_nodes`) cut the view; len(nodes) if not.
    total: int = 0
    _summaries: dict[str, Json] | None = field(default=None, repr=False)
    _json: str | None = field(default=None, repr=False)

    @property
    def summaries(self) -> dict[str, Json]:
        if self._summaries is None:
            self._summaries = {node_id: node.summary() for node_id, node in self.nodes.items()}
        return self._summaries

    @property
    def json(self) -> str:
        """`{"nodes": {...}}`, serialised once however many clients ask, from each node's own JSON."""
        if self._json is None:
            body = ",".join([node.view_entry() for node in self.nodes.values()])
            cut = f',"total":{self.total}' if self.total > len(self.nodes) else ""
            self._json = '{"nodes":{' + body + "}" + cut + "}"
        return self._json

    @property
    def edge_count(self) -> int:
        return sum(len(node.edges) for node in self.nodes.values())

    def details(self, node_id: str) -> Json | None:
        """Everything about one node (docs/design.md, NodeDetails), or None if it is not here."""
        node = self.nodes.get(node_id)
        if node is None:
            return None
        details = dict(self.summaries[node_id])
        details["metrics"] = [
            metric_json(key, metric, node.metric_templates.get(key)) for key, metric in node.metrics.items()
        ]
        details["metadata"] = details["metadata"] + [
            {"id": i, "label": label, "value": v} for i, label, v in node.detail_metadata if v
        ]
        details["connections"] = {
            "in": [
                _connection_row(self.nodes[source], node_id)
                for source in sorted(self.nodes)
                if node_id in self.nodes[source].edges
            ],
            "out": [_connection_row(node, target, self.nodes[target]) for target in sorted(node.edges)],
        }
        details["children"] = [self._children(topology, child_ids) for topology, child_ids in node.children.items()]
        details["controls"] = node_controls(self.graph.report, node_id)
        return details

    def _children(self, topology: str, child_ids: list[str]) -> Json:
        rows: list[Json] = []
        if topology == "processes":
            for child_id in sorted(child_ids):
                process = self.graph.processes.get(child_id)
                if process is not None:
                    rows.append(
                        {
                            "id": child_id,
                            "label": process.get(NAME) or child_id,
                            "metadata": [
                                {"id": "pid", "label": "PID", "value": process.get(PID) or ""},
                                {"id": "cmdline", "label": "Command", "value": process.get(CMDLINE) or ""},
                            ],
                        }
                    )
        else:
            for child_id in sorted(child_ids):
                container = self.graph.containers.get(child_id)
                label = (container.get(CONTAINER_NAME) if container else None) or child_id
                rows.append({"id": child_id, "label": label, "metadata": []})
        return {"topologyId": topology, "label": topology.replace("-", " ").capitalize(), "nodes": rows}


def matching(nodes: dict[str, RenderedNode], search: str) -> dict[str, RenderedNode]:
    """The nodes whose labels or metadata values contain `search` (casefolded), with the edges between
    them."""
    found = {
        node_id: node
        for node_id, node in nodes.items()
        if search in node.label_major.casefold()
        or search in node.label_minor.casefold()
        or any(search in value.casefold() for _, _, value in node.metadata)
    }
    return _keep_edges_within(found)


def most_connected(nodes: dict[str, RenderedNode], limit: int) -> dict[str, RenderedNode]:
    """The `limit` nodes with the most edges (either way), ties by id, with the edges between them."""
    degree = dict.fromkeys(nodes, 0)
    for node_id, node in nodes.items():
        degree[node_id] += len(node.edges)
        for target in node.edges:
            if target in degree:
                degree[target] += 1
    kept = sorted(nodes, key=lambda node_id: (-degree[node_id], node_id))[:limit]
    return _keep_edges_within({node_id: nodes[node_id] for node_id in kept})


def _keep_edges_within(nodes: dict[str, RenderedNode]) -> dict[str, RenderedNode]:
    for node in nodes.values():
        if any(target not in nodes for target in node.edges):
            node.edges = {target: edge for target, edge in node.edges.items() if target in nodes}
    return nodes


def _connection_row(source: RenderedNode, target_id: str, target: RenderedNode | None = None) -> Json:
    edge = source.edges[target_id]
    other = target if target is not None else source
    return {
        "id": other.id,
        "label": other.label_major,
        "port": ", ".join(str(p) for p in sorted(edge.ports)),
        "count": edge.count,
        # Client -> server and back (bytes, packets), over the connections on the edge now; null where none
        # is metered.
        "bytes": [edge.egress_bytes, edge.ingress_bytes] if edge.metered else None,
        "packets": [edge.egress_packets, edge.ingress_packets] if edge.metered else None,
    }


#: The options of a view from query arguments (`show`/`hide`, defaults for the rest); raises ValueError.
view_options = ViewOptions.parse


class Renderer:
    """Caches views of one merged report; `update` moves it to the next report."""

    def __init__(
        self, max_view_nodes: int = MAX_VIEW_NODES, on_render: Callable[[str, float], None] | None = None
    ) -> None:
        self.version = 0
        self.max_view_nodes = max_view_nodes
        self._report = Report()
        self._graph: ConnectionGraph | None = None
        self._views: OrderedDict[tuple[str, ViewOptions, str], View] = OrderedDict()
        self._clock = time.monotonic
        #: Told the topology and the seconds each render took.
        self._on_render = on_render
        #: Nodes left out (`node:<kind>`), views served stale (`view:<topology>`), graph rebuilds (`graph`).
        self.failures: dict[str, int] = {}
        self._log = RateLimitedLog(log)

    def update(self, report: Report, version: int, changed: Collection[NodeKey] = ()) -> None:
        """Move to `report` at `version`. The same report object again (updated in place) with the keys
        of the nodes that `changed` keeps the connection graph, updated; any other report starts afresh."""
        if report is self._report and self._graph is not None:
            try:
                self._graph.update(changed)
            except Exception:
                self._failed("graph", "following the merged report")
        else:
            self._graph = None
            self._views.clear()
        self._report = report
        self.version = version

    @property
    def graph(self) -> ConnectionGraph:
        if self._graph is None:
            self._graph = ConnectionGraph(self._report, self.failures)
        return self._graph

    def _failed(self, key: str, doing: str) -> None:
        """Count and log the exception being handled, and start the graph afresh at the next render."""
        self.failures[key] = self.failures.get(key, 0) + 1
        self._graph = None
        self._log.log(key, logging.ERROR, "%s failed; the views' graph is built afresh", doing, exc_info=True)

    def view(self, topology_id: str, options: ViewOptions, *, max_age: float | None = None, search: str = "") -> View:
        """The view, rendered now unless the one rendered last is of the current report or younger
        than `max_age` seconds (default: `STALE_AFTER_COSTS` times what rendering it cost, at most
        `MAX_STALENESS`).

        Reports arrive all the time in a big fleet, so "rendered for the newest report" would mean
        rendering for every request; a view a few of its own render times old is as good to a person
        and keeps rendering to a share of the app's time. `search` keeps the nodes whose labels or
        metadata contain it (any case). Raises KeyError for an unknown topology.
        """
        topology = TOPOLOGIES[topology_id]
        key = (topology_id, options, search.casefold())
        view = self._views.get(key)
        now = self._clock()
        if view is not None:
            allowed = min(MAX_STALENESS, STALE_AFTER_COSTS * view.cost) if max_age is None else max_age
            if view.version == self.version or now - view.rendered_at <= allowed:
                self._views.move_to_end(key)
                return view
        try:
            graph = self.graph
            nodes, filtered = topology.render(graph, options)
        except Exception:
            self._failed(f"view:{topology_id}", f"rendering {topology_id}")
            return view if view is not None else View(topology_id, {}, 0, ConnectionGraph(Report()))
        if search:
            nodes = matching(nodes, search.casefold())
        total = len(nodes)
        if total > self.max_view_nodes:
            nodes = most_connected(nodes, self.max_view_nodes)
        done = self._clock()
        if self._on_render is not None:
            self._on_render(topology_id, done - now)
        view = self._views[key] = View(topology_id, nodes, filtered, graph, self.version, done, done - now, total)
        self._views.move_to_end(key)
        while len(self._views) > MAX_CACHED_VIEWS:
            self._views.popitem(last=False)
        return view

    def topology_list(self) -> list[dict[str, Any]]:
        """Every topology with its default view's counts."""
        result = []
        for rank, topology in enumerate(TOPOLOGIES.values()):
            view = self.view(topology.id, _DEFAULT_OPTIONS)
            result.append(
                {
                    "id": topology.id,
                    "name": topology.name,
                    "url": f"/api/topology/{topology.id}",
                    "rank": rank,
                    "options": [{"id": o, "default": _DEFAULT_OPTIONS.shown(o)} for o in topology.options],
                    "stats": {
                        "node_count": view.total,
                        "edge_count": view.edge_count,
                        "filtered_nodes": view.filtered_nodes,
                    },
                }
            )
        return result
