"""bench.fleet's replay without the machine in the way: the app's CPU time per publish interval.

    python -m bench.fleet_cpu [--probes 100] [--containers 50] [--cycles 5]

bench.fleet measures a real app process against fake probes over ZeroMQ, which needs the machine to
itself: with other work running, the fake probes cannot keep their schedule and the app gets only its
share of the cores, so its "CPU %" says more about the machine than about the app. Here the same fake
probes (bench/fleet_probes.py: the real captured report, renamed per host, metrics moving, a container
replaced in one probe of five every cycle) hand their messages to the app's own collector and renderer
in this process, and what the app would do is timed in CPU time (`time.process_time`), which other
processes do not inflate:

- ingest: decoding every probe's message of one cycle and applying it (the merge and the views' graph
  following it): what the app spends with nobody looking, per 3 s interval;
- the containers and hosts views rendered (with their JSON) after a cycle, as a watched view is;
- the processes view, capped at the app's default `MAX_VIEW_NODES`;
- memory: the process's RSS grown while the app side takes the fleet in (the fake probes' own nodes
  are built before), which is close to what the app holds.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import time
from pathlib import Path

import zmq

from bench.fleet_probes import DATA, FakeProbe, full_every, load_template, real_probe_nodes
from bench.host_e2e import rss_mib
from scope_app.collector import Collector, Limits, collect_fully_less_often
from scope_app.render import Renderer, view_options
from scope_common import wire
from scope_common.report import Report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--probes", type=int, default=100)
    parser.add_argument("--containers", type=int, default=50)
    parser.add_argument("--cycles", type=int, default=5)
    parser.add_argument("--interval", type=float, default=3.0, help="the probes' publish interval")
    parser.add_argument("--data", type=Path, default=DATA)
    args = parser.parse_args()
    collect_fully_less_often()  # as the app does
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    context.set(zmq.MAX_SOCKETS, args.probes + 64)
    now = time.time()
    template, host, addresses = load_template(args.data, args.containers, now)
    # The fake probes' sockets connect to a port nobody listens on: messages are handed over here.
    probes = [
        FakeProbe(
            i,
            args.probes,
            real_probe_nodes(template, host, addresses, i, args.probes, now),
            context,
            "127.0.0.1:9",
            random.Random(i),
            full_every=full_every(args.interval),
        )
        for i in range(args.probes)
    ]
    renderer = Renderer()
    collector = Collector(renderer.update, limits=Limits(max_probes_per_source=1 << 30, max_nodes=1 << 30))

    def cycle(number: int) -> list[bytes]:
        messages = []
        stamp = now + number * args.interval
        for probe in probes:
            probe.move_metrics(stamp)
            if number and (probe.index + number) % 5 == 0:
                probe.churn(stamp)
            report = Report()
            for node in probe.nodes.values():
                report.add(node)
            messages.append(probe.encode(report, stamp))
        return messages

    def ingest(messages: list[bytes]) -> float:
        started = time.process_time()
        for i, message in enumerate(messages):
            collector.add(wire.decode(message), f"source-{i}")
        collector.flush()
        return time.process_time() - started

    def render(topology: str) -> float:
        started = time.process_time()
        renderer.view(topology, view_options({}), max_age=0).json  # noqa: B018 - the JSON is part of the work
        return time.process_time() - started

    first = cycle(0)
    before = rss_mib(os.getpid())
    ingest(first)
    for topology in ("containers", "hosts", "processes"):
        render(topology)
    held = rss_mib(os.getpid()) - before
    times: dict[str, list[float]] = {"ingest": [], "containers": [], "hosts": [], "processes": []}
    for number in range(1, args.cycles + 1):
        times["ingest"].append(ingest(cycle(number)))
        for topology in ("containers", "hosts", "processes"):
            times[topology].append(render(topology))
    nodes = collector.node_count
    sizes = [len(m) for m in cycle(args.cycles + 1)]
    ingest_s = statistics.median(times["ingest"])
    print(
        f"{args.probes} probes x {args.containers} containers ({nodes} nodes, "
        f"messages {statistics.median(sizes) / 1024:.1f} KiB median), CPU time, median of {args.cycles} cycles:"
    )
    print(
        f"  ingest one cycle: {ingest_s:.2f} s = {ingest_s / args.interval * 100:.0f} % of a core with nobody looking"
    )
    for topology in ("containers", "hosts", "processes"):
        view = renderer.view(topology, view_options({}))
        print(
            f"  render {topology} ({len(view.nodes)} of {view.total} nodes) after a cycle: "
            f"{statistics.median(times[topology]) * 1000:.0f} ms"
        )
    print(
        f"  RSS grown while the app took the fleet in: {held:.0f} MiB "
        f"({held * 1024 * 1024 / max(nodes, 1):.0f} B a node)"
    )
    for probe in probes:
        probe.close()
    context.term()


if __name__ == "__main__":
    main()
