"""The wire format: a versioned msgpack envelope around a compressed stream of node records.

The envelope carries what the app needs before it looks inside the report (who sent it, in which
order, when, and whether it is a full report or a delta), so a probe can be tracked, counted and
forgotten without decoding its nodes.

The report inside is a stream of msgpack `bin` objects, one record each: a node, the ids of nodes a
delta removes, or a patch (what changed in one node a delta does not send whole; see NodePatch).
Records rather than one nested structure, because a decoder then never builds more than one record's
objects at a time: a zlib-compressed msgpack array of millions of empty maps (a few
KB on the wire) would otherwise be allocated whole before any limit could be checked. Each record is
unpacked with limits no larger than its own size, so the memory a message costs is bounded by a
small multiple of its decompressed size, and a bad record costs only itself: it is left out and
counted, the rest of the report stands.

Decoding trusts nothing: anything malformed, oversized or of an unknown version raises `DecodeError`,
which the receive loop counts and logs; it never sees any other exception. There is no pickle anywhere.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import msgpack

from scope_common import ids
from scope_common.report import (
    DATATYPES,
    DURATION,
    FROM_LATEST,
    FROM_PARENT,
    INTEGER_LATEST_KEYS,
    METADATA_SOURCES,
    METRIC_FORMATS,
    NO_TEMPLATES,
    PARENT_TOPOLOGIES,
    PIPE_KINDS,
    TOPOLOGY_NAMES,
    ControlTemplate,
    EdgeMetadata,
    MetadataTemplate,
    Metric,
    MetricTemplate,
    Node,
    Report,
    Sample,
    Templates,
    canonical_samples,
)

FORMAT_VERSION = 2

#: Largest message accepted on the wire. The probe refuses to send more; the app's SUB socket drops
#: more (ZMQ_MAXMSGSIZE) before it is even buffered.
MAX_MESSAGE_BYTES = 8 * 1024 * 1024
#: Largest report once decompressed: bounds the memory a zip bomb can take.
MAX_REPORT_BYTES = 64 * 1024 * 1024
#: Largest number of nodes in one report, all topologies together.
MAX_NODES = 100_000
#: Largest record: one node with all its facts. A container with many labels is a few KB.
MAX_RECORD_BYTES = 256 * 1024
#: Most entries of any container in the envelope itself (a map of ten fields): an 8 MiB envelope of
#: millions of empty lists is refused before one is built.
MAX_HEAD_ITEMS = 32

#: zlib's default: on a probe's deltas (ids and keys that recur across records) it takes a third off
#: what level 1 leaves, for well under a millisecond a message.
COMPRESSION_LEVEL = 6

ENCODING_ZLIB = "zlib"
ENCODING_NONE = "none"


class DecodeError(ValueError):
    """A message that cannot be used. `reason` is a short stable word, used as a counter label."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


class EncodeError(ValueError):
    """A report too large to send."""


@dataclass(frozen=True, slots=True)
class Envelope:
    """One message from a probe: a full report, or a delta on top of the message `base_seq`."""

    probe_id: str
    host_id: str
    seq: int
    sent_at: float
    report: Report
    version: str = ""
    #: A full report replaces all the app holds from this probe; a delta replaces only the nodes it
    #: carries and removes those in `removed`.
    full: bool = True
    #: For a delta, the seq of the message it follows: applied on any other base, the picture would
    #: miss what the lost message carried, so the app then waits for the next full report.
    base_seq: int = 0
    #: Node ids a delta removes, by topology.
    removed: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    #: Records left out while decoding, by reason: a bad node costs itself, not the report.
    rejected: Mapping[str, int] = field(default_factory=dict)
    #: The template records the message carries, by topology: all of the probe's in a full report, those
    #: that changed in a delta (empty ones for templates that went). None, in an envelope built by hand:
    #: the templates of `report`'s topologies. Decoding puts them on `report`'s topologies too (which is
    #: where equality compares them).
    templates: Mapping[str, Templates] | None = field(default=None, compare=False)

    def carried_templates(self) -> Mapping[str, Templates]:
        """The template records this message carries (see `templates`)."""
        if self.templates is not None:
            return self.templates
        return {name: topology.templates for name, topology in self.report.topologies.items() if topology.templates}

    #: A delta's field-level changes to nodes the receiver holds (scope_common.delta applies them).
    patches: tuple[NodePatch, ...] = ()


