"""The wire format: a versioned msgpack envelope around a compressed msgpack report.

The envelope carries what the app needs before it looks inside the report (who sent it, in which
order, when), so a probe can be tracked, counted and forgotten without decoding its nodes. Decoding
trusts nothing: anything malformed, oversized or of an unknown version raises `DecodeError`, which the
receive loop counts and logs; it never sees any other exception. There is no pickle anywhere.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from typing import Any

import msgpack

from scope_common.report import EdgeMetadata, Metric, Node, Report, Sample, Topology, canonical_samples

FORMAT_VERSION = 1

#: Largest message accepted on the wire. The probe refuses to send more; the app's SUB socket drops
#: more (ZMQ_MAXMSGSIZE) before it is even buffered.
MAX_MESSAGE_BYTES = 8 * 1024 * 1024
#: Largest report once decompressed: bounds the memory a zip bomb can take.
MAX_REPORT_BYTES = 64 * 1024 * 1024
#: Largest number of nodes in one report, all topologies together.
MAX_NODES = 100_000

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
    """One report as sent by a probe."""

    probe_id: str
    host_id: str
    seq: int
    sent_at: float
    report: Report
    version: str = ""


def encode(envelope: Envelope, *, compress: bool = True) -> bytes:
    """The bytes of one message. Raises EncodeError past MAX_MESSAGE_BYTES."""
    body = msgpack.packb(report_to_wire(envelope.report), use_bin_type=True)
    if compress:
        body = zlib.compress(body, 1)
    message: bytes = msgpack.packb(
        {
            "v": FORMAT_VERSION,
            "probe_id": envelope.probe_id,
            "host_id": envelope.host_id,
            "seq": envelope.seq,
            "sent_at": envelope.sent_at,
            "version": envelope.version,
            "encoding": ENCODING_ZLIB if compress else ENCODING_NONE,
            "report": body,
        },
        use_bin_type=True,
    )
    if len(message) > MAX_MESSAGE_BYTES:
        raise EncodeError(f"report is {len(message)} bytes, over the {MAX_MESSAGE_BYTES} limit")
    return message


def decode(message: bytes) -> Envelope:
    """The envelope in `message`. Raises DecodeError, and only DecodeError, when it is unusable."""
    if len(message) > MAX_MESSAGE_BYTES:
        raise DecodeError("too_large", f"{len(message)} bytes")
    head = _unpack(message, MAX_MESSAGE_BYTES)
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
        encoding = head["encoding"]
        body = head["report"]
    except (KeyError, TypeError) as exc:
        raise DecodeError("malformed", f"envelope field {exc}") from None
    if not isinstance(seq, int) or not isinstance(sent_at, int | float) or not isinstance(body, bytes):
        raise DecodeError("malformed", "envelope field types")
    if not probe_id or not host_id:
        raise DecodeError("malformed", "empty probe or host id")
    if encoding == ENCODING_ZLIB:
        body = _decompress(body)
    elif encoding != ENCODING_NONE:
        raise DecodeError("malformed", f"unknown encoding {str(encoding)[:20]!r}")
    report = report_from_wire(_unpack(body, MAX_REPORT_BYTES))
    return Envelope(probe_id, host_id, seq, float(sent_at), report, version)


def _decompress(body: bytes) -> bytes:
    inflater = zlib.decompressobj()
    try:
        out = inflater.decompress(body, MAX_REPORT_BYTES)
    except zlib.error as exc:
        raise DecodeError("malformed", f"zlib: {exc}") from None
    if inflater.unconsumed_tail:
        raise DecodeError("too_large", "report over the decompressed limit")
    return out


def _unpack(data: bytes, limit: int) -> Any:
    try:
        return msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=True,
            use_list=True,
            max_str_len=limit,
            max_bin_len=limit,
            max_array_len=limit,
            max_map_len=limit,
            max_ext_len=0,
        )
    except (ValueError, TypeError, msgpack.UnpackException, RecursionError) as exc:
        raise DecodeError("malformed", f"msgpack: {type(exc).__name__}") from None


def _str(value: object) -> str:
    if type(value) is not str:
        raise DecodeError("malformed", f"expected a string, got {type(value).__name__}")
    return value


# A node on the wire is a list, by position: [id, latest, sets, adjacency, edges, metrics, parents].
# latest: {key: [timestamp, value]}; sets/parents: {key: [str...]}; edges: {target: [count, out, in]};
# metrics: {key: [min, max, [t0, v0, t1, v1, ...]]}.


def report_to_wire(report: Report) -> dict[str, list[list[Any]]]:
    return {name: [_node_to_wire(n) for n in t.nodes.values()] for name, t in report.topologies.items()}


def _node_to_wire(node: Node) -> list[Any]:
    return [
        node.id,
        {k: [ts, v] for k, (ts, v) in node.latest.items()},
        {k: list(v) for k, v in node.sets.items()},
        list(node.adjacency),
        {k: [e.connection_count, e.egress_bytes, e.ingress_bytes] for k, e in node.edges.items()},
        {k: [m.min, m.max, [x for s in m.samples for x in (s.timestamp, s.value)]] for k, m in node.metrics.items()},
        {k: list(v) for k, v in node.parents.items()},
    ]


def report_from_wire(data: object) -> Report:
    """A report from its wire form, checking every field's type. Raises DecodeError."""
    if not isinstance(data, dict):
        raise DecodeError("malformed", "report is not a map")
    total = sum(len(v) for v in data.values() if isinstance(v, list))
    if total > MAX_NODES:
        raise DecodeError("too_many_nodes", f"{total} nodes")
    report = Report()
    for name, nodes in data.items():
        if not isinstance(nodes, list):
            raise DecodeError("malformed", f"topology {str(name)[:40]!r} is not a list")
        topology = Topology(name)
        for raw in nodes:
            node = _node_from_wire(name, raw)
            topology.add(node)
        report.topologies[name] = topology
    return report


