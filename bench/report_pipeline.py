"""Benchmark: wire encode/decode, merging 100 probes' reports, and rendering the processes view.

    python -m bench.report_pipeline [--hosts 100] [--runs 5]

Each host's report: 500 processes, 2,000 endpoints, 50 containers. Figures are medians of --runs.
"""

from __future__ import annotations

import argparse
import gzip
import statistics
import time
from collections.abc import Callable

from bench.synthetic import fleet, host_report
from scope_app.render import Renderer, view_options
from scope_common import wire
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
        print(f"render {topology} view of the merged report (with JSON): {render_s * 1000:.0f} ms")


if __name__ == "__main__":
    main()