def encode(envelope: Envelope, *, compress: bool = True) -> bytes:
    """The bytes of one message. Raises EncodeError past MAX_MESSAGE_BYTES."""
    packer = msgpack.Packer(use_bin_type=True)
    records = [packer.pack(node_record(node)) for node in _all_nodes(envelope.report)]
    records.extend(packer.pack([name, list(removed)]) for name, removed in envelope.removed.items() if removed)
    records.extend(packer.pack(templates_record(name, t)) for name, t in envelope.carried_templates().items())
    records.extend(packer.pack(patch_record(patch)) for patch in envelope.patches)
    body = b"".join(packer.pack(record) for record in records)
    if compress:
        body = zlib.compress(body, COMPRESSION_LEVEL)
    message: bytes = msgpack.packb(
        {
            "v": FORMAT_VERSION,
            "probe_id": envelope.probe_id,
            "host_id": envelope.host_id,
            "seq": envelope.seq,
            "sent_at": envelope.sent_at,
            "version": envelope.version,
            "full": envelope.full,
            "base_seq": envelope.base_seq,
            "encoding": ENCODING_ZLIB if compress else ENCODING_NONE,
            "report": body,
        },
        use_bin_type=True,
    )
    if len(message) > MAX_MESSAGE_BYTES:
        raise EncodeError(f"report is {len(message)} bytes, over the {MAX_MESSAGE_BYTES} limit")
    return message


def _all_nodes(report: Report) -> Iterator[Node]:
    for topology in report.topologies.values():
        yield from topology.nodes.values()


@dataclass(frozen=True, slots=True)
class Head:
    """What a message's envelope says of it, without its report: enough to file and share it (a replica
    relays the messages of tenants nobody watches there without decoding their bodies)."""

    probe_id: str
    host_id: str
    seq: int
    sent_at: float
    version: str
    full: bool
    base_seq: int
    encoding: str
    #: The report's bytes as sent (compressed with `encoding`).
    body: bytes


def decode_head(message: bytes) -> Head:
    """The envelope's head in `message`, checked as `decode` checks it (size, version, field types, id
    lengths, encoding) but with the body neither decompressed nor decoded. Raises DecodeError."""
    if len(message) > MAX_MESSAGE_BYTES:
        raise DecodeError("too_large", f"{len(message)} bytes")
    head = _unpack(message, MAX_MESSAGE_BYTES, max_items=MAX_HEAD_ITEMS)
    if not isinstance(head, dict):
        raise DecodeError("malformed", "envelope is not a map")
    if head.get("v") != FORMAT_VERSION:
        raise DecodeError("unknown_version", repr(head.get("v"))[:40])
    try:
        probe_id = _str(head["probe_id"])
        host_id = _str(head["host_id"])
        seq = head["seq"]
        sent_at = head["sent_at"]
        version = _str(head.get("version", ""))
        full = head["full"]
        base_seq = head["base_seq"]
        encoding = head["encoding"]
        body = head["report"]
    except (KeyError, TypeError) as exc:
        raise DecodeError("malformed", f"envelope field {exc}") from None
    if (
        type(seq) is not int
        or type(base_seq) is not int
        or type(full) is not bool
        or not isinstance(body, bytes)
        or type(sent_at) not in (int, float)
        or not math.isfinite(sent_at)
    ):
        raise DecodeError("malformed", "envelope field types")
    if not probe_id or not host_id or len(probe_id) > 128 or len(host_id) > 256:
        raise DecodeError("malformed", "empty or overlong probe or host id")
    if encoding not in (ENCODING_ZLIB, ENCODING_NONE):
        raise DecodeError("malformed", f"unknown encoding {str(encoding)[:20]!r}")
    return Head(probe_id, host_id, seq, float(sent_at), version, full, base_seq, encoding, body)


