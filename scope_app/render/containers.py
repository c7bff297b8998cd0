"""The containers, containers-by-image and containers-by-hostname views.

A connection reaches a container by one of three ways, tried in order:
1. its endpoint belongs to a process, and the process runs in the container (from /proc);
2. its endpoint names the container as its parent: the probe found the container held the address
   when conntrack saw the connection (the IP may belong to another container by now, so this beats
   it, and a parent that is not in the view, a removed container, joins no container at all); else
   its address is the container's own IP (conntrack saw a connection no process holds any more);
3. its address is one of the host's and its port one the container publishes (`-p`), for connections
   conntrack saw to a published port.
An address or published port claimed by two containers joins neither: a wrong edge is worse than none.
"""

from __future__ import annotations

from functools import partial

from scope_app.render.base import (
    RUNNING_STATES,
    ConnectionGraph,
    RenderedNode,
    ViewOptions,
    cached_node,
    connect_nodes,
    filter_view,
    parse_uncontained_id,
    process_container,
    uncontained_id,
)
from scope_app.render.group import group_nodes
from scope_app.render.labels import host_label, host_parent
from scope_app.render.templates import metadata_rows, shown_metrics, topology_templates
from scope_common import ids
from scope_common.report import (
    CONTAINER,
    CONTAINER_HOSTNAME,
    CONTAINER_ID,
    CONTAINER_NAME,
    CONTAINER_STATE,
    HOST,
    HOST_NODE_ID,
    HOSTNAME,
    IMAGE_NAME,
    LABEL_PREFIX,
    Node,
    Templates,
)

#: Containers of scope itself and of weave are plumbing, hidden unless `system=show`.
SYSTEM_NAMES = ("weavescope", "weave", "weaveproxy", "weavedns", "weavewait", "weaveplugin", "weavevolumes")
SYSTEM_LABEL = ("works.weave.role", "system")


def image_name(container: Node) -> str:
    """The image a container runs, without its tag: what containers-by-image groups by."""
    name = container.get(IMAGE_NAME) or "?"
    slash = name.rfind("/")
    colon = name.rfind(":")
    return name[:colon] if colon > slash else name


def image_group_id(name: str) -> str:
    return ids.group_id(name, "image_name")


def hostname_group_id(name: str) -> str:
    return ids.group_id(name, "container_hostname")


def is_system(container: Node) -> bool:
    name = container.get(CONTAINER_NAME) or ""
    if name in SYSTEM_NAMES or name.startswith("weave"):
        return True
    return container.get(LABEL_PREFIX + SYSTEM_LABEL[0]) == SYSTEM_LABEL[1]


def container_node(graph: ConnectionGraph, container: Node, templates: Templates) -> RenderedNode:
    """A container's view node; its rows and metrics are the ones its topology's `templates` name."""
    name = container.get(CONTAINER_NAME) or (container.get(CONTAINER_ID) or container.id)[:12]
    host = host_label(graph, container)
    image = container.get(IMAGE_NAME) or ""
    state = container.get(CONTAINER_STATE) or ""
    metadata, detail_metadata = metadata_rows(templates, container, {HOST: host})
    parents = host_parent(graph, container)
    if image:
        parents.append((image_group_id(image_name(container)), image_name(container), "containers-by-image"))
    return RenderedNode(
        container.id,
        "container",
        name,
        host,
        rank=image_name(container),
        shape="hexagon",
        metadata=metadata,
        detail_metadata=detail_metadata,
        metrics=shown_metrics(templates, container),
        parents=parents,
        system=is_system(container),
        stopped=state not in RUNNING_STATES,
        metric_templates=templates.metrics,
    )


def container_owner(graph: ConnectionGraph, endpoint: Node) -> str | None:
    """The container (or a host's uncontained pseudo node) an endpoint belongs to."""
    process = graph.process_of(endpoint)
    if process is None:
        claimed = endpoint.parents.get(CONTAINER, ())
        if claimed:
            return claimed[0] if len(claimed) == 1 else None
        owner_id = graph.claimant(endpoint)
        if owner_id is not None:
            return owner_id
        host_node_id = graph.own_address_host(endpoint)
        return uncontained_id(host_node_id) if host_node_id else None
    container_id = process_container(process)
    if container_id is not None and container_id in graph.containers:
        return container_id
    return uncontained_id(process.get(HOST_NODE_ID) or "")


def _uncontained_node(graph: ConnectionGraph, pseudo_id: str) -> RenderedNode | None:
    """The pseudo node of a host's processes outside containers."""
    host_node_id = parse_uncontained_id(pseudo_id)
    if host_node_id is None:
        return None
    host = graph.hosts.get(host_node_id)
    label = (host.get(HOSTNAME) if host else None) or ids.parse_host_id(host_node_id) or host_node_id
    return RenderedNode(
        pseudo_id,
        "pseudo",
        "Uncontained",
        label,
        shape="square",
        pseudo=True,
        parents=[(host_node_id, label, "hosts")],
    )


def render_containers(graph: ConnectionGraph, options: ViewOptions) -> tuple[dict[str, RenderedNode], int]:
    templates = topology_templates(graph.report, CONTAINER)
    nodes = {
        c.id: node
        for c in graph.containers.values()
        if (
            node := cached_node(
                graph,
                "container",
                c,
                (host_label(graph, c), templates),
                partial(container_node, graph, c, templates),
                partial(shown_metrics, templates, c),
            )
        )
        is not None
    }
    for container_id, node in nodes.items():
        processes = graph.process_ids_in(container_id)
        if processes:
            node.children["processes"] = list(processes)
    connect_nodes(graph, nodes, container_owner, lambda i: _uncontained_node(graph, i))
    return nodes, filter_view(nodes, options, drop_unconnected=False)


def render_containers_by_image(graph: ConnectionGraph, options: ViewOptions) -> tuple[dict[str, RenderedNode], int]:
    containers, filtered = render_containers(graph, options)

    def group(node: RenderedNode) -> RenderedNode | None:
        name = node.rank
        return RenderedNode(image_group_id(name), "image", name, rank=name, shape="hexagon")

    return group_nodes(containers, group, child_topology="containers", noun=("container", "containers")), filtered


def render_containers_by_hostname(graph: ConnectionGraph, options: ViewOptions) -> tuple[dict[str, RenderedNode], int]:
    containers, filtered = render_containers(graph, options)

    def group(node: RenderedNode) -> RenderedNode | None:
        container = graph.containers.get(node.id)
        name = (container.get(CONTAINER_HOSTNAME) if container else None) or node.label_major
        return RenderedNode(hostname_group_id(name), "container", name, rank=name, shape="hexagon")

    return group_nodes(containers, group, child_topology="containers", noun=("container", "containers")), filtered
