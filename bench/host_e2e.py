"""Benchmark: scope on this host under issue 16's load, against Go Scope 1.13 measured side by side here.

    python -m bench.host_e2e [--pairs 25] [--seconds 60] [--runs 3] [--trials 5] [--trees DIR DIR ...]

The load: --pairs busybox web servers (httpd) and as many clients, each fetching from its server once
a second (wget in a shell loop), so 50 containers whose network namespaces see a short connection
every second. An app runs throughout; the probe (default intervals: spy 1 s, publish 3 s) is started
afresh for each of --runs measuring windows of --seconds, after it has settled, and each run prints:
the probe's CPU (% of a core) and RSS, dockerd's CPU above what it used under the same load with no
probe, and the bytes the probe uploads (what the app's bus received). The medians of the runs follow,
then, with the last probe: `/api/topology/containers` latency, how soon a container is in the API after
`docker run` returns, and how soon a new connection's edge appears. With --trees, the probes of the runs
are taken from those source trees in turn (PYTHONPATH), one after the other, and the medians are printed
per tree: two versions compared under the same load, run against run, on a machine whose other load
drifts (--runs is then the number of runs of each). Needs root and a Docker engine
(scripts/dockerd.sh start; scripts/test-images.sh). Its containers are removed at the end, also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import socket
import statistics
import struct
import time
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import docker

from tests.fixtures.docker import BUSYBOX_IMAGE, Containers
from tests.fixtures.scope import App, ScopeProcess, start_probe

#: Go Scope 1.13 on this machine, same load, runs alternating with ours.
GO = {
    "probe_cpu": 10.0,
    "dockerd_cpu": 6.0,
    "probe_rss_mib": 108.0,
    "upload_kbs": 9.3,
    "api_ms": 3.6,
    "edge_s": 8.0,  # 8-11 s
}
SOCKET = "/var/run/docker.sock"
CLK_TCK = os.sysconf("SC_CLK_TCK")
#: A page for the servers, and a client that fetches it once a second (a new connection each time).
SERVER = "mkdir -p /www && echo hello > /www/index.html && exec httpd -f -p 80 -h /www"
CLIENT = "while true; do wget -q -O /dev/null http://{ip}/; sleep 1; done"


def cpu_seconds(pid: int) -> float:
    """utime + stime of `pid` (all its threads)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def dockerd_pid() -> int:
    """The pid of the engine at the other end of the Docker socket (SO_PEERCRED), not a name guess."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(SOCKET)
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid: int = struct.unpack("3i", creds)[0]
    return pid


def wait(check: Callable[[], bool], timeout: float, interval: float = 0.005) -> float:
    """Seconds until `check()` holds; raises TimeoutError."""
    start = time.perf_counter()
    while not check():
        if time.perf_counter() - start > timeout:
            raise TimeoutError
        time.sleep(interval)
    return time.perf_counter() - start


def in_view(app: App, node_id: str) -> Callable[[], bool]:
    return lambda: node_id in app.nodes("containers")


def has_edge(app: App, source: str, target: str) -> Callable[[], bool]:
    return lambda: target in app.nodes("containers").get(source, {}).get("adjacency", [])


def ratio(ours: float, go: float) -> str:
    if ours <= 0 or go <= 0:
        return ""
    factor = go / ours
    return f"({factor:.1f}x {'better' if factor >= 1 else 'worse'} than Go Scope's {go:g})"


def start_load(containers: Containers, pairs: int) -> list[tuple[Any, str]]:
    """`pairs` servers and one client per server fetching from it every second; (server, its ip) each."""
    with ThreadPoolExecutor(4) as pool:
        servers = list(pool.map(lambda i: containers.run(["sh", "-c", SERVER], name=f"srv-{i}"), range(pairs)))
        ips = list(pool.map(containers.ip, servers))
        list(
            pool.map(
                lambda i: containers.run(["sh", "-c", CLIENT.format(ip=ips[i])], name=f"cli-{i}"),
                range(pairs),
            )
        )
    return list(zip(servers, ips, strict=True))


@dataclass
class Run:
    probe_cpu: float
    dockerd_cpu: float
    rss_mib: float
    upload_kbs: float
    message_kb: float
    messages: float


def median_run(runs: list[Run]) -> Run:
    """Each figure's median over `runs`: the machine is shared, so one run alone says little."""
    return Run(*(statistics.median(getattr(run, field.name) for run in runs) for field in dataclasses.fields(Run)))


def measure(app: App, probe: ScopeProcess, dockerd: int, dockerd_idle: float, seconds: float) -> Run:
    """The probe's cost over `seconds`."""
    stats0 = app.get("/api/stats")
    probe_cpu0, dockerd_cpu0, t0 = cpu_seconds(probe.pid), cpu_seconds(dockerd), time.monotonic()
    rss = []
    while time.monotonic() - t0 < seconds:
        time.sleep(1)
        rss.append(rss_mib(probe.pid))
    elapsed = time.monotonic() - t0
    stats1 = app.get("/api/stats")
    sent = stats1["bytes_received"] - stats0["bytes_received"]
    messages = stats1["reports_received"] - stats0["reports_received"]
    return Run(
        probe_cpu=(cpu_seconds(probe.pid) - probe_cpu0) / elapsed * 100,
        dockerd_cpu=max(0.0, (cpu_seconds(dockerd) - dockerd_cpu0) / elapsed * 100 - dockerd_idle),
        rss_mib=statistics.median(rss),
        upload_kbs=sent / elapsed / 1000,
        message_kb=sent / max(messages, 1) / 1000,
        messages=messages,
    )


