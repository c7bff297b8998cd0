"""Deltas: a probe's stream of full reports and deltas rebuilds exactly what full reports alone would,
and a lost message leaves the receiver waiting for the next full report rather than wrong."""

from __future__ import annotations

import hashlib
import zlib

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scope_common import wire
from scope_common.delta import DeltaEncoder, ProbeNodes, node_patch, patched
from scope_common.report import EdgeMetadata, Metric, Node, Report, Sample

_NODES = [
    ("process", "h;1"),
    ("process", "h;2"),
    ("process", "h;3"),
    ("host", "h;<host>"),
    ("endpoint", ";10.0.0.1;80"),
    ("endpoint", "h;127.0.0.1;5432"),
    ("container", "abc;<container>"),
]
_values = st.sampled_from(["a", "b", "c"])


def _series(node_id: str, key: str, t: int, wobble: int) -> float:
    """A metric's value at time `t`: the same whichever report carries it, as a real probe's history is."""
    return float(zlib.crc32(f"{node_id}{key}{t}".encode()) % (wobble + 1))


@st.composite
def _report(draw: st.DrawFn, t: int) -> Report:
    report = Report()
    for topology, node_id in draw(st.lists(st.sampled_from(_NODES), unique=True, max_size=len(_NODES))):
        metrics = {}
        for key in draw(st.lists(st.sampled_from(["cpu", "mem"]), unique=True, max_size=2)):
            window = draw(st.integers(1, 4))
            wobble = 3 if key == "cpu" else 0  # memory stays flat: a value that does not change
            samples = [Sample(float(s), _series(node_id, key, s, wobble)) for s in range(t - window + 1, t + 1)]
            metrics[key] = Metric.from_samples(samples, 100.0)
        report.add(
            Node.build(
                node_id,
                topology,
                timestamp=float(t),
                latest={"name": draw(_values), "state": draw(st.none() | _values)},
                sets={
                    key: draw(st.lists(_values, max_size=2)) for key in draw(st.sets(st.sampled_from(["ips", "ports"])))
                },
                adjacency=draw(st.lists(st.sampled_from([n for _, n in _NODES]), max_size=2)),
                edges={
                    target: EdgeMetadata(draw(st.integers(0, 2)), draw(st.none() | st.integers(0, 2)))
                    for target in draw(st.sets(st.sampled_from([n for _, n in _NODES]), max_size=2))
                },
                metrics=metrics,
                parents={key: [draw(_values)] for key in draw(st.sets(st.sampled_from(["host", "container"])))},
            )
        )
    return report


@st.composite
def _reports(draw: st.DrawFn) -> list[Report]:
    count = draw(st.integers(1, 8))
    times = sorted(draw(st.lists(st.integers(1, 60), min_size=count, max_size=count, unique=True)))
    return [draw(_report(t)) for t in times]


def _received(encoder: DeltaEncoder, reports: list[Report], lost: frozenset[int] = frozenset()) -> list[ProbeNodes]:
    """The receiver's state after each report; messages whose index is in `lost` never arrive."""
    receiver = ProbeNodes()
    states = []
    for i, report in enumerate(reports):
        message = encoder.encode(report, sent_at=float(i))
        if i not in lost:
            receiver.apply(wire.decode(message))
        snapshot = ProbeNodes()
        snapshot.nodes = dict(receiver.nodes)
        snapshot.complete = receiver.complete
        states.append(snapshot)
    return states


@settings(max_examples=150, deadline=None)
@given(_reports())
def test_deltas_rebuild_what_full_reports_alone_would(reports: list[Report]) -> None:
    with_deltas = _received(DeltaEncoder("p", "h", full_every=1000), reports)
    fulls_only = _received(DeltaEncoder("p", "h", full_every=1), reports)
    for delta_state, full_state in zip(with_deltas, fulls_only, strict=True):
        assert delta_state.complete
        assert delta_state.nodes == full_state.nodes


@settings(max_examples=150, deadline=None)
@given(_reports())
def test_the_receiver_holds_the_latest_facts_of_every_node(reports: list[Report]) -> None:
    state = _received(DeltaEncoder("p", "h", full_every=3), reports)[-1]
    last = reports[-1]
    expected = {(n.topology, n.id): n for t in last.topologies.values() for n in t.nodes.values()}
    assert state.nodes.keys() == expected.keys()
    for key, node in state.nodes.items():
        sent = expected[key]
        assert {k: v for k, (_, v) in node.latest.items()} == {k: v for k, (_, v) in sent.latest.items()}
        assert (node.sets, node.adjacency, node.parents) == (sent.sets, sent.adjacency, sent.parents)
        for name, metric in sent.metrics.items():
            assert metric.last is not None
            kept = {s.timestamp: s.value for s in node.metrics[name].samples}
            assert kept.get(metric.last.timestamp, metric.last.value) == metric.last.value


