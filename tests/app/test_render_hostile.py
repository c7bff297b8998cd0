"""Reports that decode but carry the worst values a sender can choose never break a view or the API.

Decoding checks what it can (well-formed ids, whole numbers where the views read whole numbers); these
tests generate reports that pass those checks with everything else as hostile as possible, put them
through the wire, the collector and the renderer as the app does, and render every view with every
option set, every node's details, the topology list and `/api/report`'s JSON. A node that still fails
is left out and counted, and the rest of its view stands.
"""

from __future__ import annotations

import itertools
import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scope_app.api import report_json
from scope_app.collector import Collector
from scope_app.render import TOPOLOGIES, Renderer
from scope_app.render.base import ViewOptions
from scope_common import ids, wire
from scope_common.report import HOSTNAME, UPTIME, EdgeMetadata, Metric, Node, Report, Sample
from tests.fixtures.hostile import (
    ADDRESSES,
    HOST_NAMES,
    INTEGERS,
    LATEST_KEYS,
    METRIC_KEYS,
    NUMBERS,
    SET_KEYS,
    TEXTS,
)

_texts = st.sampled_from(TEXTS) | st.text(max_size=12)
_hosts = st.sampled_from(HOST_NAMES)
_ids = {
    "host": _hosts.map(ids.host_id),
    "process": st.tuples(_hosts, st.sampled_from([1, 2, 4294967295])).map(lambda p: ids.process_id(*p)),
    "endpoint": st.tuples(
        st.sampled_from(["", *HOST_NAMES[:2]]), st.sampled_from(ADDRESSES), st.sampled_from([0, 80, 65535])
    ).map(lambda e: ids.endpoint_id(*e)),
    "container": st.sampled_from(["c1", "c2", "", "c" * 64]).map(ids.container_id),
    "container_image": st.sampled_from(["i1;<container_image>"]),
}
_any_id = st.sampled_from(sorted(_ids)).flatmap(lambda topology: _ids[topology])
_numbers = st.sampled_from(NUMBERS) | st.floats(allow_nan=False, allow_infinity=False)
_metrics = st.builds(
    Metric,
    st.lists(st.builds(Sample, _numbers, _numbers), max_size=3).map(tuple),
    _numbers,
    _numbers,
)
_edges = st.builds(EdgeMetadata, st.sampled_from(INTEGERS), st.none() | st.sampled_from(INTEGERS), st.none())
_strings = st.lists(_texts | _any_id, max_size=3).map(lambda values: tuple(sorted(set(values))))


@st.composite
def _node(draw: st.DrawFn) -> Node:
    topology = draw(st.sampled_from(sorted(_ids)))
    return Node(
        draw(_ids[topology]),
        topology,
        draw(st.dictionaries(st.sampled_from(LATEST_KEYS), st.tuples(_numbers, _texts | _any_id), max_size=8)),
        draw(st.dictionaries(st.sampled_from(SET_KEYS), _strings, max_size=3)),
        draw(st.lists(_ids["endpoint"], max_size=3).map(lambda values: tuple(sorted(set(values))))),
        draw(st.dictionaries(_ids["endpoint"], _edges, max_size=2)),
        draw(st.dictionaries(st.sampled_from(METRIC_KEYS), _metrics, max_size=2)),
        draw(st.dictionaries(st.sampled_from(["process", "container", "host", "other"]), _strings, max_size=3)),
    )


_reports = st.lists(_node(), max_size=25)
#: Messages of up to three probes, in order: each a full report of its probe.
_steps = st.lists(st.tuples(st.sampled_from(["p1", "p2", "p3"]), _reports), min_size=1, max_size=4)

_ALL_OPTIONS = [ViewOptions(*values) for values in itertools.product((False, True), repeat=len(ViewOptions.names()))]


def _render_everything(renderer: Renderer) -> None:
    for topology in TOPOLOGIES:
        for options in _ALL_OPTIONS:
            view = renderer.view(topology, options)
            json.loads(view.json)
            for node_id in view.nodes:
                json.dumps(view.details(node_id))
    json.dumps(renderer.topology_list())
    json.dumps(report_json(renderer.graph.report))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_steps)
def test_hostile_reports_render_in_every_view_and_the_api(steps: list[tuple[str, list[Node]]]) -> None:
    renderer = Renderer()
    collector = Collector(lambda report, version, changed: renderer.update(report, version, changed))
    seqs: dict[str, int] = {}
    for probe_id, nodes in steps:
        report = Report()
        for node in nodes:
            report.add(node)
        seqs[probe_id] = seqs.get(probe_id, 0) + 1
        try:
            envelope = wire.decode(wire.encode(wire.Envelope(probe_id, "h", seqs[probe_id], 1.0, report)))
        except wire.DecodeError:
            continue
        collector.add(envelope, source=probe_id)
        _render_everything(renderer)
    assert renderer.failures == {}, "no hostile node needed leaving out: decoding refused all that would break"


def test_a_node_that_fails_to_render_is_left_out_and_counted_and_its_view_stands() -> None:
    """A host whose uptime is not a number: decoding refuses it, so it is handed to the renderer
    directly, as a value no check foresaw would be."""
    report = Report()
    report.add(Node.build(ids.host_id("good"), "host", latest={HOSTNAME: "good"}))
    report.add(Node.build(ids.host_id("bad"), "host", latest={HOSTNAME: "bad", UPTIME: "not a number"}))
    renderer = Renderer()
    renderer.update(report, 1)
    view = renderer.view("hosts", ViewOptions())
    assert list(view.nodes) == [ids.host_id("good")]
    assert renderer.failures == {"node:host": 1}
    assert json.loads(view.json)["nodes"][ids.host_id("good")]["label_major"] == "good"
