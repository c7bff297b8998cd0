"""The collector keeps the newest report of each probe and forgets silent probes."""

from __future__ import annotations

from scope_app.collector import Collector, Limits
from scope_common.report import Node, Report
from scope_common.wire import Envelope


def _envelope(probe: str, seq: int, *names: str) -> Envelope:
    report = Report()
    for name in names:
        report.add(Node.build(f"{probe};{name}", "process", latest={"name": name}))
    return Envelope(probe, f"host-{probe}", seq, 0.0, report, "test")


class _Merged:
    def __init__(self) -> None:
        self.report = Report()
        self.version = 0

    def __call__(self, report: Report, version: int, changed: set[tuple[str, str]]) -> None:
        self.report, self.version = report, version


def test_an_older_report_never_replaces_a_newer_one() -> None:
    merged = _Merged()
    collector = Collector(merged)
    assert collector.add(_envelope("p", 2, "new"))
    assert not collector.add(_envelope("p", 1, "old"))
    assert set(merged.report.nodes("process")) == {"p;new"}
    assert collector.rejected == {"stale": 1}


def test_every_probe_is_in_the_merged_picture_until_it_falls_silent() -> None:
    now = [100.0]
    merged = _Merged()
    collector = Collector(merged, window=15.0, clock=lambda: now[0])
    collector.add(_envelope("a", 1, "x"))
    now[0] += 10
    collector.add(_envelope("b", 1, "y"))
    assert set(merged.report.nodes("process")) == {"a;x", "b;y"}
    now[0] += 6  # a: 16 s silent, b: 6 s
    assert collector.expire() == 1
    assert set(merged.report.nodes("process")) == {"b;y"}
    assert list(collector.probes) == ["b"]


def test_probes_beyond_the_limit_are_refused() -> None:
    limit = 3
    collector = Collector(_Merged(), limits=Limits(max_probes=limit))
    for i in range(limit + 2):
        collector.add(_envelope(f"p{i}", 1, "x"), source=f"10.0.0.{i}")
    assert len(collector.probes) == limit
    assert collector.rejected == {"too_many_probes": 2}
    # A known probe still gets through.
    assert collector.add(_envelope("p0", 2, "y"), source="10.0.0.0")


def test_a_probe_id_belongs_to_the_source_it_was_first_seen_from_until_it_expires() -> None:
    """The erasing attack: another sender uses the victim's (public) id, an empty report and the largest
    sequence number. It is dropped, and the victim's own reports keep being applied."""
    now = [100.0]
    merged = _Merged()
    collector = Collector(merged, window=15.0, clock=lambda: now[0])
    assert collector.add(_envelope("victim", 1, "web"), source="10.0.0.1")
    assert not collector.add(_envelope("victim", 2**63 - 1), source="10.0.0.66")
    assert collector.rejected == {"foreign_probe_id": 1}
    assert collector.add(_envelope("victim", 2, "web", "db"), source="10.0.0.1")
    assert set(merged.report.nodes("process")) == {"victim;web", "victim;db"}
    # Foreign messages do not keep the id alive, and once it expired the id is free again.
    for _ in range(4):
        now[0] += 5
        collector.add(_envelope("victim", 10, "fake"), source="10.0.0.66")
    collector.expire()
    assert collector.probes == {}
    assert collector.add(_envelope("victim", 1, "moved"), source="10.0.0.2")
    assert collector.probes["victim"].source == "10.0.0.2"


def test_a_flood_of_made_up_ids_from_one_source_locks_nobody_else_out() -> None:
    collector = Collector(_Merged(), limits=Limits(max_probes=100, max_probes_per_source=4))
    for i in range(2_100):
        collector.add(_envelope(f"fake-{i}", 1, "x"), source="10.0.0.66")
    assert len(collector.probes) == 4
    assert collector.rejected == {"too_many_probes_from_source": 2_096}
    assert collector.add(_envelope("restarted-probe", 1, "x"), source="10.0.0.1")


def test_stored_nodes_stay_within_the_budget_and_each_source_within_its_share() -> None:
    merged = _Merged()
    collector = Collector(merged, limits=Limits(max_nodes=10, max_nodes_per_source=6))
    names = [f"n{i}" for i in range(7)]
    assert not collector.add(_envelope("greedy", 1, *names), source="10.0.0.66")
    assert collector.rejected == {"over_node_budget": 1}
    assert collector.add(_envelope("greedy", 2, *names[:6]), source="10.0.0.66")
    assert not collector.add(_envelope("greedy-2", 1, "more"), source="10.0.0.66"), "over its source's share"
    assert collector.add(_envelope("a", 1, "x", "y", "z", "w"), source="10.0.0.1")
    assert not collector.add(_envelope("b", 1, "x"), source="10.0.0.2"), "over the total budget"
    assert collector.node_count == 10
    assert len(merged.report.nodes("process")) == 10
    # A probe may shrink, or be replaced by a report no larger, whatever the budget.
    assert collector.add(_envelope("a", 2, "x"), source="10.0.0.1")
    assert collector.add(_envelope("b", 2, "x"), source="10.0.0.2")
    assert collector.node_count == 8