def decode(message: bytes) -> Envelope:
    """The envelope in `message`. Raises DecodeError, and only DecodeError, when it is unusable."""
    head = decode_head(message)
    body = _decompress(head.body) if head.encoding == ENCODING_ZLIB else head.body
    report, removed, rejected, templates, patches = _decode_records(body)
    return Envelope(
        head.probe_id,
        head.host_id,
        head.seq,
        head.sent_at,
        report,
        head.version,
        head.full,
        head.base_seq,
        removed,
        rejected,
        templates,
        tuple(patches),
    )


def _decompress(body: bytes) -> bytes:
    inflater = zlib.decompressobj()
    try:
        out = inflater.decompress(body, MAX_REPORT_BYTES)
    except zlib.error as exc:
        raise DecodeError("malformed", f"zlib: {exc}") from None
    if inflater.unconsumed_tail:
        raise DecodeError("too_large", "report over the decompressed limit")
    return out


def _unpack(data: bytes, limit: int, *, max_items: int | None = None) -> Any:
    """`data` unpacked, no string or bin longer than `limit` and no container of more than `max_items`
    (default: `limit`) entries."""
    items = limit if max_items is None else max_items
    try:
        return msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=True,
            use_list=True,
            max_str_len=limit,
            max_bin_len=limit,
            max_array_len=items,
            max_map_len=items,
            max_ext_len=0,
        )
    except (ValueError, TypeError, msgpack.UnpackException, RecursionError) as exc:
        raise DecodeError("malformed", f"msgpack: {type(exc).__name__}") from None


def _records(body: bytes) -> Iterator[bytes]:
    """The records of a report body: a stream of bins, and nothing else, so the only objects built
    here are the records' bytes."""
    stream = msgpack.Unpacker(
        raw=False,
        max_buffer_size=max(len(body), 1),
        max_bin_len=MAX_RECORD_BYTES,
        max_str_len=0,
        max_array_len=0,
        max_map_len=0,
        max_ext_len=0,
    )
    stream.feed(body)
    count = 0
    try:
        for record in stream:
            if type(record) is not bytes:
                raise DecodeError("malformed", "report record is not a bin")
            count += 1
            if count > MAX_NODES:
                raise DecodeError("too_many_nodes", f"over {MAX_NODES} records")
            yield record
    except DecodeError:
        raise
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise DecodeError("malformed", f"report stream: {type(exc).__name__}") from None


def _decode_records(
    body: bytes,
) -> tuple[Report, dict[str, tuple[str, ...]], dict[str, int], dict[str, Templates], list[NodePatch]]:
    report = Report()
    removed: dict[str, list[str]] = {}
    rejected: dict[str, int] = {}
    templates: dict[str, Templates] = {}
    patches: list[NodePatch] = []
    for record in _records(body):
        try:
            fields = _unpack(record, len(record))
            if type(fields) is not list:
                raise DecodeError("malformed", "record is not a list")
            if len(fields) == TEMPLATES_RECORD_FIELDS:
                found = templates_from_record(fields, rejected)
                if found is not None:
                    templates[found[0]] = report.topology(found[0]).templates = found[1]
                continue
            if len(fields) == 2:
                name = _str(fields[0])
                removed.setdefault(name, []).extend(_sorted_strs(fields[1]))
                continue
            if len(fields) == PATCH_RECORD_FIELDS:
                patches.append(_patch_from_record(fields, len(record)))
                continue
            node = _node_from_record(fields)
        except DecodeError as exc:
            reason = f"node_{exc.reason}"
            rejected[reason] = rejected.get(reason, 0) + 1
            continue
        report.add(node)
    return report, {name: tuple(sorted(set(ids_))) for name, ids_ in removed.items()}, rejected, templates, patches


