"""The merged picture kept up to date message by message equals the one built from scratch."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from scope_app.collector import Collector
from scope_app.render import Renderer
from scope_app.render.base import ViewOptions
from scope_common.delta import DeltaEncoder, NodeKey
from scope_common.report import EdgeMetadata, MetadataTemplate, Node, Report, Templates, merge_reports
from scope_common.wire import decode

_PROBES = ["a", "b", "c"]
# Endpoints and processes some probes share (an address both ends of a connection report), others not.
_NODES = [
    ("endpoint", ";10.0.0.1;80"),
    ("endpoint", ";10.0.0.2;5555"),
    ("process", "h;1"),
    ("process", "h;2"),
    ("host", "h;<host>"),
]


#: Templates some probes share and others give another label (a conflict the merge settles by priority).
_TEMPLATES = [
    Templates.build([MetadataTemplate(1, "name", "Name", "name")]),
    Templates.build([MetadataTemplate(2, "name", "Called", "name"), MetadataTemplate(3, "pid", "PID", "pid")]),
]


@st.composite
def _report(draw: st.DrawFn) -> Report:
    report = Report()
    for topology in draw(st.lists(st.sampled_from(["process", "host"]), unique=True)):
        report.topology(topology).templates = draw(st.sampled_from(_TEMPLATES))
    for topology, node_id in draw(st.lists(st.sampled_from(_NODES), unique=True)):
        report.add(
            Node.build(
                node_id,
                topology,
                timestamp=draw(st.sampled_from([1.0, 2.0])),
                latest={"name": draw(st.sampled_from(["x", "y"]))},
                adjacency=draw(st.lists(st.sampled_from([n for _, n in _NODES]), max_size=2)),
                edges={";10.0.0.1;80": EdgeMetadata(draw(st.integers(0, 3)))} if draw(st.booleans()) else {},
                parents={"host": draw(st.lists(st.sampled_from(["h;<host>", "g;<host>"]), max_size=2))},
            )
        )
    return report


_steps = st.lists(
    st.one_of(
        st.tuples(st.just("send"), st.sampled_from(_PROBES), _report()),
        st.tuples(st.just("expire"), st.sampled_from(_PROBES), st.none()),
    ),
    max_size=12,
)


@settings(max_examples=200, deadline=None)
@given(_steps)
def test_the_incremental_merge_equals_the_merge_from_scratch(steps: list[tuple[str, str, Report | None]]) -> None:
    seen: list[set[NodeKey]] = []
    collector = Collector(lambda report, version, changed: seen.append(changed))
    encoders = {p: DeltaEncoder(p, f"host-{p}", full_every=3) for p in _PROBES}
    latest: dict[str, Report] = {}
    before: dict[NodeKey, Node] = {}
    for action, probe, report in steps:
        if action == "send" and report is not None:
            collector.add(decode(encoders[probe].encode(report)))
            latest[probe] = report
        elif probe in collector.probes:
            collector.probes[probe].received_at = -1e9  # silent for longer than the window
            collector.expire()
            latest.pop(probe, None)
            encoders[probe] = DeltaEncoder(probe, f"host-{probe}", full_every=3)  # a restarted probe
        expected = merge_reports(collector.probes[p].nodes.report() for p in collector.probes)
        assert collector.merged.report == expected
        now = {(n.topology, n.id): n for t in expected.topologies.values() for n in t.nodes.values()}
        differ = {k for k in before.keys() | now.keys() if before.get(k) != now.get(k)}
        if differ:
            assert differ <= seen[-1], "every node that changed is in the change set"
        before = now
        # What each probe holds is what it last sent, but for timestamps kept from earlier messages.
        for probe_id, record in collector.probes.items():
            sent = latest[probe_id]
            assert {k for k in record.nodes.nodes} == {
                (n.topology, n.id) for t in sent.topologies.values() for n in t.nodes.values()
            }


def _process_report(label: str) -> Report:
    report = Report()
    report.topology("process").templates = Templates.build([MetadataTemplate(1, "name", label, "name")])
    report.add(Node.build("h;1", "process", latest={"pid": 1, "name": "nginx", "host_node_id": "h;<host>"}))
    return report


def test_the_views_follow_a_change_of_templates_alone() -> None:
    """A probe that changes a label and no node: the merged report and the renderer both follow it."""
    renderer = Renderer()
    collector = Collector(lambda report, version, changed: renderer.update(report, version, changed))
    encoder = DeltaEncoder("a", "host-a", full_every=100)

    def name_row() -> object:
        details = renderer.view("processes", ViewOptions(unconnected=True), max_age=0).details("h;1")
        assert details is not None
        return next(row["label"] for row in details["metadata"] if row["id"] == "name")

    assert collector.add(decode(encoder.encode(_process_report("Name"))))
    assert name_row() == "Name"
    version = collector.version
    assert collector.add(decode(encoder.encode(_process_report("Program"))))
    assert collector.version > version, "a template change alone is a new merged picture"
    assert name_row() == "Program"
