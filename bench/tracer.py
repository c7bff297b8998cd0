"""Benchmark: the connection tracer (`--conn-tracer`): how soon a new connection is an edge, and what it costs.

    python -m bench.tracer [--trials 10] [--rates 0,100,1000] [--seconds 20] [--runs 3]

Edge latency: an app and a probe (default intervals: spy 1 s, publish 3 s) and a busybox web server;
for each trial a fresh client container, once it is in the API, is told to connect (a file appears in a
directory it has mounted, which it polls every 5 ms) and the clock runs until the edge client -> server is
in `/api/topology/containers`. Trials alternate a connection held open (nc) and one of milliseconds
(wget). The median is printed with the tracer on, then off (the probe then relies on /proc and conntrack).

CPU: a load process on this host's loopback opens --rates connections a second (each closed at once with
a reset, so that no TIME_WAIT piles up ports or conntrack entries); a probe is started afresh for each of
--runs windows of --seconds, after it has settled, with the tracer on and off, and its CPU time (% of a
core) is printed, median of the runs. Needs root and a Docker engine (scripts/test-images.sh). Its
containers are removed at the end, also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import multiprocessing
import multiprocessing.synchronize
import os
import shutil
import signal
import socket
import statistics
import struct
import tempfile
import threading
import time
from typing import Any

import docker

from bench.host_e2e import cpu_seconds, has_edge, in_view, interrupt, wait
from tests.fixtures.docker import BUSYBOX_IMAGE, Containers
from tests.fixtures.scope import App, ScopeProcess, start_probe

SERVER = "mkdir -p /www && echo hello > /www/index.html && exec httpd -f -p 80 -h /www"
#: Waits for its trigger file, then connects: held open (nc) or for milliseconds (wget).
CLIENT = "while [ ! -e /trigger/go ]; do sleep 0.005; done; {connect}; sleep 3600"
HELD = "(sleep 600) | nc {ip} 80"
SHORT = "wget -q -O /dev/null http://{ip}/"
LINGER_RESET = struct.pack("ii", 1, 0)


def start_bench_probe(app: App, tracer: str) -> ScopeProcess:
    extra = ["--spy-interval=1s", "--publish-interval=3s", f"--conn-tracer={tracer}"]
    return start_probe([app.bus], hostname="bench-host", extra=extra)


def edge_latencies(app: App, containers: Containers, server: Any, ip: str, trials: int, tracer: str) -> list[float]:
    """Seconds from the trigger to the edge in the API, one per trial."""
    probe = start_bench_probe(app, tracer)
    server_id = f"{server.id};<container>"
    found = []
    try:
        wait(in_view(app, server_id), timeout=30, interval=0.1)
        for trial in range(trials):
            connect = (HELD if trial % 2 == 0 else SHORT).format(ip=ip)
            trigger = tempfile.mkdtemp(prefix="scope-bench-")
            try:
                client = containers.run(
                    ["sh", "-c", CLIENT.format(connect=connect)],
                    name=f"{tracer}-{trial}",
                    volumes={trigger: {"bind": "/trigger", "mode": "ro"}},
                )
                client_id = f"{client.id};<container>"
                wait(in_view(app, client_id), timeout=30, interval=0.1)
                time.sleep(0.5)  # past the wake of its start, so that the trial starts from a quiet probe
                start = time.perf_counter()
                open(os.path.join(trigger, "go"), "w").close()
                wait(has_edge(app, client_id, server_id), timeout=30, interval=0.01)
                found.append(time.perf_counter() - start)
            finally:
                shutil.rmtree(trigger, ignore_errors=True)
            kind = "held" if trial % 2 == 0 else "short"
            print(f"  tracer {tracer}, trial {trial + 1} ({kind}): {found[-1]:.3f} s", flush=True)
    finally:
        probe.terminate()
    return found


def load(rate: int, stop: multiprocessing.synchronize.Event, counted: Any) -> None:
    """Open `rate` loopback connections a second until `stop`; each closed with a reset at once."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1024)
        address = listener.getsockname()

        def accept() -> None:
            while True:
                conn, _ = listener.accept()
                conn.close()

        threading.Thread(target=accept, daemon=True).start()
        start = time.monotonic()
        opened = 0
        while not stop.is_set():
            due = int((time.monotonic() - start) * rate)
            if opened >= due:
                time.sleep(0.001)
                continue
            with socket.create_connection(address) as conn:
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RESET)
            opened += 1
            counted.value = opened


def probe_cpu(app: App, rate: int, tracer: str, seconds: float, settle: float) -> tuple[float, float]:
    """The probe's CPU (% of a core) under `rate` connections a second, and the rate achieved."""
    stop = multiprocessing.Event()
    counted = multiprocessing.Value("q", 0)
    loader = multiprocessing.Process(target=load, args=(rate, stop, counted), daemon=True)
    if rate:
        loader.start()
    probe = start_bench_probe(app, tracer)
    try:
        wait(lambda: "bench-host;<host>" in app.nodes("hosts"), timeout=30, interval=0.2)
        time.sleep(settle)
        cpu0, opened0, t0 = cpu_seconds(probe.pid), counted.value, time.monotonic()
        time.sleep(seconds)
        elapsed = time.monotonic() - t0
        return (cpu_seconds(probe.pid) - cpu0) / elapsed * 100, (counted.value - opened0) / elapsed
    finally:
        probe.terminate()
        stop.set()
        if rate:
            loader.join(timeout=5)
            if loader.is_alive():
                loader.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=10, help="connections timed, with the tracer on and off")
    parser.add_argument("--rates", default="0,100,1000", help="connections a second for the CPU figures")
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each CPU window")
    parser.add_argument("--runs", type=int, default=3, help="CPU windows per rate and mode")
    parser.add_argument("--settle", type=float, default=5.0, help="seconds a new probe runs before measuring")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, interrupt)
    client = docker.DockerClient(base_url="unix:///var/run/docker.sock", timeout=120)
    client.images.get(BUSYBOX_IMAGE)  # fails early (scripts/test-images.sh builds it)
    containers = Containers(client, BUSYBOX_IMAGE)
    app: App | None = None
    try:
        app = App()
        if args.trials:
            server = containers.run(["sh", "-c", SERVER], name="web")
            ip = containers.ip(server)
            for tracer in ("auto", "off"):
                found = edge_latencies(app, containers, server, ip, args.trials, tracer)
                held, short = found[0::2], found[1::2]
                print(
                    f"new connection's edge in the API, tracer {tracer}: median {statistics.median(found):.3f} s "
                    f"of {len(found)} (held open {statistics.median(held):.3f} s, "
                    f"milliseconds {statistics.median(short) if short else float('nan'):.3f} s)",
                    flush=True,
                )
        for rate in (int(r) for r in args.rates.split(",") if r.strip()):
            for tracer in ("auto", "off"):
                figures = [probe_cpu(app, rate, tracer, args.seconds, args.settle) for _ in range(args.runs)]
                cpu = statistics.median(f[0] for f in figures)
                achieved = statistics.median(f[1] for f in figures)
                print(
                    f"{rate}/s ({achieved:.0f}/s achieved), tracer {tracer}: probe CPU {cpu:.1f} % of a core "
                    f"(runs: {', '.join(f'{f[0]:.1f}' for f in figures)})",
                    flush=True,
                )
    except KeyboardInterrupt:
        print("interrupted")
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not stop the cleanup
        if app is not None:
            app.terminate()
        containers.cleanup()
        client.close()


if __name__ == "__main__":
    main()
