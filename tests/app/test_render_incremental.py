"""Views kept up to date report by report show exactly what a view rendered from scratch shows."""

from __future__ import annotations

import dataclasses
import json
from concurrent.futures import Future
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from scope_app.collector import Collector
from scope_app.render import TOPOLOGIES, Renderer, view_options
from scope_app.websocket import FeedHub, Watcher
from scope_common.delta import DeltaEncoder
from scope_common.report import CPU_USAGE, Metric, Report, merge_reports
from scope_common.wire import decode
from tests.app.test_render import _connect, _container, _host, _process

_HOSTS = ["h1", "h2"]
_ADDRESSES = ["10.0.0.1", "10.0.0.2", "172.17.0.2", "172.17.0.3", "8.8.8.8", "127.0.0.1"]
_QUERIES = [{}, {"system": "show", "stopped": "show", "unconnected": "show"}, {"pseudo": "hide"}]


@st.composite
def _report(draw: st.DrawFn, host: str) -> Report:
    report = Report()
    _host(report, host, *draw(st.sampled_from([(), ("10.0.0.1/24",), ("10.0.0.2/24", "172.17.0.1/16")])))
    containers = []
    for n in draw(st.lists(st.sampled_from(["1", "2", "3"]), unique=True)):
        container = f"{host}c{n}"
        ips = tuple(draw(st.lists(st.sampled_from(_ADDRESSES[:4]), max_size=1)))
        state = draw(st.sampled_from(["running", "running", "exited"]))
        ports = ("0.0.0.0:8080->80/tcp",) if draw(st.booleans()) else ()
        _container(report, host, container, f"name{n}", ips=ips, ports=ports, state=state)
        containers.append(container)
    pids = []
    for pid in draw(st.lists(st.integers(1, 4), unique=True)):
        in_container = draw(st.sampled_from([None, *containers, f"{host}c9"]))
        pids.append(_process(report, host, pid, f"proc{pid}", in_container))
    for _ in range(draw(st.integers(0, 5))):
        client = (draw(st.sampled_from(["", host])), draw(st.sampled_from(_ADDRESSES)), draw(st.integers(5000, 5002)))
        server = (
            draw(st.sampled_from(["", host])),
            draw(st.sampled_from(_ADDRESSES)),
            draw(st.sampled_from([80, 8080])),
        )
        owner = st.sampled_from([None, *pids])
        _connect(report, client, server, draw(owner), draw(owner))
    return report


#: A step: a probe's next report, its silence (None), or its last report again with metrics moved to a value.
Step = tuple[str, Report | float | None]

_steps = st.lists(
    st.sampled_from(_HOSTS).flatmap(
        lambda h: st.tuples(st.just(h), st.none() | _report(h) | st.sampled_from([0.5, 1.0, 2.0]))
    ),
    min_size=1,
    max_size=10,
)


def _moved(report: Report, value: float, at: float) -> Report:
    """`report` as its probe sends it a moment later with only its metrics moved, as most reports are:
    every host, container and process with a new CPU sample, its latest's values stamped `at`."""
    moved = Report()
    for name, topology in report.topologies.items():
        moved.topology(name).templates = topology.templates
        for node in topology.nodes.values():
            if name in ("host", "container", "process"):
                node = dataclasses.replace(
                    node,
                    latest={key: (at, text) for key, (_, text) in node.latest.items()},
                    metrics={**node.metrics, CPU_USAGE: Metric.single(at, value)},
                )
            moved.add(node)
    return moved


class _Probes:
    """The probes of a sequence of steps, publishing through the collector as real probes do."""

    def __init__(self, collector: Collector, full_every: int) -> None:
        self.collector = collector
        self.full_every = full_every
        self.encoders: dict[str, DeltaEncoder] = {}
        self.last: dict[str, Report] = {}

    def step(self, host: str, action: Report | float | None, at: float) -> None:
        if action is None:  # the probe falls silent and is forgotten
            if host in self.collector.probes:
                self.collector.probes[host].received_at = -1e9
                self.collector.expire()
            self.encoders.pop(host, None)
            self.last.pop(host, None)
            return
        if isinstance(action, float):
            if host not in self.last:
                return
            action = _moved(self.last[host], action, at)
        self.last[host] = action
        encoder = self.encoders.setdefault(host, DeltaEncoder(host, host, full_every=self.full_every))
        self.collector.add(decode(encoder.encode(action)))


_HISTORY = ("opened", "bytes_seen")


def _present(summaries: dict[str, Any]) -> dict[str, Any]:
    """The summaries without the edges' counters of what they carried since they appeared (`_HISTORY`):
    those are history by design (the rates of connections and traffic), which a fresh view starts anew."""
    return {node_id: _present_node(summary) for node_id, summary in summaries.items()}


def _present_node(node: dict[str, Any] | None) -> dict[str, Any] | None:
    if node is None:
        return None
    edges = {target: {k: v for k, v in edge.items() if k not in _HISTORY} for target, edge in node["edges"].items()}
    return {**node, "edges": edges}


@settings(max_examples=300, deadline=None)
@given(_steps)
def test_views_kept_up_to_date_equal_views_rendered_afresh(steps: list[Step]) -> None:
    renderer = Renderer()
    collector = Collector(lambda report, version, changed: renderer.update(report, version, changed))
    probes = _Probes(collector, full_every=3)
    for at, (host, action) in enumerate(steps, start=1):
        probes.step(host, action, float(at))
        fresh = Renderer()
        fresh.update(merge_reports(p.nodes.report() for p in collector.probes.values()), 1)
        # Every view first, then their contents: views of other options share what they can, and one
        # must not change what another shows.
        kept = {
            (t, i): renderer.view(t, view_options(q), max_age=0) for t in TOPOLOGIES for i, q in enumerate(_QUERIES)
        }
        for (topology, i), view in kept.items():
            expected = fresh.view(topology, view_options(_QUERIES[i]))
            assert _present(view.summaries) == _present(expected.summaries), (topology, _QUERIES[i])
            assert _present(json.loads(view.json)["nodes"]) == _present(json.loads(expected.json)["nodes"])
            assert view.filtered_nodes == expected.filtered_nodes
            for node_id in view.nodes:
                assert _present_node(view.details(node_id)) == _present_node(expected.details(node_id))


@settings(max_examples=100, deadline=None)
@given(_steps)
def test_websocket_deltas_rebuild_the_final_view_in_a_client(steps: list[Step]) -> None:
    """A browser that applies the pushed `{add, update, remove}` messages holds the view the API serves."""
    renderer = Renderer()
    hub = FeedHub(renderer, clock=lambda: 0.0)  # every change pushed at once
    client: dict[str, dict[str, object]] = {}

    def merged(report: Report, version: int, changed: set[tuple[str, str]]) -> None:
        renderer.update(report, version, changed)
        hub.changed()

    def receive(message: str) -> Future[None]:
        delta = json.loads(message)
        if delta.get("reset"):
            client.clear()
        for node in delta["add"] + delta["update"]:
            client[node["id"]] = node
        for node_id in delta["remove"]:
            client.pop(node_id, None)
        sent: Future[None] = Future()
        sent.set_result(None)
        return sent

    collector = Collector(merged)
    hub.feed("containers", view_options({})).add(Watcher(receive))
    probes = _Probes(collector, full_every=10)
    for at, (host, action) in enumerate(steps, start=1):
        probes.step(host, action, float(at))
    assert client == renderer.view("containers", view_options({}), max_age=0).summaries
