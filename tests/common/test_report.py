"""The merge rules: order-independent, repeat-proof, and what each field keeps."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from scope_common.report import (
    MAX_SAMPLES,
    EdgeMetadata,
    Metric,
    Node,
    Report,
    Sample,
    canonical_samples,
    merge_metric_samples,
    merge_reports,
)

_ids = st.sampled_from(["a;1", "a;2", "b;1", ";10.0.0.1;80", "c;<host>"])
_keys = st.sampled_from(["name", "pid", "state", "image"])
_strs = st.text(alphabet="abcxyz", max_size=3)
_times = st.sampled_from([0.0, 1.0, 2.0, 2.5])


_metrics = st.builds(
    Metric.from_samples,
    st.lists(st.builds(Sample, _times, st.floats(-5, 100, allow_nan=False)), max_size=6),
    st.none() | st.floats(0, 200, allow_nan=False),
)
_edges = st.builds(EdgeMetadata, st.integers(0, 9), st.none() | st.integers(0, 99))
# Strategies are built once here: building them inside a composite per draw is what makes
# hypothesis slow.
_node_fields = st.fixed_dictionaries(
    {
        "timestamp": _times,
        "latest": st.dictionaries(_keys, _strs, max_size=3),
        "sets": st.dictionaries(_keys, st.lists(_strs, max_size=3), max_size=2),
        "adjacency": st.lists(_ids, max_size=3),
        "edges": st.dictionaries(_ids, _edges, max_size=2),
        "metrics": st.dictionaries(_keys, _metrics, max_size=2),
        "parents": st.dictionaries(st.sampled_from(["host", "container"]), st.lists(_ids), max_size=2),
    }
)
_topology_nodes = st.dictionaries(_ids, _node_fields, max_size=4)
_reports_fields = st.dictionaries(st.sampled_from(["process", "host", "endpoint"]), _topology_nodes, max_size=3)


def _report(fields: dict[str, dict[str, dict[str, Any]]]) -> Report:
    report = Report()
    for topology, by_id in fields.items():
        for node_id, node_fields in by_id.items():
            report.add(Node.build(node_id, topology, **node_fields))
    return report


reports = st.builds(_report, _reports_fields)


@settings(max_examples=100, deadline=None)
@given(reports, reports)
def test_merge_is_commutative(a: Report, b: Report) -> None:
    assert a.merge(b) == b.merge(a)


@settings(max_examples=100, deadline=None)
@given(reports, reports, reports)
def test_merge_is_associative(a: Report, b: Report, c: Report) -> None:
    assert a.merge(b).merge(c) == a.merge(b.merge(c))
    assert merge_reports([a, b, c]) == a.merge(b).merge(c)


@settings(max_examples=100, deadline=None)
@given(reports, reports)
def test_merge_is_idempotent(a: Report, b: Report) -> None:
    assert a.merge(a) == a
    ab = a.merge(b)
    assert ab.merge(b) == ab
    assert merge_reports([a, b, a, b]) == ab


def test_latest_newer_timestamp_wins_whatever_the_order() -> None:
    old = Node.build("h;1", "process", timestamp=1.0, latest={"name": "zsh"})
    new = Node.build("h;1", "process", timestamp=2.0, latest={"name": "bash"})
    assert old.merge(new).get("name") == "bash"
    assert new.merge(old).get("name") == "bash"


def test_sets_adjacency_and_parents_are_sorted_unions() -> None:
    a = Node.build("x", "endpoint", adjacency=["c", "a"], sets={"ips": ["2"]}, parents={"host": ["h1"]})
    b = Node.build("x", "endpoint", adjacency=["b"], sets={"ips": ["1", "2"]}, parents={"host": ["h0"]})
    merged = a.merge(b)
    assert merged.adjacency == ("a", "b", "c")
    assert merged.sets["ips"] == ("1", "2")
    assert merged.parents["host"] == ("h0", "h1")


def test_metric_keeps_newest_samples_and_widest_range() -> None:
    a = Metric.from_samples([Sample(float(t), 1.0) for t in range(MAX_SAMPLES)], 10.0)
    b = Metric.from_samples([Sample(float(MAX_SAMPLES + 5), 50.0)], 100.0)
    merged = a.merge(b)
    assert len(merged.samples) == MAX_SAMPLES
    assert merged.samples[-1] == Sample(float(MAX_SAMPLES + 5), 50.0)
    assert merged.samples[0].timestamp == 1.0
    assert merged.max == 100.0


def test_edge_metadata_takes_the_larger_count_not_the_sum() -> None:
    assert EdgeMetadata(3).merge(EdgeMetadata(2)) == EdgeMetadata(3)


def test_merging_nodes_of_different_topologies_is_refused() -> None:
    try:
        Node.build("x", "process").merge(Node.build("x", "host"))
    except ValueError as exc:
        assert "cannot merge" in str(exc)
    else:
        raise AssertionError("merge of different topologies was accepted")


def _reference_merge(a: tuple[Sample, ...], b: tuple[Sample, ...]) -> tuple[Sample, ...]:
    by_time: dict[float, float] = {}
    for sample in (*a, *b):
        by_time[sample.timestamp] = max(sample.value, by_time.get(sample.timestamp, sample.value))
    return tuple(Sample(t, by_time[t]) for t in sorted(by_time)[-MAX_SAMPLES:])


_samples = st.lists(
    st.builds(Sample, st.integers(0, 40).map(float), st.integers(0, 3).map(float)), max_size=MAX_SAMPLES + 5
).map(tuple)


@given(_samples, _samples, st.booleans(), st.booleans())
def test_merged_samples_are_the_union_by_time_whatever_their_order(
    a: tuple[Sample, ...], b: tuple[Sample, ...], sort_a: bool, sort_b: bool
) -> None:
    """In order and after one another (a probe's new samples), or in any order, overlapping, repeated."""
    a = canonical_samples(a) if sort_a else a
    b = tuple(Sample(s.timestamp + 40.0, s.value) for s in canonical_samples(b)) if sort_b else b
    assert merge_metric_samples(a, b) == _reference_merge(a, b)
