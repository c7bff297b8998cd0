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
from scope_common import ids
from scope_common.report import CMDLINE, CPU_USAGE, MEMORY_USAGE, NAME, OPEN_FILES, PID, PPID, THREADS, Node


def process_node(graph: ConnectionGraph, process: Node) -> RenderedNode:
    name = process.get(NAME) or "?"
    host = host_label(graph, process)
    pid = process.get(PID) or ""
    node = RenderedNode(
        process.id,
        "process",
        name,
        f"{host} ({pid})",
        rank=name,
        shape="square",
        metadata=[("pid", "PID", pid), ("host", "Host", host)],
        detail_metadata=[
            ("ppid", "Parent PID", process.get(PPID) or ""),
            ("cmdline", "Command", process.get(CMDLINE) or ""),
            ("threads", "Threads", process.get(THREADS) or ""),
            ("open_files", "Open files", process.get(OPEN_FILES) or ""),
        ],
        metrics={k: m for k, m in process.metrics.items() if k in (CPU_USAGE, MEMORY_USAGE)},
        parents=host_parent(graph, process),
    )
    container = container_label(graph, process)
    if container is not None:
        node.metadata.append(("container", "Container", container[1]))
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
    for process_id in shown:
        process = graph.processes[process_id]
        inputs = (process, host_label(graph, process), container_label(graph, process))
        node = cached_node(graph, "process", process_id, inputs, partial(process_node, graph, process))
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
