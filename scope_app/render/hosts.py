"""The hosts view."""

from __future__ import annotations

from functools import partial

from scope_app.render.base import (
    ConnectionGraph,
    RenderedNode,
    ViewOptions,
    cached_node,
    connect_nodes,
    filter_view,
)
from scope_app.render.templates import metadata_rows, shown_metrics, topology_templates
from scope_common.report import HOST, HOST_NODE_ID, HOSTNAME, KERNEL_VERSION, OS, Node, Templates


def host_node(host: Node, templates: Templates) -> RenderedNode:
    """A host's view node; its rows and metrics are the ones its topology's `templates` name."""
    name = host.get(HOSTNAME) or host.id
    metadata, detail_metadata = metadata_rows(templates, host, {})
    return RenderedNode(
        host.id,
        "host",
        name,
        f"{host.get(OS) or ''} {host.get(KERNEL_VERSION) or ''}".strip(),
        rank=name,
        shape="circle",
        metadata=metadata,
        detail_metadata=detail_metadata,
        metrics=shown_metrics(templates, host),
        metric_templates=templates.metrics,
    )


def host_owner(graph: ConnectionGraph, endpoint: Node) -> str | None:
    return graph.host_of(endpoint)


def render_hosts(graph: ConnectionGraph, options: ViewOptions) -> tuple[dict[str, RenderedNode], int]:
    templates = topology_templates(graph.report, HOST)
    nodes = {
        h.id: node
        for h in graph.hosts.values()
        if (
            node := cached_node(
                graph, "host", h, (templates,), partial(host_node, h, templates), partial(shown_metrics, templates, h)
            )
        )
        is not None
    }
    for container in graph.containers.values():
        host = container.get(HOST_NODE_ID)
        if host in nodes:
            nodes[host].children.setdefault("containers", []).append(container.id)

    connect_nodes(graph, nodes, host_owner)
    return nodes, filter_view(nodes, options, drop_unconnected=False)
