"""Benchmark: what the Docker reporter costs the probe and dockerd with many containers on this host.

    python -m bench.probe_docker [--containers 50] [--seconds 60] [--baseline 20] [--runs 1]

Starts --containers busybox containers (label scope.test=1), then measures:
- the median `report()` time, both on 1 s ticks (reading every container's cgroup files) and back to back
  (samples reused, the cost of building the nodes alone);
- the probe's CPU over --seconds of 1 s ticks (process time: the event and worker threads included), its
  RSS, and dockerd's CPU over the same time from /proc/<pid>/stat, also net of dockerd's own idle CPU
  measured for --baseline seconds before the reporter starts;
- the event path: from `docker run` returning to the reporter having the container running.
Figures are compared with Go Scope's probe. The containers are removed at the end, also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import functools
import os
import secrets
import signal
import socket
import statistics
import struct
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import docker
import psutil

from scope_probe.docker import DockerReporter
from scope_probe.reporter import ProbeContext

GO_PROBE_CPU = 11.0  # % of a core
GO_DOCKERD_CPU = 8.5  # % of a core, for the stats streams
GO_PROBE_RSS_MIB = 120.0
GO_EVENT_SECONDS = 0.04
SOCKET = "/var/run/docker.sock"
IMAGE = os.environ.get("SCOPE_TEST_IMAGE", "scope-test/busybox:latest")
CLK_TCK = os.sysconf("SC_CLK_TCK")


def dockerd_pid() -> int:
    """The pid of the engine at the other end of the Docker socket (SO_PEERCRED), not a name guess."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(SOCKET)
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid: int = struct.unpack("3i", creds)[0]
    return pid


