"""Benchmark: how long after a change the app pushes the delta, with 5,000 nodes in the view.

    python -m bench.ws_delta [--hosts 100] [--containers 50] [--runs 7]

A real app subprocess, a real websocket client on the containers view, and 100 probes' reports
(5,000 containers) sent over the bus. Each run changes one host's report (one container more) and
measures from sending it to the delta arriving: decode + merge + render + diff + send. Then the same
render + diff in-process, without the bus and the socket.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from collections.abc import Callable

import tornado.websocket

from bench.synthetic import host_report
from scope_app.render import Renderer, view_options
from scope_app.websocket import view_delta
from scope_common.report import Report, merge_reports
from tests.fixtures.scope import App, ReportSender


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--hosts", type=int, default=100)
    parser.add_argument("--containers", type=int, default=50)
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()

    def report(index: int, containers: int) -> Report:
        return host_report(index, args.hosts, processes=20, endpoints=40, containers=containers)

    reports = [report(i, args.containers) for i in range(args.hosts)]
    app = App(window="120s")
    senders = [ReportSender(app, probe_id=f"probe-{i}", host_id=f"host-{i}") for i in range(args.hosts)]
    try:
        for sender, r in zip(senders, reports, strict=True):
            sender.send_until(r, lambda: True, timeout=5)
        expected = args.hosts * args.containers
        deadline = time.monotonic() + 60
        while len(app.nodes("containers")) < expected and time.monotonic() < deadline:
            for sender, r in zip(senders, reports, strict=True):
                sender.send(r)
            time.sleep(1)
        print(f"containers view: {len(app.nodes('containers'))} nodes")
        latencies = asyncio.run(_measure(app, senders[0], args, report))
        print(
            f"change -> delta on the websocket: median {statistics.median(latencies) * 1000:.0f} ms "
            f"(min {min(latencies) * 1000:.0f}, max {max(latencies) * 1000:.0f}, {len(latencies)} runs)"
        )
    finally:
        for sender in senders:
            sender.close()
        app.terminate()

    merged = merge_reports(reports)
    renderer = Renderer()
    renderer.update(merged, 1)
    old = renderer.view("containers", view_options({})).summaries
    changed = merge_reports([report(0, args.containers + 1), *reports[1:]])
    times = []
    for version in range(2, 2 + args.runs):
        start = time.perf_counter()
        renderer.update(changed, version)
        new = renderer.view("containers", view_options({})).summaries
        json.dumps(view_delta(old, new))
        times.append(time.perf_counter() - start)
    print(f"in-process render + diff + JSON of the delta: median {statistics.median(times) * 1000:.0f} ms")


async def _measure(
    app: App, sender: ReportSender, args: argparse.Namespace, report: Callable[[int, int], Report]
) -> list[float]:
    ws = await tornado.websocket.websocket_connect(f"ws://127.0.0.1:{app.http_port}/api/topology/containers/ws")
    first = json.loads(await _read(ws, 30))
    print(f"websocket reset: {len(first['add'])} nodes")
    latencies = []
    for run in range(args.runs):
        containers = args.containers + 1 + run % 2  # alternate so every send changes the view
        changed = report(0, containers)
        start = time.perf_counter()
        sender.send(changed)
        while True:
            delta = json.loads(await _read(ws, 30))
            if delta["add"] or delta["remove"]:
                break
        latencies.append(time.perf_counter() - start)
        await asyncio.sleep(0.5)
    ws.close()
    return latencies


async def _read(ws: tornado.websocket.WebSocketClientConnection, timeout: float) -> str:
    message = await asyncio.wait_for(ws.read_message(), timeout)
    if not isinstance(message, str):
        raise RuntimeError("the websocket closed")
    return message


if __name__ == "__main__":
    main()