def _str(value: object) -> str:
    if type(value) is not str:
        raise DecodeError("malformed", f"expected a string, got {type(value).__name__}")
    return value


# Records are told apart by their length: 2 a removal, 3 a patch, 8 a node.
# A node record is a list, by position: [topology, id, latest, sets, adjacency, edges, metrics, parents].
# latest: {key: [timestamp, value]}; sets/parents: {key: [str...]}; edges: {target: [count, out, in]
# or, with packets counted, [count, out, in, packets out, packets in]};
# metrics: {key: [min, max, [t0, v0, t1, v1, ...]]}.


def node_record(node: Node) -> list[Any]:
    """A node's record (before packing), as laid out above."""
    return [
        node.topology,
        node.id,
        {k: [ts, v] for k, (ts, v) in node.latest.items()},
        {k: list(v) for k, v in node.sets.items()},
        list(node.adjacency),
        {k: _edge_fields(e) for k, e in node.edges.items()},
        {k: _metric_fields(m) for k, m in node.metrics.items()},
        {k: list(v) for k, v in node.parents.items()},
    ]


def _metric_fields(metric: Metric) -> list[Any]:
    """[min, max, [t0, v0, t1, v1, ...]], whole values as integers: a memory figure in bytes packs in
    5 bytes rather than a float's 9 and, its high bytes the same from sample to sample, compresses.
    The decoder makes every value a float again."""
    return [
        _compact(metric.min),
        _compact(metric.max),
        [x for s in metric.samples for x in (s.timestamp, _compact(s.value))],
    ]


def _compact(value: float) -> float | int:
    if type(value) is float and value.is_integer() and -(2**53) <= value <= 2**53:
        return int(value)
    return value


def _node_from_record(fields: list[Any]) -> Node:
    """A node from its record, every field's kind checked, and the well-known ones' values too: a
    node that would break a view (a port `int()` refuses, an uptime too large for a date) is refused
    here, where it costs only itself."""
    if len(fields) != 8:
        raise DecodeError("malformed", f"node record of {len(fields)} fields")
    topology = _str(fields[0])
    node_id = _str(fields[1])
    if not ids.is_valid(topology, node_id):
        raise DecodeError("bad_id", f"{topology[:40]} id {node_id[:80]!r}")
    try:
        latest = {_str(k): (float(_num(ts)), _str(v)) for k, (ts, v) in fields[2].items()}
        node = Node(
            node_id,
            topology,
            latest,
            {_str(k): _sorted_strs(v) for k, v in fields[3].items()},
            _sorted_strs(fields[4]),
            {_str(k): _edge(v) for k, v in fields[5].items()},
            {_str(k): _metric(v) for k, v in fields[6].items()},
            {_str(k): _sorted_strs(v) for k, v in fields[7].items()},
        )
    except DecodeError:
        raise
    except (TypeError, ValueError, AttributeError) as exc:
        raise DecodeError("malformed", f"node in {topology[:40]!r}: {type(exc).__name__}") from None
    _check_integer_keys(latest)
    return node


def _check_integer_keys(latest: Mapping[str, tuple[float, str] | None]) -> None:
    for key, digits in INTEGER_LATEST_KEYS.items():
        entry = latest.get(key)
        if entry is not None and not ids.is_decimal(entry[1], digits):
            raise DecodeError("bad_value", f"{key} {entry[1][:20]!r}")


def _num(value: object) -> float | int:
    """A finite number: NaN would break the orderings that make merging order-independent."""
    kind = type(value)
    if (kind is float or kind is int) and math.isfinite(value):  # type: ignore[arg-type]
        return value  # type: ignore[return-value]
    raise DecodeError("malformed", f"expected a finite number, got {kind.__name__}")