def cpu_seconds(pid: int) -> float:
    """utime + stime of `pid` (all its threads), from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def wait_until(predicate: Callable[[], bool], timeout: float) -> float:
    began = time.monotonic()
    while not predicate():
        if time.monotonic() - began > timeout:
            raise TimeoutError("reporter did not catch up")
        time.sleep(0.001)
    return time.monotonic() - began


def has_all(reporter: DockerReporter, ids: list[str]) -> bool:
    return set(ids) <= set(reporter.mirror.container_states())


def is_running(reporter: DockerReporter, container_id: str) -> bool:
    return reporter.mirror.container_states().get(container_id) == "running"


def ratio(value: float, go: float) -> str:
    return f"{value / go:.2f}x Go"


def run(args: argparse.Namespace, client: Any, group: str) -> None:
    # scope.test.pid keeps test sessions running meanwhile from removing them as leftovers.
    labels = {"scope.test": "1", "scope.test.pid": str(os.getpid()), "scope.bench": group}
    started = time.monotonic()
    with ThreadPoolExecutor(4) as pool:
        ids = list(
            pool.map(
                lambda i: (
                    client.containers.run(IMAGE, "sleep 100000", name=f"{group}-{i}", labels=labels, detach=True).id
                ),
                range(args.containers),
            )
        )
    print(f"started {len(ids)} containers in {time.monotonic() - started:.1f}s")

    engine = dockerd_pid()
    idle_cpu = 0.0
    if args.baseline > 0:
        before = cpu_seconds(engine)
        time.sleep(args.baseline)
        idle_cpu = 100 * (cpu_seconds(engine) - before) / args.baseline
        print(f"dockerd idle (no probe): {idle_cpu:.2f} % of a core over {args.baseline:.0f}s")

    for run_index in range(args.runs):
        reporter = DockerReporter(ProbeContext(host_id="bench", probe_id="bench"))
        reporter.start(lambda name: None)
        try:
            wait_until(functools.partial(has_all, reporter, ids), 30)
            measure(args, reporter, engine, idle_cpu, client, group, labels, run_index)
        finally:
            reporter.stop()


def measure(
    args: argparse.Namespace,
    reporter: DockerReporter,
    engine: int,
    idle_cpu: float,
    client: Any,
    group: str,
    labels: dict[str, str],
    run_index: int,
) -> None:
    me = psutil.Process()
    tick_times: list[float] = []
    tick_cpu: list[float] = []
    wall0, cpu0, engine0 = time.monotonic(), time.process_time(), cpu_seconds(engine)
    next_tick = wall0
    while time.monotonic() - wall0 < args.seconds:
        began, began_cpu = time.perf_counter(), time.thread_time()
        report = reporter.report(time.time())
        tick_times.append(time.perf_counter() - began)
        tick_cpu.append(time.thread_time() - began_cpu)
        next_tick += 1.0
        time.sleep(max(0.0, next_tick - time.monotonic()))
    wall = time.monotonic() - wall0
    probe_cpu = 100 * (time.process_time() - cpu0) / wall
    engine_cpu = 100 * (cpu_seconds(engine) - engine0) / wall
    rss_mib = me.memory_info().rss / 2**20
    nodes = len(report.nodes("container"))

    burst: list[float] = []
    for _ in range(200):
        began = time.perf_counter()
        reporter.report(time.time())
        burst.append(time.perf_counter() - began)

    latencies = []
    run_times = []
    for i in range(5):
        name = f"{group}-event-{run_index}-{i}"
        began = time.monotonic()
        container = client.containers.run(IMAGE, "sleep 100000", name=name, labels=labels, detach=True)
        run_times.append(time.monotonic() - began)
        latencies.append(wait_until(functools.partial(is_running, reporter, container.id), 10))
        container.remove(force=True)

    event = statistics.median(latencies)
    print(f"--- run {run_index + 1}: {nodes} containers in the report")
    print(
        f"report() on 1 s ticks (cgroup reads): median {statistics.median(tick_times) * 1000:.2f} ms wall, "
        f"{statistics.median(tick_cpu) * 1000:.2f} ms CPU"
    )
    print(f"report() back to back (samples reused): median {statistics.median(burst) * 1000:.2f} ms")
    print(f"probe CPU over {wall:.0f}s of 1 s ticks: {probe_cpu:.2f} % of a core ({ratio(probe_cpu, GO_PROBE_CPU)})")
    print(
        f"dockerd CPU over the same time: {engine_cpu:.2f} % of a core, {max(engine_cpu - idle_cpu, 0.0):.2f} % "
        "above idle "
        f"({ratio(max(engine_cpu - idle_cpu, 0.0), GO_DOCKERD_CPU)})"
    )
    print(f"probe RSS: {rss_mib:.0f} MiB ({ratio(rss_mib, GO_PROBE_RSS_MIB)})")
    print(
        f"docker run returned -> reporter has it running: median {event * 1000:.1f} ms "
        f"({ratio(event, GO_EVENT_SECONDS)}; docker run itself took {statistics.median(run_times):.2f}s)"
    )


def cleanup(client: Any, group: str) -> None:
    gone = 0
    for container in client.containers.list(all=True, filters={"label": f"scope.bench={group}"}):
        try:
            container.remove(force=True)
            gone += 1
        except docker.errors.APIError:
            pass
    print(f"removed {gone} containers")


def interrupt(signum: int, frame: object) -> None:
    """SIGTERM cleans up like Ctrl-C does."""
    raise KeyboardInterrupt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--containers", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--baseline", type=float, default=20.0, help="seconds of dockerd idle CPU to subtract")
    parser.add_argument("--runs", type=int, default=1, help="measurement runs over the same containers")
    args = parser.parse_args()

    signal.signal(signal.SIGTERM, interrupt)
    client = docker.DockerClient(base_url=f"unix://{SOCKET}", timeout=120)
    client.images.get(IMAGE)  # fails early (scripts/test-images.sh builds it)
    group = f"scopebench-{secrets.token_hex(3)}"
    try:
        run(args, client, group)
    except KeyboardInterrupt:
        print("interrupted")
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not stop the cleanup
        cleanup(client, group)
        client.close()


if __name__ == "__main__":
    main()