@settings(max_examples=100, deadline=None)
@given(_reports(), st.integers(1, 7))
def test_a_lost_delta_sets_deltas_aside_until_the_next_full_report(reports: list[Report], lost: int) -> None:
    """Until the next full report the receiver keeps what it had; from then on it holds what a receiver
    that joined at that full report (an app started then) holds."""
    full_every = 4
    states = _received(DeltaEncoder("p", "h", full_every=full_every), reports, lost=frozenset({lost}))
    next_full = (lost // full_every + 1) * full_every  # fulls are messages 0, 4, 8, ...
    joined = _received(DeltaEncoder("p", "h", full_every=full_every), reports, lost=frozenset(range(next_full)))
    for i, state in enumerate(states):
        if i == lost:
            assert state.nodes == states[i - 1].nodes, "nothing arrived: the receiver has what it had"
        elif lost < i < next_full:
            assert not state.complete, "a delta after a lost message is set aside"
        elif i >= next_full:
            assert state.complete
            assert state.nodes == joined[i].nodes


def test_a_quiet_probe_sends_small_deltas() -> None:
    encoder = DeltaEncoder("p", "h", full_every=10)
    sizes = []
    for t in range(5):
        report = Report()
        for pid in range(200):
            report.add(Node.build(f"h;{pid}", "process", timestamp=float(t), latest={"name": "sleep", "pid": pid}))
        sizes.append(len(encoder.encode(report)))
    assert sizes[0] > 1_000
    assert max(sizes[1:]) < 200, "unchanged nodes are not sent again, whatever their timestamps"


def test_a_copy_of_a_message_changes_nothing() -> None:
    encoder = DeltaEncoder("p", "h", full_every=10)
    receiver = ProbeNodes()
    first = encoder.encode(Report())
    report = Report()
    report.add(Node.build("h;1", "process", latest={"name": "x"}))
    second = encoder.encode(report)
    for message in (first, second, second, first):
        receiver.apply(wire.decode(message))
    assert receiver.complete
    assert list(receiver.nodes) == [("process", "h;1")]


def test_deltas_cannot_grow_a_report_past_the_node_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each delta may carry up to the limit; many of them must not add up past it."""
    monkeypatch.setattr(wire, "MAX_NODES", 5)
    encoder = DeltaEncoder("p", "h", full_every=1000)
    receiver = ProbeNodes()
    report = Report()
    applied = []
    for pid in range(8):
        report.add(Node.build(f"h;{pid}", "process", latest={"name": "x"}))
        applied.append(receiver.apply(wire.decode(encoder.encode(report))).refused)
    assert applied[:5] == [""] * 5
    assert applied[5] == "too_many_nodes"
    assert len(receiver.nodes) == 5
    assert not receiver.complete, "what follows waits for a full report"


@settings(max_examples=200, deadline=None)
@given(_report(5), _report(6))
def test_a_patch_turns_a_node_into_its_next_version(before: Report, after: Report) -> None:
    """Field-level deltas: whatever changed between two versions of a node (keys added, changed or gone
    in every field, metrics with new samples), the patch rebuilds the new version on the receiver, where
    metric samples accumulate as they do for whole nodes."""
    for topology in after.topologies.values():
        for node in topology.nodes.values():
            previous = before.nodes(node.topology).get(node.id)
            if previous is None:
                continue
            rebuilt = patched(previous, _round_trip(node_patch(previous, node)))
            assert rebuilt == _accumulated(node, previous)


def _round_trip(patch: wire.NodePatch) -> wire.NodePatch:
    envelope = wire.Envelope("p", "h", 2, 0.0, Report(), full=False, base_seq=1, patches=(patch,))
    (decoded,) = wire.decode(wire.encode(envelope)).patches
    return decoded


def _accumulated(node: Node, previous: Node) -> Node:
    """`node` with the samples the receiver also keeps from `previous`."""
    receiver = ProbeNodes()
    receiver.apply(wire.Envelope("p", "h", 1, 0.0, _one(previous)))
    receiver.apply(wire.Envelope("p", "h", 2, 0.0, _one(node)))
    return receiver.nodes[(node.topology, node.id)]


def _one(node: Node) -> Report:
    report = Report()
    report.add(node)
    return report


def test_a_changed_node_sends_only_what_changed() -> None:
    labels = {f"docker_label_{i}": hashlib.sha1(bytes([i])).hexdigest() for i in range(40)}
    encoder = DeltaEncoder("p", "h", full_every=10)
    receiver = ProbeNodes()
    sizes = []
    for t in range(3):
        node = Node.build(
            "abc;<container>",
            "container",
            timestamp=float(t),
            latest=labels,
            metrics={"cpu": Metric.from_samples([Sample(float(s), float(s)) for s in range(t + 1)], 100.0)},
        )
        message = encoder.encode(_one(node))
        sizes.append(len(message))
        envelope = wire.decode(message)
        receiver.apply(envelope)
    assert [p.id for p in envelope.patches] == ["abc;<container>"]
    assert not envelope.report.node_count()
    assert dict(envelope.patches[0].metrics) == {"cpu": Metric((Sample(2.0, 2.0),), 0.0, 100.0)}
    assert not envelope.patches[0].latest, "labels that did not change are not sent again"
    assert sizes[2] < sizes[0] / 5
    assert receiver.nodes[("container", "abc;<container>")].metrics["cpu"].samples == tuple(
        Sample(float(s), float(s)) for s in range(3)
    )


def test_a_patch_of_a_node_the_receiver_does_not_hold_waits_for_a_full_report() -> None:
    receiver = ProbeNodes()
    receiver.apply(wire.Envelope("p", "h", 1, 0.0, Report()))
    patch = wire.NodePatch("process", "h;1", {"name": (1.0, "x")})
    applied = receiver.apply(wire.Envelope("p", "h", 2, 0.0, Report(), full=False, base_seq=1, patches=(patch,)))
    assert applied.refused == "missed_delta"
    assert not receiver.complete


def test_patches_cannot_grow_a_node_past_the_record_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each patch is small; many of them adding keys must not add up to a node no record could carry."""
    monkeypatch.setattr(wire, "MAX_RECORD_BYTES", 2_000)
    receiver = ProbeNodes()
    receiver.apply(wire.Envelope("p", "h", 1, 0.0, _one(Node.build("h;1", "process"))))
    refused = []
    for seq in range(2, 40):
        patch = wire.NodePatch("process", "h;1", {f"key{seq}": (1.0, "v" * 100)})
        envelope = wire.Envelope("p", "h", seq, 0.0, Report(), full=False, base_seq=seq - 1, patches=(patch,))
        refused.append(receiver.apply(wire.decode(wire.encode(envelope))).refused)
        if refused[-1]:
            break
    assert refused[-1] == "node_too_large"
    assert len(refused) > 5, "patches within the limit apply"
    assert not receiver.complete


@pytest.mark.parametrize("timestamp", [1.0, 1], ids=["as-packed-here", "integer-timestamps-from-sender"])
@pytest.mark.parametrize("over", [0, 1], ids=["node-at-the-limit", "one-byte-over"])
def test_the_record_limit_holds_to_the_byte_however_many_patches(
    monkeypatch: pytest.MonkeyPatch, timestamp: float, over: int
) -> None:
    """Patched nodes are not packed to be measured: the limit must still hold exactly. A node patched to
    exactly the limit is taken; one byte more is refused, also after many patches, and also when the
    sender packs its numbers shorter (integer timestamps) than they pack once decoded."""
    node = Node.build("h;1", "process", latest={"name": "x"})
    patches = [
        wire.NodePatch(
            "process",
            "h;1",
            {f"key{i}": (timestamp, "v" * (i % 7))},
            metrics={f"metric{i}": Metric(tuple(Sample(timestamp + j, j + 0.5) for j in range(5)), 0.0, 100.0)},
        )
        for i in range(30)
    ]
    expected = node
    for patch in wire.decode(wire.encode(_delta(2, patches))).patches:
        expected = patched(expected, patch)
    limit = len(msgpack.packb(wire.node_record(expected), use_bin_type=True)) - over
    monkeypatch.setattr(wire, "MAX_RECORD_BYTES", limit)
    receiver = ProbeNodes()
    receiver.apply(wire.decode(wire.encode(wire.Envelope("p", "h", 1, 0.0, _one(node)))))
    refused = [
        receiver.apply(wire.decode(wire.encode(_delta(seq, [patch])))).refused
        for seq, patch in enumerate(patches, start=2)
    ]
    assert refused == [""] * 29 + (["node_too_large"] if over else [""])
    if not over:
        assert receiver.nodes[("process", "h;1")] == expected


def _delta(seq: int, patches: list[wire.NodePatch]) -> wire.Envelope:
    return wire.Envelope("p", "h", seq, 0.0, Report(), full=False, base_seq=seq - 1, patches=tuple(patches))
