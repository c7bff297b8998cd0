"""The hosts view."""

from __future__ import annotations

import datetime
from functools import partial

from scope_app.render.base import (
    ConnectionGraph,
    RenderedNode,
    ViewOptions,
    cached_node,
    connect_nodes,
    filter_view,
)
from scope_common.report import (
    CPU_USAGE,
    HOST_NODE_ID,
    HOSTNAME,
    KERNEL_VERSION,
    LOAD1,
    LOCAL_NETWORKS,
    MEMORY_USAGE,
    OS,
    UPTIME,
    Node,
)


def host_node(host: Node) -> RenderedNode:
    name = host.get(HOSTNAME) or host.id
    uptime = host.get(UPTIME)
    return RenderedNode(
        host.id,
        "host",
        name,
        f"{host.get(OS) or ''} {host.get(KERNEL_VERSION) or ''}".strip(),
        rank=name,
        shape="circle",
        metadata=[
            row
            for row in (
                ("host", "Host", name),
                ("os", "OS", host.get(OS) or ""),
                ("kernel_version", "Kernel", host.get(KERNEL_VERSION) or ""),
                ("uptime", "Uptime", str(datetime.timedelta(seconds=int(uptime))) if uptime else ""),
                ("local_networks", "Networks", ", ".join(host.sets.get(LOCAL_NETWORKS, ()))),
            )
            if row[2]
        ],
        metrics={k: m for k, m in host.metrics.items() if k in (CPU_USAGE, MEMORY_USAGE, LOAD1)},
    )


def host_owner(graph: ConnectionGraph, endpoint: Node) -> str | None:
    return graph.host_of(endpoint)


def render_hosts(graph: ConnectionGraph, options: ViewOptions) -> tuple[dict[str, RenderedNode], int]:
    nodes = {
        h.id: node
        for h in graph.hosts.values()
        if (node := cached_node(graph, "host", h.id, (h,), partial(host_node, h))) is not None
    }
    for container in graph.containers.values():
        host = container.get(HOST_NODE_ID)
        if host in nodes:
            nodes[host].children.setdefault("containers", []).append(container.id)

    connect_nodes(graph, nodes, host_owner)
    return nodes, filter_view(nodes, options, drop_unconnected=False)
