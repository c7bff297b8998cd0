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
            adjacency=["h1;7", "h1;9"],
            edges={"h1;7": EdgeMetadata(3, 100, None), "h1;9": EdgeMetadata(1, 5000, 300, 7, 5)},
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


def _message(body: bytes, *, encoding: str = "none", **fields: object) -> bytes:
    envelope = {
        "v": wire.FORMAT_VERSION, "probe_id": "p", "host_id": "h", "seq": 1, "sent_at": 1.0,
        "full": True, "base_seq": 0, "encoding": encoding, "report": body, **fields,
    }  # fmt: skip
    return msgpack.packb(envelope, use_bin_type=True)  # type: ignore[no-any-return]


def _records(*records: object) -> bytes:
    """A report body of hand-made records (each packed, then wrapped as a bin)."""
    return b"".join(msgpack.packb(msgpack.packb(r, use_bin_type=True), use_bin_type=True) for r in records)


def test_zip_bomb_is_refused() -> None:
    bomb = zlib.compress(b"\x00" * (wire.MAX_REPORT_BYTES + 10), 9)
    with pytest.raises(DecodeError) as info:
        wire.decode(_message(bomb, encoding="zlib"))
    assert info.value.reason == "too_large"


def test_report_over_the_node_limit_is_refused() -> None:
    many = wire.report_records(Node.build(f"h;{i}", "process") for i in range(wire.MAX_NODES + 1))
    with pytest.raises(DecodeError) as info:
        wire.decode(_message(many))
    assert info.value.reason == "too_many_nodes"


def test_millions_of_empty_maps_in_a_few_kilobytes_cost_nothing() -> None:
    """The attack that took an app from 46 to 618 MiB: a compressed array of millions of empty maps.
    Only bins may stand at the top of a report, so it is refused before one map is built."""
    array = b"\xdd" + (4_000_000).to_bytes(4, "big") + b"\x80" * 4_000_000
    bomb = zlib.compress(array, 9)
    assert len(bomb) < 8_000
    with pytest.raises(DecodeError) as info:
        wire.decode(_message(bomb, encoding="zlib"))
    assert info.value.reason == "malformed"
    good = ["process", "h;1", {}, {}, [], {}, {}, {}]
    inner = zlib.compress(_records(good, [{}] * 100))
    decoded = wire.decode(_message(inner, encoding="zlib"))
    assert decoded.rejected == {"node_malformed": 1}, "a record of 100 maps is one bad node, counted"
    assert list(decoded.report.nodes("process")) == ["h;1"]


@pytest.mark.parametrize(
    ("record", "reason"),
    [
        (["process", "h;1", []], "node_malformed"),
        (["process", "h;1", [{"k": ["ts", "v"]}, {}, None, {}, {}, {}]], "node_malformed"),
        (["process", "h;1", [{}, {"s": "abc"}, None, {}, {}, {}]], "node_malformed"),
        (["process", "h;1", [{}, {}, [1], {}, {}, {}]], "node_malformed"),
        (["process", "h;1", [{}, {}, None, {}, {"m": [0, 1, [1.0]]}, {}]], "node_malformed"),
        (["process", "h;1", [{}, {}, None, {"t": [1e300, None, None]}, {}, {}]], "node_malformed"),
        (["process", "h;²", [{}, {}, None, {}, {}, {}]], "node_bad_id"),
        (["process", "h;1", [{"pid": [1.0, "x"]}, {}, None, {}, {}, {}]], "node_bad_value"),
    ],
)
def test_a_bad_patch_is_left_out_and_counted_and_the_rest_stands(record: list[object], reason: str) -> None:
    good = ["process", "h;2", [{"pid": None, "name": [1.0, "x"]}, {}, None, {}, {}, {}]]
    decoded = wire.decode(_message(_records(good, record), full=False, base_seq=0))
    assert decoded.rejected == {reason: 1}
    assert [patch.id for patch in decoded.patches] == ["h;2"]
    assert decoded.patches[0].latest == {"pid": None, "name": (1.0, "x")}


