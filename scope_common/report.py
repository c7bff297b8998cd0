"""The report: what a probe knows about its host, and the rules for merging reports.

A report is a set of topologies of nodes. Probes build one every spy tick; the app keeps the latest
report of every probe and merges them into one picture. Merge is commutative, associative and
idempotent, so the merged picture does not depend on the order reports arrived in, nor on a report
being seen twice: every field has a rule that picks or combines values by their content (a timestamp,
a sorted union, a maximum), never by argument order.

Nodes are immutable once built. Merging returns new nodes only where both sides have one, and shares
the rest, which keeps merging many mostly-disjoint reports cheap.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

# Topology names.
ENDPOINT = "endpoint"
PROCESS = "process"
CONTAINER = "container"
CONTAINER_IMAGE = "container_image"
HOST = "host"
TOPOLOGY_NAMES = (ENDPOINT, PROCESS, CONTAINER, CONTAINER_IMAGE, HOST)

# Well-known `latest` keys.
HOST_NODE_ID = "host_node_id"
HOSTNAME = "hostname"
PID = "pid"
PPID = "ppid"
NAME = "name"
CMDLINE = "cmdline"
THREADS = "threads"
OPEN_FILES = "open_files"
CONTAINER_ID = "docker_container_id"
CONTAINER_NAME = "docker_container_name"
CONTAINER_COMMAND = "docker_container_command"
CONTAINER_CREATED = "docker_container_created"
CONTAINER_HOSTNAME = "docker_container_hostname"
CONTAINER_STATE = "docker_container_state"
CONTAINER_STATE_HUMAN = "docker_container_state_human"
CONTAINER_STARTED = "docker_container_started"
CONTAINER_RESTART_COUNT = "docker_container_restart_count"
CONTAINER_NETWORK_MODE = "docker_container_network_mode"
CONTAINER_PID = "docker_container_pid"
IMAGE_ID = "docker_image_id"
IMAGE_NAME = "docker_image_name"
IMAGE_TAG = "docker_image_tag"
IMAGE_SIZE = "docker_image_size"
LABEL_PREFIX = "docker_label_"
OS = "os"
KERNEL_VERSION = "kernel_version"
UPTIME = "uptime"
CONNTRACKED = "conntracked"
PROCSPIED = "procspied"
REVERSE_DNS = "reverse_dns"
ADDR = "addr"
PORT = "port"

#: Well-known `latest` keys whose values are whole numbers, with the most digits each may have: checked
#: when a report is decoded, so that the views can read them without guarding every use.
INTEGER_LATEST_KEYS = {
    PID: 10,
    PPID: 10,
    THREADS: 10,
    OPEN_FILES: 10,
    UPTIME: 10,
    CONTAINER_PID: 10,
    CONTAINER_RESTART_COUNT: 10,
    IMAGE_SIZE: 15,
    PORT: 5,
}

# Well-known `sets` keys.
#: The host's addresses with their networks, as `10.0.0.5/24`.
LOCAL_NETWORKS = "local_networks"
CONTAINER_IPS = "docker_container_ips"
CONTAINER_PORTS = "docker_container_ports"
CONTAINER_NETWORKS = "docker_container_networks"
CONTAINER_IPS_WITH_SCOPES = "docker_container_ips_with_scopes"

# Well-known metric ids.
CPU_USAGE = "cpu_usage_percent"
MEMORY_USAGE = "memory_usage_bytes"
LOAD1 = "load1"

#: Node fields that name a node's controls: the set holds control ids, the latest value the id of the
#: probe that can perform them.
CONTROLS = "controls"
CONTROL_PROBE_ID = "control_probe_id"

#: Samples kept per metric after a merge. A probe keeps about this many seconds of history for
#: host and container metrics, which is what a sparkline in the UI needs.
MAX_SAMPLES = 20


@dataclass(frozen=True, slots=True)
class Sample:
    """One timestamped metric value."""

    timestamp: float
    value: float


@dataclass(frozen=True, slots=True)
class Metric:
    """Recent samples of one quantity, oldest first, with the range the UI scales it to.

    `min`/`max` are the bounds of the scale, not only of the samples: memory's max is the limit.
    """

    samples: tuple[Sample, ...]
    min: float
    max: float

    @classmethod
    def single(cls, timestamp: float, value: float, max_value: float | None = None) -> Metric:
        return cls((Sample(timestamp, value),), min(0.0, value), value if max_value is None else max_value)

    @classmethod
    def from_samples(cls, samples: Iterable[Sample], max_value: float | None = None) -> Metric:
        ordered = canonical_samples(tuple(samples))
        values = [s.value for s in ordered]
        top = max(values, default=0.0) if max_value is None else max([max_value, *values])
        return cls(ordered, min([0.0, *values]), top)

    @property
    def last(self) -> Sample | None:
        return self.samples[-1] if self.samples else None

    def merge(self, other: Metric) -> Metric:
        if self is other or self == other:
            return self
        return Metric(
            merge_metric_samples(self.samples, other.samples),
            min(self.min, other.min),
            max(self.max, other.max),
        )


def canonical_samples(samples: tuple[Sample, ...]) -> tuple[Sample, ...]:
    """`samples` ordered by time, one per timestamp, at most MAX_SAMPLES."""
    return merge_metric_samples((), samples)


def merge_metric_samples(a: tuple[Sample, ...], b: tuple[Sample, ...]) -> tuple[Sample, ...]:
    """Union by timestamp (the larger value wins a tie), the newest MAX_SAMPLES kept, oldest first.

    Mostly `b` is a probe's new samples after the ones `a` holds, both already in order: the union is
    then the two joined, which is checked (one comparison per sample) rather than rebuilt. Rebuilding
    every sample of every moving metric of every arriving delta was 43 % of the app's time at 100 hosts.
    """
    if not a or not b or a[-1].timestamp < b[0].timestamp:
        joined = a + b
        times = [sample.timestamp for sample in joined]
        if all(map(operator.lt, times, islice(times, 1, None))):
            return joined[-MAX_SAMPLES:]
    by_time: dict[float, float] = {}
    for sample in (*a, *b):
        known = by_time.get(sample.timestamp)
        if known is None or sample.value > known:
            by_time[sample.timestamp] = sample.value
    times = sorted(by_time)[-MAX_SAMPLES:]
    return tuple(Sample(t, by_time[t]) for t in times)


@dataclass(frozen=True, slots=True)
class EdgeMetadata:
    """What is known about the connections along one edge.

    Two probes (client side and server side) usually see the same connections, so merging takes the
    larger figure of each rather than a sum, which would count them twice and break idempotence.
    """

    connection_count: int = 0
    #: Client -> server (egress) and back (ingress), where conntrack's accounting counted them.
    egress_bytes: int | None = None
    ingress_bytes: int | None = None
    egress_packets: int | None = None
    ingress_packets: int | None = None

    def merge(self, other: EdgeMetadata) -> EdgeMetadata:
        if self is other or self == other:
            return self
        return EdgeMetadata(
            max(self.connection_count, other.connection_count),
            _max_optional(self.egress_bytes, other.egress_bytes),
            _max_optional(self.ingress_bytes, other.ingress_bytes),
            _max_optional(self.egress_packets, other.egress_packets),
            _max_optional(self.ingress_packets, other.ingress_packets),
        )


def _max_optional(a: int | None, b: int | None) -> int | None:
    if a is None:
        return b
    if b is None:
        return a
    return max(a, b)


Latest = Mapping[str, tuple[float, str]]


@dataclass(frozen=True, slots=True, eq=True)
class Node:
    """One thing in a topology: a process, a container, an endpoint...

    Build nodes with `Node.build` (which normalises sets and adjacency into sorted tuples) and never
    mutate them: merged reports share node objects.
    """

    id: str
    topology: str
    latest: Mapping[str, tuple[float, str]] = field(default_factory=dict)
    sets: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    adjacency: tuple[str, ...] = ()
    edges: Mapping[str, EdgeMetadata] = field(default_factory=dict)
    metrics: Mapping[str, Metric] = field(default_factory=dict)
    parents: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    @classmethod
    def build(
        cls,
        node_id: str,
        topology: str,
        *,
        timestamp: float = 0.0,
        latest: Mapping[str, object] | None = None,
        sets: Mapping[str, Iterable[str]] | None = None,
        adjacency: Iterable[str] = (),
        edges: Mapping[str, EdgeMetadata] | None = None,
        metrics: Mapping[str, Metric] | None = None,
        parents: Mapping[str, Iterable[str]] | None = None,
    ) -> Node:
        """A node whose `latest` values (any type, stored as strings) are all stamped `timestamp`.

        Values of None are left out, so reporters can pass optional facts without checks.
        """
        return cls(
            node_id,
            topology,
            {k: (timestamp, str(v)) for k, v in (latest or {}).items() if v is not None},
            {k: tuple(sorted(set(v))) for k, v in (sets or {}).items()},
            tuple(sorted(set(adjacency))),
            dict(edges or {}),
            dict(metrics or {}),
            {k: tuple(sorted(set(v))) for k, v in (parents or {}).items()},
        )

    def get(self, key: str, default: str | None = None) -> str | None:
        """The latest value of `key`, or `default`."""
        entry = self.latest.get(key)
        return default if entry is None else entry[1]

    def merge(self, other: Node) -> Node:
        if self is other:
            return self
        if self.topology != other.topology or self.id != other.id:
            raise ValueError(f"cannot merge {self.topology}/{self.id} with {other.topology}/{other.id}")
        return Node(
            self.id,
            self.topology,
            _merge_maps(self.latest, other.latest, _newer),
            _merge_maps(self.sets, other.sets, _sorted_union),
            _sorted_union(self.adjacency, other.adjacency),
            _merge_maps(self.edges, other.edges, EdgeMetadata.merge),
            _merge_maps(self.metrics, other.metrics, Metric.merge),
            _merge_maps(self.parents, other.parents, _sorted_union),
        )


def _newer(a: tuple[float, str], b: tuple[float, str]) -> tuple[float, str]:
    """The entry with the newer timestamp; on a tie the larger value, so that merge is commutative."""
    return a if a >= b else b


def _sorted_union(a: tuple[str, ...], b: tuple[str, ...]) -> tuple[str, ...]:
    if a == b or not b:
        return a
    if not a:
        return b
    return tuple(sorted(set(a).union(b)))


def _merge_maps(a: Mapping[str, Any], b: Mapping[str, Any], combine: Any) -> Mapping[str, Any]:
    if a is b or not b:
        return a
    if not a:
        return b
    merged = dict(a)
    for key, value in b.items():
        mine = merged.get(key)
        merged[key] = value if mine is None else combine(mine, value)
    return merged


# Where a metadata row's value comes from (`MetadataTemplate.source`).
#: `latest[key]`.
FROM_LATEST = "latest"
#: `sets[key]`, joined with ", ".
FROM_SETS = "sets"
#: One row per `latest` key that starts with `key` (a container's labels), in key order: the row's id and
#: label are the template's followed by the rest of the key.
FROM_PREFIX = "prefix"
#: The label of the node's parent in the topology `key` (its host, the container a process runs in):
#: the app knows it from the merged report, no probe does.
FROM_PARENT = "parent"
METADATA_SOURCES = (FROM_LATEST, FROM_SETS, FROM_PREFIX, FROM_PARENT)
#: The parents a FROM_PARENT row may name.
PARENT_TOPOLOGIES = (HOST, CONTAINER)

# How a metadata value is shown (`MetadataTemplate.datatype`).
#: As it is.
TEXT = "text"
#: A Unix time, as an ISO date and time (anything else as it is).
DATETIME = "datetime"
#: Seconds, as a duration (`1 day, 2:03:04`).
DURATION = "duration"
DATATYPES = (TEXT, DATETIME, DURATION)
#: How the UI formats a metric (`MetricTemplate.format`).
METRIC_FORMATS = ("number", "percent", "filesize")
#: What a control's pipe is (`ControlTemplate.pipe`): none, a log stream, a terminal.
PIPE_KINDS = ("", "log", "tty")


@dataclass(frozen=True, slots=True, order=True)
class MetadataTemplate:
    """How one row of a node's details is made from the node: which field, under what label, where.

    Rows are shown by `priority`, then id. Two probes' templates of one id are merged by keeping the
    larger (priority first, then every other field in order): a maximum over a total order, so the
    merge is commutative, associative and idempotent like every other rule here.
    """

    priority: float
    id: str
    label: str
    key: str
    source: str = FROM_LATEST
    datatype: str = TEXT
    #: Characters kept of the value (a container id's first 12); 0 keeps all.
    truncate: int = 0
    #: Shown only in a node's details, not in every view's summary: long or rarely compared values (a
    #: command line) would weigh down views of thousands of nodes.
    detail: bool = False


@dataclass(frozen=True, slots=True, order=True)
class MetricTemplate:
    """How one metric of a node is shown: the node's metric `key` as a row `id` labelled `label`."""

    priority: float
    key: str
    id: str
    label: str
    format: str = "number"


