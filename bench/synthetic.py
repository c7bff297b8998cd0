"""Realistic synthetic reports for benchmarks: what a busy host's probe would send.

Each host has processes (some in containers), containers on a docker bridge, and connections: between
its own processes over loopback, between its containers over the bridge, to other hosts' servers
(joined across reports by address), and to the Internet.
"""

from __future__ import annotations

import random
import time

from scope_common import ids
from scope_common.report import (
    CMDLINE,
    CONTAINER_ID,
    CONTAINER_IPS,
    CONTAINER_IPS_WITH_SCOPES,
    CONTAINER_NAME,
    CONTAINER_PORTS,
    CONTAINER_STATE,
    CPU_USAGE,
    HOST_NODE_ID,
    HOSTNAME,
    IMAGE_ID,
    IMAGE_NAME,
    LOCAL_NETWORKS,
    MAX_SAMPLES,
    MEMORY_USAGE,
    NAME,
    PID,
    PPID,
    Metric,
    Node,
    Report,
    Sample,
)

_NAMES = ["nginx", "postgres", "redis-server", "python", "java", "node", "sshd", "bash", "sleep", "httpd"]


def host_address(index: int) -> str:
    return f"10.{index // 250}.{index % 250}.10"


def host_report(
    index: int,
    hosts: int,
    *,
    processes: int = 500,
    endpoints: int = 2000,
    containers: int = 50,
    now: float | None = None,
    seed: int = 0,
) -> Report:
    """The report of host `index` out of `hosts`."""
    rng = random.Random(seed * 100_003 + index)
    now = time.time() if now is None else now
    host = f"host-{index}"
    host_node = ids.host_id(host)
    report = Report()
    history = [Sample(now - i, rng.uniform(0, 100)) for i in range(MAX_SAMPLES)]
    report.add(
        Node.build(
            host_node,
            "host",
            timestamp=now,
            latest={HOSTNAME: host, HOST_NODE_ID: host_node, "os": "linux", "kernel_version": "6.1.0"},
            sets={LOCAL_NETWORKS: [f"{host_address(index)}/8", "172.17.0.1/16"]},
            metrics={CPU_USAGE: Metric.from_samples(history, 100.0)},
        )
    )
    container_ids = [f"{index:08x}{c:056x}" for c in range(containers)]
    for c, container in enumerate(container_ids):
        ip = f"172.17.{c // 250}.{c % 250 + 2}"
        image = f"image-{c % 10}"
        report.add(
            Node.build(
                ids.container_id(container),
                "container",
                timestamp=now,
                latest={
                    CONTAINER_ID: container,
                    CONTAINER_NAME: f"{image}-{index}-{c}",
                    IMAGE_NAME: f"registry/{image}:latest",
                    IMAGE_ID: f"sha256:{c % 10:064x}",
                    CONTAINER_STATE: "running",
                    HOST_NODE_ID: host_node,
                },
                sets={
                    CONTAINER_IPS: [ip],
                    CONTAINER_IPS_WITH_SCOPES: [f"{host};{ip}"],
                    CONTAINER_PORTS: [f"0.0.0.0:{8000 + c}->80/tcp"],
                },
                metrics={
                    CPU_USAGE: Metric.from_samples([Sample(now - i, rng.uniform(0, 50)) for i in range(MAX_SAMPLES)]),
                    MEMORY_USAGE: Metric.from_samples(
                        [Sample(now - i, rng.uniform(1e7, 1e9)) for i in range(MAX_SAMPLES)], 2e9
                    ),
                },
                parents={"host": [host_node], "container_image": [ids.image_id(f"sha256:{c % 10:064x}")]},
            )
        )
    pids = list(range(100, 100 + processes))
    for n, pid in enumerate(pids):
        process_container: str | None = container_ids[n % containers] if containers and n % 2 == 0 else None
        parents = {"host": [host_node]}
        if process_container:
            parents["container"] = [ids.container_id(process_container)]
        name = _NAMES[n % len(_NAMES)]
        report.add(
            Node.build(
                ids.process_id(host, pid),
                "process",
                timestamp=now,
                latest={
                    PID: pid,
                    PPID: 1,
                    NAME: name,
                    CMDLINE: f"/usr/bin/{name} --config /etc/{name}.conf --workers 4",
                    HOST_NODE_ID: host_node,
                    CONTAINER_ID: process_container,
                },
                metrics={
                    CPU_USAGE: Metric.single(now, rng.uniform(0, 10), 100.0),
                    MEMORY_USAGE: Metric.single(now, rng.uniform(1e6, 1e8), 2e10),
                },
                parents=parents,
            )
        )
    # Each connection adds two endpoints; servers listen on port 80 of their address.
    for n in range(endpoints // 2):
        client_pid = ids.process_id(host, pids[rng.randrange(processes)])
        kind = n % 4
        if kind == 0:  # loopback, both ends here
            server = ids.endpoint_id(host, "127.0.0.1", 5000 + n % 50)
            client = ids.endpoint_id(host, "127.0.0.1", 30000 + n)
            server_pid: str | None = ids.process_id(host, pids[n % processes])
        elif kind == 1 and containers:  # container to container over the bridge
            server = ids.endpoint_id(host, f"172.17.0.{n % containers + 2}", 80)
            client = ids.endpoint_id(host, f"172.17.0.{(n + 1) % containers + 2}", 30000 + n)
            server_pid = ids.process_id(host, pids[(n % containers) * 2 % processes])
        elif kind == 2 and hosts > 1:  # to another host's server
            other = (index + 1 + n % (hosts - 1)) % hosts
            server = ids.endpoint_id("", host_address(other), 80)
            client = ids.endpoint_id("", host_address(index), 30000 + n)
            server_pid = None
        else:  # to the Internet
            server = ids.endpoint_id("", f"93.184.{n % 250}.{n % 200}", 443)
            client = ids.endpoint_id("", host_address(index), 30000 + n)
            server_pid = None
        report.add(Node.build(client, "endpoint", timestamp=now, adjacency=[server], parents={"process": [client_pid]}))
        report.add(
            Node.build(server, "endpoint", timestamp=now, parents={"process": [server_pid]} if server_pid else None)
        )
    # Servers other hosts connect to: this host's port 80.
    report.add(
        Node.build(
            ids.endpoint_id("", host_address(index), 80),
            "endpoint",
            timestamp=now,
            parents={"process": [ids.process_id(host, pids[0])]},
        )
    )
    return report


def fleet(hosts: int, **kwargs: int) -> list[Report]:
    return [host_report(i, hosts, **kwargs) for i in range(hosts)]