def _optional_int(value: object) -> int | None:
    return None if value is None else _int64(value)


def _int64(value: object) -> int:
    """A whole number msgpack can pack again: a float such as 1e300 would make an integer it cannot,
    and the app packs patched nodes to measure them (scope_common.delta)."""
    number = int(_num(value))
    if not -(2**63) <= number < 2**64:
        raise DecodeError("malformed", "integer out of range")
    return number


def _sorted_strs(values: object) -> tuple[str, ...]:
    if type(values) is not list or not all(type(value) is str for value in values):
        raise DecodeError("malformed", "expected a list of strings")
    return tuple(sorted(set(values)))


def _edge_fields(edge: EdgeMetadata) -> list[int | None]:
    """[count, out, in], and the packets each way only where counted: most edges carry none."""
    fields = [edge.connection_count, edge.egress_bytes, edge.ingress_bytes]
    if edge.egress_packets is not None or edge.ingress_packets is not None:
        fields += [edge.egress_packets, edge.ingress_packets]
    return fields


def _edge(raw: Any) -> EdgeMetadata:
    if type(raw) is not list or len(raw) not in (3, 5):
        raise DecodeError("malformed", "edge")
    return EdgeMetadata(_int64(raw[0]), *(_optional_int(value) for value in raw[1:]))


def _metric(raw: Any) -> Metric:
    low, high, flat = raw
    if not isinstance(flat, list) or len(flat) % 2:
        raise DecodeError("malformed", "metric samples")
    samples = tuple(Sample(float(_num(flat[i])), float(_num(flat[i + 1]))) for i in range(0, len(flat), 2))
    # Canonical order and length, whatever the sender did, so that merging stays order-independent.
    return Metric(canonical_samples(samples), float(_num(low)), float(_num(high)))


# --- Field-level deltas (patch records) ----------------------------------------------------------------
# A node that changed is mostly the same node: a container whose only news is a CPU sample, an endpoint
# that conntrack now sees too. A delta sends such a node as a patch, only the entries that changed.
#
# A patch record: [topology, id, [latest, sets, adjacency, edges, metrics, parents]], each map holding
# only the keys that changed, laid out as in a node record, with nil for a key the node no longer has;
# adjacency is nil when unchanged; metrics carry only new samples (the receiver keeps the earlier ones).

PATCH_RECORD_FIELDS = 3
#: Most bytes a number of a patch may gain packed again here (see `_patch_from_record`).
_WIDENED_NUMBER_BYTES = 12


@dataclass(frozen=True, slots=True)
class NodePatch:
    """What changed in one node since the previous message: set entries, and None for removed keys."""

    topology: str
    id: str
    latest: Mapping[str, tuple[float, str] | None] = field(default_factory=dict)
    sets: Mapping[str, tuple[str, ...] | None] = field(default_factory=dict)
    #: The whole new adjacency, or None when it did not change.
    adjacency: tuple[str, ...] | None = None
    edges: Mapping[str, EdgeMetadata | None] = field(default_factory=dict)
    #: New samples only, with the metric's current range.
    metrics: Mapping[str, Metric | None] = field(default_factory=dict)
    parents: Mapping[str, tuple[str, ...] | None] = field(default_factory=dict)
    #: At most how many bytes `patch_record(patch)` packs into, known without packing it for a decoded
    #: patch (see `_patch_from_record`); None for one built here.
    record_bytes_bound: int | None = field(default=None, compare=False)


def patch_record(patch: NodePatch) -> list[Any]:
    """A patch's record (before packing), as laid out above."""
    return [
        patch.topology,
        patch.id,
        [
            {k: None if e is None else [e[0], e[1]] for k, e in patch.latest.items()},
            {k: None if v is None else list(v) for k, v in patch.sets.items()},
            None if patch.adjacency is None else list(patch.adjacency),
            {k: None if e is None else _edge_fields(e) for k, e in patch.edges.items()},
            {k: None if m is None else _metric_fields(m) for k, m in patch.metrics.items()},
            {k: None if v is None else list(v) for k, v in patch.parents.items()},
        ],
    ]