@dataclass(frozen=True, slots=True, order=True)
class ControlTemplate:
    """The button of one control: a node offers a control by carrying its id in `sets[CONTROLS]`, its
    topology's templates say how the button looks. Buttons are shown by `rank`, then id."""

    rank: float
    id: str
    human: str
    icon: str
    #: A question the UI asks before it acts; empty for controls that are easily undone.
    confirm: str = ""
    #: The control answers with a byte stream: "log" (a log pane) or "tty" (a terminal); "" if not.
    pipe: str = ""


@dataclass(frozen=True, slots=True)
class Templates:
    """What a topology's nodes show in their details, carried in the report rather than known to the app:
    metadata rows by id, metrics by metric key, control buttons by control id. Read-only once built."""

    metadata: Mapping[str, MetadataTemplate] = field(default_factory=dict)
    metrics: Mapping[str, MetricTemplate] = field(default_factory=dict)
    controls: Mapping[str, ControlTemplate] = field(default_factory=dict)

    @classmethod
    def build(
        cls,
        metadata: Iterable[MetadataTemplate] = (),
        metrics: Iterable[MetricTemplate] = (),
        controls: Iterable[ControlTemplate] = (),
    ) -> Templates:
        """Templates keyed by id (metrics by key); of two with one id, the larger is kept (see merge)."""
        return cls(
            _by_key(metadata, lambda t: t.id),
            _by_key(metrics, lambda t: t.key),
            _by_key(controls, lambda t: t.id),
        )

    def __bool__(self) -> bool:
        return bool(self.metadata or self.metrics or self.controls)

    def merge(self, other: Templates) -> Templates:
        """The union by id; a conflict keeps the larger template (priority or rank first)."""
        if self is other or not other:
            return self
        if not self:
            return other
        return Templates(
            _merge_maps(self.metadata, other.metadata, max),
            _merge_maps(self.metrics, other.metrics, max),
            _merge_maps(self.controls, other.controls, max),
        )