def _node_from_wire(topology: str, raw: Any) -> Node:
    try:
        node_id, latest, sets, adjacency, edges, metrics, parents = raw
        return Node(
            _str(node_id),
            topology,
            {_str(k): (float(_num(ts)), _str(v)) for k, (ts, v) in latest.items()},
            {_str(k): _sorted_strs(v) for k, v in sets.items()},
            _sorted_strs(adjacency),
            {_str(k): _edge_from_wire(v) for k, v in edges.items()},
            {_str(k): _metric_from_wire(v) for k, v in metrics.items()},
            {_str(k): _sorted_strs(v) for k, v in parents.items()},
        )
    except DecodeError:
        raise
    except (TypeError, ValueError, AttributeError) as exc:
        raise DecodeError("malformed", f"node in {topology[:40]!r}: {type(exc).__name__}") from None


def _num(value: object) -> float | int:
    """A finite number: NaN would break the orderings that make merging order-independent."""
    kind = type(value)
    if (kind is float or kind is int) and math.isfinite(value):  # type: ignore[arg-type]
        return value  # type: ignore[return-value]
    raise DecodeError("malformed", f"expected a finite number, got {kind.__name__}")


def _optional_int(value: object) -> int | None:
    return None if value is None else int(_num(value))


def _sorted_strs(values: object) -> tuple[str, ...]:
    if type(values) is not list:
        raise DecodeError("malformed", "expected a list of strings")
    unique = set(values)  # TypeError for unhashable items, reported as malformed by the caller
    for value in unique:
        if type(value) is not str:
            raise DecodeError("malformed", "expected a list of strings")
    return tuple(sorted(unique))


def _edge_from_wire(raw: Any) -> EdgeMetadata:
    count, egress, ingress = raw
    return EdgeMetadata(int(_num(count)), _optional_int(egress), _optional_int(ingress))


def _metric_from_wire(raw: Any) -> Metric:
    low, high, flat = raw
    if not isinstance(flat, list) or len(flat) % 2:
        raise DecodeError("malformed", "metric samples")
    samples = tuple(Sample(float(_num(flat[i])), float(_num(flat[i + 1]))) for i in range(0, len(flat), 2))
    # Canonical order and length, whatever the sender did, so that merging stays order-independent.
    return Metric(canonical_samples(samples), float(_num(low)), float(_num(high)))
