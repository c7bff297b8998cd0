"""Full reports and deltas: what a probe sends, and how the receiving side rebuilds the probe's report.

A probe's report changes little between two publishes: a few connections, some metric samples. So a
probe sends a full report now and then (and whenever an app may have missed one: a new connection,
a dropped message) and, in between, a delta: only the nodes that changed since the previous message,
the ids of those that went, and of each metric only the samples the app has not had yet. The app's
decoding, merging and rendering then all cost what changed, not what exists.

Two rules make "changed" mean something:
- A `latest` value that did not change keeps the timestamp it was first sent with, and a metric whose
  values did not change keeps its samples (for up to `RESEND_METRICS_AFTER`): a probe stamps every
  fact of every report with the time it gathered it, and without this every node would differ from
  its previous version in every report.
- Metric samples accumulate on the receiving side: a node's new version keeps the samples its previous
  version had (newest `MAX_SAMPLES`), so a delta need only carry the new ones.

A node that changed goes in a delta as a patch (wire.NodePatch): only its entries that changed, so a
container with a new CPU sample costs that sample, not its forty labels and facts. New nodes go whole.

`ProbeNodes` is the receiving side: the report of one probe, rebuilt from its messages, and the nodes
each message changed. The same rules apply to full reports, so a full report and the deltas before it
lead to the same picture.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

import msgpack

from scope_common import wire
from scope_common.report import NO_TEMPLATES, Metric, Node, Report, Templates, merge_metric_samples

#: A metric whose values stay the same is still sent again this often, so its samples do not end long
#: before the present.
RESEND_METRICS_AFTER = 10.0

NodeKey = tuple[str, str]  # (topology, node id)
V = TypeVar("V")


class DeltaEncoder:
    """A probe's messages: full reports every `full_every` messages, deltas in between.

    Call `request_full()` when a message may not have reached an app (a new app connected, a message
    was dropped): the next one is then full.
    """

    def __init__(
        self,
        probe_id: str,
        host_id: str,
        version: str = "",
        *,
        full_every: int = 10,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.probe_id = probe_id
        self.host_id = host_id
        self.version = version
        self.full_every = max(1, full_every)
        self._clock = clock
        self._seq = 0
        self._since_full = 0
        self._full_requested = True
        self._sent: dict[NodeKey, Node] = {}
        self._sent_templates: dict[str, Templates] = {}
        self.last_was_full = False

    def request_full(self) -> None:
        self._full_requested = True

    def encode(self, report: Report, sent_at: float | None = None) -> bytes:
        """The next message for `report`. Raises wire.EncodeError (and changes nothing) when too large."""
        stable: dict[NodeKey, Node] = {}
        added: list[Node] = []
        patches: list[wire.NodePatch] = []
        for topology in report.topologies.values():
            for node in topology.nodes.values():
                key = (node.topology, node.id)
                previous = self._sent.get(key)
                if previous is None:
                    stable[key] = node
                    added.append(node)
                    continue
                node = _stabilize(node, previous)
                if node is not previous:
                    patch = node_patch(previous, node)
                    if _changes_nothing(patch):
                        node = previous  # equal, if not the same object (a metric without samples)
                    else:
                        patches.append(patch)
                stable[key] = node
        full = self._full_requested or self._since_full + 1 >= self.full_every
        seq = self._seq + 1
        when = self._clock() if sent_at is None else sent_at
        templates = _templates_of(report)
        if full:
            envelope = wire.Envelope(
                self.probe_id,
                self.host_id,
                seq,
                when,
                _report_of(stable.values()),
                self.version,
                full=True,
                templates=templates,
            )
        else:
            removed: dict[str, list[str]] = {}
            for name, node_id in self._sent.keys() - stable.keys():
                removed.setdefault(name, []).append(node_id)
            envelope = wire.Envelope(
                self.probe_id,
                self.host_id,
                seq,
                when,
                _report_of(added),
                self.version,
                full=False,
                base_seq=self._seq,
                removed={name: tuple(sorted(node_ids)) for name, node_ids in removed.items()},
                templates=_changed_templates(templates, self._sent_templates),
                patches=tuple(patches),
            )
        message = wire.encode(envelope)
        self._seq = seq
        self._sent = stable
        self._sent_templates = templates
        self._since_full = 0 if full else self._since_full + 1
        self._full_requested = False
        self.last_was_full = full
        return message


def _report_of(nodes: Iterable[Node]) -> Report:
    report = Report()
    for node in nodes:
        report.add(node)
    return report


def _templates_of(report: Report) -> dict[str, Templates]:
    return {name: topology.templates for name, topology in report.topologies.items() if topology.templates}


def _changed_templates(templates: dict[str, Templates], sent: dict[str, Templates]) -> dict[str, Templates]:
    """What a delta carries of the templates: those of topologies whose templates changed since the
    last message, empty for those that have none any more. Templates rarely change, so most deltas
    carry none."""
    return {
        name: templates.get(name, NO_TEMPLATES)
        for name in templates.keys() | sent.keys()
        if templates.get(name, NO_TEMPLATES) != sent.get(name, NO_TEMPLATES)
    }


def _stabilize(node: Node, previous: Node) -> Node:
    """`node` with the timestamps and samples of `previous` wherever the values are the same: `previous`
    itself when nothing else differs, which is most nodes of most reports (and then costs no comparison
    of the two afterwards)."""
    if node is previous:
        return previous
    previous_latest = previous.latest
    previous_metrics = previous.metrics
    metrics = {key: _same_metric(metric, previous_metrics.get(key)) for key, metric in node.metrics.items()}
    if (
        len(node.latest) == len(previous_latest)
        and len(metrics) == len(previous_metrics)
        and all(metric is previous_metrics.get(key) for key, metric in metrics.items())
        and node.sets == previous.sets
        and node.adjacency == previous.adjacency
        and node.edges == previous.edges
        and node.parents == previous.parents
        and all(
            (old := previous_latest.get(key)) is not None and old[1] == value for key, (_, value) in node.latest.items()
        )
    ):
        return previous
    latest = {
        key: old if (old := previous_latest.get(key)) is not None and old[1] == entry[1] else entry
        for key, entry in node.latest.items()
    }
    return Node(node.id, node.topology, latest, node.sets, node.adjacency, node.edges, metrics, node.parents)


def _same_metric(metric: Metric, previous: Metric | None) -> Metric:
    """`previous` if `metric` holds the same values (and is not due to be sent again), else `metric`."""
    if metric is previous:
        return previous
    if previous is None or metric.min != previous.min or metric.max != previous.max:
        return metric
    last, previous_last = metric.last, previous.last
    if last is None or previous_last is None or last.timestamp - previous_last.timestamp >= RESEND_METRICS_AFTER:
        return metric
    if last.value != previous_last.value or len(metric.samples) != len(previous.samples):
        return metric  # the usual news, told without comparing every sample
    if [s.value for s in metric.samples] != [s.value for s in previous.samples]:
        return metric
    return previous


# --- Field-level deltas ------------------------------------------------------------------------------


def node_patch(previous: Node, node: Node) -> wire.NodePatch:
    """What turns `previous` into `node` on the receiving side (`patched`): the entries that differ, None
    for keys that went, and of each changed metric only the samples `previous` did not have."""
    metrics: dict[str, Metric | None] = {key: None for key in previous.metrics.keys() - node.metrics.keys()}
    for key, metric in node.metrics.items():
        old = previous.metrics.get(key)
        if old is None:
            metrics[key] = metric
        elif metric is not old and metric != old:
            sent = {s.timestamp for s in old.samples}
            metrics[key] = Metric(tuple(s for s in metric.samples if s.timestamp not in sent), metric.min, metric.max)
    return wire.NodePatch(
        node.topology,
        node.id,
        _changed_entries(previous.latest, node.latest),
        _changed_entries(previous.sets, node.sets),
        None if node.adjacency == previous.adjacency else node.adjacency,
        _changed_entries(previous.edges, node.edges),
        metrics,
        _changed_entries(previous.parents, node.parents),
    )


def _changes_nothing(patch: wire.NodePatch) -> bool:
    return not (
        patch.latest or patch.sets or patch.adjacency is not None or patch.edges or patch.metrics or patch.parents
    )


def _changed_entries(old: Mapping[str, V], new: Mapping[str, V]) -> dict[str, V | None]:
    if old is new or old == new:  # most fields of a changed node: compared in C, values by identity first
        return {}
    changed: dict[str, V | None] = {key: None for key in old.keys() - new.keys()}
    changed.update((key, value) for key, value in new.items() if old.get(key) != value)
    return changed


def patched(node: Node, patch: wire.NodePatch) -> Node:
    """`node` with `patch` applied; the samples of a patched metric are added to those `node` has."""
    metrics = dict(node.metrics)
    for key, metric in patch.metrics.items():
        old = metrics.get(key)
        if metric is None:
            metrics.pop(key, None)
        elif old is None or not old.samples:
            metrics[key] = metric
        else:
            metrics[key] = Metric(merge_metric_samples(old.samples, metric.samples), metric.min, metric.max)
    return Node(
        node.id,
        node.topology,
        _with_entries(node.latest, patch.latest),
        _with_entries(node.sets, patch.sets),
        node.adjacency if patch.adjacency is None else patch.adjacency,
        _with_entries(node.edges, patch.edges),
        metrics,
        _with_entries(node.parents, patch.parents),
    )


def _with_entries(old: Mapping[str, V], changes: Mapping[str, V | None]) -> Mapping[str, V]:
    if not changes:
        return old
    result = dict(old)
    for key, value in changes.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = value
    return result


# --- End of field-level deltas -------------------------------------------------------------------------


def with_earlier_samples(node: Node, previous: Node | None) -> Node:
    """`node` with the samples of `previous` (the same node's last version from the same probe) added."""
    if previous is None or not node.metrics or not previous.metrics:
        return node
    metrics: dict[str, Metric] = {}
    for key, metric in node.metrics.items():
        old = previous.metrics.get(key)
        if old is None or old is metric or not old.samples:
            metrics[key] = metric
        else:
            metrics[key] = Metric(merge_metric_samples(old.samples, metric.samples), metric.min, metric.max)
    return Node(node.id, node.topology, node.latest, node.sets, node.adjacency, node.edges, metrics, node.parents)


@dataclass
class Applied:
    """What one message did to a probe's report: the nodes it added, replaced or removed."""

    #: (topology, id) -> the node's version before the message (None: it is new).
    before: dict[NodeKey, Node | None] = field(default_factory=dict)
    #: Why the message was not used, or "": `stale` (a copy, or older than what was applied),
    #: `missed_delta` (a delta on a base this side does not have, or patching a node it does not hold),
    #: `too_many_nodes` (a delta that would take the report past wire.MAX_NODES), `node_too_large` (a
    #: patch that would make a node larger than one record may be, wire.MAX_RECORD_BYTES).
    refused: str = ""
    full: bool = False
    #: Whether the probe's templates changed (`ProbeNodes.templates`).
    templates_changed: bool = False


class ProbeNodes:
    """One probe's report, rebuilt from its full reports and deltas."""

    def __init__(self) -> None:
        self.nodes: dict[NodeKey, Node] = {}
        #: The probe's templates by topology: replaced by a full report's, topology by topology by a delta's.
        self.templates: dict[str, Templates] = {}
        self.seq = 0
        #: False until a full report arrives, and again after a lost message: deltas are then set aside.
        self.complete = False
        #: Of each node patched since it last came whole: at most how many bytes its record packs into.
        self._record_bytes: dict[NodeKey, int] = {}

    def apply(self, envelope: wire.Envelope) -> Applied:
        """Apply one message; `Applied.before` says which nodes changed (their previous versions)."""
        if envelope.seq <= self.seq:
            # A copy (a probe connected twice to one app delivers each message twice) or out of order.
            return Applied(refused="stale")
        if not envelope.full and (not self.complete or envelope.base_seq != self.seq):
            self.complete = False
            self.seq = envelope.seq
            return Applied(refused="missed_delta")
        incoming: dict[NodeKey, Node] = {}
        for topology in envelope.report.topologies.values():
            for node in topology.nodes.values():
                incoming[(node.topology, node.id)] = node
        if not envelope.full:
            gone = sum((name, node_id) in self.nodes for name, ids in envelope.removed.items() for node_id in ids)
            if len(self.nodes) - gone + len(incoming.keys() - self.nodes.keys()) > wire.MAX_NODES:
                # A report may hold no more nodes than one message may carry, however many deltas
                # build it: memory per probe stays bounded. The probe's next full report starts afresh.
                self.complete = False
                self.seq = envelope.seq
                return Applied(refused="too_many_nodes")
        patched_nodes = {} if envelope.full else self._patched(envelope)
        if patched_nodes is None:
            self.complete = False
            self.seq = envelope.seq
            return Applied(refused="missed_delta")
        patched_bytes = self._patched_record_bytes(patched_nodes)
        if patched_bytes is None:
            # Patches must not grow a node, one entry at a time, past what one record may carry.
            self.complete = False
            self.seq = envelope.seq
            return Applied(refused="node_too_large")
        changes = Applied(full=envelope.full)
        if envelope.full:
            for key in self.nodes.keys() - incoming.keys():
                changes.before[key] = self.nodes.pop(key)
                self._record_bytes.pop(key, None)
        else:
            for topology_name, node_ids in envelope.removed.items():
                for node_id in node_ids:
                    key = (topology_name, node_id)
                    if key not in incoming and key in self.nodes:
                        changes.before[key] = self.nodes.pop(key)
                        self._record_bytes.pop(key, None)
        # After a lost message the samples held may be of a node that went and came back since: a full
        # report then starts afresh rather than guess.
        resume = self.complete and envelope.seq == self.seq + 1
        for key, node in incoming.items():
            previous = self.nodes.get(key)
            if resume:
                node = with_earlier_samples(node, previous)
            if previous is not None and node == previous:
                continue
            changes.before[key] = previous
            self.nodes[key] = node
            self._record_bytes.pop(key, None)
        for key, (_, node) in patched_nodes.items():
            changes.before[key] = self.nodes[key]
            self.nodes[key] = node
        self._record_bytes.update(patched_bytes)
        changes.templates_changed = self._apply_templates(envelope)
        self.seq = envelope.seq
        self.complete = True
        return changes

    def _patched(self, envelope: wire.Envelope) -> dict[NodeKey, tuple[wire.NodePatch, Node]] | None:
        """Each patch of a delta with the node it makes, by key; None when one patches a node this side
        does not hold (or the delta also removes or replaces): the picture differs from the probe's."""
        result: dict[NodeKey, tuple[wire.NodePatch, Node]] = {}
        removed = {(name, node_id) for name, node_ids in envelope.removed.items() for node_id in node_ids}
        for patch in envelope.patches:
            key = (patch.topology, patch.id)
            node = self.nodes.get(key)
            if node is None or key in result or key in removed or patch.id in envelope.report.nodes(patch.topology):
                return None
            result[key] = patch, patched(node, patch)
        return result

    def _patched_record_bytes(
        self, patched_nodes: Mapping[NodeKey, tuple[wire.NodePatch, Node]]
    ) -> dict[NodeKey, int] | None:
        """Of each patched node, at most how many bytes its record packs into; None when one packs into
        more than wire.MAX_RECORD_BYTES.

        Packing a node costs far more than patching it (a container's twenty samples of each metric
        against its one new sample each), so a node is packed only the first time it is patched after it
        came whole, and when its bound nears the limit; the bound of a node patched since is that of its
        previous version plus what the patch may add (`_patch_growth`)."""
        result: dict[NodeKey, int] = {}
        for key, (patch, node) in patched_nodes.items():
            known = self._record_bytes.get(key)
            size = wire.MAX_RECORD_BYTES + 1 if known is None else known + _patch_growth(patch)
            if size > wire.MAX_RECORD_BYTES:
                size = _record_bytes(node)
                if size > wire.MAX_RECORD_BYTES:
                    return None
            result[key] = size
        return result

    def _apply_templates(self, envelope: wire.Envelope) -> bool:
        """Take the message's templates; returns whether the probe's changed."""
        carried = envelope.carried_templates()
        templates = {} if envelope.full else dict(self.templates)
        templates.update(carried)
        templates = {name: found for name, found in templates.items() if found}
        if templates == self.templates:
            return False
        self.templates = templates
        return True

    def report(self) -> Report:
        report = _report_of(self.nodes.values())
        for name, templates in self.templates.items():
            report.topology(name).templates = templates
        return report


#: How much longer a node's record may get than the record of a patch to it: each of the node's five
#: maps may need a longer header (msgpack: 1, 3 or 5 bytes), and each patched metric's list of samples one
#: of 3 bytes rather than 1 (it holds at most 2 * MAX_SAMPLES numbers).
_HEADERS_GROWTH = 5 * 4
_SAMPLES_HEADER_GROWTH = 2


def _record_bytes(node: Node) -> int:
    return len(msgpack.packb(wire.node_record(node), use_bin_type=True))


def _patch_growth(patch: wire.NodePatch) -> int:
    """At most how many bytes `patched(node, patch)`'s record may be longer than `node`'s.

    Each entry of the patch replaces, removes or adds one of the node's, packed as in the patch's record;
    a metric's new samples join those it has, each packed as in the patch. So the node's record grows by
    at most the patch's, but for the headers of its containers."""
    patch_bytes = patch.record_bytes_bound
    if patch_bytes is None:
        patch_bytes = len(msgpack.packb(wire.patch_record(patch), use_bin_type=True))
    return patch_bytes + _HEADERS_GROWTH + _SAMPLES_HEADER_GROWTH * len(patch.metrics)