#: The templates of a topology no probe gave any: shared, so that "none" is one object everywhere.
NO_TEMPLATES = Templates()


def _by_key(templates: Iterable[Any], key: Any) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for template in templates:
        known = found.get(key(template))
        found[key(template)] = template if known is None else max(known, template)
    return found


class Topology:
    """The nodes of one kind, by id, and the templates saying how its nodes are shown."""

    __slots__ = ("name", "nodes", "templates")

    def __init__(self, name: str, nodes: dict[str, Node] | None = None, templates: Templates = NO_TEMPLATES) -> None:
        self.name = name
        self.nodes: dict[str, Node] = nodes if nodes is not None else {}
        self.templates = templates

    def add(self, node: Node) -> None:
        """Add a node, merging it with one of the same id already there."""
        if node.topology != self.name:
            raise ValueError(f"node {node.id} of topology {node.topology} added to {self.name}")
        known = self.nodes.get(node.id)
        self.nodes[node.id] = node if known is None else known.merge(node)

    def merge(self, other: Topology) -> Topology:
        if self is other or (not other.nodes and not other.templates):
            return self
        if not self.nodes and not self.templates:
            return other
        small, large = (self, other) if len(self.nodes) <= len(other.nodes) else (other, self)
        nodes = dict(large.nodes)
        for node_id, node in small.nodes.items():
            known = nodes.get(node_id)
            nodes[node_id] = node if known is None else known.merge(node)
        return Topology(self.name, nodes, self.templates.merge(other.templates))

    def __len__(self) -> int:
        return len(self.nodes)

    def __iter__(self) -> Iterator[Node]:
        return iter(self.nodes.values())

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Topology)
            and self.name == other.name
            and self.nodes == other.nodes
            and self.templates == other.templates
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Topology({self.name!r}, {len(self.nodes)} nodes)"