def _patch_from_record(fields: list[Any], record_bytes: int) -> NodePatch:
    """A patch from its record of `record_bytes`, checked as a node record is.

    Its `record_bytes_bound` is the record's length plus what numbers may gain when packed again here:
    a sender may pack a timestamp in 1 byte (a small integer) that decodes as a float and packs in 9,
    and any other number in 5 (a float32) that packs in 9. So at most 12 bytes more for each latest
    entry, each sample, and each metric's range (min and max, 8). Nothing else packs longer here than
    it may be sent: strings, lists and maps only lose duplicates or gain shorter headers."""
    topology = _str(fields[0])
    node_id = _str(fields[1])
    if not ids.is_valid(topology, node_id):
        raise DecodeError("bad_id", f"{topology[:40]} id {node_id[:80]!r}")
    try:
        latest_, sets, adjacency, edges, metrics, parents = fields[2]
        latest = {_str(k): None if e is None else _latest_entry(*e) for k, e in latest_.items()}
        patch_metrics = {_str(k): None if v is None else _metric(v) for k, v in metrics.items()}
        patch = NodePatch(
            topology,
            node_id,
            latest,
            {_str(k): None if v is None else _sorted_strs(v) for k, v in sets.items()},
            None if adjacency is None else _sorted_strs(adjacency),
            {_str(k): None if v is None else _edge(v) for k, v in edges.items()},
            patch_metrics,
            {_str(k): None if v is None else _sorted_strs(v) for k, v in parents.items()},
            record_bytes
            + _WIDENED_NUMBER_BYTES
            * (len(latest) + sum(1 + len(m.samples) for m in patch_metrics.values() if m is not None)),
        )
    except DecodeError:
        raise
    except (TypeError, ValueError, AttributeError, IndexError) as exc:
        raise DecodeError("malformed", f"patch in {topology[:40]!r}: {type(exc).__name__}") from None
    _check_integer_keys(latest)
    return patch


def _latest_entry(timestamp: object, value: object) -> tuple[float, str]:
    return float(_num(timestamp)), _str(value)


# --- End of field-level deltas ------------------------------------------------------------------------


def report_records(nodes: Iterable[Node]) -> bytes:
    """The uncompressed report body for `nodes`: for tests and tools that build messages by hand."""
    packer = msgpack.Packer(use_bin_type=True)
    return b"".join(packer.pack(packer.pack(node_record(node))) for node in nodes)


# A templates record is a list of four: [topology, metadata rows, metric rows, control rows], each row a
# list by position: metadata [id, label, priority, source, key, datatype, truncate, detail]; metric
# [key, id, label, format, priority]; control [id, human, icon, confirm, pipe, rank].
TEMPLATES_RECORD_FIELDS = 4
#: Most templates of one kind in one topology: a probe sends a dozen or two.
MAX_TEMPLATES = 64
#: Longest id, node field key, label, button text or icon name of a template.
MAX_TEMPLATE_TEXT = 128
#: Longest confirmation question of a control.
MAX_CONFIRM = 512
#: Largest `truncate` of a metadata template.
MAX_TRUNCATE = 4096


def templates_record(topology: str, templates: Templates) -> list[Any]:
    """A topology's templates record (before packing), as laid out above."""
    return [
        topology,
        [
            [t.id, t.label, t.priority, t.source, t.key, t.datatype, t.truncate, t.detail]
            for t in templates.metadata.values()
        ],
        [[t.key, t.id, t.label, t.format, t.priority] for t in templates.metrics.values()],
        [[t.id, t.human, t.icon, t.confirm, t.pipe, t.rank] for t in templates.controls.values()],
    ]


