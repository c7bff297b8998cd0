"""Benchmark: scope on this host with 50 containers, against the figures of Go Scope 1.13 here.

    python -m bench.host_e2e [--containers 50] [--seconds 60]

Starts an app and a probe (default intervals: spy 1 s, publish 3 s) and 50 busybox containers, then
measures: the probe's CPU and memory, dockerd's CPU, the bytes the probe uploads, one full report's
size, how long `/api/topology/containers` takes to answer, how soon a container is in the API after
`docker run` returns, and how soon a new connection's edge appears. Needs root and a Docker engine
(scripts/dockerd.sh start; scripts/test-images.sh).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import time
import urllib.request
from collections.abc import Callable

import docker

from tests.fixtures.scope import App, ScopeProcess, start_probe

GO = {
    "probe_cpu": 11.0,
    "dockerd_cpu": 8.5,
    "probe_rss_mib": 120.0,
    "container_in_api_s": 0.04,
    "edge_s": 7.9,
    "report_gz_kb": 35.0,
    "upload_kbs": 9.0,
    "api_ms": 5.7,
}
IMAGE = "scope-test/busybox:latest"
LABEL = {"scope.bench": "1"}


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def dockerd_pid() -> int:
    out = subprocess.run(["pidof", "dockerd"], capture_output=True, text=True, check=True).stdout.split()
    return int(out[0])


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


def ratio(ours: float, go: float, lower_is_better: bool = True) -> str:
    if ours <= 0 or go <= 0:
        return ""
    factor = go / ours if lower_is_better else ours / go
    return f"({factor:.1f}x {'better' if factor >= 1 else 'worse'} than Go Scope's {go:g})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--containers", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--trials", type=int, default=5)
    args = parser.parse_args()
    client = docker.from_env()
    for stale in client.containers.list(all=True, filters={"label": "scope.bench=1"}):
        stale.remove(force=True)
    app = App()
    probe: ScopeProcess | None = None
    try:
        containers = [
            client.containers.run(IMAGE, ["sleep", "3600"], detach=True, labels=LABEL, name=f"bench-{i}")
            for i in range(args.containers)
        ]
        probe = start_probe([app.bus], hostname="bench-host", extra=["--spy-interval=1s", "--publish-interval=3s"])
        wait(lambda: len(app.nodes("containers")) >= args.containers, timeout=60, interval=0.5)
        time.sleep(5)  # let the probe settle past its first reports
        print(f"{len(containers)} containers running; measuring {args.seconds:.0f} s")

        dockerd = dockerd_pid()
        stats0 = app.get("/api/stats")
        probe_cpu0, dockerd_cpu0, t0 = cpu_seconds(probe.pid), cpu_seconds(dockerd), time.monotonic()
        rss = []
        while time.monotonic() - t0 < args.seconds:
            time.sleep(1)
            rss.append(rss_mib(probe.pid))
        elapsed = time.monotonic() - t0
        probe_cpu = (cpu_seconds(probe.pid) - probe_cpu0) / elapsed * 100
        dockerd_cpu = (cpu_seconds(dockerd) - dockerd_cpu0) / elapsed * 100
        stats1 = app.get("/api/stats")
        sent = stats1["bytes_received"] - stats0["bytes_received"]
        reports = stats1["reports_received"] - stats0["reports_received"]
        print(f"probe CPU: {probe_cpu:.1f} % of a core {ratio(probe_cpu, GO['probe_cpu'])}")
        print(f"dockerd CPU while probing: {dockerd_cpu:.1f} % of a core (Go Scope added {GO['dockerd_cpu']:g})")
        print(f"probe RSS: {statistics.median(rss):.0f} MiB {ratio(statistics.median(rss), GO['probe_rss_mib'])}")
        upload_kbs, report_kb = sent / elapsed / 1024, sent / max(reports, 1) / 1024
        print(f"upload: {upload_kbs:.1f} KiB/s {ratio(upload_kbs, GO['upload_kbs'])}")
        print(f"one report on the wire (zlib): {report_kb:.1f} KiB {ratio(report_kb, GO['report_gz_kb'])}")

        api = []
        for _ in range(50):
            start = time.perf_counter()
            with urllib.request.urlopen(app.url + "/api/topology/containers") as response:
                response.read()
            api.append((time.perf_counter() - start) * 1000)
        api_ms = statistics.median(api)
        print(f"/api/topology/containers: median {api_ms:.1f} ms {ratio(api_ms, GO['api_ms'])}")

        appear = []
        for trial in range(args.trials):
            new = client.containers.run(IMAGE, ["sleep", "3600"], detach=True, labels=LABEL, name=f"bench-new-{trial}")
            appear.append(wait(in_view(app, f"{new.id};<container>"), timeout=30))
        print(
            f"container in the API after `docker run` returned: median {statistics.median(appear):.2f} s "
            f"{ratio(statistics.median(appear), GO['container_in_api_s'])}"
        )

        server = client.containers.run(IMAGE, ["httpd", "-f", "-p", "80"], detach=True, labels=LABEL, name="bench-srv")
        server.reload()
        server_ip = server.attrs["NetworkSettings"]["IPAddress"]
        server_id = f"{server.id};<container>"
        edges = []
        for trial in range(args.trials):
            peer = client.containers.run(IMAGE, ["sleep", "3600"], detach=True, labels=LABEL, name=f"bench-cli-{trial}")
            peer_id = f"{peer.id};<container>"
            wait(in_view(app, peer_id), timeout=30)
            peer.exec_run(["sh", "-c", f"(sleep 600) | nc {server_ip} 80"], detach=True)
            start = time.perf_counter()
            wait(has_edge(app, peer_id, server_id), 60, 0.05)
            edges.append(time.perf_counter() - start)
        edge_s = statistics.median(edges)
        print(f"new connection's edge in the API: median {edge_s:.2f} s {ratio(edge_s, GO['edge_s'])}")
    finally:
        if probe is not None:
            probe.terminate()
        app.terminate()
        for stale in client.containers.list(all=True, filters={"label": "scope.bench=1"}):
            stale.remove(force=True)


if __name__ == "__main__":
    main()
