"""The merged picture, kept up to date node by node as probes' reports change.

Every app receives every probe's reports, so rebuilding the merge of all of them for each arrival made
one report's cost grow with the fleet (0.3 s per arrival at 100 hosts). Here a probe's new message
changes only the nodes it changed: each node of the merged report remembers which probes contributed
to it, and only a node whose contributions changed is merged again, from its contributors alone
(usually one; two for an address both ends of a connection report). The result is the same report
`merge_reports` builds from scratch (property-tested), plus the list of what changed, which is what
the renderers and the websockets work from.

Templates (how each topology's nodes are shown) are kept per probe too and merged afresh, for the
topologies concerned, whenever a probe's change: they change seldom and are few, so this costs little,
and the merged topology's `templates` is then a new object, which is how the views see the change.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from functools import reduce

from scope_common.delta import NodeKey
from scope_common.report import NO_TEMPLATES, Node, Report, Templates, Topology

#: Who contributed a node. Most nodes have exactly one probe, kept as its id alone: the merged node is then
#: that probe's node, so neither a dict nor a pair is needed (a pair cost 56 bytes a node, and a new one
#: every time the node changed). Else each contributor's node by probe id.
Contributors = str | dict[str, Node]


class MergedReport:
    """The merge of every probe's nodes. `report` is read-only for everyone but this class."""

    def __init__(self) -> None:
        self.report = Report()
        self._contributions: dict[NodeKey, Contributors] = {}
        #: Each probe's templates by topology.
        self._templates: dict[str, Mapping[str, Templates]] = {}

    def update(self, probe_id: str, nodes: Mapping[NodeKey, Node], changed: Iterable[NodeKey]) -> set[NodeKey]:
        """Take `probe_id`'s current `nodes` for the keys in `changed` (absent: the probe dropped it).
        Returns the keys whose merged node changed."""
        merged_changed: set[NodeKey] = set()
        for key in changed:
            if self._contribute(key, probe_id, nodes.get(key)):
                merged_changed.add(key)
        return merged_changed

    def update_templates(self, probe_id: str, templates: Mapping[str, Templates]) -> bool:
        """Take `probe_id`'s current templates. Returns whether the merged templates changed."""
        before = self._templates.pop(probe_id, {})
        if templates:
            self._templates[probe_id] = templates
        return self._merge_templates(before.keys() | templates.keys())

    def remove_probe(self, probe_id: str, keys: Iterable[NodeKey]) -> set[NodeKey]:
        """Drop everything `probe_id` contributed (its nodes' `keys`, its templates). Returns the keys
        of the nodes that changed."""
        self.update_templates(probe_id, {})
        return {key for key in keys if self._contribute(key, probe_id, None)}

    def _merge_templates(self, names: Iterable[str]) -> bool:
        changed = False
        for name in names:
            merged = reduce(
                Templates.merge,
                (self._templates[p].get(name, NO_TEMPLATES) for p in sorted(self._templates)),
                NO_TEMPLATES,
            )
            topology = self.report.topology(name)
            if topology.templates != merged:
                topology.templates = merged
                changed = True
        return changed

    def _contribute(self, key: NodeKey, probe_id: str, node: Node | None) -> bool:
        held = self._contributions.get(key)
        if held is None:
            if node is None:
                return False
            self._contributions[key] = probe_id
            return self._set(key, node)
        if isinstance(held, str):
            if held == probe_id:
                if node is None:
                    del self._contributions[key]
                return self._set(key, node)
            if node is None:
                return False
            held = {held: self.report.topologies[key[0]].nodes[key[1]]}
            self._contributions[key] = held
        if node is None:
            if held.pop(probe_id, None) is None:
                return False
        else:
            joining = probe_id not in held
            held[probe_id] = node
            if joining:
                # Merging is associative and idempotent: a new contributor merges into what is there.
                current = self.report.topologies[key[0]].nodes[key[1]]
                return self._set(key, current.merge(node))
        if len(held) == 1:
            ((only_probe, only_node),) = held.items()
            self._contributions[key] = only_probe
            return self._set(key, only_node)
        # A contribution replaced or withdrawn: merge what is left afresh.
        return self._set(key, reduce(Node.merge, (held[p] for p in sorted(held))))

    def _set(self, key: NodeKey, node: Node | None) -> bool:
        topology_name, node_id = key
        topology = self.report.topologies.get(topology_name)
        if node is None:
            if topology is None or node_id not in topology.nodes:
                return False
            del topology.nodes[node_id]
            return True
        if topology is None:
            topology = self.report.topologies[topology_name] = Topology(topology_name)
        known = topology.nodes.get(node_id)
        if known is node or known == node:
            return False
        topology.nodes[node_id] = node
        return True
