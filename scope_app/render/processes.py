"""The processes and processes-by-name views."""

from __future__ import annotations

from functools import partial

from scope_app.render.base import (
    ConnectionGraph,
    RenderedNode,
    ViewOptions,
    attach_edges,
    cached_node,
    connected_ids,
    filter_view,
)
from scope_app.render.group import group_nodes
from scope_app.render.labels import container_label, host_label, host_parent
from scope_app.render.templates import metadata_rows, shown_metrics, topology_templates
from scope_common import ids
from scope_common.report import CONTAINER, HOST, NAME, PID, PROCESS, Node, Templates


def process_node(graph: ConnectionGraph, process: Node, templates: Templates) -> RenderedNode:
    """A process's view node; its rows and metrics are the ones its topology's `templates` name."""
    name = process.get(NAME) or "?"
    host = host_label(graph, process)
    container = container_label(graph, process)
    metadata, detail_metadata = metadata_rows(
        templates, process, {HOST: host, CONTAINER: container[1] if container is not None else ""}
    )
    node = RenderedNode(
        process.id,
        "process",
        name,
        f"{host} ({process.get(PID) or ''})",
        rank=name,
        shape="square",
        metadata=metadata,
        detail_metadata=detail_metadata,
        metrics=shown_metrics(templates, process),
        parents=host_parent(graph, process),
        metric_templates=templates.metrics,
    )
    if container is not None:
        node.parents.append((container[0], container[1], "containers"))
    return node


def process_owner(graph: ConnectionGraph, endpoint: Node) -> str | None:
    process = graph.process_of(endpoint)
    return process.id if process is not None else None


def render_processes(graph: ConnectionGraph, options: ViewOptions) -> tuple[dict[str, RenderedNode], int]:
    index = graph.edges(process_owner)
    edges = index.edges()
    nodes = index.pseudo_nodes(graph)
    # Most processes have no connections and are hidden by default: build nodes only for those shown.
    shown = graph.processes.keys() if options.unconnected else connected_ids(edges) & graph.processes.keys()
    hidden = len(graph.processes) - len(shown)
    templates = topology_templates(graph.report, PROCESS)
    for process_id in shown:
        process = graph.processes[process_id]
        labels = (host_label(graph, process), container_label(graph, process), templates)
        build = partial(process_node, graph, process, templates)
        node = cached_node(graph, "process", process, labels, build, partial(shown_metrics, templates, process))
        if node is not None:
            nodes[process_id] = node
    attach_edges(nodes, edges)
    return nodes, hidden + filter_view(nodes, options, drop_unconnected=True)


def process_name_group_id(name: str) -> str:
    return ids.group_id(name, "process_name")


def render_processes_by_name(graph: ConnectionGraph, options: ViewOptions) -> tuple[dict[str, RenderedNode], int]:
    processes, filtered = render_processes(graph, options)

    def group(node: RenderedNode) -> RenderedNode | None:
        name = node.label_major
        return RenderedNode(process_name_group_id(name), "process", name, rank=name, shape="square")

    grouped = group_nodes(processes, group, child_topology="processes", noun=("process", "processes"))
    return grouped, filtered
