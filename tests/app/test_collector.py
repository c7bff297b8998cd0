"""The collector keeps the newest report of each probe and forgets silent probes."""

from __future__ import annotations

import pytest

from scope_app import collector as collector_module
from scope_app.collector import Collector
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


def test_probes_beyond_the_limit_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    limit = 3
    monkeypatch.setattr(collector_module, "MAX_PROBES", limit)
    collector = Collector(_Merged())
    for i in range(limit + 2):
        collector.add(_envelope(f"p{i}", 1, "x"))
    assert len(collector.probes) == limit
    assert collector.rejected == {"too_many_probes": 2}
    # A known probe still gets through.
    assert collector.add(_envelope("p0", 2, "y"))