def print_run(label: str, run: Run) -> None:
    print(
        f"{label}: probe CPU {run.probe_cpu:.1f} % of a core {ratio(run.probe_cpu, GO['probe_cpu'])}, "
        f"dockerd +{run.dockerd_cpu:.1f} % (Go Scope's +{GO['dockerd_cpu']:g}), "
        f"RSS {run.rss_mib:.0f} MiB {ratio(run.rss_mib, GO['probe_rss_mib'])}, "
        f"upload {run.upload_kbs:.2f} KB/s {ratio(run.upload_kbs, GO['upload_kbs'])} "
        f"in {run.messages:.0f} messages of {run.message_kb:.1f} KB on average",
        flush=True,
    )


def start_settled_probe(app: App, containers: int, settle: float, tree: str | None = None) -> ScopeProcess:
    """A probe with the default intervals (from source tree `tree`, or the installed one), once the app
    shows every container and `settle` more seconds."""
    probe = start_probe(
        [app.bus],
        hostname="bench-host",
        extra=["--spy-interval=1s", "--publish-interval=3s"],
        env={"PYTHONPATH": tree} if tree else None,
    )
    try:
        wait(lambda: len(app.nodes("containers")) >= containers, timeout=60, interval=0.5)
        time.sleep(settle)
    except BaseException:
        # A timeout, or Ctrl-C (SIGTERM) while settling: the caller never gets the probe to stop.
        probe.terminate()
        raise
    return probe


def latencies(app: App, containers: Containers, server: Any, server_ip: str, trials: int) -> None:
    api = []
    for _ in range(50):
        start = time.perf_counter()
        with urllib.request.urlopen(app.url + "/api/topology/containers") as response:
            response.read()
        api.append((time.perf_counter() - start) * 1000)
    api_ms = statistics.median(api)
    print(f"/api/topology/containers: median {api_ms:.1f} ms {ratio(api_ms, GO['api_ms'])}")

    appear = []
    for trial in range(trials):
        new = containers.run(["sleep", "3600"], name=f"new-{trial}")
        appear.append(wait(in_view(app, f"{new.id};<container>"), timeout=30))
    print(f"container in the API after `docker run` returned: median {statistics.median(appear):.2f} s")

    server_id = f"{server.id};<container>"
    edges = []
    for trial in range(trials):
        peer = containers.run(["sleep", "3600"], name=f"peer-{trial}")
        peer_id = f"{peer.id};<container>"
        wait(in_view(app, peer_id), timeout=30)
        peer.exec_run(["sh", "-c", f"(sleep 600) | nc {server_ip} 80"], detach=True)
        start = time.perf_counter()
        wait(has_edge(app, peer_id, server_id), 60, 0.05)
        edges.append(time.perf_counter() - start)
    edge_s = statistics.median(edges)
    print(f"new connection's edge in the API: median {edge_s:.2f} s (Go Scope's: 8-11 s)")


def interrupt(signum: int, frame: object) -> None:
    """SIGTERM cleans up like Ctrl-C does."""
    raise KeyboardInterrupt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=25, help="web servers, and as many clients")
    parser.add_argument("--seconds", type=float, default=60.0, help="length of each measuring window")
    parser.add_argument("--runs", type=int, default=3, help="probes started and measured in turn")
    parser.add_argument("--settle", type=float, default=10.0, help="seconds a new probe runs before measuring")
    parser.add_argument("--baseline", type=float, default=15.0, help="seconds of dockerd CPU with no probe")
    parser.add_argument("--trials", type=int, default=5, help="containers and connections timed")
    parser.add_argument("--trees", nargs="+", default=[], help="source trees whose probes are measured in turn")
    args = parser.parse_args()
    trees: list[str | None] = list(args.trees) or [None]
    signal.signal(signal.SIGTERM, interrupt)
    client = docker.DockerClient(base_url=f"unix://{SOCKET}", timeout=120)
    client.images.get(BUSYBOX_IMAGE)  # fails early (scripts/test-images.sh builds it)
    containers = Containers(client, BUSYBOX_IMAGE)
    app: App | None = None
    probe: ScopeProcess | None = None
    try:
        servers = start_load(containers, args.pairs)
        total = 2 * args.pairs
        print(f"{args.pairs} servers and {args.pairs} clients fetching once a second", flush=True)
        dockerd = dockerd_pid()
        before = cpu_seconds(dockerd)
        time.sleep(args.baseline)
        dockerd_idle = (cpu_seconds(dockerd) - before) / args.baseline * 100
        print(f"dockerd under that load, no probe: {dockerd_idle:.1f} % of a core", flush=True)
        app = App()
        runs: dict[str | None, list[Run]] = {tree: [] for tree in trees}
        for index in range(args.runs * len(trees)):
            tree = trees[index % len(trees)]
            if probe is not None:
                probe.terminate()
            probe = start_settled_probe(app, total, args.settle, tree)
            runs[tree].append(measure(app, probe, dockerd, dockerd_idle, args.seconds))
            print_run(f"run {index + 1}" + (f" ({tree})" if tree else ""), runs[tree][-1])
        for tree, done in runs.items():
            print_run(f"median of {len(done)}" + (f" ({tree})" if tree else ""), median_run(done))
        if probe is not None:
            latencies(app, containers, *servers[0], args.trials)
    except KeyboardInterrupt:
        print("interrupted")
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not stop the cleanup
        if probe is not None:
            probe.terminate()
        if app is not None:
            app.terminate()
        containers.cleanup()
        client.close()


if __name__ == "__main__":
    main()
