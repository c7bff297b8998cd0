"""Benchmark: wire encode/decode, merging 100 probes' reports, and rendering the views, from scratch
and as the app does it: one probe's delta at a time, applied to what the app already holds.

    python -m bench.report_pipeline [--hosts 100] [--runs 5] [--steps 30]

Each host's report: 500 processes, 2,000 endpoints, 50 containers. A step is one probe's next report
15 s later (its metrics moved, which a delta carries: the busiest a quiet fleet gets), sent as a delta,
decoded, applied, then the views rendered again with their JSON. Figures are medians.
"""

from __future__ import annotations

import argparse
import gzip
import statistics
import time
from collections.abc import Callable

from bench.synthetic import fleet, host_report
from scope_app.collector import Collector
from scope_app.render import Renderer, view_options
from scope_common import wire
from scope_common.delta import DeltaEncoder
from scope_common.report import merge_reports

GO_REPORT_GZIP_KB = 35.0


def median_time(fn: Callable[[], object], runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--hosts", type=int, default=100)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()

    one = host_report(0, args.hosts)
    envelope = wire.Envelope("probe", "host-0", 1, time.time(), one)
    message = wire.encode(envelope)
    raw = wire.encode(envelope, compress=False)
    encode_s = median_time(lambda: wire.encode(envelope), args.runs)
    decode_s = median_time(lambda: wire.decode(message), args.runs)
    mb = len(raw) / 1e6
    print(f"one host's report: {one.node_count()} nodes, {len(raw) / 1024:.0f} KiB msgpack, "
          f"{len(message) / 1024:.0f} KiB on the wire (zlib-1), {len(gzip.compress(raw)) / 1024:.0f} KiB gzip "
          f"(Go Scope: {GO_REPORT_GZIP_KB:.0f} KB gzip)")  # fmt: skip
    print(f"encode: {encode_s * 1000:.1f} ms ({mb / encode_s:.1f} MB/s of msgpack)")
    print(f"decode: {decode_s * 1000:.1f} ms ({mb / decode_s:.1f} MB/s of msgpack)")

    reports = fleet(args.hosts)
    nodes = sum(r.node_count() for r in reports)
    merge_s = median_time(lambda: merge_reports(reports), args.runs)
    print(f"merge {args.hosts} reports ({nodes} nodes): {merge_s * 1000:.0f} ms")

    merged = merge_reports(reports)

    def render(topology: str) -> Callable[[], None]:
        def run() -> None:
            renderer = Renderer()
            renderer.update(merged, 1)
            renderer.view(topology, view_options({})).json  # noqa: B018 - the JSON is part of the work

        return run

    for topology in ("processes", "containers", "hosts"):
        render_s = median_time(render(topology), args.runs)
        print(f"render {topology} view of the merged report from scratch (with JSON): {render_s * 1000:.0f} ms")
    incremental(args.hosts, args.steps)


def incremental(hosts: int, steps: int) -> None:
    """What one arriving delta costs the app once it holds the fleet."""
    renderer = Renderer()
    collector = Collector(lambda report, version, changed: renderer.update(report, version, changed))
    encoders = [DeltaEncoder(f"probe-{i}", f"host-{i}") for i in range(hosts)]
    for i, encoder in enumerate(encoders):
        collector.add(wire.decode(encoder.encode(host_report(i, hosts, now=1000.0))), f"source-{i}")
    views = ("containers", "hosts", "processes")
    for topology in views:
        renderer.view(topology, view_options({})).json  # noqa: B018 - builds the indexes a watched view keeps
    times: dict[str, list[float]] = {name: [] for name in ("decode", "apply", *views)}
    sizes = []
    for step in range(steps):
        i = step % hosts
        message = encoders[i].encode(host_report(i, hosts, now=1015.0 * (step // hosts + 1)))
        sizes.append(len(message))
        start = time.perf_counter()
        envelope = wire.decode(message)
        decoded = time.perf_counter()
        collector.add(envelope, f"source-{i}")
        times["decode"].append(decoded - start)
        times["apply"].append(time.perf_counter() - decoded)
        for topology in views:
            start = time.perf_counter()
            renderer.view(topology, view_options({}), max_age=0).json  # noqa: B018
            times[topology].append(time.perf_counter() - start)
    print(f"one probe's delta after another ({hosts} hosts held): {statistics.median(sizes) / 1024:.1f} KiB each")
    for name, values in times.items():
        what = f"render {name} view again" if name in views else name
        print(f"  {what}: {statistics.median(values) * 1000:.1f} ms")


if __name__ == "__main__":
    main()