def test_a_patch_round_trips() -> None:
    patch = wire.NodePatch(
        "process",
        "h1;42",
        latest={"name": (3.0, "nginx"), "gone": None},
        sets={"ips": ("10.0.0.1",), "old": None},
        adjacency=("h1;7",),
        edges={"h1;7": EdgeMetadata(1, 2, None), "h1;8": None, "h1;9": EdgeMetadata(1, 2, 3, 1, 1)},
        metrics={"cpu": Metric((Sample(3.0, 1.0),), 0.0, 100.0), "mem": None},
        parents={"host": ("h1;<host>",), "container": None},
    )
    envelope = Envelope("probe-1", "h1", 8, 1.0, Report(), full=False, base_seq=7, patches=(patch,))
    assert wire.decode(wire.encode(envelope)) == envelope


@pytest.mark.parametrize(
    ("record", "reason"),
    [
        (["process", "id"], "node_malformed"),
        (["process", 1, {}, {}, [], {}, {}, {}], "node_malformed"),
        ([b"process", "h;1", {}, {}, [], {}, {}, {}], "node_malformed"),
        (["process", "h;1", {"k": "not a pair"}, {}, [], {}, {}, {}], "node_malformed"),
        (["process", "h;1", {"k": ["ts", "v"]}, {}, [], {}, {}, {}], "node_malformed"),
        (["process", "h;1", {}, {"s": "abc"}, [], {}, {}, {}], "node_malformed"),
        (["process", "h;1", {}, {}, [1, 2], {}, {}, {}], "node_malformed"),
        (["process", "h;1", {}, {}, [], {"t": [1]}, {}, {}], "node_malformed"),
        (["process", "h;1", {}, {}, [], {"t": [1, -1e300, 0]}, {}, {}], "node_malformed"),
        (["process", "h;1", {}, {}, [], {}, {"m": [0, 1, [1.0]]}, {}], "node_malformed"),
        (["process", "h;1", {}, {}, [], {}, {}, None], "node_malformed"),
        (["process", "h;²", {}, {}, [], {}, {}, {}], "node_bad_id"),
        (["endpoint", ";10.0.0.1;²", {}, {}, [], {}, {}, {}], "node_bad_id"),
        (["endpoint", ";10.0.0.1;70000", {}, {}, [], {}, {}, {}], "node_bad_id"),
        (["host", "h1", {}, {}, [], {}, {}, {}], "node_bad_id"),
        (["host", "h1;<host>", {"uptime": [1.0, "1e400"]}, {}, [], {}, {}, {}], "node_bad_value"),
        (["host", "h1;<host>", {"uptime": [1.0, "9" * 40]}, {}, [], {}, {}, {}], "node_bad_value"),
        (["process", "h;1", {"pid": [1.0, "²"]}, {}, [], {}, {}, {}], "node_bad_value"),
    ],
)
def test_a_bad_node_is_left_out_and_counted_and_the_rest_stands(record: list[object], reason: str) -> None:
    good = ["host", "h1;<host>", {"hostname": [1.0, "h1"]}, {}, [], {}, {}, {}]
    decoded = wire.decode(_message(_records(good, record)))
    assert decoded.rejected == {reason: 1}
    assert list(decoded.report.nodes("host")) == ["h1;<host>"]
    assert "h;1" not in decoded.report.nodes("process")


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
_node_like = (
    st.tuples(st.sampled_from(["process", "host", "endpoint", "x"]), _values).map(list)
    | st.lists(_values, min_size=8, max_size=8)
    | st.tuples(st.just("process"), st.just("h;1"), st.lists(_values, min_size=6, max_size=6)).map(list)
)


@settings(max_examples=300)
@given(st.lists(_node_like | _values, max_size=4), _values)
def test_arbitrary_records_never_raise_anything_but_decode_error(records: list[object], stray: object) -> None:
    with contextlib.suppress(DecodeError):
        wire.decode(_message(_records(*records)))
    with contextlib.suppress(DecodeError):
        wire.decode(_message(_records(*records) + msgpack.packb(stray, use_bin_type=True)))


def test_an_envelope_of_millions_of_lists_is_refused_before_they_are_built() -> None:
    message = msgpack.packb({"v": wire.FORMAT_VERSION, "probe_id": [[]] * 1_000_000}, use_bin_type=True)
    assert len(message) < wire.MAX_MESSAGE_BYTES
    with pytest.raises(DecodeError) as info:
        wire.decode(message)
    assert info.value.reason == "malformed"


def test_removal_records_of_one_topology_add_up() -> None:
    body = _records(*(["process", [f"h;{i}"]] for i in range(50_000)))
    decoded = wire.decode(_message(body, full=False, base_seq=0))
    assert len(decoded.removed["process"]) == 50_000
