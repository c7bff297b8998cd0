"""Grouping a view's nodes into fewer nodes (containers by image, processes by name...)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from scope_app.render.base import EdgeInfo, RenderedNode, sum_metrics


def group_nodes(
    nodes: dict[str, RenderedNode],
    group_of: Callable[[RenderedNode], RenderedNode | None],
    *,
    child_topology: str,
    noun: tuple[str, str],
) -> dict[str, RenderedNode]:
    """One node per group, with the members' edges between groups and their metrics added up.

    `group_of` returns an empty group node for a member (the first one seen per id is kept); pseudo
    nodes stand for themselves. Members are listed as the group's children.
    """
    groups: dict[str, RenderedNode] = {}
    member_group: dict[str, str] = {}
    members: dict[str, list[RenderedNode]] = {}
    for node in nodes.values():
        # A pseudo node stands for itself, as a fresh node: its edges are rebuilt below.
        group = dataclasses.replace(node, edges={}) if node.pseudo else group_of(node)
        if group is None:
            continue
        group = groups.setdefault(group.id, group)
        member_group[node.id] = group.id
        members.setdefault(group.id, []).append(node)
    for node in nodes.values():
        source = member_group.get(node.id)
        if source is None:
            continue
        for target, edge in node.edges.items():
            target_group = member_group.get(target)
            if target_group is None or target_group == source:
                continue
            merged = groups[source].edges.get(target_group)
            groups[source].edges[target_group] = edge.plus(merged) if merged else edge.plus(EdgeInfo())
    for group_id, group in groups.items():
        if group.pseudo:
            continue
        group_members = members[group_id]
        count = len(group_members)
        group.label_minor = f"{count} {noun[0] if count == 1 else noun[1]}"
        group.metrics = sum_metrics(group_members)
        group.metric_templates = group_members[0].metric_templates
        group.children[child_topology] = [m.id for m in group_members]
    return groups
