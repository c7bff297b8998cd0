"""Templates: merged order-independently, carried on the wire row by row, sent again only when changed."""

from __future__ import annotations

from typing import Any

import msgpack
from hypothesis import given, settings
from hypothesis import strategies as st

from scope_common import wire
from scope_common.delta import DeltaEncoder, ProbeNodes
from scope_common.report import (
    CONTAINER,
    DATETIME,
    DURATION,
    FROM_PREFIX,
    FROM_SETS,
    HOST,
    UPTIME,
    ControlTemplate,
    MetadataTemplate,
    MetricTemplate,
    Node,
    Report,
    Templates,
    merge_reports,
)

_row_ids = st.sampled_from(["image", "state", "plugin"])
_labels = st.sampled_from(["Image", "State", "Owner"])
_priorities = st.sampled_from([1.0, 2.0, 3.0])
_metadata = st.builds(
    MetadataTemplate,
    priority=_priorities,
    id=_row_ids,
    label=_labels,
    key=st.sampled_from(["a", "b"]),
    source=st.sampled_from(["latest", FROM_SETS]),
    detail=st.booleans(),
)
_metrics = st.builds(
    MetricTemplate,
    priority=_priorities,
    key=st.sampled_from(["cpu_usage_percent", "x"]),
    id=st.sampled_from(["cpu", "x"]),
    label=_labels,
)
_controls = st.builds(
    ControlTemplate,
    rank=_priorities,
    id=st.sampled_from(["stop", "plugin_action"]),
    human=_labels,
    icon=st.sampled_from(["stop", "bolt"]),
    pipe=st.sampled_from(["", "log"]),
)
templates = st.builds(
    Templates.build, st.lists(_metadata, max_size=3), st.lists(_metrics, max_size=2), st.lists(_controls, max_size=2)
)
_by_topology = st.dictionaries(st.sampled_from([CONTAINER, HOST]), templates, max_size=2)


def _report(by_topology: dict[str, Templates], nodes: int = 0) -> Report:
    report = Report()
    for name, found in by_topology.items():
        report.topology(name).templates = found
    for i in range(nodes):
        report.add(Node.build(f"h;{i}", "process", latest={"pid": i}))
    return report


@settings(max_examples=150, deadline=None)
@given(templates, templates, templates)
def test_template_merge_is_commutative_associative_and_idempotent(a: Templates, b: Templates, c: Templates) -> None:
    assert a.merge(b) == b.merge(a)
    assert a.merge(b).merge(c) == a.merge(b.merge(c))
    assert a.merge(a) == a and a.merge(b).merge(b) == a.merge(b)


def test_a_conflict_keeps_the_template_of_higher_priority_whichever_probe_sent_it() -> None:
    low = Templates.build([MetadataTemplate(1, "image", "Image", "docker_image_name")])
    high = Templates.build([MetadataTemplate(5, "image", "Picture", "docker_image_name")])
    assert low.merge(high).metadata["image"].label == "Picture"
    assert high.merge(low).metadata["image"].label == "Picture"
    assert merge_reports([_report({CONTAINER: low}), _report({CONTAINER: high})]).templates(CONTAINER) == high


def _decode_templates(record: list[Any]) -> wire.Envelope:
    body = msgpack.packb(msgpack.packb(record, use_bin_type=True), use_bin_type=True)
    head = {
        "v": wire.FORMAT_VERSION,
        "probe_id": "p",
        "host_id": "h",
        "seq": 1,
        "sent_at": 1.0,
        "version": "",
        "full": True,
        "base_seq": 0,
        "encoding": wire.ENCODING_NONE,
        "report": body,
    }
    return wire.decode(msgpack.packb(head, use_bin_type=True))


def test_templates_round_trip_on_the_wire() -> None:
    sent = Templates.build(
        [
            MetadataTemplate(1, "image", "Image", "docker_image_name"),
            MetadataTemplate(2, "created", "Created", "created", datatype=DATETIME, truncate=10, detail=True),
            MetadataTemplate(3, "label_", "Label", "docker_label_", source=FROM_PREFIX),
        ],
        [MetricTemplate(1, "cpu_usage_percent", "cpu", "CPU", "percent")],
        [ControlTemplate(1, "plugin_action", "Do it", "bolt", confirm="Sure?", pipe="log")],
    )
    envelope = wire.Envelope("p", "h", 1, 1.0, _report({CONTAINER: sent}))
    decoded = wire.decode(wire.encode(envelope))
    assert decoded.report.templates(CONTAINER) == sent
    assert decoded.templates == {CONTAINER: sent}
    assert not decoded.rejected