class Report:
    """Topologies by name. Missing topologies read as empty ones."""

    __slots__ = ("topologies",)

    def __init__(self, topologies: Mapping[str, Topology] | None = None) -> None:
        self.topologies: dict[str, Topology] = dict(topologies or {})

    def topology(self, name: str) -> Topology:
        """The topology called `name`, created empty if absent, so reporters can add to it directly."""
        found = self.topologies.get(name)
        if found is None:
            found = self.topologies[name] = Topology(name)
        return found

    def add(self, node: Node) -> None:
        self.topology(node.topology).add(node)

    def nodes(self, name: str) -> Mapping[str, Node]:
        found = self.topologies.get(name)
        return found.nodes if found is not None else {}

    def templates(self, name: str) -> Templates:
        found = self.topologies.get(name)
        return found.templates if found is not None else NO_TEMPLATES

    def node_count(self) -> int:
        return sum(len(t) for t in self.topologies.values())

    def merge(self, other: Report) -> Report:
        if self is other:
            return self
        merged = dict(self.topologies)
        for name, topology in other.topologies.items():
            mine = merged.get(name)
            merged[name] = topology if mine is None else mine.merge(topology)
        return Report(merged)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Report):
            return False
        names = set(self.topologies) | set(other.topologies)
        return all(self.nodes(n) == other.nodes(n) and self.templates(n) == other.templates(n) for n in names)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        sizes = ", ".join(f"{n}={len(t)}" for n, t in sorted(self.topologies.items()))
        return f"Report({sizes})"


def merge_reports(reports: Iterable[Report]) -> Report:
    """One report holding everything in `reports`.

    An n-way merge: each topology's nodes go into one dict, so merging many reports costs one insert
    per node rather than a copy of the growing result per report. The result shares nodes with the
    inputs and must be treated as read-only.
    """
    merged: dict[str, dict[str, Node]] = {}
    templates: dict[str, Templates] = {}
    for report in reports:
        for name, topology in report.topologies.items():
            templates[name] = templates.get(name, NO_TEMPLATES).merge(topology.templates)
            nodes = merged.get(name)
            if nodes is None:
                merged[name] = dict(topology.nodes)
                continue
            for node_id, node in topology.nodes.items():
                known = nodes.get(node_id)
                nodes[node_id] = node if known is None else known.merge(node)
    return Report({name: Topology(name, nodes, templates[name]) for name, nodes in merged.items()})
