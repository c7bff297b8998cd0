"""The wire format round-trips reports and turns every bad message into a DecodeError."""

from __future__ import annotations

import contextlib
import zlib

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scope_common import wire
from scope_common.report import EdgeMetadata, Metric, Node, Report, Sample
from scope_common.wire import DecodeError, Envelope


def _report() -> Report:
    report = Report()
    report.add(
        Node.build(
            "h1;42",
            "process",
            timestamp=10.0,
            latest={"name": "nginx", "pid": 42},
            sets={"ips": ["10.0.0.2", "10.0.0.1"]},
            adjacency=["h1;7"],
            edges={"h1;7": EdgeMetadata(3, 100, None)},
            metrics={"cpu": Metric.from_samples([Sample(9.0, 1.5), Sample(10.0, 2.5)], 100.0)},
            parents={"host": ["h1;<host>"]},
        )
    )
    report.add(Node.build("h1;<host>", "host", latest={"hostname": "h1"}))
    return report


def _envelope(report: Report | None = None) -> Envelope:
    return Envelope("probe-1", "h1", 7, 1234.5, report if report is not None else _report(), "0.1.0")


@pytest.mark.parametrize("compress", [True, False])
def test_round_trip_keeps_everything(compress: bool) -> None:
    decoded = wire.decode(wire.encode(_envelope(), compress=compress))
    assert decoded == _envelope()


def test_unknown_version_is_refused() -> None:
    message = msgpack.packb({"v": 99, "probe_id": "p", "host_id": "h"})
    with pytest.raises(DecodeError) as info:
        wire.decode(message)
    assert info.value.reason == "unknown_version"


def test_oversized_message_is_refused_before_decoding() -> None:
    with pytest.raises(DecodeError) as info:
        wire.decode(b"\x00" * (wire.MAX_MESSAGE_BYTES + 1))
    assert info.value.reason == "too_large"


def test_zip_bomb_is_refused() -> None:
    bomb = zlib.compress(b"\x00" * (wire.MAX_REPORT_BYTES + 10), 9)
    envelope = {
        "v": 1, "probe_id": "p", "host_id": "h", "seq": 1, "sent_at": 1.0,
        "encoding": "zlib", "report": bomb,
    }  # fmt: skip
    with pytest.raises(DecodeError) as info:
        wire.decode(msgpack.packb(envelope, use_bin_type=True))
    assert info.value.reason == "too_large"


def test_report_over_the_node_limit_is_refused() -> None:
    many = {"process": [[f"h;{i}", {}, {}, [], {}, {}, {}] for i in range(wire.MAX_NODES + 1)]}
    with pytest.raises(DecodeError) as info:
        wire.report_from_wire(many)
    assert info.value.reason == "too_many_nodes"


@pytest.mark.parametrize(
    "node",
    [
        ["id"],
        [1, {}, {}, [], {}, {}, {}],
        ["id", {"k": "not a pair"}, {}, [], {}, {}, {}],
        ["id", {"k": ["ts", "v"]}, {}, [], {}, {}, {}],
        ["id", {}, {"s": "abc"}, [], {}, {}, {}],
        ["id", {}, {}, [1, 2], {}, {}, {}],
        ["id", {}, {}, [], {"t": [1]}, {}, {}],
        ["id", {}, {}, [], {}, {"m": [0, 1, [1.0]]}, {}],
        ["id", {}, {}, [], {}, {}, None],
    ],
)
def test_malformed_nodes_are_decode_errors(node: object) -> None:
    with pytest.raises(DecodeError):
        wire.report_from_wire({"process": [node]})


@settings(max_examples=300)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_raise_anything_but_decode_error(data: bytes) -> None:
    with contextlib.suppress(DecodeError):
        wire.decode(data)


_leaves = st.none() | st.integers(-(2**63), 2**63 - 1) | st.floats() | st.text(max_size=5) | st.binary(max_size=5)
_values = st.recursive(
    _leaves,
    lambda inner: st.lists(inner, max_size=7) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
    max_leaves=25,
)
# Node-shaped lists reach the field checks, which random structures rarely do.
_node_like = st.lists(_values, min_size=7, max_size=7)


@settings(max_examples=200)
@given(_values | st.dictionaries(st.text(max_size=8), st.lists(_node_like | _values, max_size=3), max_size=2))
def test_arbitrary_structures_in_the_report_never_raise_anything_but_decode_error(body: object) -> None:
    envelope = {
        "v": 1, "probe_id": "p", "host_id": "h", "seq": 1, "sent_at": 1.0,
        "encoding": "none", "report": msgpack.packb(body, use_bin_type=True),
    }  # fmt: skip
    with contextlib.suppress(DecodeError):
        wire.decode(msgpack.packb(envelope, use_bin_type=True))