def test_bad_template_rows_are_dropped_and_counted_and_the_good_ones_kept() -> None:
    good = ["image", "Image", 1, "latest", "docker_image_name", "text", 0, False]
    decoded = _decode_templates(
        [
            CONTAINER,
            [
                good,
                ["huge", "L" * 100_000, 2, "latest", "k", "text", 0, False],  # a huge label
                ["kinds", 7, "high", "latest", "k", "text", 0, "no"],  # wrong kinds
                ["where", "Where", 3, "registry", "k", "text", 0, False],  # an unknown source
                ["up", "Up", 4, "latest", "name", DURATION, 0, False],  # a duration of an unchecked field
                ["short"],
                "not a row",
            ],
            [["cpu_usage_percent", "cpu", "CPU", "percent", float("nan")]],  # NaN would break the merge order
            [["plugin_action", "Do it", "bolt", "", "shell", 1]],  # an unknown pipe kind
        ]
    )
    assert decoded.report.templates(CONTAINER) == Templates.build(
        [MetadataTemplate(1, "image", "Image", "docker_image_name")]
    )
    assert decoded.rejected == {"template_too_long": 1, "template_malformed": 7}


def test_a_duration_of_a_field_decoding_checks_is_accepted() -> None:
    decoded = _decode_templates([HOST, [["uptime", "Uptime", 4, "latest", UPTIME, DURATION, 0, False]], [], []])
    assert decoded.report.templates(HOST).metadata["uptime"].datatype == DURATION


def test_a_templates_record_of_too_many_rows_or_an_unknown_topology_is_dropped_whole() -> None:
    row = ["image", "Image", 1, "latest", "docker_image_name", "text", 0, False]
    too_many = _decode_templates([CONTAINER, [row] * (wire.MAX_TEMPLATES + 1), [], []])
    assert not too_many.report.templates(CONTAINER) and too_many.rejected == {"template_too_many": 1}
    unknown = _decode_templates(["kubernetes_pod", [row], [], []])
    assert not unknown.report.topologies and unknown.rejected == {"template_unknown_topology": 1}
    not_lists = _decode_templates([CONTAINER, {"image": row}, [], []])
    assert not_lists.rejected == {"template_malformed": 1}


@settings(max_examples=100, deadline=None)
@given(st.lists(_by_topology, min_size=1, max_size=8), st.integers(1, 4))
def test_the_receiver_holds_the_templates_the_probe_sent_last(
    sent: list[dict[str, Templates]], full_every: int
) -> None:
    encoder = DeltaEncoder("p", "h", full_every=full_every)
    receiver = ProbeNodes()
    for by_topology in sent:
        applied = receiver.apply(wire.decode(encoder.encode(_report(by_topology, nodes=1))))
        assert not applied.refused
    assert receiver.templates == {name: found for name, found in sent[-1].items() if found}
    assert receiver.report().templates(CONTAINER) == sent[-1].get(CONTAINER, Templates())


def test_deltas_carry_templates_only_when_they_change() -> None:
    encoder = DeltaEncoder("p", "h", full_every=100)
    receiver = ProbeNodes()
    first = Templates.build([MetadataTemplate(1, "image", "Image", "docker_image_name")])
    second = Templates.build([MetadataTemplate(1, "image", "Picture", "docker_image_name")])
    carried = []
    changed = []
    for found in (first, first, first, second, second):
        envelope = wire.decode(encoder.encode(_report({CONTAINER: found}, nodes=2)))
        carried.append(envelope.templates)
        changed.append(receiver.apply(envelope).templates_changed)
    assert carried == [{CONTAINER: first}, {}, {}, {CONTAINER: second}, {}]
    assert changed == [True, False, False, True, False]
    # Templates that go are sent as empty ones, and the receiver forgets them.
    envelope = wire.decode(encoder.encode(_report({}, nodes=2)))
    assert envelope.templates == {CONTAINER: Templates()}
    assert receiver.apply(envelope).templates_changed and receiver.templates == {}
