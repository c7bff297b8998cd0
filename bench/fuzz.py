"""Benchmark: a million hostile messages to a running app beside a real probe.

    python -m bench.fuzz [--messages 1000000] [--sources 4] [--rate 4000] [--bomb-rate 0.00001]

Starts an app (with a node budget of 20,000) and a real probe, then sends hostile messages
(tests/fixtures/hostile.py) from --sources loopback addresses at about --rate a second, while a reader
requests every view, /api/report, /api/topology and /api/probes in a loop. Prints what the app
received and dropped by reason, how the API answered meanwhile (errors, latency), whether the real
probe's host was ever missing, the app's peak memory, and its stored nodes against the budget.
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time

from tests.fixtures.hostile import HostileMessages, HostileSender, Watcher, worked_through
from tests.fixtures.scope import App, start_probe, wait_for

NODE_BUDGET = 20_000
HOSTNAME = "fuzz-victim"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--sources", type=int, default=4)
    parser.add_argument("--rate", type=float, default=4000.0, help="messages a second, all sources together")
    parser.add_argument("--bomb-rate", type=float, default=0.00001, help="share of zlib bombs (1.5 s to decode)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    app = App(extra=[f"--max-nodes={NODE_BUDGET}", "--max-nodes-per-source=8000"])
    probe = start_probe([app.bus], hostname=HOSTNAME)
    senders: list[HostileSender] = []
    watcher = Watcher(app, f"{HOSTNAME};<host>")
    reader = threading.Thread(target=watcher.run, daemon=True)
    try:
        wait_for(lambda: watcher.expected in app.nodes("hosts"), timeout=20, what="the real probe")
        (victim,) = [p["id"] for p in app.get("/api/probes")]
        reader.start()
        sources = [
            (HostileSender(app), HostileMessages(args.seed + n, victim, args.bomb_rate)) for n in range(args.sources)
        ]
        senders = [sender for sender, _ in sources]
        started = time.monotonic()
        for n in range(args.messages):
            sender, messages = sources[n % len(sources)]
            sender.send(messages.message())
            ahead = (n + 1) / args.rate - (time.monotonic() - started)
            if ahead > 0:
                time.sleep(ahead)
            if n % 100_000 == 99_999:
                print(f"  {n + 1} sent in {time.monotonic() - started:.0f} s", flush=True)
        sent_s = time.monotonic() - started

        counts = worked_through(app, timeout=600)
        elapsed = time.monotonic() - started
    finally:
        watcher.stop()
        reader.join(30)
        for sender in senders:
            sender.close()
        probe.terminate()
        app.terminate()

    received = counts["scope_app_reports_received_total"]
    applied = counts["scope_app_reports_applied_total"]
    drops = {
        k.partition('reason="')[2].rstrip('"}'): v
        for k, v in counts.items()
        if k.startswith("scope_app_reports_dropped_total")
    }
    rejected = {
        k.partition('reason="')[2].rstrip('"}'): v
        for k, v in counts.items()
        if k.startswith("scope_app_nodes_rejected_total")
    }
    print(f"sent {args.messages} messages from {args.sources} addresses in {sent_s:.0f} s")
    lost = args.messages - received
    print(
        f"the app received {received:.0f} in {elapsed:.0f} s ({received / elapsed:.0f}/s), its real probe's "
        f"included; {max(lost, 0):.0f} of the hostile ones never reached it (ZeroMQ's queues were full)"
    )
    print(f"applied {applied:.0f}; dropped {sum(drops.values()):.0f}: " + ", ".join(
        f"{reason} {count:.0f}" for reason, count in sorted(drops.items(), key=lambda kv: -kv[1])
    ))  # fmt: skip
    print(f"accounted for: {'yes' if received == applied + sum(drops.values()) else 'NO'}")
    print("nodes left out: " + ", ".join(f"{r} {c:.0f}" for r, c in sorted(rejected.items())))
    print(f"stored nodes {counts['scope_app_stored_nodes']:.0f} of a budget of {NODE_BUDGET}")
    print(f"the app's peak memory: {watcher.max_rss / 2**20:.0f} MiB")
    latencies = sorted(watcher.latencies)
    if latencies:
        p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
        print(
            f"API reads: {watcher.reads}, failed or missing the real probe: {len(watcher.failures)}; latency "
            f"median {statistics.median(latencies) * 1000:.1f} ms, p99 {p99 * 1000:.0f} ms, "
            f"max {latencies[-1] * 1000:.0f} ms"
        )
    for failure in watcher.failures[:5]:
        print(f"  {failure}")
    restarts = {k: v for k, v in counts.items() if k.startswith("scope_app_task_restarts_total") and v}
    print(f"supervised task restarts: {restarts or 'none'}")


if __name__ == "__main__":
    main()