def templates_from_record(fields: list[Any], rejected: dict[str, int]) -> tuple[str, Templates] | None:
    """(topology, templates) from a templates record, or None when the record is unusable. A bad row
    (a wrong kind, an unknown source, an overlong label) is left out and counted in `rejected` as
    `template_<reason>`, the rest of the record stands; a record of too many rows, of an unknown
    topology or not laid out as above is left out whole, counted the same way."""
    try:
        topology = _str(fields[0])
        if topology not in TOPOLOGY_NAMES:
            raise DecodeError("unknown_topology", topology[:40])
        rows = fields[1:]
        if not all(type(kind) is list for kind in rows):
            raise DecodeError("malformed", "template rows are not lists")
        if any(len(kind) > MAX_TEMPLATES for kind in rows):
            raise DecodeError("too_many", f"over {MAX_TEMPLATES} templates of a kind")
    except DecodeError as exc:
        _count(rejected, f"template_{exc.reason}")
        return None
    metadata = _template_rows(rows[0], _metadata_template, rejected)
    metrics = _template_rows(rows[1], _metric_template, rejected)
    controls = _template_rows(rows[2], _control_template, rejected)
    return topology, Templates.build(metadata, metrics, controls) if metadata or metrics or controls else NO_TEMPLATES


def _template_rows(rows: list[Any], parse: Any, rejected: dict[str, int]) -> list[Any]:
    parsed = []
    for row in rows:
        try:
            if type(row) is not list:
                raise DecodeError("malformed", "template row is not a list")
            parsed.append(parse(row))
        except DecodeError as exc:
            _count(rejected, f"template_{exc.reason}")
        except (TypeError, ValueError):
            _count(rejected, "template_malformed")
    return parsed


def _metadata_template(row: list[Any]) -> MetadataTemplate:
    row_id, label, priority, source, key, datatype, truncate, detail = row
    if source not in METADATA_SOURCES or datatype not in DATATYPES or type(detail) is not bool:
        raise DecodeError("malformed", "metadata template source, datatype or detail")
    if type(truncate) is not int or not 0 <= truncate <= MAX_TRUNCATE:
        raise DecodeError("malformed", "metadata template truncate")
    if source == FROM_PARENT and key not in PARENT_TOPOLOGIES:
        raise DecodeError("malformed", "metadata template parent")
    if datatype == DURATION and (source != FROM_LATEST or key not in INTEGER_LATEST_KEYS):
        # A duration is shown from a whole number, which decoding checks only these fields hold.
        raise DecodeError("malformed", "duration template of a field not checked to be a number")
    return MetadataTemplate(
        float(_num(priority)), _text(row_id), _text(label, empty=True), _text(key), source, datatype, truncate, detail
    )


def _metric_template(row: list[Any]) -> MetricTemplate:
    key, row_id, label, fmt, priority = row
    if fmt not in METRIC_FORMATS:
        raise DecodeError("malformed", "metric template format")
    return MetricTemplate(float(_num(priority)), _text(key), _text(row_id), _text(label, empty=True), fmt)


def _control_template(row: list[Any]) -> ControlTemplate:
    control_id, human, icon, confirm, pipe, rank = row
    if pipe not in PIPE_KINDS:
        raise DecodeError("malformed", "control template pipe")
    if len(_str(confirm)) > MAX_CONFIRM:
        raise DecodeError("too_long", "control template confirm")
    return ControlTemplate(float(_num(rank)), _text(control_id), _text(human), _text(icon), confirm, pipe)


def _text(value: object, *, empty: bool = False) -> str:
    """A template's string: not empty (unless `empty`), at most MAX_TEMPLATE_TEXT characters."""
    text = _str(value)
    if len(text) > MAX_TEMPLATE_TEXT:
        raise DecodeError("too_long", f"template text of {len(text)} characters")
    if not text and not empty:
        raise DecodeError("malformed", "empty template id or text")
    return text


def _count(counts: dict[str, int], reason: str) -> None:
    counts[reason] = counts.get(reason, 0) + 1
