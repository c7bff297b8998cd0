"""Labels and parent links that several views show for the same report nodes."""

from __future__ import annotations

from scope_app.render.base import ConnectionGraph, process_container
from scope_common import ids
from scope_common.report import CONTAINER_NAME, HOST_NODE_ID, HOSTNAME, Node


def host_label(graph: ConnectionGraph, node: Node) -> str:
    """The hostname of the host a node was reported by."""
    host_node_id = node.get(HOST_NODE_ID)
    if host_node_id is None:
        return ""
    host = graph.hosts.get(host_node_id)
    if host is not None:
        return host.get(HOSTNAME) or ""
    return ids.parse_host_id(host_node_id) or host_node_id


def host_parent(graph: ConnectionGraph, node: Node) -> list[tuple[str, str, str]]:
    host_node_id = node.get(HOST_NODE_ID)
    return [(host_node_id, host_label(graph, node), "hosts")] if host_node_id else []


def container_label(graph: ConnectionGraph, process: Node) -> tuple[str, str] | None:
    """(container node id, name) of the container a process runs in, when the report has it."""
    container_node_id = process_container(process)
    if container_node_id is None:
        return None
    container = graph.containers.get(container_node_id)
    if container is None:
        return None
    return container_node_id, container.get(CONTAINER_NAME) or container_node_id[:12]
